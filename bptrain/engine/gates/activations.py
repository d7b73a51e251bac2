"""Activation functions and dropout. Each keeps the one array its backward needs."""
from __future__ import annotations

import numpy as np

from bptrain.engine.graph import Gate


class ReLU(Gate):
    """z = max(0, x). The upstream passes where x > 0 and stops elsewhere (a router
    between x and 0); kinked at 0."""
    name, pattern, kinked = "relu", "router", True

    def forward(self, x):
        self.mask = x > 0
        return np.maximum(x, 0)

    def backward(self, upstream):
        return (upstream * self.mask,)

    def branches(self):
        return self.mask


class LeakyReLU(Gate):
    """z = x if x > 0 else slope * x. Local gradient 1 or slope; kinked at 0."""
    name, kinked = "leaky_relu", True

    def __init__(self, slope: float = 0.01):
        self.slope = slope

    def label(self) -> str:
        return f"leaky_relu({self.slope:g})"

    def forward(self, x):
        self.mask = x > 0
        self.local_grad = np.where(self.mask, 1.0, self.slope).astype(np.result_type(x, 1.0))
        return x * self.local_grad

    def backward(self, upstream):
        return (upstream * self.local_grad,)

    def branches(self):
        return self.mask


class Sigmoid(Gate):
    """z = 1 / (1 + e^-x). Local gradient z (1 - z), from the output alone."""
    name = "sigmoid"

    def forward(self, x):
        # 0.5 (1 + tanh(x/2)) equals the logistic function and never overflows.
        self.out = 0.5 * (1.0 + np.tanh(0.5 * x))
        return self.out

    def backward(self, upstream):
        return (upstream * self.out * (1.0 - self.out),)


class Tanh(Gate):
    """z = tanh x. Local gradient 1 - z^2."""
    name = "tanh"

    def forward(self, x):
        self.out = np.tanh(x)
        return self.out

    def backward(self, upstream):
        return (upstream * (1.0 - self.out * self.out),)


class ELU(Gate):
    """z = x if x > 0 else alpha (e^x - 1). Local gradient 1, or z + alpha below 0.
    Smooth at 0 only when alpha = 1, so it is treated as kinked there."""
    name, kinked = "elu", True

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def label(self) -> str:
        return f"elu({self.alpha:g})"

    def forward(self, x):
        self.mask = x > 0
        out = np.where(self.mask, x, self.alpha * np.expm1(np.minimum(x, 0)))
        self.local_grad = np.where(self.mask, 1.0, out + self.alpha)
        return out

    def backward(self, upstream):
        return (upstream * self.local_grad,)

    def branches(self):
        return self.mask


class Dropout(Gate):
    """Inverted dropout: in training, zero each entry with probability p and scale the
    survivors by 1/(1-p), so evaluation is the identity and expected values match.
    The mask comes from the gate's own seeded generator (`rng`), saved in checkpoints."""
    name = "dropout"

    def __init__(self, p: float = 0.5, seed: int = 0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def label(self) -> str:
        return f"dropout({self.p:g})"

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.scale = None
            return x
        keep = self.rng.random(np.shape(x)) >= self.p
        self.scale = keep * np.asarray(1.0 / (1.0 - self.p), dtype=np.result_type(x, np.float32))
        return x * self.scale

    def backward(self, upstream):
        return (upstream if self.scale is None else upstream * self.scale,)
