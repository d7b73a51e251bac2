"""Matrix multiply and bias add, the two halves of an affine layer, plus the fused layer.

The lecture's rules, with Y = X W:  dX = dY W^T (shape of X),  dW = X^T dY (shape of W).
"""
from __future__ import annotations

import numpy as np

from bptrain.engine.graph import Gate


class MatMul(Gate):
    """Y = X @ W.  X: (N, D), W: (D, M) -> Y: (N, M)."""
    name, pattern = "matmul", "swap multiplier"
    fresh_downstream = True

    def forward(self, X, W):
        self.X, self.W = X, W
        return X @ W

    def backward(self, upstream):
        # An input that needs no gradient (the data X) costs no matmul.
        dX = upstream @ self.W.T if self.needs_input_grad[0] else None
        dW = self.X.T @ upstream if self.needs_input_grad[1] else None
        return dX, dW


class BiasAdd(Gate):
    """Y = X + b.  X: (N, M), b: (M,). b was copied to every row, so db sums over rows."""
    name, pattern = "bias_add", "distributor"

    def forward(self, X, b):
        return X + b

    def backward(self, upstream):
        return upstream, upstream.sum(axis=0)


class Affine(Gate):
    """Y = X @ W + b, fused into one gate (one output buffer, no intermediate X @ W node).
    X: (N, D), W: (D, M), b: (M,) -> Y: (N, M). The same math as MatMul then BiasAdd."""
    name, pattern = "affine", "swap multiplier"
    fresh_downstream = True

    def forward(self, X, W, b):
        self.X, self.W = X, W
        out = X @ W
        out += b  # in place: `out` is a fresh array we own
        return out

    def backward(self, upstream):
        dX = upstream @ self.W.T if self.needs_input_grad[0] else None
        dW = self.X.T @ upstream if self.needs_input_grad[1] else None
        db = upstream.sum(axis=0) if self.needs_input_grad[2] else None
        return dX, dW, db
