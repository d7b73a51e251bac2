"""bptrain/engine/gates/arithmetic.py: elementwise arithmetic (broadcasting) and reductions;
forward against independent formulas, backward against centered differences."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_gate
from conftest import assert_gate_passes, hsettings
from gate_helpers import PAIRS, SEEDS, SHAPES, away, normal, positive, unary_gate_tests

UNARY = {
    "Abs": (G.Abs, away, lambda x: np.sqrt(x * x)),
    "Exp": (G.Exp, normal, lambda x: np.e ** x),
    "Log": (G.Log, positive, lambda x: np.log2(x) / np.log2(np.e)),
    "Negate": (G.Negate, normal, lambda x: 0.0 - x),
    "Power": (lambda: G.Power(3), away, lambda x: x * x * x),
}
UNARY_VARIANTS = {
    "Power(2.5)": (lambda: G.Power(2.5), positive, lambda x: np.sqrt(x) ** 5),
    "Power(-2)": (lambda: G.Power(-2), away, lambda x: 1.0 / (x * x)),
    "Power(0.5)": (lambda: G.Power(0.5), positive, np.sqrt),
}


test_unary_gate, test_unary_gate_variant, test_unary_gate_on_0d_scalar = \
    unary_gate_tests(UNARY, UNARY_VARIANTS)


# ---- elementwise binary gates: name -> (make gate, inputs maker, reference forward) --------
def _not_near(x, y, gap=1e-3):
    return bool(np.all(np.abs(np.subtract(x, y)) > gap))


def _max_min_inputs(rng, sx, sy):
    """x and y whose broadcast differences stay away from the tie (the kink)."""
    while True:
        x, y = rng.standard_normal(sx), rng.standard_normal(sy)
        if _not_near(x, y):
            return x, y


BINARY = {
    "Add": (G.Add, lambda r, sx, sy: (normal(r, sx), normal(r, sy)), lambda x, y: x + y),
    "Subtract": (G.Subtract, lambda r, sx, sy: (normal(r, sx), normal(r, sy)),
                 lambda x, y: x + (-1.0) * y),
    "Multiply": (G.Multiply, lambda r, sx, sy: (normal(r, sx), normal(r, sy)),
                 lambda x, y: np.exp(np.log(np.abs(x)) + np.log(np.abs(y))) * np.sign(x * y)),
    "Divide": (G.Divide, lambda r, sx, sy: (normal(r, sx), away(r, sy)), lambda x, y: x * (1 / y)),
    "Maximum": (G.Maximum, _max_min_inputs, lambda x, y: np.where(x >= y, x, y + 0 * x)),
    "Minimum": (G.Minimum, _max_min_inputs, lambda x, y: np.where(x <= y, x, y + 0 * x)),
}


def _check_elementwise_binary(name, sx, sy, seed):
    make, inputs, reference = BINARY[name]
    rng = np.random.default_rng(seed)
    x, y = inputs(rng, sx, sy)
    out = make().forward(x, y)
    assert np.shape(out) == np.broadcast_shapes(sx, sy)
    np.testing.assert_allclose(out, reference(x, y), rtol=1e-12, atol=1e-14)
    assert_gate_passes(check_gate(make(), [x, y], seed=seed % 1000), [x, y])


@pytest.mark.parametrize("name", sorted(BINARY))
@hsettings(20)
@given(shapes=PAIRS, seed=SEEDS)
def test_binary_gate_broadcasting(name, shapes, seed):
    sx, sy = shapes.input_shapes
    _check_elementwise_binary(name, sx, sy, seed)


@pytest.mark.parametrize("sx,sy", [((), ()), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)),
                                   ((2, 3), ()), ((2, 1, 3), (4, 1))],
                         ids=["0d", "row", "outer", "scalar_x", "scalar_y", "3d"])
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_gate_fixed_shapes(name, sx, sy):
    _check_elementwise_binary(name, sx, sy, seed=17)


# ---- reductions ------------------------------------------------------------------------------

@st.composite
def shape_and_axis(draw):
    shape = draw(SHAPES)
    ndim = len(shape)
    choices = [st.none()]
    if ndim:
        choices += [st.integers(-ndim, ndim - 1), hnp.valid_tuple_axes(ndim, min_size=1)]
    return shape, draw(st.one_of(*choices))


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else axis
    return tuple(a % ndim for a in axis)


def _sum_reference(x, axis):
    """Sum by moving the reduced axes last and flattening them: a different route."""
    axes = _axes(axis, x.ndim)
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + list(axes))
    flat = moved.reshape([x.shape[a] for a in keep] + [-1])
    total = np.zeros(flat.shape[:-1])
    for k in range(flat.shape[-1]):
        total = total + flat[..., k]
    return total, flat.shape[-1]


@pytest.mark.parametrize("name", ["Sum", "Mean"])
@hsettings(20)
@given(case=shape_and_axis(), seed=SEEDS)
def test_reduction_gate(name, case, seed):
    shape, axis = case
    x = np.random.default_rng(seed).standard_normal(shape)
    gate = getattr(G, name)(axis=axis)
    out = gate.forward(x)
    total, count = _sum_reference(x, axis)
    want = total if name == "Sum" else total / count
    assert np.shape(out) == np.shape(want)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert_gate_passes(check_gate(getattr(G, name)(axis=axis), [x]), [x])


@pytest.mark.parametrize("name", ["Sum", "Mean"])
def test_reduction_gate_0d(name):
    x = np.array(-1.25)
    gate = getattr(G, name)()
    assert gate.forward(x) == -1.25
    assert_gate_passes(check_gate(getattr(G, name)(), [x]), [x])


def test_mean_backward_hand_values():
    gate = G.Mean(axis=1)
    gate.forward(np.zeros((2, 4)))
    (dx,) = gate.backward(np.array([4.0, -8.0]))
    np.testing.assert_array_equal(dx, [[1.0] * 4, [-2.0] * 4])
