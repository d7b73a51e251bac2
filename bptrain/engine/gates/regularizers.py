"""Weight penalties over any number of weight matrices: one scalar out. Each weight also
feeds its matmul, so its gradient is the sum of both (the copy gate at work)."""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import Gate, away_from_zero


class _Penalty(Gate):
    """A `regularization.type`: a strength, any number of weight arrays in, one scalar out."""
    kind = "penalty"

    def __init__(self, strength: float):
        self.strength = strength

    def label(self) -> str:
        return f"{self.name}({self.strength:g})"

    @classmethod
    def examples(cls, rng):
        return [(f"{cls.name}(0.1)", cls(0.1), [away_from_zero(rng, 4, 3),
                                               away_from_zero(rng, 3, 2)])]


class L2(_Penalty):
    """R = 0.5 * strength * sum_k sum(W_k^2). Local gradient strength * W_k (PyTorch's
    weight_decay)."""
    name = "l2"

    def forward(self, *weights):
        self.weights = weights
        return 0.5 * self.strength * sum(np.vdot(W, W) for W in weights)

    def backward(self, upstream):
        return tuple(W * (self.strength * upstream) for W in self.weights)


class L1(_Penalty):
    """R = strength * sum_k sum(|W_k|). Local gradient strength * sign(W_k); kinked at 0."""
    name, kinked = "l1", True

    def forward(self, *weights):
        self.signs = [np.sign(W) for W in weights]
        return self.strength * sum(np.abs(W).sum() for W in weights)

    def backward(self, upstream):
        return tuple(s * (self.strength * upstream) for s in self.signs)

    def branches(self):
        return np.concatenate([s.ravel() for s in self.signs])
