"""Weight penalties over any number of weight matrices: one scalar out. Each weight also
feeds its matmul, so its gradient is the sum of both (the copy gate at work)."""
from __future__ import annotations

import numpy as np

from bptrain.engine.graph import Gate


class L2(Gate):
    """R = 0.5 * strength * sum_k sum(W_k^2). Local gradient strength * W_k (PyTorch's
    weight_decay)."""
    name = "l2"
    fresh_downstream = True

    def __init__(self, strength: float):
        self.strength = strength

    def label(self) -> str:
        return f"l2({self.strength:g})"

    def forward(self, *weights):
        self.weights = weights
        return 0.5 * self.strength * sum(np.vdot(W, W) for W in weights)

    def backward(self, upstream):
        return tuple(W * (self.strength * upstream) for W in self.weights)


class L1(Gate):
    """R = strength * sum_k sum(|W_k|). Local gradient strength * sign(W_k); kinked at 0."""
    name, kinked = "l1", True
    fresh_downstream = True

    def __init__(self, strength: float):
        self.strength = strength

    def label(self) -> str:
        return f"l1({self.strength:g})"

    def forward(self, *weights):
        self.signs = [np.sign(W) for W in weights]
        return self.strength * sum(np.abs(W).sum() for W in weights)

    def backward(self, upstream):
        return tuple(s * (self.strength * upstream) for s in self.signs)

    def branches(self):
        return np.concatenate([s.ravel() for s in self.signs])
