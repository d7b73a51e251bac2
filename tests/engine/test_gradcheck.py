"""The gradient-check library: it must pass correct gates, catch wrong backward passes, tell a
kink crossing from a bug, sample reproducibly, refuse float32 and freeze dropout's RNG."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import (ABS_FLOOR, H, CheckResult, check_gate, check_graph,
                               numerical_gradient, relative_error, sample_indices, summarize)
from bptrain.engine.graph import Gate, Graph
from conftest import assert_gate_passes, away_from_zero, sigmoid_ref


# ---- relative_error --------------------------------------------------------------------------

def test_relative_error_values():
    a = np.array([1.0, 0.0, -2.0, 3.0, 1e-3])
    n = np.array([1.1, 1e-3, -2.0, -3.0, 0.0])
    want = np.array([0.1 / 1.1, 1.0, 0.0, 2.0, 1.0])
    np.testing.assert_allclose(relative_error(a, n), want, rtol=1e-15)
    np.testing.assert_allclose(relative_error(n, a), want, rtol=1e-15)  # symmetric


def test_relative_error_zero_over_zero_is_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rel = relative_error(np.array([0.0, 0.0, 2.0]), np.array([0.0, -0.0, 2.0]))
    np.testing.assert_array_equal(rel, [0.0, 0.0, 0.0])


def test_relative_error_non_finite_is_infinite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rel = relative_error(np.array([np.nan, 1.0, np.inf, np.inf]),
                             np.array([1.0, np.nan, 1.0, np.inf]))
    assert np.all(np.isinf(rel))


class NanGate(Gate):
    def forward(self, x):
        return 2.0 * x

    def backward(self, upstream):
        return (upstream * np.nan,)


def test_nan_gradient_fails():
    (r,) = check_gate(NanGate(), [np.ones(3)])
    assert r.status == "fail" and not r.passed


def test_summarize_absolute_floor_and_failure():
    idx = np.arange(3)
    tiny = summarize("t", np.array([1e-12, 0.0, 5.0]), np.array([3e-12, 1e-13, 5.0]),
                     np.zeros(3, bool), idx, (3,), 1e-7)
    assert tiny.status == "pass" and tiny.max_rel_error == 0.0  # both tiny: below the floor
    assert 2e-12 < ABS_FLOOR
    bad = summarize("b", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.2, 3.0]),
                    np.zeros(3, bool), idx, (3,), 1e-7)
    assert bad.status == "fail"
    np.testing.assert_allclose(bad.max_rel_error, 0.2 / 2.2, rtol=1e-12)
    assert bad.worst == {"index": [1], "analytic": 2.0, "numeric": 2.2}
    assert bad.to_dict()["shape"] == [3]


# ---- catching wrong backward passes ---------------------------------------------------------

class WrongSigmoid(Gate):
    """Local gradient s instead of s (1 - s)."""

    def forward(self, x):
        self.out = sigmoid_ref(x)
        return self.out

    def backward(self, upstream):
        return (upstream * self.out,)


class RightSigmoid(WrongSigmoid):
    def backward(self, upstream):
        return (upstream * self.out * (1.0 - self.out),)


def test_wrong_sigmoid_is_caught_and_right_one_passes(rng):
    x = rng.standard_normal((4, 3))
    (bad,) = check_gate(WrongSigmoid(), [x])
    assert bad.status == "fail" and bad.max_rel_error > 0.1
    assert_gate_passes(check_gate(RightSigmoid(), [x]), [x])


def test_wrong_sigmoid_is_caught_in_a_graph(rng):
    g = Graph()
    w = g.param("w", rng.standard_normal(5))
    loss = G.Sum()(WrongSigmoid()(w) * g.const(rng.standard_normal(5)))
    g.forward(loss)
    (r,) = check_graph(g, loss)
    assert r.status == "fail"
    g2 = Graph()
    w2 = g2.param("w", w.value)
    loss2 = G.Sum()(RightSigmoid()(w2) * 3.0)
    g2.forward(loss2)
    (r2,) = check_graph(g2, loss2)
    assert r2.status == "pass" and r2.max_rel_error < 1e-7


class MatMulNoTranspose(G.MatMul):
    """dW = X @ upstream: the transpose of X forgotten (shapes work when X is square)."""

    def backward(self, upstream):
        return upstream @ self.W.T, self.X @ upstream


class MatMulWrongScale(G.MatMul):
    def backward(self, upstream):
        return upstream @ self.W.T, 2.0 * self.X.T @ upstream


class MatMulWrongSide(G.MatMul):
    """dX = upstream @ W instead of upstream @ W^T (shapes work when W is square)."""

    def backward(self, upstream):
        return upstream @ self.W, self.X.T @ upstream


class MatMulTransposedShape(G.MatMul):
    """dW = upstream^T X: the right numbers in the wrong (transposed) shape."""

    def backward(self, upstream):
        return upstream @ self.W.T, upstream.T @ self.X


def test_matmul_missing_transpose_is_caught(rng):
    X, W = rng.standard_normal((3, 3)), rng.standard_normal((3, 2))  # W not square
    dX, dW = check_gate(MatMulNoTranspose(), [X, W])
    assert dX.status == "pass"
    assert dW.status == "fail" and dW.max_rel_error > 1e-2


def test_matmul_wrong_scale_is_caught(rng):
    X, W = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    dX, dW = check_gate(MatMulWrongScale(), [X, W])
    assert dX.status == "pass"
    assert dW.status == "fail"
    np.testing.assert_allclose(dW.max_rel_error, 0.5, rtol=1e-6)  # |2n - n| / |2n|


def test_matmul_wrong_side_is_caught(rng):
    X, W = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    dX, dW = check_gate(MatMulWrongSide(), [X, W])
    assert dX.status == "fail" and dW.status == "pass"


def test_gradient_of_wrong_shape_is_a_failure(rng):
    X, W = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    dX, dW = check_gate(MatMulTransposedShape(), [X, W])
    assert dX.status == "pass"
    assert dW.status == "fail" and dW.checked == 0
    assert "(2, 3)" in dW.worst["error"] and "(3, 2)" in dW.worst["error"]


class WrongCount(Gate):
    def forward(self, x, y):
        return x * y

    def backward(self, upstream):
        return (upstream,)


def test_wrong_number_of_gradients_raises():
    with pytest.raises(ValueError, match="returned 1 gradients for 2 inputs"):
        check_gate(WrongCount(), [np.ones(2), np.ones(2)])


# ---- kinks -----------------------------------------------------------------------------------

def test_relu_within_h_of_zero_is_a_kink_not_a_failure():
    x = np.array([3e-6, 1.0, -2.0, -0.5])
    (r,) = check_gate(G.ReLU(), [x], h=1e-5)
    assert r.kinks == 1
    assert r.status == "kink" and r.passed
    assert r.max_rel_error < 1e-7   # the crossed entry is not counted
    (far,) = check_gate(G.ReLU(), [np.array([3e-3, 1.0, -2.0, -0.5])], h=1e-5)
    assert far.status == "pass" and far.kinks == 0


@pytest.mark.parametrize("make,inputs", [
    (G.Abs, lambda: [np.array([-4e-6, 2.0])]),
    (lambda: G.L1(0.5), lambda: [np.array([[5e-6, -1.0], [2.0, 3.0]])]),
    (G.Maximum, lambda: [np.array([1.0, 2.0]), np.array([1.0 + 2e-6, -1.0])]),
    (lambda: G.SVMHinge(1.0), lambda: [np.array([[1.0, 0.0 + 3e-6, -3.0]]), np.array([0])]),
], ids=["abs", "l1", "max", "svm"])
def test_other_kinked_gates_report_kinks(make, inputs):
    results = check_gate(make(), inputs())
    assert sum(r.kinks for r in results) >= 1
    assert all(r.passed for r in results)
    assert any(r.status == "kink" for r in results)


class BadReLU(G.ReLU):
    def backward(self, upstream):
        return (2.0 * upstream * self.mask,)


def test_kink_does_not_hide_a_wrong_gradient_elsewhere():
    (r,) = check_gate(BadReLU(), [np.array([3e-6, 1.0, -2.0])])
    assert r.kinks == 1 and r.status == "fail"


def test_kink_in_check_graph():
    g = Graph()
    w = g.param("w", [3e-6, 0.7, -1.2])
    loss = G.Sum()(G.ReLU()(w) * g.const([1.0, 2.0, 3.0]))
    g.forward(loss)
    (r,) = check_graph(g, loss)
    assert r.kinks == 1 and r.status == "kink"


# ---- sampling --------------------------------------------------------------------------------

def test_sample_indices():
    a = sample_indices(2000, 17, np.random.default_rng(3))
    b = sample_indices(2000, 17, np.random.default_rng(3))
    c = sample_indices(2000, 17, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 17 and len(set(a.tolist())) == 17
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 2000
    np.testing.assert_array_equal(sample_indices(10, 17, np.random.default_rng(0)), np.arange(10))
    np.testing.assert_array_equal(sample_indices(10, None, np.random.default_rng(0)),
                                  np.arange(10))


class SpyTanh(G.Tanh):
    """Records which entries of x differ from the original at each forward."""

    def __init__(self, x0):
        self.x0 = np.array(x0)
        self.touched: set[int] = set()

    def forward(self, x):
        self.touched.update(np.flatnonzero(x != self.x0).tolist())
        return super().forward(x)


def test_samples_checks_exactly_n_seeded_entries(rng):
    x = rng.standard_normal((50, 40))

    def run(seed):
        spy = SpyTanh(x)
        (r,) = check_gate(spy, [x], samples=23, seed=seed)
        assert r.checked == 23 and r.status == "pass"
        return spy.touched

    first, again, other = run(1), run(1), run(2)
    assert len(first) == 23
    assert first == again
    assert first != other


def test_check_graph_samples_each_parameter(rng):
    g = Graph()
    X = g.input("X", rng.standard_normal((6, 30)), requires_grad=False)
    W = g.param("W", rng.standard_normal((30, 20)))
    b = g.param("b", rng.standard_normal(20))
    loss = G.Sum()(G.Tanh()(G.Affine()(X, W, b)))
    g.forward(loss)
    first = check_graph(g, loss, samples=10, seed=5)
    again = check_graph(g, loss, samples=10, seed=5)
    assert [r.checked for r in first] == [10, 10]
    assert [r.to_dict() for r in first] == [r.to_dict() for r in again]
    assert all(r.status == "pass" for r in first)


# ---- check_graph -----------------------------------------------------------------------------

def test_check_graph_refuses_float32():
    g = Graph(dtype=np.float32)
    w = g.param("w", [1.0, 2.0])
    loss = G.Sum()(w * w)
    g.forward(loss)
    with pytest.raises(ValueError, match="float64"):
        check_graph(g, loss)


def test_check_graph_restores_values(rng):
    g = Graph()
    W0 = rng.standard_normal((3, 4))
    W = g.param("W", W0)
    x = g.input("x", rng.standard_normal((2, 3)))
    loss = G.Sum()(G.Sigmoid()(x @ W))
    value = float(g.forward(loss))
    results = check_graph(g, loss, wrt=[W, x])
    assert [r.name for r in results] == ["W", "x"]
    assert all(r.status == "pass" for r in results)
    np.testing.assert_array_equal(W.value, W0)
    assert float(loss.value) == value


def test_check_graph_skips_integer_inputs(rng):
    g = Graph()
    s = g.param("s", rng.standard_normal((4, 3)))
    y = g.input("y", np.array([0, 2, 1, 1]))
    loss = G.SoftmaxCrossEntropy()(s, y)
    g.forward(loss)
    results = check_graph(g, loss, wrt=[s, y])
    assert [r.name for r in results] == ["s"] and results[0].max_rel_error < 1e-7


def test_non_contiguous_arrays_are_perturbed_in_place(rng):
    # A transposed (Fortran-ordered) array: reshape(-1) is a copy, so perturbing it would
    # not move the array and every numeric gradient would be 0.
    A = rng.standard_normal((3, 4))
    W = rng.standard_normal((3, 2))
    Xf = np.asfortranarray(A.T)
    assert not Xf.flags.c_contiguous
    assert_gate_passes(check_gate(G.MatMul(), [Xf, W]), [Xf, W])
    g = Graph()
    X = g.input("X")
    Wn = g.param("W", W)
    loss = G.Sum()(G.Tanh()(X @ Wn))
    g.feed(X=A.T)
    g.forward(loss)
    results = check_graph(g, loss, wrt=[X, Wn])
    assert [r.status for r in results] == ["pass", "pass"]


def test_check_gate_is_not_swamped_by_rounding_of_a_long_sum(rng):
    # L = sum(out * R) over 4000 entries of size ~100 rounds at about eps * 3e5 = 7e-11;
    # divided by 2h that is ~1e-5 of noise on each numeric gradient. Differencing against
    # the unperturbed output leaves only the rounding of x + h itself (eps * 100 / h, 2e-9).
    x = 100.0 * rng.standard_normal(4000)
    (r,) = check_gate(G.Negate(), [x], samples=200, seed=1)
    assert r.status == "pass" and r.max_rel_error < 1e-7
    x2 = 100.0 * rng.standard_normal((40, 100))
    y2 = 100.0 * rng.standard_normal((40, 100))
    for r in check_gate(G.Add(), [x2, y2], samples=100):
        assert r.status == "pass" and r.max_rel_error < 1e-7


def test_numerical_gradient_of_known_function():
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    numeric, crossed = numerical_gradient(lambda: float(np.sum(x ** 3)), x, np.arange(4))
    np.testing.assert_allclose(numeric, 3 * x.ravel() ** 2, rtol=1e-9)
    assert not crossed.any()
    np.testing.assert_array_equal(x, [[0.5, -1.0], [2.0, 0.25]])  # restored
    assert H == 1e-5


# ---- dropout: RNG frozen between evaluations --------------------------------------------------

def test_dropout_check_passes_because_rng_is_frozen(rng):
    x = away_from_zero(rng, (8, 6))
    assert_gate_passes(check_gate(G.Dropout(0.5, seed=3), [x]), [x])

    # Without the freeze each evaluation draws a new mask: the numbers are noise.
    gate = G.Dropout(0.5, seed=3)
    up = rng.standard_normal(x.shape)
    xx = x.copy()
    mask_scale = gate.forward(xx) / xx
    numeric, _ = numerical_gradient(lambda: float(np.sum(gate.forward(xx) * up)), xx,
                                    np.arange(xx.size))
    assert np.max(relative_error((up * mask_scale).ravel(), numeric)) > 0.5


def test_dropout_network_passes_check_graph(rng):
    g = Graph()
    X = g.input("X", rng.standard_normal((5, 4)), requires_grad=False)
    W = g.param("W", rng.standard_normal((4, 6)))
    h = G.Dropout(0.4, seed=11)(G.Tanh()(X @ W))
    loss = G.Sum()(h * g.const(rng.standard_normal((5, 6))))
    g.forward(loss)
    (r,) = check_graph(g, loss)
    assert r.status == "pass" and r.max_rel_error < 1e-7
    assert isinstance(r, CheckResult)
