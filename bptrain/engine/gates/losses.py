"""Data losses: scores (N, C) and targets in, one scalar out. Conventions of ../shared/README.md:
SVM and softmax are averaged over the batch; MSE sums squared errors over outputs, then sums
(note 004) or averages over the batch."""
from __future__ import annotations

import numpy as np

from bptrain.engine.graph import Gate


class SoftmaxCrossEntropy(Gate):
    """L = mean_i -log softmax(s_i)[y_i].  scores (N, C) float, labels (N,) int -> scalar.
    Stable: scores are shifted by their row max before exp. dL/ds = (softmax - onehot) / N."""
    name = "softmax_ce"

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


class SVMHinge(Gate):
    """L = mean_i sum_{j != y_i} max(0, s_j - s_{y_i} + margin), the multiclass SVM.
    scores (N, C), labels (N,) int -> scalar. Kinked where a margin is exactly 0."""
    name, kinked = "svm_hinge", True

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


class MSE(Gate):
    """L = sum over outputs of (pred - target)^2, summed over the batch (reduction "sum", as
    in note 004) or averaged over it ("mean"). pred, target (N, K) -> scalar."""
    name = "mse"

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

    def backward(self, upstream):
        dpred = self.diff * (2.0 * self.scale * upstream)
        dtarget = -dpred if self.needs_input_grad[1] else None
        return dpred, dtarget
