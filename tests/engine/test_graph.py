"""The Graph engine: worked examples of the notes, fan-out, broadcasting, operators, errors,
and a two-layer network against check_graph and a hand-written flat NumPy implementation."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_graph
from bptrain.engine.graph import Graph, Node, unbroadcast
from conftest import Counting, hsettings, sigmoid_ref

EXACT = 1e-12


def close(a, b, tol=EXACT):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=tol, atol=tol)


# ---- 1. worked examples of ../shared/README.md -----------------------------------------------

def test_add_mul_example_x_plus_y_times_z():
    g = Graph()
    x, y, z = g.inputs("x y z")
    f = (x + y) * z
    value = g.forward(f, x=-2.0, y=5.0, z=-4.0)
    g.backward(f)
    close(value, -12.0)
    close(x.grad, -4.0)
    close(y.grad, -4.0)
    close(z.grad, 3.0)
    assert np.shape(x.grad) == np.shape(y.grad) == np.shape(z.grad) == ()


W_NEURON = [2.0, -3.0, -3.0]
X_NEURON = [-1.0, -2.0]


def neuron_flat(w, x):
    """The flat code of note 001: forward, then backward by hand, scalar Python floats."""
    dot = w[0] * x[0] + w[1] * x[1] + w[2]
    f = 1.0 / (1.0 + math.exp(-dot))
    ddot = (1.0 - f) * f
    dx = [w[0] * ddot, w[1] * ddot]
    dw = [x[0] * ddot, x[1] * ddot, 1.0 * ddot]
    return f, dw, dx


def _neuron_sigmoid_gate(w0, x0, w1, x1, w2):
    return G.Sigmoid()(w0 * x0 + w1 * x1 + w2)


def _neuron_primitives(w0, x0, w1, x1, w2):
    # 1 / (1 + exp(-(...))): reflected add and divide, negate, and the Exp gate.
    return 1 / (1 + G.Exp()(-(w0 * x0 + w1 * x1 + w2)))


def test_neuron_flat_formula_matches_course_numbers():
    f, dw, dx = neuron_flat(W_NEURON, X_NEURON)
    assert abs(f - 0.7310585786) < 1e-10
    for got, want in zip(dw + dx, [-0.19661193, -0.39322387, 0.19661193,
                                   0.39322387, -0.58983580]):
        assert abs(got - want) < 1e-8


@pytest.mark.parametrize("build", [_neuron_sigmoid_gate, _neuron_primitives],
                         ids=["sigmoid_gate", "primitive_gates"])
def test_sigmoid_neuron(build):
    g = Graph()
    w0, x0, w1, x1, w2 = g.inputs("w0 x0 w1 x1 w2")
    f = build(w0, x0, w1, x1, w2)
    value = g.forward(f, w0=W_NEURON[0], w1=W_NEURON[1], w2=W_NEURON[2],
                      x0=X_NEURON[0], x1=X_NEURON[1])
    g.backward(f)
    f_ref, dw, dx = neuron_flat(W_NEURON, X_NEURON)
    close(value, f_ref)
    for node, want in zip([w0, w1, w2, x0, x1], dw + dx):
        close(node.grad, want)


def test_matmul_backward_rules(rng):
    X = rng.standard_normal((4, 3))
    W = rng.standard_normal((3, 2))
    R = rng.standard_normal((4, 2))  # the upstream dL/dY
    g = Graph()
    Xn, Wn = g.input("X"), g.param("W", W)
    Y = Xn @ Wn
    loss = G.Sum()(Y * g.const(R))
    g.forward(loss, X=X)
    g.backward(loss)
    close(Y.value, X @ W)
    close(Y.grad, R)
    assert Xn.grad.shape == X.shape and Wn.grad.shape == W.shape
    close(Xn.grad, R @ W.T)   # dX = dY W^T
    close(Wn.grad, X.T @ R)   # dW = X^T dY


def test_gate_pattern_add_distributes_same_upstream():
    gate = G.Add()
    gate.forward(np.array(3.0), np.array(-7.0))
    up = np.array([2.5])
    dx, dy = gate.backward(up)
    close(dx, up)
    close(dy, up)
    assert gate.pattern == "distributor"


def test_gate_pattern_mul_swaps_inputs():
    g = Graph()
    x, y = g.inputs("x y")
    f = (x * y) * 2.0
    g.forward(f, x=3.0, y=-4.0)
    g.backward(f)
    close(x.grad, 2.0 * -4.0)  # upstream times the *other* input
    close(y.grad, 2.0 * 3.0)
    assert G.Multiply.pattern == "swap multiplier"


@pytest.mark.parametrize("xv,yv,dx,dy", [(4.0, 2.0, 5.0, 0.0), (1.0, 6.0, 0.0, 5.0)])
def test_gate_pattern_max_routes_to_larger(xv, yv, dx, dy):
    g = Graph()
    x, y = g.inputs("x y")
    f = G.Maximum()(x, y) * 5.0
    close(g.forward(f, x=xv, y=yv), 5.0 * max(xv, yv))
    g.backward(f)
    close(x.grad, dx)
    close(y.grad, dy)
    assert G.Maximum.pattern == "router"


def test_gate_pattern_max_routes_elementwise():
    g = Graph()
    x, y = g.inputs("x y")
    f = G.Sum()(G.Maximum()(x, y) * g.const([1.0, 2.0, 3.0]))
    g.forward(f, x=[1.0, 5.0, -2.0], y=[3.0, 0.0, -1.0])
    g.backward(f)
    close(x.grad, [0.0, 2.0, 0.0])
    close(y.grad, [1.0, 0.0, 3.0])


def test_gate_pattern_copy_adds():
    g = Graph()
    x, y, z = g.inputs("x y z")
    f = x * y + (x + z)  # x feeds two gates
    g.forward(f, x=2.0, y=-3.0, z=7.0)
    g.backward(f)
    close(x.grad, -3.0 + 1.0)
    close(y.grad, 2.0)
    close(z.grad, 1.0)
    assert sorted(g.fan_out(f)[x.name]) == sorted(n.name for n in g.nodes
                                                   if n.gate is not None and x in n.inputs)


# ---- 2. fan-out accumulation and what gets backward work -----------------------------------

def test_fan_out_a_plus_a_twice_gives_four():
    g = Graph()
    a = g.param("a", 1.5)
    b = a + a
    c = b + b
    close(g.forward(c), 6.0)
    g.backward(c)
    close(a.grad, 4.0)
    close(b.grad, 2.0)


def test_weight_in_matmul_and_l2_gets_sum_of_both(rng):
    X = rng.standard_normal((5, 3))
    W = rng.standard_normal((3, 4))
    R = rng.standard_normal((5, 4))
    lam = 0.3
    g = Graph()
    Xn, Wn = g.input("X", X, requires_grad=False), g.param("W", W)
    loss = G.Sum()((Xn @ Wn) * g.const(R)) + G.L2(lam)(Wn)
    close(g.forward(loss), np.sum((X @ W) * R) + 0.5 * lam * np.sum(W * W))
    g.backward(loss)
    close(Wn.grad, X.T @ R + lam * W)
    assert len(g.fan_out(loss)["W"]) == 2


@pytest.mark.parametrize("matmul_first", [True, False])
def test_fan_out_never_writes_into_a_handed_through_upstream(rng, matmul_first):
    # X feeds a matmul (a fresh gradient array) and an add (which hands its upstream through
    # unchanged): accumulating X's gradient in place must not touch the add node's gradient.
    X, W = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    C, R1, R2 = (rng.standard_normal((3, 4)), rng.standard_normal((3, 2)),
                 rng.standard_normal((3, 4)))
    g = Graph()
    Xn, Wn = g.param("X", X), g.param("W", W)
    Y = Xn @ Wn
    Z = Xn + g.const(C)
    a, b = G.Sum()(Y * g.const(R1)), G.Sum()(Z * g.const(R2))
    loss = a + b if matmul_first else b + a
    g.forward(loss)
    g.backward(loss)
    close(Z.grad, R2)
    close(Y.grad, R1)
    close(Xn.grad, R1 @ W.T + R2)
    close(Wn.grad, X.T @ R1)
    g.backward(loss)
    close(Xn.grad, R1 @ W.T + R2)
    close(Z.grad, R2)


def test_weight_shared_by_two_matmuls_and_l2(rng):
    X1, X2 = rng.standard_normal((5, 3)), rng.standard_normal((2, 3))
    W = rng.standard_normal((3, 4))
    R1, R2 = rng.standard_normal((5, 4)), rng.standard_normal((2, 4))
    g = Graph()
    Wn = g.param("W", W)
    x1, x2 = g.input("x1", X1, requires_grad=False), g.input("x2", X2, requires_grad=False)
    y1, y2 = x1 @ Wn, x2 @ Wn
    loss = G.Sum()(y1 * g.const(R1)) + G.Sum()(y2 * g.const(R2)) + G.L2(0.5)(Wn)
    g.forward(loss)
    g.backward(loss)
    first = X1.T @ R1
    close(Wn.grad, first + X2.T @ R2 + 0.5 * W)
    close(y1.grad, R1)
    close(y2.grad, R2)


def test_backward_twice_gives_same_gradients(rng):
    g = Graph()
    a = g.param("a", rng.standard_normal(3))
    w = g.param("w", rng.standard_normal(3))
    b = a * w + a        # a fans out
    c = G.Sum()(b * b)
    g.forward(c)
    g.backward(c)
    first = {n.name: np.array(n.grad) for n in (a, w, b)}
    g.backward(c)
    for n in (a, w, b):
        close(n.grad, first[n.name])
    # and the first pass was right: dc/da = 2b (w + 1)
    close(first["a"], 2 * b.value * (w.value + 1))


def test_deep_chain_of_5000_gates_no_recursion_error():
    depth = 5000
    assert depth > sys.getrecursionlimit()
    g = Graph()
    x = g.param("x", 0.7)
    h = x
    for _ in range(depth):
        h = h * 1.0001
    value = g.forward(h)
    g.backward(h)
    factor = 1.0001 ** depth
    close(value, 0.7 * factor, tol=1e-9)
    close(x.grad, factor, tol=1e-9)


def test_node_not_leading_to_output_gets_no_grad_and_no_backward():
    g = Graph()
    a = g.param("a", [1.0, 2.0])
    dead_gate = Counting()
    dead = dead_gate(a)                 # a branch the output does not use
    live_gate = Counting()
    out = G.Sum()(live_gate(a) * 3.0)
    g.forward(out)
    g.backward(out)
    close(a.grad, [6.0, 6.0])
    assert dead.grad is None
    assert dead_gate.forward_calls == 0 and dead_gate.backward_calls == 0
    assert live_gate.forward_calls == 1 and live_gate.backward_calls == 1


def test_node_without_gradient_need_gets_no_backward_call():
    g = Graph()
    a = g.param("a", [1.0, 2.0])
    const_gate = Counting()
    c = const_gate(g.const([3.0, 4.0]))   # depends on nothing that wants a gradient
    out = G.Sum()(a * c)
    close(g.forward(out), 1.0 * 6.0 + 2.0 * 8.0)
    g.backward(out)
    close(a.grad, [6.0, 8.0])
    assert const_gate.forward_calls == 1 and const_gate.backward_calls == 0
    assert c.grad is None


class SpyMatMul(G.MatMul):
    def backward(self, upstream, needs_input_grad):
        self.needs_input_grad = needs_input_grad  # what the graph handed over
        self.returned = super().backward(upstream, needs_input_grad)
        return self.returned


def test_input_without_requires_grad_gets_none_and_matmul_skips_dx(rng):
    X = rng.standard_normal((4, 3))
    W = rng.standard_normal((3, 2))
    g = Graph()
    Xn = g.input("X", requires_grad=False)
    Wn = g.param("W", W)
    spy = SpyMatMul()
    loss = G.Sum()(spy(Xn, Wn))
    g.forward(loss, X=X)
    g.backward(loss)
    assert Xn.grad is None
    assert tuple(spy.needs_input_grad) == (False, True)
    assert spy.returned[0] is None
    close(Wn.grad, X.T @ np.ones((4, 2)))


def test_const_gets_no_gradient():
    g = Graph()
    a = g.param("a", 2.0)
    k = g.const(5.0, name="k")
    f = a * k
    g.forward(f)
    g.backward(f)
    close(a.grad, 5.0)
    assert k.grad is None


def test_gate_instance_reused_in_one_graph_is_refused():
    # A gate keeps its last forward's values: reusing it would give the first node the
    # second node's saved state and silently wrong gradients.
    g = Graph()
    a, b = g.param("a", 1.0), g.param("b", -2.0)
    s = G.Sigmoid()
    s(a)
    with pytest.raises(ValueError, match="already applied"):
        s(b)


def test_two_uses_of_a_stateful_gate_each_get_their_own_gradient():
    g = Graph()
    a, b = g.param("a", [1.0, -2.0]), g.param("b", [3.0, 0.5])
    loss = G.Sum()(G.Sigmoid()(a) * 2.0 + G.Sigmoid()(b))
    g.forward(loss)
    g.backward(loss)
    sa, sb = sigmoid_ref(a.value), sigmoid_ref(b.value)
    close(a.grad, 2.0 * sa * (1 - sa))
    close(b.grad, sb * (1 - sb))


def test_eval_mode_reaches_gates_added_after_set_training():
    g = Graph()
    g.set_training(False)
    x = g.input("x")
    d = G.Dropout(0.5, seed=0)(x)
    value = np.arange(1.0, 9.0)
    close(g.forward(d, x=value), value)
    g.set_training(True)
    out = g.forward(d, x=value)
    assert np.any(out == 0.0)


# ---- 3. broadcasting -------------------------------------------------------------------------

def test_bias_added_to_batch_gets_batch_sum(rng):
    N, H = 5, 3
    X, b, R = rng.standard_normal((N, H)), rng.standard_normal(H), rng.standard_normal((N, H))
    g = Graph()
    Xn, bn = g.input("X", X), g.param("b", b)
    loss = G.Sum()((Xn + bn) * g.const(R))
    close(g.forward(loss), np.sum((X + b) * R))
    g.backward(loss)
    assert bn.grad.shape == (H,)
    close(bn.grad, R.sum(axis=0))
    close(Xn.grad, R)


def test_column_and_scalar_broadcast_inputs_get_reduced_gradients(rng):
    N, H = 4, 3
    X, col, R = rng.standard_normal((N, H)), rng.standard_normal((N, 1)), rng.standard_normal((N, H))
    g = Graph()
    Xn, cn, sn = g.input("X", X), g.param("col", col), g.param("s", 1.7)
    loss = G.Sum()((Xn * cn - sn) * g.const(R))
    close(g.forward(loss), np.sum((X * col - 1.7) * R))
    g.backward(loss)
    assert cn.grad.shape == (N, 1)
    assert np.shape(sn.grad) == ()
    close(cn.grad, np.sum(R * X, axis=1, keepdims=True))
    close(sn.grad, -R.sum())
    close(Xn.grad, R * col)


@pytest.mark.parametrize("grad_shape,shape,reference", [
    ((3, 4), (4,), lambda g: g.sum(axis=0)),
    ((3, 4), (3, 1), lambda g: g.sum(axis=1, keepdims=True)),
    ((3, 4), (1, 4), lambda g: g.sum(axis=0, keepdims=True)),
    ((2, 3, 4), (3, 1), lambda g: g.sum(axis=(0, 2)).reshape(3, 1)),
    ((2, 3, 4), (), lambda g: g.sum()),
    ((2, 3, 4), (1, 1, 1), lambda g: np.full((1, 1, 1), g.sum())),
    ((2, 1, 4), (1, 4), lambda g: g.sum(axis=0)),
])
def test_unbroadcast_examples(grad_shape, shape, reference):
    grad = np.arange(np.prod(grad_shape), dtype=np.float64).reshape(grad_shape) - 3.5
    out = unbroadcast(grad, shape)
    assert out.shape == shape
    close(out, reference(grad))


def test_unbroadcast_adds_missing_leading_axes():
    out = unbroadcast(np.array([1.0, 2.0, 3.0]), (1, 3))
    assert out.shape == (1, 3)
    close(out, [[1.0, 2.0, 3.0]])
    close(unbroadcast(np.array(4.0), (1, 1)), [[4.0]])


@pytest.mark.parametrize("grad_shape,shape", [((2, 3), (3, 2)), ((6,), (2, 3)), ((3,), (2, 3)),
                                              ((4, 3), (2, 3))])
def test_unbroadcast_refuses_shapes_broadcasting_cannot_explain(grad_shape, shape):
    # e.g. a transposed gradient of the same size must not be silently reshaped
    with pytest.raises(ValueError, match="does not fit"):
        unbroadcast(np.zeros(grad_shape), shape)


class TransposedGradMatMul(G.MatMul):
    def backward(self, upstream):
        return upstream @ self.W.T, upstream.T @ self.X   # dW of shape (M, D), not (D, M)


def test_graph_refuses_gradient_of_wrong_shape(rng):
    g = Graph()
    X = g.input("X", rng.standard_normal((4, 3)), requires_grad=False)
    W = g.param("W", rng.standard_normal((3, 2)))
    loss = G.Sum()(TransposedGradMatMul()(X, W))
    g.forward(loss)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        g.backward(loss)


def test_unbroadcast_same_shape_is_identity():
    grad = np.array([[1.0, -2.0]])
    assert unbroadcast(grad, (1, 2)) is grad


@hsettings(30)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_unbroadcast_is_adjoint_of_broadcast(data, seed):
    # <unbroadcast(g), v> == <g, broadcast_to(v)> for every v: unbroadcast is broadcasting's
    # transpose, which is exactly what the chain rule needs.
    big = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    # a shape that broadcasts *to* big: drop some leading axes, set some others to 1
    drop = data.draw(st.integers(0, len(big)))
    small = tuple(1 if data.draw(st.booleans()) else n for n in big[drop:])
    rng = np.random.default_rng(seed)
    grad, v = rng.standard_normal(big), rng.standard_normal(small)
    out = unbroadcast(grad, small)
    assert out.shape == small
    close(np.sum(out * v), np.sum(grad * np.broadcast_to(v, big)), tol=1e-10)


# ---- 6. a two-layer net: check_graph and a flat NumPy implementation -----------------------

def _two_layer_data(seed=7, N=6, D=5, H=8, C=4):
    rng = np.random.default_rng(seed)
    return dict(X=rng.standard_normal((N, D)), y=rng.integers(0, C, size=N),
                W1=0.5 * rng.standard_normal((D, H)), b1=0.1 * rng.standard_normal(H),
                W2=0.5 * rng.standard_normal((H, C)), b2=0.1 * rng.standard_normal(C))


def _two_layer_graph(d, lam):
    g = Graph()
    X = g.input("X", requires_grad=False)
    y = g.input("y", requires_grad=False)
    W1, b1 = g.param("W1", d["W1"]), g.param("b1", d["b1"])
    W2, b2 = g.param("W2", d["W2"]), g.param("b2", d["b2"])
    hidden = G.ReLU()(G.Affine()(X, W1, b1))
    scores = G.Affine()(hidden, W2, b2)
    loss = G.SoftmaxCrossEntropy()(scores, y) + G.L2(lam)(W1, W2)
    g.feed(X=d["X"], y=d["y"])
    return g, loss


def _two_layer_flat(d, lam):
    """Forward and backward by hand, CS231n style, no graph."""
    X, y, W1, b1, W2, b2 = (d[k] for k in ("X", "y", "W1", "b1", "W2", "b2"))
    N = X.shape[0]
    h_pre = X @ W1 + b1
    h = np.maximum(h_pre, 0.0)
    s = h @ W2 + b2
    log_z = np.log(np.sum(np.exp(s - s.max(axis=1, keepdims=True)), axis=1)) + s.max(axis=1)
    data_loss = np.mean(log_z - s[np.arange(N), y])
    loss = data_loss + 0.5 * lam * (np.sum(W1 ** 2) + np.sum(W2 ** 2))
    probs = np.exp(s - log_z[:, None])
    ds = probs.copy()
    ds[np.arange(N), y] -= 1.0
    ds /= N
    grads = {"W2": h.T @ ds + lam * W2, "b2": ds.sum(axis=0)}
    dh = ds @ W2.T
    dh[h_pre <= 0] = 0.0
    grads["W1"] = X.T @ dh + lam * W1
    grads["b1"] = dh.sum(axis=0)
    return loss, grads, h_pre


def test_two_layer_net_passes_check_graph():
    d, lam = _two_layer_data(), 0.05
    _, _, h_pre = _two_layer_flat(d, lam)
    assert np.min(np.abs(h_pre)) > 1e-3  # the data keeps every ReLU away from its kink
    g, loss = _two_layer_graph(d, lam)
    results = check_graph(g, loss, tol=1e-6)
    assert [r.name for r in results] == ["W1", "b1", "W2", "b2"]
    for r in results:
        assert r.checked == d[r.name].size
        assert r.status == "pass", (r.name, r.max_rel_error, r.worst)
        assert r.max_rel_error < 1e-6
        assert r.kinks == 0


def test_two_layer_net_matches_flat_numpy():
    d, lam = _two_layer_data(seed=11), 0.1
    g, loss = _two_layer_graph(d, lam)
    value = g.forward(loss)
    g.backward(loss)
    loss_ref, grads_ref, _ = _two_layer_flat(d, lam)
    close(value, loss_ref)
    for name, want in grads_ref.items():
        assert g[name].grad.shape == want.shape
        close(g[name].grad, want)


# ---- 8. operator overloading and errors ------------------------------------------------------

X_OP = np.array([0.5, -1.5, 2.0])


@pytest.mark.parametrize("build,value,grad", [
    (lambda x: 2 * x, lambda v: 2 * v, lambda v: np.full_like(v, 2.0)),
    (lambda x: x * 2, lambda v: 2 * v, lambda v: np.full_like(v, 2.0)),
    (lambda x: 3 + x, lambda v: 3 + v, lambda v: np.ones_like(v)),
    (lambda x: x + 3, lambda v: v + 3, lambda v: np.ones_like(v)),
    (lambda x: 1 - x, lambda v: 1 - v, lambda v: -np.ones_like(v)),
    (lambda x: x - 1, lambda v: v - 1, lambda v: np.ones_like(v)),
    (lambda x: 1 / x, lambda v: 1 / v, lambda v: -1 / v ** 2),
    (lambda x: x / 4, lambda v: v / 4, lambda v: np.full_like(v, 0.25)),
    (lambda x: x ** 2, lambda v: v ** 2, lambda v: 2 * v),
    (lambda x: x ** 3, lambda v: v ** 3, lambda v: 3 * v ** 2),
    (lambda x: -x, lambda v: -v, lambda v: -np.ones_like(v)),
    (lambda x: np.array(2.0) * x, lambda v: 2 * v, lambda v: np.full_like(v, 2.0)),
], ids=["rmul", "mul", "radd", "add", "rsub", "sub", "rtruediv", "truediv", "pow2", "pow3",
        "neg", "ndarray_rmul"])
def test_operator(build, value, grad):
    g = Graph()
    x = g.input("x")
    f = build(x)
    assert isinstance(f, Node)
    out = G.Sum()(f)
    g.forward(out, x=X_OP)
    g.backward(out)
    close(f.value, value(X_OP))
    close(x.grad, grad(X_OP))


def test_power_with_fractional_exponent():
    g = Graph()
    x = g.input("x")
    out = G.Sum()(x ** 0.5)
    v = np.array([0.25, 4.0])
    close(g.forward(out, x=v), 0.5 + 2.0)
    g.backward(out)
    close(x.grad, 0.5 / np.sqrt(v))


def test_matmul_operator_both_ways(rng):
    A, B, M = rng.standard_normal((2, 3)), rng.standard_normal((3, 4)), rng.standard_normal((5, 2))
    g = Graph()
    a, b = g.param("A", A), g.param("B", B)
    ab = a @ b
    mab = M @ ab     # ndarray @ node: the reflected matmul
    assert isinstance(mab, Node)
    out = G.Sum()(mab)
    close(g.forward(out), np.sum(M @ A @ B))
    g.backward(out)
    up = M.T @ np.ones((5, 4))
    close(a.grad, up @ B.T)
    close(b.grad, A.T @ up)


def test_power_of_a_node_exponent_is_refused():
    g = Graph()
    x, y = g.inputs("x y")
    with pytest.raises(TypeError, match="constant exponent"):
        x ** y


def test_node_used_in_two_graphs_raises():
    g1, g2 = Graph(), Graph()
    x, y = g1.input("x"), g2.input("y")
    with pytest.raises(ValueError, match="another graph"):
        x + y
    with pytest.raises(ValueError, match="another graph"):
        G.Multiply()(x, y)


def test_gate_without_node_inputs_raises():
    with pytest.raises(TypeError, match="graph node"):
        G.Exp()(1.0)


def test_forward_with_missing_input_raises_clear_error():
    g = Graph()
    x, y = g.inputs("x y")
    f = x * y
    with pytest.raises(ValueError, match=r"input 'y' has no value.*y=\.\.\."):
        g.forward(f, x=1.0)


def test_feeding_unknown_input_raises_keyerror_naming_inputs():
    g = Graph()
    g.inputs("alpha beta")
    g.param("W", 1.0)
    f = g["alpha"] * g["beta"]
    with pytest.raises(KeyError) as info:
        g.forward(f, alpha=1.0, gamma=2.0)
    message = str(info.value)
    assert "gamma" in message and "alpha" in message and "beta" in message
    with pytest.raises(KeyError, match="not an input"):
        g.feed(W=3.0)  # a parameter is not fed


def test_duplicate_node_name_is_refused():
    g = Graph()
    g.input("x")
    with pytest.raises(ValueError, match="already has a node named 'x'"):
        g.param("x", 1.0)


def test_plan_is_topological_and_cached():
    g = Graph()
    x, y = g.inputs("x y")
    f = (x + y) * (x - y)
    order, backward = g.plan(f)
    position = {id(n): i for i, n in enumerate(order)}
    for n in order:
        for p in n.inputs:
            assert position[id(p)] < position[id(n)]
    assert order[-1] is f and backward[0] is f
    assert g.plan(f)[0] is order  # cached
    h = f * 2.0  # a new node invalidates the cache
    assert g.plan(f)[0] is not order
    close(g.forward(h, x=3.0, y=1.0), 16.0)


def test_float32_graph_keeps_float32():
    g = Graph(dtype=np.float32)
    x = g.input("x")
    w = g.param("w", [1.0, 2.0])
    f = G.Sum()(x * w)
    out = g.forward(f, x=np.array([3.0, 4.0]))
    g.backward(f)
    assert w.value.dtype == np.float32 and x.value.dtype == np.float32
    assert w.grad.dtype == np.float32
    close(out, 11.0)
    close(w.grad, [3.0, 4.0])
