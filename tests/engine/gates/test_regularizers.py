"""bptrain/engine/gates/regularizers.py: L2 and L1 over any number of weights."""
from __future__ import annotations

import numpy as np
import pytest

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_gate
from conftest import assert_gate_passes
from gate_helpers import away

# ---- regularizers ----------------------------------------------------------------------------

REG_WEIGHTS = {
    "one": [(3, 4)],
    "two": [(5, 3), (3, 2)],
    "with_0d": [(2, 2), ()],
}


@pytest.mark.parametrize("shapes", list(REG_WEIGHTS.values()), ids=list(REG_WEIGHTS))
def test_l2_gate(shapes):
    rng = np.random.default_rng(len(shapes))
    lam = 0.37
    Ws = [rng.standard_normal(s) for s in shapes]
    gate = G.L2(lam)
    value = gate.forward(*Ws)
    want = 0.5 * lam * sum(float(np.sum(W ** 2)) for W in Ws)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    grads = gate.backward(np.array(2.0))
    for W, dW in zip(Ws, grads):
        np.testing.assert_allclose(dW, 2.0 * lam * W, rtol=1e-12)
    assert_gate_passes(check_gate(G.L2(lam), Ws), Ws)


@pytest.mark.parametrize("shapes", list(REG_WEIGHTS.values()), ids=list(REG_WEIGHTS))
def test_l1_gate(shapes):
    rng = np.random.default_rng(10 + len(shapes))
    lam = 0.21
    Ws = [away(rng, s) for s in shapes]
    gate = G.L1(lam)
    value = gate.forward(*Ws)
    want = lam * sum(float(np.sum(np.maximum(W, -W))) for W in Ws)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    grads = gate.backward(np.array(1.0))
    for W, dW in zip(Ws, grads):
        np.testing.assert_allclose(dW, lam * np.where(W > 0, 1.0, -1.0), rtol=1e-12)
    assert_gate_passes(check_gate(G.L1(lam), Ws), Ws)
