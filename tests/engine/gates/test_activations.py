"""bptrain/engine/gates/activations.py: relu, leaky relu, sigmoid, tanh, elu and dropout;
forward against independent formulas, backward against centered differences."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_gate
from bptrain.engine.graph import Graph
from conftest import assert_gate_passes, hsettings, sigmoid_ref
from gate_helpers import SEEDS, SHAPES, away, normal, unary_gate_tests, wide

UNARY = {
    "ELU": (lambda: G.ELU(0.7), away, lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1.0))),
    "LeakyReLU": (lambda: G.LeakyReLU(0.05), away, lambda x: np.where(x > 0, x, 0.05 * x)),
    "ReLU": (G.ReLU, away, lambda x: (x + np.abs(x)) / 2.0),
    "Sigmoid": (G.Sigmoid, wide, sigmoid_ref),
    "Tanh": (G.Tanh, normal, lambda x: (np.exp(2 * x) - 1.0) / (np.exp(2 * x) + 1.0)),
}
UNARY_VARIANTS = {
    "ELU(1)": (lambda: G.ELU(1.0), away, lambda x: np.where(x > 0, x, np.exp(x) - 1.0)),
    "LeakyReLU(0.3)": (lambda: G.LeakyReLU(0.3), away, lambda x: np.where(x > 0, x, 0.3 * x)),
}


test_unary_gate, test_unary_gate_variant, test_unary_gate_on_0d_scalar = \
    unary_gate_tests(UNARY, UNARY_VARIANTS)


# ---- dropout ---------------------------------------------------------------------------------

@hsettings(20)
@given(shape=SHAPES, seed=SEEDS, p=st.sampled_from([0.0, 0.2, 0.5, 0.8]))
def test_dropout_gate_check(shape, seed, p):
    x = away(np.random.default_rng(seed), shape)
    gate = G.Dropout(p, seed=seed % 1000)
    out = np.asarray(gate.forward(x))
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1.0 - p), rtol=1e-15)
    if p == 0.0:
        assert kept.all()
    assert_gate_passes(check_gate(G.Dropout(p, seed=seed % 1000), [x]), [x])


def test_dropout_train_mode_zeroes_about_p_and_scales_survivors():
    p = 0.3
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=(200, 100))
    out = G.Dropout(p, seed=4).forward(x)
    zero = out == 0.0
    assert abs(zero.mean() - p) < 0.02   # 20000 draws: the std of the fraction is 0.003
    np.testing.assert_allclose(out[~zero], x[~zero] / (1.0 - p), rtol=1e-15)


def test_dropout_backward_uses_the_forward_mask():
    gate = G.Dropout(0.5, seed=9)
    x = np.ones((10, 10))
    out = gate.forward(x)
    up = np.random.default_rng(1).standard_normal((10, 10))
    (dx,) = gate.backward(up)
    np.testing.assert_array_equal(dx, up * out)  # out = mask / (1 - p) since x = 1


def test_dropout_eval_mode_is_identity():
    g = Graph()
    x = g.input("x")
    out = G.Sum()(G.Dropout(0.5, seed=1)(x) * g.const(np.arange(6.0)))
    value = np.linspace(-1.0, 1.0, 6)
    g.set_training(False)
    np.testing.assert_array_equal(g.forward(out, x=value), np.sum(value * np.arange(6.0)))
    g.backward(out)
    np.testing.assert_array_equal(x.grad, np.arange(6.0))
    g.set_training(True)
    train = g.forward(out)
    assert train != np.sum(value * np.arange(6.0))


def test_dropout_same_seed_same_mask_other_seed_other_mask():
    x = np.ones(1000)
    a = G.Dropout(0.5, seed=123).forward(x)
    b = G.Dropout(0.5, seed=123).forward(x)
    c = G.Dropout(0.5, seed=124).forward(x)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


def test_dropout_rejects_bad_probability():
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            G.Dropout(p)
