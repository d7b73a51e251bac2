"""Data losses: scores (N, C) and targets in, one scalar out. Conventions of ../shared/README.md:
SVM and softmax are averaged over the batch; MSE sums squared errors over outputs, then sums
(note 004) or averages over the batch."""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import EVERY_INPUT, Gate, Setting, away_from_zero


class SoftmaxCrossEntropy(Gate):
    """L = mean_i -log softmax(s_i)[y_i].  scores (N, C) float, labels (N,) int -> scalar.
    Stable: scores are shifted by their row max before exp. dL/ds = (softmax - onehot) / N."""
    name, kind, config_name = "softmax_ce", "loss", "softmax"

    def forward(self, scores, labels):
        n = scores.shape[0]
        shifted = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        self.labels, self.rows = labels, np.arange(n)
        self.probs = exp / sums
        # log p_y = shifted_y - log(sum exp): no log of a probability that underflowed to 0.
        log_p = shifted[self.rows, labels] - np.log(sums[:, 0])
        return -log_p.sum() / n

    def backward(self, upstream):
        n = self.probs.shape[0]
        dscores = self.probs.copy()
        dscores[self.rows, self.labels] -= 1.0
        dscores *= upstream / n
        return dscores, None

    @classmethod
    def examples(cls, rng):
        return [("softmax_ce", cls(), [away_from_zero(rng, 6, 4), rng.integers(0, 4, size=6)])]


class SVMHinge(Gate):
    """L = mean_i sum_{j != y_i} max(0, s_j - s_{y_i} + margin), the multiclass SVM.
    scores (N, C), labels (N,) int -> scalar. Kinked where a margin is exactly 0."""
    name, kind, config_name, kinked = "svm_hinge", "loss", "svm", True
    settings = {"margin": Setting(1.0, float, ge=0.0, help="the hinge's margin (delta)")}

    def __init__(self, margin: float = 1.0):
        self.margin = margin

    def label(self) -> str:
        return f"svm_hinge({self.margin:g})"

    def forward(self, scores, labels):
        n = scores.shape[0]
        rows = np.arange(n)
        margins = scores - scores[rows, labels][:, None] + self.margin
        margins[rows, labels] = 0.0
        self.active = margins > 0
        self.labels, self.rows = labels, rows
        return np.maximum(margins, 0).sum() / n

    def backward(self, upstream):
        n = self.active.shape[0]
        # Each active margin adds +1 to its class score and -1 to the true class score.
        dscores = self.active.astype(np.result_type(upstream, np.float32))
        dscores[self.rows, self.labels] = -dscores.sum(axis=1)
        dscores *= upstream / n
        return dscores, None

    def branches(self):
        return self.active

    @classmethod
    def examples(cls, rng):
        labels = rng.integers(0, 4, size=6)
        s = rng.standard_normal((6, 4))
        # Push every margin s_j - s_y + 1 at least 0.2 away from 0, off the hinge's kink.
        margins = s - s[np.arange(6), labels][:, None] + 1.0
        s += np.where(np.abs(margins) < 0.2, 0.4 * np.sign(margins + 1e-12), 0.0)
        return [("svm_hinge(1)", cls(1.0), [s, labels])]


class MSE(Gate):
    """L = sum over outputs of (pred - target)^2, summed over the batch (reduction "sum", as
    in note 004) or averaged over it ("mean"). pred, target (N, K) -> scalar."""
    name, kind = "mse", "loss"
    settings = {"reduction": Setting("sum", str, choices=("sum", "mean"),
                                     help="sum over the batch (note 004) or average")}

    def __init__(self, reduction: str = "sum"):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"MSE reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def label(self) -> str:
        return f"mse({self.reduction})"

    def forward(self, pred, target):
        self.diff = pred - target
        self.scale = 1.0 if self.reduction == "sum" else 1.0 / pred.shape[0]
        return np.vdot(self.diff, self.diff) * self.scale  # vdot: one pass, no squared copy

    def backward(self, upstream, needs_input_grad=EVERY_INPUT):
        dpred = self.diff * (2.0 * self.scale * upstream)
        dtarget = -dpred if needs_input_grad[1] else None
        return dpred, dtarget

    @classmethod
    def examples(cls, rng):
        return [(f"mse({r})", cls(r), [away_from_zero(rng, 6, 4), away_from_zero(rng, 6, 4)])
                for r in ("sum", "mean")]
