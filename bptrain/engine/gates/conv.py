"""Convolution, pooling and flatten: the layers of a convolutional network, in CS231n's layout.

Images are (N, C, H, W): N samples, C channels, height H, width W. A layer slides a window
over H and W; along each axis the window fits 1 + (H + 2 pad - HH) / stride times, and that
must be a whole number (no window hangs over the edge).

The convolution is one matrix multiply (CS231n's fast_layers.py, with NumPy's strided views
in place of Cython). im2col lays every window out as a column,

    cols[(c, i, j), (n, h', w')] = xpad[n, c, h' stride + i, w' stride + j]     (C HH WW, N H' W')

so that out = W_flat @ cols with W_flat = W.reshape(F, C HH WW), and backward is the affine
layer's two rules again: dW_flat = dout @ cols^T, dcols = W_flat^T @ dout. col2im undoes the
layout for dx, adding each column entry back onto the pixel it was copied from: a pixel
inside several windows was copied several times, so its gradient is the sum (copy gate).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bptrain.engine.gate import EVERY_INPUT, REQUIRED, Built, Gate, Setting


def _out_size(layer, n, k, stride, pad, names):
    """1 + (n + 2 pad - k) / stride: how many windows fit along one axis. A ValueError naming
    the sizes, and what would fit, when they do not tile the padded input exactly.
    `names` = (the axis, the window's size), e.g. ("H", "HH"); pad is None for pools."""
    axis, window = names
    p = pad or 0
    span = n + 2 * p - k
    if span >= 0 and span % stride == 0:
        return 1 + span // stride
    padded = f"{axis} + 2*pad = {n + 2 * p}" if pad is not None else f"{axis} = {n}"
    if span < 0:
        fix = f"pad >= {-(-(k - n) // 2)} or " if pad is not None else ""
        raise ValueError(f"{layer}: the window {window}={k} is larger than the input "
                         f"{padded}; use {fix}{window} <= {n + 2 * p}")
    fits = []
    if pad is not None:  # the nearest pad that fits (none when stride 2 meets an odd span)
        pads = [q for q in range(pad + stride + 1)
                if q != pad and n + 2 * q - k >= 0 and (n + 2 * q - k) % stride == 0]
        fits += [f"pad={min(pads, key=lambda q: abs(q - pad))}"] if pads else []
    fits.append(f"stride={max(d for d in range(1, stride) if span % d == 0)}")
    fits.append(f"{axis}={n - span % stride} or {n + (-span) % stride}")
    formula = (f"({axis} + 2*pad - {window}) / stride = ({n} + 2*{p} - {k}) / {stride}"
               if pad is not None else
               f"({axis} - {window}) / stride = ({n} - {k}) / {stride}")
    raise ValueError(f"{layer}: {formula} = {span / stride:g} is not a whole number, so the "
                     f"windows do not tile the input along {axis}; {', '.join(fits)} would fit")


def _images(layer, in_shapes):
    """The per-sample (C, H, W) shape of a layer's single input."""
    shape = tuple(in_shapes[0])
    if len(shape) != 3:
        raise ValueError(f"{layer} needs images (C, H, W); got {shape} — set data.shape")
    return shape


def _window_offsets(k, stride, Ho, Wo):
    """(i, j, slices) for each offset in a k x k window: the slices pick, for every window
    position, the pixel at that offset. Adding into these strided slices, one offset at a time,
    scatters a gradient back without a loop over samples or output pixels."""
    for i in range(k[0]):
        for j in range(k[1]):
            yield i, j, (slice(i, i + stride * Ho, stride), slice(j, j + stride * Wo, stride))


class Conv2D(Gate):
    """out[n, f] = sum over c, i, j of W[f, c, i, j] xpad[n, c, h' stride + i, w' stride + j]
    + b[f], with zero padding `pad` on every side of H and W.

    Input:
    - x: (N, C, H, W)
    - W: (F, C, HH, WW) filters
    - b: (F,) biases (left out for a layer without bias)
    Returns out: (N, F, H', W'), H' = 1 + (H + 2 pad - HH) / stride, likewise W'.
    Keeps the im2col matrix (C HH WW, N H' W') and W for backward.
    In a config: {type: conv, filters: 32, size: 7, pad: 3}.
    """
    name, kind, pattern = "conv", "layer", "swap multiplier"
    input_rank = 3
    settings = {"filters": Setting(REQUIRED, int, gt=0, help="F, the number of filters"),
                "size": Setting(3, int, gt=0, help="HH = WW, the filters' height and width"),
                "stride": Setting(1, int, gt=0, help="pixels between neighbouring windows"),
                "pad": Setting(0, int, ge=0, help="zeros added on each side of H and W"),
                "bias": Setting(True, bool, help="add a bias b per filter")}

    def __init__(self, stride: int = 1, pad: int = 0):
        self.stride, self.pad = stride, pad

    def label(self) -> str:
        shown = [f"{k}={getattr(self, k)}" for k in ("stride", "pad")
                 if getattr(self, k) != self.settings[k].default]
        return f"conv({', '.join(shown)})" if shown else "conv"

    def out_hw(self, H, W, HH, WW):
        return (_out_size("conv", H, HH, self.stride, self.pad, ("H", "HH")),
                _out_size("conv", W, WW, self.stride, self.pad, ("W", "WW")))

    def forward(self, x, W, b=None):
        N, C, H, width = x.shape
        F, _, HH, WW = W.shape
        Ho, Wo = self.out_hw(H, width, HH, WW)
        s, p = self.stride, self.pad
        xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        windows = sliding_window_view(xpad, (HH, WW), axis=(2, 3))[:, :, ::s, ::s]
        # im2col: (N, C, H', W', HH, WW) -> rows (c, i, j), columns (n, h', w'), one copy.
        # This order makes both products of backward single BLAS GEMMs on contiguous arrays.
        self.cols = np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3)).reshape(
            C * HH * WW, N * Ho * Wo)
        self.W, self.x_shape, self.has_bias = W, x.shape, b is not None
        # (F, K) @ (N, K, H'W'): one GEMM per sample on views of cols, writing (N, F, H'W')
        # directly, which saves transposing a (F, N H'W') result into (N, F, H', W').
        out = W.reshape(F, -1) @ self.cols.reshape(-1, N, Ho * Wo).transpose(1, 0, 2)
        if b is not None:
            out += b[:, None]  # in place: `out` is a fresh array we own
        return out.reshape(N, F, Ho, Wo)

    def backward(self, upstream, needs_input_grad=EVERY_INPUT):
        F = self.W.shape[0]
        # (N, F, H', W') -> (F, N H' W'), the column order of cols: a small copy
        dout = np.ascontiguousarray(upstream.transpose(1, 0, 2, 3)).reshape(F, -1)
        dW = (dout @ self.cols.T).reshape(self.W.shape) if needs_input_grad[1] else None
        # The first layer's x is the data: skipping its col2im saves the biggest product.
        dx = self._col2im(self.W.reshape(F, -1).T @ dout) if needs_input_grad[0] else None
        if not self.has_bias:
            return dx, dW
        db = upstream.sum(axis=(0, 2, 3)) if needs_input_grad[2] else None
        return dx, dW, db

    def _col2im(self, dcols):
        """(C HH WW, N H' W') column gradients -> dx (N, C, H, W): each entry added back onto
        the pixel it was copied from, one kernel offset (i, j) at a time."""
        N, C, H, W = self.x_shape
        _, _, HH, WW = self.W.shape
        Ho, Wo = self.out_hw(H, W, HH, WW)
        p = self.pad
        dcols = dcols.reshape(C, HH, WW, N, Ho, Wo)
        # Summed in (C, N, ...) order, the order of dcols, so both sides of += are contiguous
        # rows; a single transposing copy at the end gives (N, C, H, W).
        dxpad = np.zeros((C, N, H + 2 * p, W + 2 * p), dtype=dcols.dtype)
        for i, j, (rows, cols) in _window_offsets((HH, WW), self.stride, Ho, Wo):
            dxpad[:, :, rows, cols] += dcols[:, i, j]
        return np.ascontiguousarray(dxpad[:, :, p:p + H, p:p + W].transpose(1, 0, 2, 3))

    def macs(self, x, W, *b):
        N, C, H, width = x
        F, _, HH, WW = W
        Ho, Wo = self.out_hw(H, width, HH, WW)
        return int(N) * F * Ho * Wo * C * HH * WW

    @classmethod
    def build(cls, in_shapes, settings, init):
        C, H, W = _images("conv", in_shapes)
        F, k = settings["filters"], settings.get("size", 3)
        gate = cls(settings.get("stride", 1), settings.get("pad", 0))
        Ho, Wo = gate.out_hw(H, W, k, k)
        params = {"W": init((F, C, k, k), C * k * k, F * k * k)}
        if settings.get("bias", True):
            params["b"] = np.zeros(F)
        return Built(gate, params, (F, Ho, Wo))

    @classmethod
    def examples(cls, rng):
        def a(*shape):
            # Half-size values keep |out| small, so the rounding of out in a centered
            # difference (eps |out| / h) stays below gradcheck's absolute floor.
            return 0.5 * rng.standard_normal(shape)
        return [("conv 3x3 stride 1 pad 1", cls(1, 1), [a(2, 3, 5, 5), a(4, 3, 3, 3), a(4)]),
                ("conv 3x3 stride 2 pad 0", cls(2, 0), [a(2, 2, 7, 7), a(3, 2, 3, 3), a(3)]),
                ("conv 4x4 stride 2 pad 1", cls(2, 1), [a(2, 3, 4, 4), a(3, 3, 4, 4), a(3)]),
                ("conv 2x3 stride 3 pad 2, no bias", cls(3, 2),
                 [a(1, 2, 7, 5), a(2, 2, 2, 3)])]


class _Pool2D(Gate):
    """What max and average pooling share: the window, its checks and build.

    Both run over the size^2 offsets (i, j) of the window, each a strided slice of x that holds
    that offset's pixel for every window at once: no copy of the windows (size^2 times the
    output) and no reduction over a short axis, which NumPy does slowly. The same loop serves
    windows side by side (size == stride) and overlapping ones."""
    settings = {"size": Setting(2, int, gt=0, help="the window's height and width"),
                "stride": Setting(2, int, gt=0, help="pixels between neighbouring windows")}

    def __init__(self, size: int = 2, stride: int = 2):
        self.size, self.stride = size, stride

    def label(self) -> str:
        if (self.size, self.stride) == (2, 2):
            return self.name
        return f"{self.name}({self.size}, stride={self.stride})"

    def out_hw(self, H, W):
        return (_out_size(self.name, H, self.size, self.stride, None, ("H", "size")),
                _out_size(self.name, W, self.size, self.stride, None, ("W", "size")))

    def offsets(self, x_shape):
        """(i, j, slices) per window offset, as in _window_offsets; remembers x's shape and
        (H', W') for backward."""
        self.x_shape, self.hw = x_shape, self.out_hw(*x_shape[2:])
        return _window_offsets((self.size, self.size), self.stride, *self.hw)

    @classmethod
    def build(cls, in_shapes, settings, init):
        C, H, W = _images(cls.name, in_shapes)
        gate = cls(**settings)
        return Built(gate, {}, (C, *gate.out_hw(H, W)))


class MaxPool2D(_Pool2D):
    """out[n, c, h', w'] = the maximum of x over the window at (h' stride, w' stride).
    x: (N, C, H, W) -> out: (N, C, H', W'), H' = 1 + (H - size) / stride.

    The upstream goes to the entry that won, zero to the rest (a router); of tied entries the
    first in row-major order wins. Kinked where the winner changes: `branches()` is the
    winner's offset i size + j within each window, kept (N, C, H', W') for backward.
    """
    name, kind, pattern, kinked = "maxpool", "shape", "router", True
    input_rank = 3

    def forward(self, x):
        offsets = self.offsets(x.shape)
        out = np.full(x.shape[:2] + self.hw, -np.inf, dtype=x.dtype)
        self.argmax = np.zeros(out.shape, dtype=np.intp)
        for i, j, (rows, cols) in offsets:
            candidate = x[:, :, rows, cols]
            wins = candidate > out  # strictly: on a tie the earlier offset keeps the window
            np.maximum(out, candidate, out=out)
            self.argmax[wins] = i * self.size + j
        return out

    def backward(self, upstream):
        dx = np.zeros(self.x_shape, dtype=upstream.dtype)
        # Overlapping windows may share their winner, whose gradients then add up.
        for i, j, (rows, cols) in self.offsets(self.x_shape):
            dx[:, :, rows, cols] += np.where(self.argmax == i * self.size + j, upstream, 0)
        return (dx,)

    def branches(self):
        return self.argmax

    @classmethod
    def examples(cls, rng):
        def distinct(*shape):
            # Entries 0.1 apart, shuffled: no two tie within h, so no kink is crossed.
            return 0.1 * rng.permutation(int(np.prod(shape))).reshape(shape) - 1.0
        return [("maxpool 2x2 stride 2", cls(2, 2), [distinct(2, 3, 4, 6)]),
                ("maxpool 3x3 stride 2", cls(3, 2), [distinct(2, 2, 7, 5)]),
                ("maxpool 2x2 stride 1", cls(2, 1), [distinct(1, 2, 4, 3)])]


class AvgPool2D(_Pool2D):
    """out[n, c, h', w'] = the mean of x over the window at (h' stride, w' stride).
    x: (N, C, H, W) -> out: (N, C, H', W'), H' = 1 + (H - size) / stride.

    Each entry of a window has local gradient 1 / size^2: the upstream is spread evenly
    (a distributor, scaled). Keeps only the input's shape.
    """
    name, kind, pattern = "avgpool", "shape", "distributor"
    input_rank = 3

    def forward(self, x):
        offsets = self.offsets(x.shape)
        total = np.zeros(x.shape[:2] + self.hw, dtype=x.dtype)
        for _, _, (rows, cols) in offsets:
            total += x[:, :, rows, cols]
        total /= self.size * self.size  # in place; a Python int keeps float32 float32
        return total

    def backward(self, upstream):
        share = upstream / (self.size * self.size)
        dx = np.zeros(self.x_shape, dtype=share.dtype)
        for _, _, (rows, cols) in self.offsets(self.x_shape):
            dx[:, :, rows, cols] += share
        return (dx,)

    @classmethod
    def examples(cls, rng):
        return [("avgpool 2x2 stride 2", cls(2, 2), [rng.standard_normal((2, 3, 4, 6))]),
                ("avgpool 3x3 stride 2", cls(3, 2), [rng.standard_normal((2, 2, 7, 5))])]


class Flatten(Gate):
    """x: (N, C, H, W) -> (N, C H W), in C order (CS231n's x.reshape(N, -1)), ready for an
    affine layer. Moves no entry, so backward only reshapes the upstream back."""
    name, kind = "flatten", "shape"

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, upstream):
        return (upstream.reshape(self.x_shape),)

    @classmethod
    def build(cls, in_shapes, settings, init):
        return Built(cls(), {}, (int(np.prod(in_shapes[0], dtype=np.int64)),))

    @classmethod
    def examples(cls, rng):
        return [("flatten", cls(), [rng.standard_normal((2, 3, 2, 4))])]
