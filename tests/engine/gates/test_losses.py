"""bptrain/engine/gates/losses.py: softmax cross-entropy, the multiclass SVM and MSE."""
from __future__ import annotations

import numpy as np
import pytest

from bptrain.engine import gates as G
from bptrain.engine.gradcheck import check_gate
from conftest import assert_gate_passes

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
