"""bptrain/engine/gates/linalg.py: matmul, bias add and the fused affine gate."""
from __future__ import annotations

import numpy as np
import pytest

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_gate
from conftest import assert_gate_passes

# ---- linear algebra --------------------------------------------------------------------------

MATMUL_SHAPES = [((1, 1), (1, 1)), ((4, 3), (3, 2)), ((5, 1), (1, 3)), ((2, 6), (6, 7))]


@pytest.mark.parametrize("sx,sw", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_gate(sx, sw):
    rng = np.random.default_rng(3)
    X, W = rng.standard_normal(sx), rng.standard_normal(sw)
    out = G.MatMul().forward(X, W)
    np.testing.assert_allclose(out, np.einsum("nd,dm->nm", X, W), rtol=1e-12, atol=1e-14)
    up = rng.standard_normal(out.shape)
    gate = G.MatMul()
    gate.forward(X, W)
    dX, dW = gate.backward(up)
    assert dX.shape == X.shape and dW.shape == W.shape
    np.testing.assert_allclose(dX, np.einsum("nm,dm->nd", up, W), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dW, np.einsum("nd,nm->dm", X, up), rtol=1e-12, atol=1e-14)
    assert_gate_passes(check_gate(G.MatMul(), [X, W]), [X, W])


@pytest.mark.parametrize("n,d,m", [(1, 1, 1), (4, 3, 2), (6, 5, 1), (3, 2, 5)])
def test_affine_gate(n, d, m):
    rng = np.random.default_rng(n * 100 + d * 10 + m)
    X, W, b = rng.standard_normal((n, d)), rng.standard_normal((d, m)), rng.standard_normal(m)
    out = G.Affine().forward(X, W, b)
    want = np.einsum("nd,dm->nm", X, W) + np.outer(np.ones(n), b)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    gate = G.Affine()
    gate.forward(X, W, b)
    up = rng.standard_normal((n, m))
    dX, dW, db = gate.backward(up)
    np.testing.assert_allclose(db, np.ones(n) @ up, rtol=1e-12, atol=1e-14)
    assert (dX.shape, dW.shape, db.shape) == (X.shape, W.shape, b.shape)
    assert_gate_passes(check_gate(G.Affine(), [X, W, b]), [X, W, b])


@pytest.mark.parametrize("n,m", [(1, 1), (4, 3), (7, 2)])
def test_bias_add_gate(n, m):
    rng = np.random.default_rng(n + m)
    X, b = rng.standard_normal((n, m)), rng.standard_normal(m)
    np.testing.assert_allclose(G.BiasAdd().forward(X, b), X + np.tile(b, (n, 1)), rtol=1e-15)
    assert_gate_passes(check_gate(G.BiasAdd(), [X, b]), [X, b])
