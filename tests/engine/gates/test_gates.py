"""Every gate of the library: forward values against independent NumPy formulas, and backward
against centered differences (check_gate, max relative error < 1e-7, float64, away from kinks).

Each gate name of `bptrain.engine.gates.__all__` must appear in one of the tables below;
`test_every_gate_is_covered` fails for a new gate without a test.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_gate
from bptrain.engine.graph import Graph
from conftest import assert_gate_passes, away_from_zero, hsettings, sigmoid_ref

SEEDS = st.integers(0, 2**32 - 1)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
PAIRS = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1,
                                          max_side=4)


def normal(rng, shape):
    return rng.standard_normal(shape)


def wide(rng, shape):
    # |x| <= 4 keeps sigmoid's slope above 0.017: a smaller gradient is swamped by the
    # rounding of the centered difference before it can meet a 1e-7 relative error.
    return rng.uniform(-4.0, 4.0, size=shape)


def away(rng, shape):
    return away_from_zero(rng, shape, 0.2, 2.0)


def positive(rng, shape):
    return rng.uniform(0.3, 3.0, size=shape)


# ---- elementwise unary gates: name -> (make gate, input domain, reference forward) ----------
UNARY = {
    "Abs": (G.Abs, away, lambda x: np.sqrt(x * x)),
    "ELU": (lambda: G.ELU(0.7), away, lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1.0))),
    "Exp": (G.Exp, normal, lambda x: np.e ** x),
    "LeakyReLU": (lambda: G.LeakyReLU(0.05), away, lambda x: np.where(x > 0, x, 0.05 * x)),
    "Log": (G.Log, positive, lambda x: np.log2(x) / np.log2(np.e)),
    "Negate": (G.Negate, normal, lambda x: 0.0 - x),
    "Power": (lambda: G.Power(3), away, lambda x: x * x * x),
    "ReLU": (G.ReLU, away, lambda x: (x + np.abs(x)) / 2.0),
    "Sigmoid": (G.Sigmoid, wide, sigmoid_ref),
    "Tanh": (G.Tanh, normal, lambda x: (np.exp(2 * x) - 1.0) / (np.exp(2 * x) + 1.0)),
}
# Further settings of gates that take them, checked the same way.
UNARY_VARIANTS = {
    "ELU(1)": (lambda: G.ELU(1.0), away, lambda x: np.where(x > 0, x, np.exp(x) - 1.0)),
    "LeakyReLU(0.3)": (lambda: G.LeakyReLU(0.3), away, lambda x: np.where(x > 0, x, 0.3 * x)),
    "Power(2.5)": (lambda: G.Power(2.5), positive, lambda x: np.sqrt(x) ** 5),
    "Power(-2)": (lambda: G.Power(-2), away, lambda x: 1.0 / (x * x)),
    "Power(0.5)": (lambda: G.Power(0.5), positive, np.sqrt),
}


def _not_near(x, y, gap=1e-3):
    return bool(np.all(np.abs(np.subtract(x, y)) > gap))


def _max_min_inputs(rng, sx, sy):
    """x and y whose broadcast differences stay away from the tie (the kink)."""
    while True:
        x, y = rng.standard_normal(sx), rng.standard_normal(sy)
        if _not_near(x, y):
            return x, y


# ---- elementwise binary gates: name -> (make gate, inputs maker, reference forward) --------
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


def _check_elementwise_unary(make, domain, reference, shape, seed):
    rng = np.random.default_rng(seed)
    x = domain(rng, shape)
    gate = make()
    out = gate.forward(x.copy())
    assert np.shape(out) == x.shape
    np.testing.assert_allclose(out, reference(x), rtol=1e-12, atol=1e-14)
    assert_gate_passes(check_gate(make(), [x], seed=seed % 1000), [x])


@pytest.mark.parametrize("name", sorted(UNARY))
@hsettings(20)
@given(shape=SHAPES, seed=SEEDS)
def test_unary_gate(name, shape, seed):
    _check_elementwise_unary(*UNARY[name], shape, seed)


@pytest.mark.parametrize("name", sorted(UNARY_VARIANTS))
@hsettings(10)
@given(shape=SHAPES, seed=SEEDS)
def test_unary_gate_variant(name, shape, seed):
    _check_elementwise_unary(*UNARY_VARIANTS[name], shape, seed)


@pytest.mark.parametrize("name", sorted(UNARY) + sorted(UNARY_VARIANTS))
def test_unary_gate_on_0d_scalar(name):
    make, domain, reference = {**UNARY, **UNARY_VARIANTS}[name]
    x = domain(np.random.default_rng(5), ())
    out = make().forward(x)
    assert np.shape(out) == ()
    np.testing.assert_allclose(out, reference(x), rtol=1e-12)
    assert_gate_passes(check_gate(make(), [x]), [x])


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


# ---- losses ----------------------------------------------------------------------------------

def softmax_ce_reference(scores, labels):
    """The direct formula: -mean log(e^{s_y} / sum_j e^{s_j}), no shift (moderate scores)."""
    e = np.exp(scores)
    p = e / e.sum(axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(labels)), labels]))


def svm_reference(scores, labels, margin=1.0):
    """Loop-free: explicit per-class hinge with np.where masking out the true class."""
    n, c = scores.shape
    true_mask = np.arange(c)[None, :] == labels[:, None]
    correct = np.take_along_axis(scores, labels[:, None], axis=1)
    hinge = np.where(true_mask, 0.0, np.maximum(0.0, scores - correct + margin))
    return hinge.sum(axis=1).mean()


def _svm_away_from_kinks(rng, n, c, margin):
    while True:
        s = rng.standard_normal((n, c))
        y = rng.integers(0, c, size=n)
        m = s - np.take_along_axis(s, y[:, None], axis=1) + margin
        m[np.arange(n), y] = 1.0
        if np.all(np.abs(m) > 1e-3):
            return s, y


@pytest.mark.parametrize("n,c", [(1, 2), (4, 5), (7, 3), (3, 10)])
def test_softmax_cross_entropy_gate(n, c):
    rng = np.random.default_rng(n * c)
    s, y = 2.0 * rng.standard_normal((n, c)), rng.integers(0, c, size=n)
    loss = G.SoftmaxCrossEntropy().forward(s, y)
    np.testing.assert_allclose(loss, softmax_ce_reference(s, y), rtol=1e-12)
    assert_gate_passes(check_gate(G.SoftmaxCrossEntropy(), [s, y]), [s, y])


def test_softmax_cross_entropy_gradient_formula():
    s = np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]])
    y = np.array([1, 0])
    gate = G.SoftmaxCrossEntropy()
    gate.forward(s, y)
    ds, dy = gate.backward(np.array(3.0))
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    p[[0, 1], [1, 0]] -= 1.0
    np.testing.assert_allclose(ds, 3.0 * p / 2, rtol=1e-12)
    assert dy is None


def test_softmax_cross_entropy_is_stable_for_huge_scores():
    s = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0], [1000.0, 1000.0, 1000.0]])
    y = np.array([2, 0, 1])
    gate = G.SoftmaxCrossEntropy()
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss = gate.forward(s, y)
        ds, _ = gate.backward(np.array(1.0))
    # by hand: log(e^-2 + e^-1 + 1), 2000 + log(1 + e^-1000 + e^-2000) = 2000, log 3
    hand = (np.log(np.exp(-2.0) + np.exp(-1.0) + 1.0) + 2000.0 + np.log(3.0)) / 3
    ref = np.mean(np.logaddexp.reduce(s, axis=1) - s[np.arange(3), y])
    assert np.isfinite(loss) and np.all(np.isfinite(ds))
    np.testing.assert_allclose(loss, hand, rtol=1e-12)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    probs = np.exp(s - np.logaddexp.reduce(s, axis=1, keepdims=True))
    probs[np.arange(3), y] -= 1.0
    np.testing.assert_allclose(ds, probs / 3, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ds[1], [-1 / 3, 0.0, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(ds.sum(axis=1), 0.0, atol=1e-15)


def test_svm_hinge_hand_example():
    # CS231n's cat and frog rows: 2.9 and 12.9, averaged over the batch.
    s = np.array([[3.2, 5.1, -1.7], [2.2, 2.5, -3.1]])
    y = np.array([0, 2])
    gate = G.SVMHinge()
    loss = gate.forward(s, y)
    np.testing.assert_allclose(loss, 7.9, rtol=1e-12)
    np.testing.assert_allclose(svm_reference(s, y), 7.9, rtol=1e-12)
    ds, dy = gate.backward(np.array(1.0))
    np.testing.assert_allclose(ds, np.array([[-1.0, 1.0, 0.0], [1.0, 1.0, -2.0]]) / 2,
                               rtol=1e-12)
    assert dy is None


@pytest.mark.parametrize("margin", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("n,c", [(1, 2), (5, 4), (8, 3)])
def test_svm_hinge_gate(n, c, margin):
    rng = np.random.default_rng(n * 10 + c)
    s, y = _svm_away_from_kinks(rng, n, c, margin)
    loss = G.SVMHinge(margin).forward(s, y)
    np.testing.assert_allclose(loss, svm_reference(s, y, margin), rtol=1e-12, atol=1e-15)
    assert_gate_passes(check_gate(G.SVMHinge(margin), [s, y]), [s, y])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(4, 3), (6,), (1, 1)])
def test_mse_gate(shape, reduction):
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    gate = G.MSE(reduction)
    loss = gate.forward(pred, target)
    total = np.square(pred - target).sum()        # note 004
    want = total if reduction == "sum" else total / shape[0]
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    dpred, dtarget = gate.backward(np.array(1.0))
    scale = 1.0 if reduction == "sum" else 1.0 / shape[0]
    np.testing.assert_allclose(dpred, 2.0 * (pred - target) * scale, rtol=1e-12)
    np.testing.assert_allclose(dtarget, -2.0 * (pred - target) * scale, rtol=1e-12)
    assert_gate_passes(check_gate(G.MSE(reduction), [pred, target]), [pred, target])


def test_mse_sum_on_0d():
    pred, target = np.array(1.5), np.array(-0.5)
    assert G.MSE("sum").forward(pred, target) == 4.0
    assert_gate_passes(check_gate(G.MSE("sum"), [pred, target]), [pred, target])


def test_mse_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        G.MSE("median")


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


# ---- coverage --------------------------------------------------------------------------------

COVERED = (set(UNARY) | set(BINARY) | {"Dropout", "Sum", "Mean", "MatMul", "Affine", "BiasAdd",
                                      "SoftmaxCrossEntropy", "SVMHinge", "MSE", "L1", "L2"})


def test_every_gate_is_covered():
    exported = set(G.__all__)
    # gate families with a test module of their own elsewhere (tests/engine/gates/, tests/net/)
    own = " ".join(p.read_text() for p in Path(__file__).resolve().parents[2].rglob("test_*.py"))
    covered = COVERED | {name for name in exported if re.search(rf"\b{name}\b", own)}
    assert exported - covered == set(), f"gates without a test: {sorted(exported - covered)}"
    assert COVERED - exported == set(), f"tests for unknown gates: {sorted(COVERED - exported)}"
    for name in exported:
        assert isinstance(getattr(G, name), type)
