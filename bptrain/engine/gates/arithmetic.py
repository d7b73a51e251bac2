"""Elementwise arithmetic and reductions. Shapes broadcast; the Graph sums each downstream
gradient back to its input's shape, so these gates write plain elementwise math."""
from __future__ import annotations

import numpy as np

from bptrain.engine.graph import Gate


class Add(Gate):
    """z = x + y. Local gradients are 1 and 1: the upstream is handed to both (distributor)."""
    name, pattern = "add", "distributor"

    def forward(self, x, y):
        return x + y

    def backward(self, upstream):
        return upstream, upstream


class Subtract(Gate):
    """z = x - y. Local gradients 1 and -1."""
    name, pattern = "sub", "distributor"

    def forward(self, x, y):
        return x - y

    def backward(self, upstream):
        return upstream, -upstream


class Multiply(Gate):
    """z = x * y. Each input's local gradient is the other input (swap multiplier)."""
    name, pattern = "mul", "swap multiplier"

    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, upstream):
        dx = upstream * self.y if self.needs_input_grad[0] else None
        dy = upstream * self.x if self.needs_input_grad[1] else None
        return dx, dy


class Divide(Gate):
    """z = x / y. dz/dx = 1/y, dz/dy = -x/y^2."""
    name, pattern = "div", "scaler"

    def forward(self, x, y):
        self.x, self.y = x, y
        return x / y

    def backward(self, upstream):
        dx = upstream / self.y
        return dx, -dx * self.x / self.y


class Negate(Gate):
    """z = -x. Local gradient -1."""
    name, pattern = "neg", "sign flipper"

    def forward(self, x):
        return -x

    def backward(self, upstream):
        return (-upstream,)


class Power(Gate):
    """z = x ** p for a constant p. Local gradient p * x^(p-1)."""
    name, pattern = "pow", "scaler"

    def __init__(self, exponent: float):
        self.exponent = exponent

    def label(self) -> str:
        return f"pow({self.exponent:g})"

    def forward(self, x):
        self.x = x
        return x ** self.exponent

    def backward(self, upstream):
        p = self.exponent
        return (upstream * p * self.x ** (p - 1),)


class Maximum(Gate):
    """z = max(x, y), elementwise. The upstream goes to the larger input only (router).
    Ties go to x; the derivative jumps there, so the gate is kinked."""
    name, pattern, kinked = "max", "router", True

    def forward(self, x, y):
        self.x_wins = np.greater_equal(x, y)
        return np.maximum(x, y)

    def backward(self, upstream):
        return upstream * self.x_wins, upstream * ~self.x_wins

    def branches(self):
        return self.x_wins


class Minimum(Gate):
    """z = min(x, y), elementwise: routes the upstream to the smaller input."""
    name, pattern, kinked = "min", "router", True

    def forward(self, x, y):
        self.x_wins = np.less_equal(x, y)
        return np.minimum(x, y)

    def backward(self, upstream):
        return upstream * self.x_wins, upstream * ~self.x_wins

    def branches(self):
        return self.x_wins


class Abs(Gate):
    """z = |x|. Local gradient sign(x) (0 at 0); kinked at 0."""
    name, kinked = "abs", True

    def forward(self, x):
        self.sign = np.sign(x)
        return np.abs(x)

    def backward(self, upstream):
        return (upstream * self.sign,)

    def branches(self):
        return self.sign


class Exp(Gate):
    """z = e^x. Local gradient e^x, the output itself."""
    name = "exp"

    def forward(self, x):
        self.out = np.exp(x)
        return self.out

    def backward(self, upstream):
        return (upstream * self.out,)


class Log(Gate):
    """z = ln x. Local gradient 1/x."""
    name = "log"

    def forward(self, x):
        self.x = x
        return np.log(x)

    def backward(self, upstream):
        return (upstream / self.x,)


class Sum(Gate):
    """z = sum of x over `axis` (all axes when None). Every entry's local gradient is 1, so
    the upstream is copied back over the summed axes (distributor)."""
    name, pattern = "sum", "distributor"

    def __init__(self, axis: int | tuple[int, ...] | None = None):
        self.axis = axis

    def label(self) -> str:
        return "sum" if self.axis is None else f"sum(axis={self.axis})"

    def forward(self, x):
        self.shape = np.shape(x)
        return np.sum(x, axis=self.axis)

    def backward(self, upstream):
        if self.axis is not None:
            upstream = np.expand_dims(upstream, self.axis)
        return (np.broadcast_to(upstream, self.shape),)


class Mean(Sum):
    """z = mean of x over `axis`. Local gradient 1/count for every entry."""
    name = "mean"

    def label(self) -> str:
        return "mean" if self.axis is None else f"mean(axis={self.axis})"

    def forward(self, x):
        total = super().forward(x)
        self.count = np.size(x) // max(np.size(total), 1)
        return total / self.count

    def backward(self, upstream):
        return super().backward(upstream / self.count)
