"""Activation functions and dropout: one input, no parameters, the output shape of the input.
Each keeps the one array its backward needs."""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import Gate, Setting, away_from_zero


class Activation(Gate):
    """Base of the elementwise activations: a layer type in configs and a trace function.
    Subclasses set `name` and write forward/backward; `settings` become constructor keywords."""
    kind = None  # the base itself is not a layer type

    @classmethod
    def examples(cls, rng):
        """The gate with its default settings on a scalar and on an array."""
        defaults = {k: s.default for k, s in cls.settings.items()}
        return [(f"{cls(**defaults).label()} {tag}", cls(**defaults),
                 [away_from_zero(rng, *shape)])
                for tag, shape in (("scalar", ()), ("array", (4, 3)))]


class ReLU(Activation):
    """z = max(0, x). The upstream passes where x > 0 and stops elsewhere (a router
    between x and 0); kinked at 0."""
    name, kind, pattern, kinked = "relu", "activation", "router", True

    def forward(self, x):
        self.mask = x > 0
        return np.maximum(x, 0)

    def backward(self, upstream):
        return (upstream * self.mask,)

    def branches(self):
        return self.mask


class LeakyReLU(Activation):
    """z = x if x > 0 else slope * x. Local gradient 1 or slope; kinked at 0."""
    name, kind, pattern, kinked = "leaky_relu", "activation", "router", True
    settings = {"slope": Setting(0.01, float, ge=0.0, help="gradient below 0")}

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


class Sigmoid(Activation):
    """z = 1 / (1 + e^-x). Local gradient z (1 - z), from the output alone."""
    name, kind, pattern = "sigmoid", "activation", "squasher"

    def forward(self, x):
        # 0.5 (1 + tanh(x/2)) equals the logistic function and never overflows.
        self.out = 0.5 * (1.0 + np.tanh(0.5 * x))
        return self.out

    def backward(self, upstream):
        return (upstream * self.out * (1.0 - self.out),)


class Tanh(Activation):
    """z = tanh x. Local gradient 1 - z^2."""
    name, kind, pattern = "tanh", "activation", "squasher"

    def forward(self, x):
        self.out = np.tanh(x)
        return self.out

    def backward(self, upstream):
        return (upstream * (1.0 - self.out * self.out),)


class ELU(Activation):
    """z = x if x > 0 else alpha (e^x - 1). Local gradient 1, or z + alpha below 0.
    Smooth at 0 only when alpha = 1, so it is treated as kinked there."""
    name, kind, kinked = "elu", "activation", True
    settings = {"alpha": Setting(1.0, float, gt=0.0, help="the value approached below 0")}

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
    name, kind = "dropout", "shape"
    settings = {"p": Setting(0.5, float, ge=0.0, lt=1.0, help="probability of dropping")}

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

    @classmethod
    def examples(cls, rng):
        return [("dropout(0.3)", cls(0.3, seed=0), [away_from_zero(rng, 6, 5)])]
