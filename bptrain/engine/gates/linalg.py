"""Matrix multiply and bias add, the two halves of an affine layer, plus the fused layer.

The lecture's rules, with Y = X W:  dX = dY W^T (shape of X),  dW = X^T dY (shape of W).
"""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import EVERY_INPUT, Built, Gate, Setting, away_from_zero


class MatMul(Gate):
    """Y = X @ W.  X: (N, D), W: (D, M) -> Y: (N, M)."""
    name, kind, pattern = "matmul", "operator", "swap multiplier"

    def forward(self, X, W):
        self.X, self.W = X, W
        return X @ W

    def backward(self, upstream, needs_input_grad=EVERY_INPUT):
        if np.ndim(self.X) == 1 or np.ndim(self.W) == 1:
            return self._vector_backward(upstream, needs_input_grad)
        # An input that needs no gradient (the data X) costs no matmul.
        dX = upstream @ self.W.T if needs_input_grad[0] else None
        dW = self.X.T @ upstream if needs_input_grad[1] else None
        return dX, dW

    def _vector_backward(self, upstream, needs_input_grad):
        """A 1-D operand, as NumPy's matmul reads it: a row (1, D) on the left, a column (D, 1)
        on the right. The same two rules on those 2-D forms, each gradient reshaped back to its
        operand's shape."""
        X, W = promote_vectors(self.X, self.W)
        dY = np.reshape(upstream, (X.shape[0], W.shape[1]))
        dX = np.reshape(dY @ W.T, np.shape(self.X)) if needs_input_grad[0] else None
        dW = np.reshape(X.T @ dY, np.shape(self.W)) if needs_input_grad[1] else None
        return dX, dW

    def macs(self, X, W):
        return int(np.prod(X[:-1], dtype=np.int64)) * X[-1] * W[-1] if len(W) == 2 else 0

    @classmethod
    def examples(cls, rng):
        return [("matmul", cls(), [away_from_zero(rng, 5, 4), away_from_zero(rng, 4, 3)])]


class BiasAdd(Gate):
    """Y = X + b.  X: (N, M), b: (M,). b was copied to every row, so db sums over rows."""
    name, kind, pattern = "bias_add", "operator", "distributor"

    def forward(self, X, b):
        return X + b

    def backward(self, upstream):
        return upstream, upstream.sum(axis=0)

    @classmethod
    def examples(cls, rng):
        return [("bias_add", cls(), [away_from_zero(rng, 5, 3), away_from_zero(rng, 3)])]


class Affine(Gate):
    """Y = X @ W + b, fused into one gate (one output buffer, no intermediate X @ W node).
    X: (N, D), W: (D, M), b: (M,) -> Y: (N, M). The same math as MatMul then BiasAdd.
    In a config: {type: affine, units: M}; the last affine layer's units are the data's
    classes (or target columns) and may be left out. Images are flattened first."""
    name, kind, pattern = "affine", "layer", "swap multiplier"
    settings = {"units": Setting(None, int, gt=0, nullable=True,
                                 help="outputs; the last affine layer's come from the data"),
                "bias": Setting(True, bool, help="add a bias b")}

    def forward(self, X, W, b=None):
        self.X, self.W = X, W
        out = X @ W
        if b is not None:
            out += b  # in place: `out` is a fresh array we own
        return out

    def backward(self, upstream, needs_input_grad=EVERY_INPUT):
        dX = upstream @ self.W.T if needs_input_grad[0] else None
        dW = self.X.T @ upstream if needs_input_grad[1] else None
        if len(needs_input_grad) == 2:
            return dX, dW
        return dX, dW, upstream.sum(axis=0) if needs_input_grad[2] else None

    def macs(self, X, W, *b):
        return int(X[0]) * int(W[0]) * int(W[1])

    @classmethod
    def build(cls, in_shapes, settings, init):
        (shape,) = in_shapes
        if len(shape) != 1:
            raise ValueError(f"affine takes flat features (D,), got {tuple(shape)}; add "
                             "{type: flatten} before it")
        (d,), m = shape, settings["units"]
        W = init((d, m), d, m)
        if not settings.get("bias", True):
            return Built(MatMul(), {"W": W}, (m,))  # Y = X W: the affine layer's first half
        return Built(cls(), {"W": W, "b": np.zeros(m)}, (m,))

    @classmethod
    def examples(cls, rng):
        return [("affine", cls(), [away_from_zero(rng, 5, 4), away_from_zero(rng, 4, 3),
                                   away_from_zero(rng, 3)]),
                ("affine without bias", cls(), [away_from_zero(rng, 5, 4),
                                                away_from_zero(rng, 4, 3)])]


def promote_vectors(X, W):
    """The 2-D forms NumPy's matmul uses for 1-D operands: X (D,) -> (1, D), W (D,) -> (D, 1)."""
    X, W = np.asarray(X), np.asarray(W)
    return (X[None, :] if X.ndim == 1 else X), (W[:, None] if W.ndim == 1 else W)
