"""Elementwise arithmetic and reductions. Shapes broadcast; the Graph sums each downstream
gradient back to its input's shape, so these gates write plain elementwise math."""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import EVERY_INPUT, Built, Gate, away_from_zero

# Input shapes the binary gates are checked on: scalars, arrays, and broadcasting.
BROADCASTS = (("scalars", (), ()), ("arrays", (4, 3), (4, 3)), ("broadcast row", (4, 3), (3,)),
              ("broadcast col", (4, 3), (4, 1)), ("broadcast scalar", (4, 3), ()))


def _binary_examples(cls, rng, positive_y: bool = False):
    def y(shape):
        v = away_from_zero(rng, *shape)
        return np.abs(v) + 0.5 if positive_y else v
    return [(f"{cls.name} {tag}", cls(), [away_from_zero(rng, *a), y(b)])
            for tag, a, b in BROADCASTS]


class Add(Gate):
    """z = x + y (+ ...). Every local gradient is 1: the upstream is handed to each input
    unchanged (distributor). As a merge layer it is the residual connection y = x + f(x)."""
    name, kind, pattern = "add", "merge", "distributor"

    def forward(self, *xs):
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out + x
        self.count = len(xs)
        return out

    def backward(self, upstream):
        return (upstream,) * self.count

    @classmethod
    def build(cls, in_shapes, settings, init):
        if len(in_shapes) < 2:
            raise ValueError("add merges two or more inputs; give `inputs: [a, b]`")
        for s in in_shapes[1:]:
            if tuple(s) != tuple(in_shapes[0]):
                raise ValueError(f"add needs inputs of one shape, got {tuple(in_shapes[0])} and "
                                 f"{tuple(s)}; give both branches the same width (the units "
                                 "of the affine layer that ends one of them), or join them "
                                 "with concat")
        return Built(cls(), {}, tuple(in_shapes[0]))

    @classmethod
    def examples(cls, rng):
        return _binary_examples(cls, rng) + [
            ("add of three", cls(), [away_from_zero(rng, 4, 3) for _ in range(3)])]


class Subtract(Gate):
    """z = x - y. Local gradients 1 and -1."""
    name, kind, pattern = "sub", "operator", "distributor"

    def forward(self, x, y):
        return x - y

    def backward(self, upstream):
        return upstream, -upstream

    @classmethod
    def examples(cls, rng):
        return _binary_examples(cls, rng)


class Multiply(Gate):
    """z = x * y. Each input's local gradient is the other input (swap multiplier)."""
    name, kind, pattern = "mul", "operator", "swap multiplier"

    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, upstream, needs_input_grad=EVERY_INPUT):
        dx = upstream * self.y if needs_input_grad[0] else None
        dy = upstream * self.x if needs_input_grad[1] else None
        return dx, dy

    @classmethod
    def examples(cls, rng):
        return _binary_examples(cls, rng)


class Divide(Gate):
    """z = x / y. dz/dx = 1/y, dz/dy = -x/y^2."""
    name, kind, pattern = "div", "operator", "scaler"

    def forward(self, x, y):
        self.x, self.y = x, y
        return x / y

    def backward(self, upstream):
        dx = upstream / self.y
        return dx, -dx * self.x / self.y

    @classmethod
    def examples(cls, rng):
        return _binary_examples(cls, rng, positive_y=True)


class Negate(Gate):
    """z = -x. Local gradient -1."""
    name, kind, pattern = "neg", "operator", "sign flipper"

    def forward(self, x):
        return -x

    def backward(self, upstream):
        return (-upstream,)

    @classmethod
    def examples(cls, rng):
        return [(f"neg {tag}", cls(), [away_from_zero(rng, *s)]) for tag, s in SHAPES]


class Power(Gate):
    """z = x ** p for a constant p. Local gradient p * x^(p-1)."""
    name, kind, pattern = "pow", "operator", "scaler"

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

    @classmethod
    def examples(cls, rng):
        return [c for tag, s in SHAPES for c in (
            (f"pow(3) {tag}", cls(3), [away_from_zero(rng, *s)]),
            (f"pow(-0.5) {tag}", cls(-0.5), [np.abs(away_from_zero(rng, *s)) + 0.5]))]


SHAPES = (("scalar", ()), ("array", (4, 3)))


def _apart(rng, shape):
    x = away_from_zero(rng, *shape)  # y differs from x by at least 0.2, so max/min never tie
    return [x, x + away_from_zero(rng, *shape)]


class Maximum(Gate):
    """z = max(x, y), elementwise. The upstream goes to the larger input only (router).
    Ties go to x; the derivative jumps there, so the gate is kinked."""
    name, kind, pattern, kinked = "max", "function", "router", True

    def forward(self, x, y):
        self.x_wins = np.greater_equal(x, y)
        return np.maximum(x, y)

    def backward(self, upstream):
        return upstream * self.x_wins, upstream * ~self.x_wins

    def branches(self):
        return self.x_wins

    @classmethod
    def examples(cls, rng):
        return [(f"{cls.name} {tag}", cls(), _apart(rng, s)) for tag, s in SHAPES] + [
            (f"{cls.name} broadcast", cls(), [away_from_zero(rng, 4, 3),
                                              away_from_zero(rng, 3) + 3.0])]


class Minimum(Maximum):
    """z = min(x, y), elementwise: routes the upstream to the smaller input."""
    name = "min"

    def forward(self, x, y):
        self.x_wins = np.less_equal(x, y)
        return np.minimum(x, y)


class _Unary(Gate):
    """A one-input elementwise gate, checked on a scalar and an array."""
    positive_inputs = False

    @classmethod
    def examples(cls, rng):
        def x(shape):
            v = away_from_zero(rng, *shape)
            return np.abs(v) + 0.5 if cls.positive_inputs else v
        return [(f"{cls.name} {tag}", cls(), [x(s)]) for tag, s in SHAPES]


class Abs(_Unary):
    """z = |x|. Local gradient sign(x) (0 at 0); kinked at 0."""
    name, kind, pattern, kinked = "abs", "function", "sign flipper", True

    def forward(self, x):
        self.sign = np.sign(x)
        return np.abs(x)

    def backward(self, upstream):
        return (upstream * self.sign,)

    def branches(self):
        return self.sign


class Exp(_Unary):
    """z = e^x. Local gradient e^x, the output itself."""
    name, kind, pattern = "exp", "function", "scaler"

    def forward(self, x):
        self.out = np.exp(x)
        return self.out

    def backward(self, upstream):
        return (upstream * self.out,)


class Log(_Unary):
    """z = ln x. Local gradient 1/x."""
    name, kind, pattern, positive_inputs = "log", "function", "scaler", True

    def forward(self, x):
        self.x = x
        return np.log(x)

    def backward(self, upstream):
        return (upstream / self.x,)


class Sum(Gate):
    """z = sum of x over `axis` (all axes when None). Every entry's local gradient is 1, so
    the upstream is copied back over the summed axes (distributor)."""
    name, kind, pattern = "sum", "function", "distributor"

    def __init__(self, axis: int | tuple[int, ...] | None = None):
        self.axis = axis

    def label(self) -> str:
        return self.name if self.axis is None else f"{self.name}(axis={self.axis})"

    def forward(self, x):
        self.shape = np.shape(x)
        return np.sum(x, axis=self.axis)

    def backward(self, upstream):
        if self.axis is not None:
            upstream = np.expand_dims(upstream, self.axis)
        return (np.broadcast_to(upstream, self.shape),)

    @classmethod
    def examples(cls, rng):
        return [(g.label(), g, [away_from_zero(rng, 4, 3)]) for g in (cls(), cls(axis=0),
                                                                       cls(axis=1))]


class Mean(Sum):
    """z = mean of x over `axis`. Local gradient 1/count for every entry."""
    name = "mean"

    def forward(self, x):
        total = super().forward(x)
        self.count = np.size(x) // max(np.size(total), 1)
        return total / self.count

    def backward(self, upstream):
        return super().backward(upstream / self.count)
