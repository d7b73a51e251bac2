"""The normalization gates: batchnorm, spatial_batchnorm, layernorm, groupnorm.

Forward values against loop-by-loop formulas written here and against the numbers CS231n's
BatchNormalization notebook prints; every gradient against centered differences (check_gate,
float64); spatial batch norm against batch norm on the (N*H*W, C) view; group norm against
layer and instance norm; and, when torch is installed, everything against torch.nn.functional.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bptrain.engine.gate import Built, registry
from bptrain.engine.gates.normalization import BatchNorm, GroupNorm, LayerNorm, SpatialBatchNorm
from bptrain.engine.gradcheck import check_gate
from conftest import GATE_TOL, assert_gate_passes, hsettings

GATES = (BatchNorm, SpatialBatchNorm, LayerNorm, GroupNorm)
EPS = 1e-5


def no_init(shape, fan_in, fan_out):
    raise AssertionError("normalization layers draw no random weights")


# ---- independent references: plain loops, one statistic at a time ------------------------
def ref_batchnorm(x, gamma, beta, eps=EPS):
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        col = x[:, j]
        mean = sum(col) / len(col)
        var = sum((v - mean) ** 2 for v in col) / len(col)
        out[:, j] = gamma[j] * (col - mean) / np.sqrt(var + eps) + beta[j]
    return out


def ref_layernorm(x, gamma, beta, eps=EPS):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        row = x[i]
        out[i] = gamma * (row - row.mean()) / np.sqrt(np.var(row, ddof=0) + eps) + beta
    return out


def ref_spatial_batchnorm(x, gamma, beta, eps=EPS):
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        out[:, c] = gamma[c] * (v - v.mean()) / np.sqrt(np.var(v, ddof=0) + eps) + beta[c]
    return out


def ref_groupnorm(x, gamma, beta, groups, eps=EPS):
    N, C = x.shape[:2]
    per = C // groups
    out = np.empty_like(x)
    for n in range(N):
        for g in range(groups):
            block = x[n, g * per:(g + 1) * per]
            xhat = (block - block.mean()) / np.sqrt(np.var(block, ddof=0) + eps)
            out[n, g * per:(g + 1) * per] = (gamma[g * per:(g + 1) * per, None, None] * xhat
                                             + beta[g * per:(g + 1) * per, None, None])
    return out


def data(rng, shape, scale=3.0, shift=2.0):
    return scale * rng.standard_normal(shape) + shift


def params(rng, C):
    return rng.standard_normal(C), rng.standard_normal(C)


# ---- gradients ------------------------------------------------------------------------------
def example_cases(seeds=(0, 1, 2)):
    cases = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for cls in GATES:
            for label, gate, inputs in cls.examples(rng):
                cases.append(pytest.param(gate, inputs, seed, id=f"{label}-seed{seed}"))
    return cases


@pytest.mark.parametrize("gate, inputs, seed", example_cases())
def test_examples_pass_the_gradient_check(gate, inputs, seed):
    """dx, dgamma and dbeta of every example (training and evaluation) to 1e-7."""
    assert_gate_passes(check_gate(gate, inputs, seed=seed), inputs, GATE_TOL)


def test_examples_cover_both_modes_and_are_float64():
    rng = np.random.default_rng(0)
    labels = []
    for cls in GATES:
        for label, gate, inputs in cls.examples(rng):
            labels.append(label)
            assert isinstance(gate, cls)
            assert all(x.dtype == np.float64 for x in inputs)
    assert labels == ["batchnorm train", "batchnorm eval", "spatial_batchnorm train",
                      "spatial_batchnorm eval", "layernorm", "groupnorm(2)"]
    eval_gate = BatchNorm.examples(rng)[1][1]
    assert eval_gate.training is False
    assert not np.allclose(eval_gate.running_var, 1.0)  # warmed up, not the initial ones


def test_batchnorm_gradients_on_cs231n_check_data():
    """The notebook's own gradient-check data: x = 5 randn(4, 5) + 12, seed 231."""
    r = np.random.RandomState(231)
    x = 5 * r.randn(4, 5) + 12
    gamma, beta = r.randn(5), r.randn(5)
    inputs = [x, gamma, beta]
    assert_gate_passes(check_gate(BatchNorm(), inputs), inputs)
    ev = BatchNorm()
    ev.running_mean, ev.running_var = np.full(5, 11.0), np.full(5, 20.0)
    ev.training = False
    assert_gate_passes(check_gate(ev, inputs), inputs)


@pytest.mark.parametrize("make, shape", [(LayerNorm, (5, 9)), (lambda: GroupNorm(3), (2, 6, 3, 2)),
                                         (lambda: GroupNorm(1), (2, 4, 2, 3)),
                                         (lambda: GroupNorm(4), (2, 4, 2, 3))])
def test_other_settings_pass_the_gradient_check(make, shape):
    rng = np.random.default_rng(7)
    inputs = [data(rng, shape, 1.0), rng.uniform(0.5, 1.5, shape[1]), rng.standard_normal(shape[1])]
    assert_gate_passes(check_gate(make(), inputs, seed=8), inputs)


def test_spatial_batchnorm_gradients_on_cs231n_size():
    """(4, 3, 5, 5), the size of the sweep's suggestion, passes 1e-6 but not always 1e-7:
    a perturbation of one entry moves all M = 100 outputs of its channel, each adding its
    rounding (~eps |out|) to the centered difference, about 1e-10 absolute after / 2h, while
    the smallest of the 300 dx entries are near 1e-3. The extended-precision check below
    shows the analytic gradient itself is good to ~1e-10."""
    rng = np.random.default_rng(5)
    inputs = [data(rng, (4, 3, 5, 5), 1.0), rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)]
    assert_gate_passes(check_gate(SpatialBatchNorm(), inputs, seed=6), inputs, 1e-6)
    ev = SpatialBatchNorm()
    ev.running_mean, ev.running_var = np.array([1.5, 2.0, 2.5]), np.array([0.8, 1.0, 1.3])
    ev.training = False
    assert_gate_passes(check_gate(ev, inputs, seed=6), inputs)  # affine: no such noise


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="no extended precision here")
def test_spatial_batchnorm_dx_against_extended_precision_differences():
    rng = np.random.default_rng(5)
    x, gamma, beta = data(rng, (4, 3, 5, 5), 1.0), rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    R = rng.standard_normal(x.shape)
    gate = SpatialBatchNorm()
    gate.forward(x, gamma, beta)
    dx = gate.backward(R)[0]
    ld = np.longdouble
    xl, gl, bl, Rl = (a.astype(ld) for a in (x, gamma, beta, R))
    h = ld(1e-6)
    f = SpatialBatchNorm()
    numeric = np.empty(x.shape)
    for i in np.ndindex(x.shape):
        xp, xm = xl.copy(), xl.copy()
        xp[i] += h
        xm[i] -= h
        numeric[i] = float(np.sum((f.forward(xp, gl, bl) - f.forward(xm, gl, bl)) * Rl) / (2 * h))
    rel = np.abs(dx - numeric) / np.maximum(np.abs(dx), np.abs(numeric))
    assert rel.max() < 1e-9


# ---- forward values -------------------------------------------------------------------------
def test_batchnorm_forward_matches_loops_in_training_and_evaluation(rng):
    x, (gamma, beta) = data(rng, (10, 4)), params(rng, 4)
    gate = BatchNorm()
    np.testing.assert_allclose(gate.forward(x, gamma, beta), ref_batchnorm(x, gamma, beta),
                               rtol=1e-12, atol=1e-12)
    gate.running_mean, gate.running_var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    gate.training = False
    want = np.empty_like(x)
    for j in range(4):
        want[:, j] = (gamma[j] * (x[:, j] - gate.running_mean[j])
                      / np.sqrt(gate.running_var[j] + EPS) + beta[j])
    np.testing.assert_allclose(gate.forward(x, gamma, beta), want, rtol=1e-12, atol=1e-12)


def test_layernorm_forward_matches_loops_and_ignores_the_mode(rng):
    x, (gamma, beta) = data(rng, (6, 8)), params(rng, 8)
    gate = LayerNorm()
    out = gate.forward(x, gamma, beta)
    np.testing.assert_allclose(out, ref_layernorm(x, gamma, beta), rtol=1e-12, atol=1e-12)
    gate.training = False
    np.testing.assert_array_equal(gate.forward(x, gamma, beta), out)


def test_spatial_batchnorm_forward_matches_loops(rng):
    x, (gamma, beta) = data(rng, (4, 3, 5, 6)), params(rng, 3)
    np.testing.assert_allclose(SpatialBatchNorm().forward(x, gamma, beta),
                               ref_spatial_batchnorm(x, gamma, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_groupnorm_forward_matches_loops_and_ignores_the_mode(rng, groups):
    x, (gamma, beta) = data(rng, (3, 6, 4, 5)), params(rng, 6)
    gate = GroupNorm(groups)
    out = gate.forward(x, gamma, beta)
    np.testing.assert_allclose(out, ref_groupnorm(x, gamma, beta, groups), rtol=1e-12,
                               atol=1e-12)
    gate.training = False
    np.testing.assert_array_equal(gate.forward(x, gamma, beta), out)


def cs231n_activations(r, N=200, D1=50, D2=60, D3=3):
    """The notebook's two-layer activations a = relu(X W1) W2 (legacy RandomState draws)."""
    X = r.randn(N, D1)
    W1 = r.randn(D1, D2)
    W2 = r.randn(D2, D3)
    return np.maximum(0, X.dot(W1)).dot(W2)


def test_cs231n_training_forward_sanity_and_published_numbers():
    """CS231n BatchNormalization.ipynb, 'Check the training-time forward pass': np.random.seed(231),
    N, D1, D2, D3 = 200, 50, 60, 3. The printed numbers (8 decimals) are found in two
    independent public copies of the solved notebook; the ~1e-17 means are not compared."""
    a = cs231n_activations(np.random.RandomState(231))
    np.testing.assert_allclose(a.mean(axis=0), [-2.3814598, -13.18038246, 1.91780462], atol=1e-8)
    np.testing.assert_allclose(a.std(axis=0), [27.18502186, 34.21455511, 37.68611762], atol=1e-8)

    out = BatchNorm().forward(a, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-15)
    np.testing.assert_allclose(out.std(axis=0), [0.99999999, 1.0, 1.0], atol=1e-8)
    # eps keeps the std just below 1: sqrt(var / (var + eps)), var ~ 27^2.
    assert np.all(out.std(axis=0) < 1.0)

    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0])
    out = BatchNorm().forward(a, gamma, beta)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), [0.99999999, 1.99999999, 2.99999999], atol=1e-8)


CS231N_TEST_MEANS = [-0.03927354, -0.04349152, -0.10452688]
CS231N_TEST_STDS = [1.01531428, 1.01238373, 0.97819988]


@pytest.mark.parametrize("cs231n_start", [False, True])
def test_cs231n_test_time_forward_after_warm_up(cs231n_start):
    """'Check the test-time forward pass': 50 training forwards warm the running averages,
    then one evaluation forward. The notebook's own claim is 'close to 0 and 1, but noisier
    than training-time'. Its printed numbers come from CS231n's layers.py, whose running_var
    starts at ZEROS (np.zeros(D)); this gate starts it at ones, as PyTorch does, which after
    50 steps still weighs 0.9**50 = 0.5%: against var ~ 1000 a 2e-6 change of the stds. So
    the printed numbers match to 8 decimals from CS231n's start, and to 1e-5 from ours."""
    r = np.random.RandomState(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    W1, W2 = r.randn(D1, D2), r.randn(D2, D3)
    gamma, beta = np.ones(D3), np.zeros(D3)
    gate = BatchNorm()
    if cs231n_start:
        gate.running_mean, gate.running_var = np.zeros(D3), np.zeros(D3)
    for _ in range(50):
        gate.forward(np.maximum(0, r.randn(N, D1).dot(W1)).dot(W2), gamma, beta)
    gate.training = False
    a_norm = gate.forward(np.maximum(0, r.randn(N, D1).dot(W1)).dot(W2), gamma, beta)
    # Loose: the published third mean, -0.105, is itself more than 0.1 from 0.
    assert np.all(np.abs(a_norm.mean(axis=0)) < 0.15)
    assert np.all(np.abs(a_norm.std(axis=0) - 1.0) < 0.15)
    tol = 1e-8 if cs231n_start else 1e-5
    np.testing.assert_allclose(a_norm.mean(axis=0), CS231N_TEST_MEANS, atol=tol)
    np.testing.assert_allclose(a_norm.std(axis=0), CS231N_TEST_STDS, atol=tol)
    if not cs231n_start:  # and the difference is really the start, not rounding
        assert np.abs(a_norm.std(axis=0) - CS231N_TEST_STDS).max() > 1e-7


def test_spatial_batchnorm_test_time_forward_after_warm_up():
    """The ConvolutionalNetworks notebook's warm-up check: x = 2.3 randn(10, 4, 11, 12) + 13,
    50 training forwards, then evaluation: means near 0, stds near 1 (its printed numbers
    depend on earlier cells' draws, so only the loose claim is checked)."""
    r = np.random.RandomState(231)
    gamma, beta = np.ones(4), np.zeros(4)
    gate = SpatialBatchNorm()
    for _ in range(50):
        gate.forward(2.3 * r.randn(10, 4, 11, 12) + 13, gamma, beta)
    gate.training = False
    out = gate.forward(2.3 * r.randn(10, 4, 11, 12) + 13, gamma, beta)
    assert np.all(np.abs(out.mean(axis=(0, 2, 3))) < 0.1)
    assert np.all(np.abs(out.std(axis=(0, 2, 3)) - 1.0) < 0.15)


# ---- running statistics and modes ----------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_running_statistics_after_two_forwards_by_hand(rng, momentum):
    x1, x2, (gamma, beta) = data(rng, (7, 3)), data(rng, (7, 3), 0.5, -1.0), params(rng, 3)
    gate = BatchNorm(momentum=momentum)
    gate.forward(x1, gamma, beta)
    gate.forward(x2, gamma, beta)
    m, v1, v2 = momentum, x1.var(axis=0), x2.var(axis=0)  # np.var: biased (ddof=0)
    mean_1 = m * 0.0 + (1 - m) * x1.mean(axis=0)
    var_1 = m * 1.0 + (1 - m) * v1
    np.testing.assert_allclose(gate.running_mean, m * mean_1 + (1 - m) * x2.mean(axis=0),
                               rtol=1e-13)
    np.testing.assert_allclose(gate.running_var, m * var_1 + (1 - m) * v2, rtol=1e-13)


def test_spatial_running_statistics_by_hand(rng):
    x1, x2, (gamma, beta) = data(rng, (3, 2, 4, 4)), data(rng, (3, 2, 4, 4)), params(rng, 2)
    gate = SpatialBatchNorm()
    gate.forward(x1, gamma, beta)
    gate.forward(x2, gamma, beta)
    per_channel = lambda x, f: np.array([f(x[:, c]) for c in range(2)])  # noqa: E731
    mean = 0.9 * (0.1 * per_channel(x1, np.mean)) + 0.1 * per_channel(x2, np.mean)
    var = 0.9 * (0.9 + 0.1 * per_channel(x1, np.var)) + 0.1 * per_channel(x2, np.var)
    np.testing.assert_allclose(gate.running_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(gate.running_var, var, rtol=1e-13)
    assert gate.running_mean.shape == gate.running_var.shape == (2,)


def test_running_statistics_start_at_zeros_and_ones_and_stay_in_evaluation(rng):
    x, (gamma, beta) = data(rng, (5, 3)), params(rng, 3)
    gate = BatchNorm()
    assert gate.running_mean is None and gate.running_var is None
    gate.training = False
    # Before any training step: zeros and ones, so evaluation is gamma * x / sqrt(1 + eps) + beta.
    np.testing.assert_allclose(gate.forward(x, gamma, beta), gamma * x / np.sqrt(1 + EPS) + beta)
    np.testing.assert_array_equal(gate.running_mean, np.zeros(3))
    np.testing.assert_array_equal(gate.running_var, np.ones(3))
    gate.forward(x + 1.0, gamma, beta)
    gate.backward(np.ones_like(x))
    np.testing.assert_array_equal(gate.running_mean, np.zeros(3))  # evaluation never updates


def test_backward_follows_the_mode_of_its_forward(rng):
    x, (gamma, beta), R = data(rng, (6, 4)), params(rng, 4), rng.standard_normal((6, 4))
    gate, ref = BatchNorm(), BatchNorm()
    gate.forward(x, gamma, beta)
    ref.forward(x, gamma, beta)
    gate.training = False  # switched between forward and backward
    for got, want in zip(gate.backward(R), ref.backward(R)):
        np.testing.assert_array_equal(got, want)


def test_evaluation_backward_is_the_affine_map(rng):
    x, (gamma, beta), R = data(rng, (6, 4)), params(rng, 4), rng.standard_normal((6, 4))
    gate = BatchNorm()
    gate.running_mean, gate.running_var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    gate.training = False
    gate.forward(x, gamma, beta)
    dx, dgamma, dbeta = gate.backward(R)
    inv_std = 1 / np.sqrt(gate.running_var + EPS)
    np.testing.assert_allclose(dx, R * gamma * inv_std, rtol=1e-14)
    np.testing.assert_allclose(dgamma, (R * (x - gate.running_mean) * inv_std).sum(0), rtol=1e-12)
    np.testing.assert_allclose(dbeta, R.sum(0), rtol=1e-14)


def test_running_statistics_of_another_width_are_an_error(rng):
    gate = BatchNorm()
    gate.forward(data(rng, (4, 3)), *params(rng, 3))
    with pytest.raises(ValueError, match="3,"):
        gate.forward(data(rng, (4, 5)), *params(rng, 5))


# ---- dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, shape", [(BatchNorm, (6, 4)), (SpatialBatchNorm, (3, 4, 2, 2)),
                                         (LayerNorm, (6, 4)), (lambda: GroupNorm(2), (3, 4, 2, 2))])
@pytest.mark.parametrize("training", [True, False])
def test_float32_stays_float32(rng, make, shape, training):
    x = data(rng, shape).astype(np.float32)
    gamma, beta = (p.astype(np.float32) for p in params(rng, shape[1]))
    gate = make()
    gate.training = training
    out = gate.forward(x, gamma, beta)
    grads = gate.backward(rng.standard_normal(shape).astype(np.float32))
    assert out.dtype == np.float32
    assert [g.dtype for g in grads] == [np.float32] * 3
    for name in type(gate).buffers:
        assert getattr(gate, name).dtype == np.float32


@pytest.mark.parametrize("cls, shape", [(BatchNorm, (4,)), (SpatialBatchNorm, (4, 2, 2))])
def test_float64_buffers_from_build_follow_a_float32_input(rng, cls, shape):
    built = cls.build([shape], {}, no_init)
    gate = built.gate
    x = data(rng, (3,) + shape).astype(np.float32)
    gamma, beta = (p.astype(np.float32) for p in built.params.values())
    gate.forward(x, gamma, beta)
    gate.forward(x, gamma, beta)
    assert gate.running_mean.dtype == gate.running_var.dtype == np.float32
    gate.training = False
    assert gate.forward(x, gamma, beta).dtype == np.float32


# ---- independent routes ---------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_spatial_batchnorm_equals_batchnorm_on_the_channels_last_view(rng, training):
    N, C, H, W = 3, 4, 5, 2
    x, (gamma, beta), R = data(rng, (N, C, H, W)), params(rng, C), rng.standard_normal((N, C, H, W))
    flat = lambda a: a.transpose(0, 2, 3, 1).reshape(-1, C)  # noqa: E731
    spatial, bn = SpatialBatchNorm(), BatchNorm()
    if not training:
        mean, var = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
        for g in (spatial, bn):
            g.running_mean, g.running_var = mean.copy(), var.copy()
            g.training = False
    out = spatial.forward(x, gamma, beta)
    np.testing.assert_allclose(flat(out), bn.forward(flat(x), gamma, beta), rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = spatial.backward(R)
    dx_bn, dgamma_bn, dbeta_bn = bn.backward(flat(R))
    np.testing.assert_allclose(flat(dx), dx_bn, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dgamma, dgamma_bn, rtol=1e-12)
    np.testing.assert_allclose(dbeta, dbeta_bn, rtol=1e-12)
    np.testing.assert_allclose(spatial.running_mean, bn.running_mean, rtol=1e-12)
    np.testing.assert_allclose(spatial.running_var, bn.running_var, rtol=1e-12)


def test_groupnorm_with_one_group_is_layernorm_over_chw(rng):
    N, C, H, W = 3, 4, 2, 3
    x, (gamma, beta), R = data(rng, (N, C, H, W)), params(rng, C), rng.standard_normal((N, C, H, W))
    gate = GroupNorm(1)
    out = gate.forward(x, gamma, beta)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    want = gamma[:, None, None] * (x - mean) / np.sqrt(var + EPS) + beta[:, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    # Backward through LayerNorm on (N, C*H*W), each channel's gamma repeated over H*W.
    ln = LayerNorm()
    ln.forward(x.reshape(N, -1), np.repeat(gamma, H * W), np.repeat(beta, H * W))
    dx_ln, dgamma_ln, dbeta_ln = ln.backward(R.reshape(N, -1))
    dx, dgamma, dbeta = gate.backward(R)
    np.testing.assert_allclose(dx.reshape(N, -1), dx_ln, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dgamma, dgamma_ln.reshape(C, -1).sum(1), rtol=1e-12)
    np.testing.assert_allclose(dbeta, dbeta_ln.reshape(C, -1).sum(1), rtol=1e-12)


def test_groupnorm_with_c_groups_is_instance_norm(rng):
    x, (gamma, beta) = data(rng, (2, 3, 4, 4)), params(rng, 3)
    mean = x.mean(axis=(2, 3), keepdims=True)
    var = x.var(axis=(2, 3), keepdims=True)
    want = gamma[:, None, None] * (x - mean) / np.sqrt(var + EPS) + beta[:, None, None]
    np.testing.assert_allclose(GroupNorm(3).forward(x, gamma, beta), want, rtol=1e-12, atol=1e-12)


# ---- properties -----------------------------------------------------------------------------
CASES = {"batchnorm": (BatchNorm, 2, (0,)), "spatial_batchnorm": (SpatialBatchNorm, 4, (0, 2, 3)),
         "layernorm": (LayerNorm, 2, (1,)), "groupnorm": (lambda: GroupNorm(1), 4, (1, 2, 3))}


@hsettings(15)
@given(name=st.sampled_from(sorted(CASES)), seed=st.integers(0, 2**32 - 1),
       sides=st.lists(st.integers(2, 4), min_size=4, max_size=4))
def test_shifting_a_statistic_group_changes_nothing_so_dx_sums_to_zero(name, seed, sides):
    """out is unchanged when every entry of one statistic's group moves by the same amount,
    so dx sums to zero over each group (the -mean(dxhat) term of the backward)."""
    make, ndim, axes = CASES[name]
    rng = np.random.default_rng(seed)
    shape = tuple(sides[:ndim])
    x, (gamma, beta) = data(rng, shape), params(rng, shape[1])
    gate = make()
    out = gate.forward(x, gamma, beta)
    shift = rng.standard_normal([1 if i in axes else n for i, n in enumerate(shape)])
    np.testing.assert_allclose(make().forward(x + shift, gamma, beta), out, rtol=1e-9,
                               atol=1e-9)
    R = rng.standard_normal(shape)
    dx = gate.backward(R)[0]
    # Against the size of the terms that cancel (|dxhat| / std), not of dx, which may be tiny.
    terms = np.abs(R).max() * np.abs(gamma).max() * np.max(gate.inv_std) * x.size
    assert np.all(np.abs(dx.sum(axis=axes)) < 1e-13 * terms)


# ---- build, registry, labels, errors --------------------------------------------------------
@pytest.mark.parametrize("cls, shape", [(BatchNorm, (5,)), (LayerNorm, (5,)),
                                        (SpatialBatchNorm, (3, 4, 4)), (GroupNorm, (3, 4, 4))])
def test_build_makes_ones_and_zeros_and_keeps_the_shape(cls, shape):
    built = cls.build([shape], {}, no_init)
    assert isinstance(built, Built) and isinstance(built.gate, cls)
    assert list(built.params) == ["gamma", "beta"]
    C = shape[0]
    for p, fill in zip(built.params.values(), (1.0, 0.0)):
        assert p.dtype == np.float64 and p.shape == (C,)
        np.testing.assert_array_equal(p, fill)
    assert built.out_shape == shape
    for name in cls.buffers:  # buffers exist before any forward
        assert getattr(built.gate, name).shape == (C,)
    if cls.buffers:
        np.testing.assert_array_equal(built.gate.running_mean, 0.0)
        np.testing.assert_array_equal(built.gate.running_var, 1.0)


def test_build_passes_the_settings():
    gate = BatchNorm.build([(4,)], {"momentum": 0.99, "eps": 1e-3}, no_init).gate
    assert (gate.momentum, gate.eps) == (0.99, 1e-3)
    assert GroupNorm.build([(6, 2, 2)], {"groups": 3}, no_init).gate.groups == 3


@pytest.mark.parametrize("cls, shape, words", [
    (BatchNorm, (3, 4, 4),
     ["batchnorm needs flat features (D,)", "(3, 4, 4)", "spatial_batchnorm"]),
    (LayerNorm, (3, 4, 4), ["layernorm needs flat features (D,)", "(3, 4, 4)"]),
    (SpatialBatchNorm, (12,), ["spatial_batchnorm needs (C, H, W)", "(12,)", "use batchnorm"]),
    (GroupNorm, (12,), ["groupnorm needs (C, H, W)", "(12,)"])])
def test_build_rejects_the_wrong_number_of_axes(cls, shape, words):
    with pytest.raises(ValueError) as e:
        cls.build([shape], {}, no_init)
    for w in words:
        assert w in str(e.value)


def test_groupnorm_needs_groups_that_divide_c(rng):
    with pytest.raises(ValueError, match=r"groups=4.*C=6"):
        GroupNorm.build([(6, 2, 2)], {"groups": 4}, no_init)
    with pytest.raises(ValueError, match=r"groups=4.*C=6"):
        GroupNorm(4).forward(data(rng, (2, 6, 2, 2)), *params(rng, 6))


@pytest.mark.parametrize("make", [lambda: BatchNorm(momentum=1.0), lambda: BatchNorm(momentum=-0.1),
                                  lambda: BatchNorm(eps=0.0), lambda: LayerNorm(eps=-1.0),
                                  lambda: GroupNorm(0), lambda: GroupNorm(1.5)])
def test_settings_out_of_range_are_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_forward_rejects_inputs_of_the_wrong_rank(rng):
    with pytest.raises(ValueError, match="batchnorm"):
        BatchNorm().forward(data(rng, (2, 3, 4, 4)), *params(rng, 3))
    with pytest.raises(ValueError, match="spatial_batchnorm"):
        SpatialBatchNorm().forward(data(rng, (2, 3)), *params(rng, 3))
    with pytest.raises(ValueError, match="layernorm"):
        LayerNorm().forward(data(rng, (2, 3, 4, 4)), *params(rng, 3))


def test_registered_as_layers_with_settings_matching_the_constructors():
    for cls in GATES:
        assert registry.find(cls.name, ["layer"]) is cls
        assert cls.kind == "layer" and not cls.kinked
        signature = inspect.signature(cls.__init__).parameters
        assert set(cls.settings) == set(signature) - {"self"}
        for key, setting in cls.settings.items():
            assert setting.default == signature[key].default, (cls.name, key)
            assert setting.help
    assert BatchNorm.buffers == SpatialBatchNorm.buffers == ("running_mean", "running_var")
    assert LayerNorm.buffers == GroupNorm.buffers == ()
    assert BatchNorm.settings["momentum"].ge == 0.0 and BatchNorm.settings["momentum"].lt == 1.0
    assert BatchNorm.settings["eps"].gt == 0.0 and GroupNorm.settings["groups"].type is int


def test_labels_show_what_differs_from_the_defaults():
    assert BatchNorm().label() == "batchnorm"
    assert BatchNorm(momentum=0.99).label() == "batchnorm(momentum=0.99)"
    assert SpatialBatchNorm(eps=1e-3).label() == "spatial_batchnorm(eps=0.001)"
    assert LayerNorm().label() == "layernorm"
    assert GroupNorm(2).label() == "groupnorm(2)"
    assert GroupNorm(1, eps=1e-3).label() == "groupnorm(1, eps=0.001)"
    assert all(cls().macs((4, 3)) == 0 for cls in (BatchNorm, LayerNorm))


# ---- torch, when installed ------------------------------------------------------------------
def torch_grads(fn, arrays, R):
    """fn(*tensors) -> output; the output and each array's gradient of sum(output * R)."""
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.tensor(R))
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


def assert_matches_torch(gate, arrays, fn, R):
    out = gate.forward(*arrays)
    grads = gate.backward(R)
    t_out, t_grads = torch_grads(fn, arrays, R)
    np.testing.assert_allclose(out, t_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, t_grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, cls", [((8, 5), BatchNorm), ((4, 3, 5, 5), SpatialBatchNorm)])
def test_batchnorm_matches_torch_in_training(rng, shape, cls):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    C = shape[1]
    x, (gamma, beta), R = data(rng, shape), params(rng, C), rng.standard_normal(shape)
    t_mean, t_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    gate = cls()
    # torch's momentum is the weight of the new batch: 1 - ours.
    assert_matches_torch(gate, [x, gamma, beta],
                         lambda x, g, b: F.batch_norm(x, t_mean, t_var, g, b, training=True,
                                                      momentum=0.1, eps=EPS), R)
    np.testing.assert_allclose(gate.running_mean, t_mean.numpy(), rtol=1e-12)
    # torch keeps the UNBIASED variance in running_var; CS231n (and this gate) the biased one.
    M = x.size // C
    batch_var = (t_var.numpy() - 0.9) / 0.1
    np.testing.assert_allclose(gate.running_var, 0.9 + 0.1 * batch_var * (M - 1) / M, rtol=1e-12)


@pytest.mark.parametrize("shape, cls", [((8, 5), BatchNorm), ((4, 3, 5, 5), SpatialBatchNorm)])
def test_batchnorm_matches_torch_in_evaluation(rng, shape, cls):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    C = shape[1]
    x, (gamma, beta), R = data(rng, shape), params(rng, C), rng.standard_normal(shape)
    gate = cls()
    gate.running_mean, gate.running_var = rng.standard_normal(C), rng.uniform(0.5, 4.0, C)
    gate.training = False
    t_mean, t_var = torch.tensor(gate.running_mean), torch.tensor(gate.running_var)
    assert_matches_torch(gate, [x, gamma, beta],
                         lambda x, g, b: F.batch_norm(x, t_mean, t_var, g, b, training=False,
                                                      eps=EPS), R)


def test_layernorm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, (gamma, beta), R = data(rng, (6, 7)), params(rng, 7), rng.standard_normal((6, 7))
    assert_matches_torch(LayerNorm(), [x, gamma, beta],
                         lambda x, g, b: torch.nn.functional.layer_norm(x, (7,), g, b, EPS), R)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groupnorm_matches_torch(rng, groups):
    torch = pytest.importorskip("torch")
    shape = (3, 4, 3, 3)
    x, (gamma, beta), R = data(rng, shape), params(rng, 4), rng.standard_normal(shape)
    assert_matches_torch(GroupNorm(groups), [x, gamma, beta],
                         lambda x, g, b: torch.nn.functional.group_norm(x, groups, g, b, EPS), R)
