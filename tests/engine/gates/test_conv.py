"""Convolution, pooling and flatten gates: against naive loops (CS231n's *_naive layers),
CS231n's published check values, numerical gradients and, when installed, PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import GATE_TOL, assert_gate_passes

from bptrain.engine.gate import registry
from bptrain.engine.gates.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from bptrain.engine.gradcheck import check_gate

ALL = (True, True, True)


# ---- naive references: loops over every sample, filter and output pixel -----------------
def conv_naive(x, w, b, stride, pad):
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
    out = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + (0.0 if b is None else b[f])
    return out


def conv_backward_naive(dout, x, w, stride, pad):
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for n in range(N):
        for f in range(F):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    rows = slice(i * stride, i * stride + HH)
                    cols = slice(j * stride, j * stride + WW)
                    dw[f] += xp[n, :, rows, cols] * dout[n, f, i, j]
                    dxp[n, :, rows, cols] += w[f] * dout[n, f, i, j]
    return dxp[:, :, pad:pad + H, pad:pad + W], dw, dout.sum(axis=(0, 2, 3))


def pool_naive(x, size, stride, op):
    """(out, dx for an upstream of ones routed as the gate should): max routes to the first
    maximum of each window, mean spreads evenly."""
    N, C, H, W = x.shape
    Ho, Wo = 1 + (H - size) // stride, 1 + (W - size) // stride
    out, route = np.zeros((N, C, Ho, Wo)), []
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    window = x[n, c, i * stride:i * stride + size, j * stride:j * stride + size]
                    out[n, c, i, j] = window.max() if op == "max" else window.mean()
                    route.append((n, c, i, j, np.unravel_index(window.argmax(), window.shape)))
    return out, route


def pool_backward_naive(dout, x, size, stride, op):
    dx = np.zeros_like(x)
    _, route = pool_naive(x, size, stride, op)
    for n, c, i, j, (a, b) in route:
        if op == "max":
            dx[n, c, i * stride + a, j * stride + b] += dout[n, c, i, j]
        else:
            dx[n, c, i * stride:i * stride + size, j * stride:j * stride + size] += \
                dout[n, c, i, j] / size ** 2
    return dx


def rel_error(x, y):
    """CS231n's relative error."""
    return np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))


# (x shape, w shape, stride, pad)
CONV_CASES = [((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
              ((2, 2, 7, 7), (3, 2, 3, 3), 2, 0),
              ((2, 3, 4, 4), (3, 3, 4, 4), 2, 1),
              ((1, 2, 7, 5), (2, 2, 2, 3), 3, 2),
              ((3, 1, 6, 8), (2, 1, 1, 1), 1, 0),
              ((2, 2, 4, 6), (5, 2, 5, 5), 1, 2)]
CONV_IDS = [f"x{x}-w{w}-s{s}-p{p}" for x, w, s, p in CONV_CASES]


def conv_inputs(rng, xs, ws):
    return (0.5 * rng.standard_normal(xs), 0.5 * rng.standard_normal(ws),
            0.5 * rng.standard_normal(ws[0]))


# ---- convolution ---------------------------------------------------------------------
@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_naive(rng, xs, ws, stride, pad):
    x, w, b = conv_inputs(rng, xs, ws)
    gate = Conv2D(stride, pad)
    out = gate.forward(x, w, b)
    np.testing.assert_allclose(out, conv_naive(x, w, b, stride, pad), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(gate.backward(dout, ALL), conv_backward_naive(dout, x, w, stride, pad)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES, ids=CONV_IDS)
def test_conv_gradients_numerically(rng, xs, ws, stride, pad):
    inputs = list(conv_inputs(rng, xs, ws))
    assert_gate_passes(check_gate(Conv2D(stride, pad), inputs), inputs)


def test_conv_without_bias(rng):
    x, w, _ = conv_inputs(rng, (2, 3, 5, 5), (4, 3, 3, 3))
    gate = Conv2D(1, 1)
    np.testing.assert_allclose(gate.forward(x, w), conv_naive(x, w, None, 1, 1), atol=1e-12)
    assert len(gate.backward(rng.standard_normal((2, 4, 5, 5)), (True, True))) == 2
    assert_gate_passes(check_gate(gate, [x, w]), [x, w])


def test_cs231n_conv_forward_check_values():
    # ConvolutionalNetworks.ipynb, "Convolution: Naive forward pass"
    x = np.linspace(-0.1, 0.5, num=2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    w = np.linspace(-0.2, 0.3, num=3 * 3 * 4 * 4).reshape(3, 3, 4, 4)
    b = np.linspace(-0.1, 0.2, num=3)
    correct_out = np.array([[[[-0.08759809, -0.10987781], [-0.18387192, -0.2109216]],
                             [[0.21027089, 0.21661097], [0.22847626, 0.23004637]],
                             [[0.50813986, 0.54309974], [0.64082444, 0.67101435]]],
                            [[[-0.98053589, -1.03143541], [-1.19128892, -1.24695841]],
                             [[0.69108355, 0.66880383], [0.59480972, 0.56776003]],
                             [[2.36270298, 2.36904306], [2.38090835, 2.38247847]]]])
    out = Conv2D(stride=2, pad=1).forward(x, w, b)
    assert rel_error(out, correct_out) < 1e-7
    assert np.max(np.abs(out - correct_out)) < 1e-7


def test_conv_size_that_does_not_divide():
    gate = Conv2D(stride=2, pad=0)
    with pytest.raises(ValueError) as e:
        gate.forward(np.zeros((1, 1, 6, 7)), np.zeros((1, 1, 3, 3)), np.zeros(1))
    msg = str(e.value)
    # (6 + 0 - 3) / 2 = 1.5: no pad can help (2 pad is even), stride 1 or H 5 or 7 can
    assert "(H + 2*pad - HH) / stride = (6 + 2*0 - 3) / 2 = 1.5" in msg
    assert "stride=1" in msg and "H=5 or 7" in msg and "would fit" in msg
    with pytest.raises(ValueError, match=r"\(W \+ 2\*pad - WW\) / stride = \(6 \+ 2\*1 - 3\)"):
        Conv2D(stride=2, pad=1).forward(np.zeros((1, 1, 7, 6)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="pad=1 would fit|pad=1,"):
        Conv2D(stride=4, pad=0).forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="window HH=7 is larger"):
        Conv2D().forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 7, 7)))


def test_conv_needs_input_grad_skips_dx(rng):
    x, w, b = conv_inputs(rng, (2, 3, 6, 6), (4, 3, 3, 3))
    gate = Conv2D(1, 1)
    dout = rng.standard_normal(gate.forward(x, w, b).shape)
    dx, dw, db = gate.backward(dout, ALL)
    dx2, dw2, db2 = gate.backward(dout, (False, True, True))
    assert dx is not None and dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


def test_conv_build_and_macs():
    def init(shape, fan_in, fan_out):
        assert (fan_in, fan_out) == (3 * 49, 32 * 49)
        return np.ones(shape)
    built = Conv2D.build([(3, 32, 32)], {"filters": 32, "size": 7, "stride": 1, "pad": 3,
                                         "bias": True}, init)
    assert isinstance(built.gate, Conv2D) and (built.gate.stride, built.gate.pad) == (1, 3)
    assert built.params["W"].shape == (32, 3, 7, 7) and built.params["b"].shape == (32,)
    assert built.out_shape == (32, 32, 32)
    assert built.gate.macs((50, 3, 32, 32), (32, 3, 7, 7), (32,)) == 50 * 32 * 32 * 32 * 3 * 49
    no_bias = Conv2D.build([(3, 32, 32)], {"filters": 32, "size": 7, "pad": 3, "bias": False},
                           init)
    assert list(no_bias.params) == ["W"]
    assert Conv2D.build([(2, 9, 9)], {"filters": 4, "stride": 2},
                        lambda s, i, o: np.ones(s)).out_shape == (4, 4, 4)
    with pytest.raises(ValueError, match=r"conv needs images \(C, H, W\); got \(784,\) — set "
                                         r"data.shape"):
        Conv2D.build([(784,)], {"filters": 8}, init)
    with pytest.raises(ValueError, match=r"\(8 \+ 2\*0 - 3\) / 2"):
        Conv2D.build([(3, 8, 8)], {"filters": 4, "stride": 2}, init)


# ---- pooling and flatten -------------------------------------------------------------
def test_cs231n_max_pool_forward_check_values():
    x = np.linspace(-0.3, 0.4, num=2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    correct_out = np.array([[[[-0.26315789, -0.24842105], [-0.20421053, -0.18947368]],
                             [[-0.14526316, -0.13052632], [-0.08631579, -0.07157895]],
                             [[-0.02736842, -0.01263158], [0.03157895, 0.04631579]]],
                            [[[0.09052632, 0.10526316], [0.14947368, 0.16421053]],
                             [[0.20842105, 0.22315789], [0.26736842, 0.28210526]],
                             [[0.32631579, 0.34105263], [0.38526316, 0.4]]]])
    out = MaxPool2D(2, 2).forward(x)
    assert rel_error(out, correct_out) < 1e-7
    assert np.max(np.abs(out - correct_out)) < 1e-7


def test_maxpool_routes_to_the_max():
    x = np.array([[[[1., 5., 0., 2.],
                    [3., 4., 7., 1.],
                    [9., 0., 2., 2.],
                    [8., 6., 3., 4.]]]])
    gate = MaxPool2D(2, 2)
    np.testing.assert_array_equal(gate.forward(x), [[[[5., 7.], [9., 4.]]]])
    (dx,) = gate.backward(np.array([[[[10., 20.], [30., 40.]]]]))
    np.testing.assert_array_equal(dx, [[[[0., 10., 0., 0.],
                                         [0., 0., 20., 0.],
                                         [30., 0., 0., 0.],
                                         [0., 0., 0., 40.]]]])
    # the 2,2 tie in the bottom right window is not its max; a 4 is
    np.testing.assert_array_equal(gate.branches(), [[[[1, 2], [0, 3]]]])


def test_maxpool_tie_goes_to_the_first_and_is_a_kink():
    x = np.array([[[[1., 3.], [3., 0.]]]])  # two maxima in one window
    gate = MaxPool2D(2, 2)
    gate.forward(x)
    (dx,) = gate.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx, [[[[0., 1.], [0., 0.]]]])
    (result,) = check_gate(gate, [x])
    assert result.status == "kink" and result.kinks == 2 and result.passed


@pytest.mark.parametrize("size, stride, shape", [(2, 2, (2, 3, 4, 6)), (3, 2, (2, 2, 7, 5)),
                                                 (2, 1, (1, 2, 4, 3)), (2, 3, (2, 1, 5, 8)),
                                                 (3, 3, (1, 2, 6, 9))])
@pytest.mark.parametrize("gate_cls, op", [(MaxPool2D, "max"), (AvgPool2D, "mean")])
def test_pools_match_naive(rng, gate_cls, op, size, stride, shape):
    # size == stride takes maxpool's reshape path, the others its strided-window path
    x = 0.1 * rng.permutation(int(np.prod(shape))).reshape(shape) - 1.0  # no ties
    gate = gate_cls(size, stride)
    out = gate.forward(x)
    want, _ = pool_naive(x, size, stride, op)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)
    dout = rng.standard_normal(out.shape)
    (dx,) = gate.backward(dout)
    np.testing.assert_allclose(dx, pool_backward_naive(dout, x, size, stride, op),
                               rtol=1e-13, atol=1e-13)
    assert_gate_passes(check_gate(gate, [x]), [x])


def test_pool_sizes_and_build():
    assert MaxPool2D.build([(3, 32, 32)], {"size": 2, "stride": 2}, None).out_shape == (3, 16, 16)
    assert AvgPool2D.build([(4, 7, 5)], {"size": 3, "stride": 2}, None).out_shape == (4, 3, 2)
    with pytest.raises(ValueError, match=r"maxpool: \(H - size\) / stride = \(5 - 2\) / 2"):
        MaxPool2D.build([(3, 5, 4)], {"size": 2, "stride": 2}, None)
    with pytest.raises(ValueError, match=r"avgpool: the window size=3 is larger"):
        AvgPool2D.build([(3, 2, 2)], {"size": 3, "stride": 1}, None)
    with pytest.raises(ValueError, match=r"maxpool needs images \(C, H, W\); got \(10,\)"):
        MaxPool2D.build([(10,)], {}, None)
    with pytest.raises(ValueError, match=r"\(W - size\) / stride = \(5 - 2\) / 2"):
        MaxPool2D().forward(np.zeros((1, 1, 4, 5)))


def test_avgpool_values_and_gradient():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    gate = AvgPool2D(2, 2)
    np.testing.assert_array_equal(gate.forward(x), [[[[2.5, 4.5], [10.5, 12.5]]]])
    (dx,) = gate.backward(np.array([[[[4., 8.], [12., 16.]]]]))
    np.testing.assert_array_equal(dx, np.kron([[1., 2.], [3., 4.]], np.ones((2, 2)))[None, None])


def test_flatten(rng):
    x = rng.standard_normal((2, 3, 2, 4))
    gate = Flatten()
    out = gate.forward(x)
    np.testing.assert_array_equal(out, x.reshape(2, 24))
    assert out[1, 9] == x[1, 1, 0, 1]  # C order: c, then h, then w
    (dx,) = gate.backward(out * 2)
    np.testing.assert_array_equal(dx, 2 * x)
    assert_gate_passes(check_gate(gate, [x]), [x])
    assert Flatten.build([(3, 32, 32)], {}, None).out_shape == (3072,)


# ---- dtypes, the registry and the examples sweep ---------------------------------------
def test_float32_stays_float32(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    conv = Conv2D(1, 1)
    out = conv.forward(x, w, b)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in conv.backward(np.ones_like(out), ALL))
    np.testing.assert_allclose(out, conv_naive(x.astype(np.float64), w.astype(np.float64),
                                               b.astype(np.float64), 1, 1), rtol=1e-4, atol=1e-4)
    for gate in (MaxPool2D(2, 2), MaxPool2D(3, 1), AvgPool2D(2, 2), AvgPool2D(3, 1), Flatten()):
        y = gate.forward(out)
        assert y.dtype == np.float32, gate.label()
        (dx,) = gate.backward(np.ones_like(y))
        assert dx.dtype == np.float32, gate.label()


def test_registered():
    assert registry.find("conv", ["layer"]) is Conv2D
    assert registry.find("maxpool", ["shape"]) is MaxPool2D
    assert registry.find("avgpool", ["shape"]) is AvgPool2D
    assert registry.find("flatten", ["shape"]) is Flatten
    assert (MaxPool2D.pattern, AvgPool2D.pattern, Conv2D.pattern) == (
        "router", "distributor", "swap multiplier")
    assert MaxPool2D.kinked and not AvgPool2D.kinked


@pytest.mark.parametrize("cls", [Conv2D, MaxPool2D, AvgPool2D, Flatten])
def test_examples_pass_gradcheck(cls):
    for seed in (0, 1):
        cases = cls.examples(np.random.default_rng(seed))
        assert cases
        for label, gate, inputs in cases:
            assert all(x.dtype == np.float64 for x in inputs), label
            assert_gate_passes(check_gate(gate, inputs, seed=seed, name=label), inputs,
                               GATE_TOL)


# ---- PyTorch, when installed ---------------------------------------------------------
@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_torch(rng, xs, ws, stride, pad):
    torch = pytest.importorskip("torch")
    x, w, b = conv_inputs(rng, xs, ws)
    gate = Conv2D(stride, pad)
    out = gate.forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=pad)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    for got, t in zip(gate.backward(dout, ALL), (tx, tw, tb)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size, stride", [(2, 2), (3, 2), (2, 1), (3, 3), (2, 3)])
def test_pools_match_torch(rng, size, stride):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, size + 3 * stride, size + 2 * stride))  # out (2, 3, 4, 3)
    for gate, fn in ((MaxPool2D(size, stride), F.max_pool2d), (AvgPool2D(size, stride),
                                                               F.avg_pool2d)):
        out = gate.forward(x)
        dout = rng.standard_normal(out.shape)
        tx = torch.tensor(x, requires_grad=True)
        tout = fn(tx, size, stride)
        tout.backward(torch.tensor(dout))
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
        (dx,) = gate.backward(dout)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
