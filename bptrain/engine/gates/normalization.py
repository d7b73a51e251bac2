"""Normalization layers: batch norm (flat and spatial), layer norm and group norm.

All four compute the same thing over different axes:

    xhat = (x - mean) / sqrt(var + eps)        (mean and BIASED variance over the axes)
    out  = gamma * xhat + beta                 (one gamma and beta per feature or channel)

    batchnorm          x (N, D)        statistics per feature over N          running stats (D,)
    spatial_batchnorm  x (N, C, H, W)  per channel over (N, H, W)             running stats (C,)
    layernorm          x (N, D)        per sample over D
    groupnorm          x (N, C, H, W)  per sample and group over (C/G, H, W)

Batch norm uses the batch's statistics in training and running averages of them in evaluation
(CS231n assignment 2); layer and group norm do the same in both modes.

The backward is the short form (CS231n's batchnorm_backward_alt). With M entries per
statistic, s = 1/sqrt(var + eps) and dxhat = upstream * gamma, x_i reaches the loss three ways:
through xhat_i itself (s dxhat_i), through the mean (-s mean(dxhat); the variance's own
dependence on the mean is sum(x - mean) = 0) and through the variance
(dL/dvar = -s^3/2 sum_j dxhat_j (x_j - mean), dvar/dx_i = 2 (x_i - mean) / M). Together:

    dx = s * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
       = (1/M) s (M dxhat - sum(dxhat) - xhat sum(dxhat xhat))
"""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import Built, Gate, Setting


def _normalize(x, axes, eps):
    """(xhat, mean, var, inv_std) over `axes`, kept as length-1 axes so they broadcast."""
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)  # biased: divide by M, not M-1
    inv_std = 1.0 / np.sqrt(var + eps)  # a Python float keeps float32 float32
    return centered * inv_std, mean, var, inv_std


def _normalize_backward(dxhat, xhat, inv_std, axes):
    """dL/dx from dL/dxhat when the statistics over `axes` came from x itself (see above)."""
    return inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                      - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))


def _channel_view(v, ndim):
    """A (C,) vector shaped to broadcast along axis 1 of an ndim-array: (C,) or (C, 1, 1)."""
    return v.reshape(v.shape + (1,) * (ndim - 2))


def _label(name, gate, shown=()):
    """'name' plus the settings that differ from their defaults (and those in `shown`)."""
    parts = [f"{getattr(gate, k)}" for k in shown]
    parts += [f"{k}={getattr(gate, k):g}" for k, s in gate.settings.items()
              if k not in shown and getattr(gate, k) != s.default]
    return f"{name}({', '.join(parts)})" if parts else name


def _one_shape(name, in_shapes, ndim, hint):
    """The single per-sample input shape of a normalization layer, of `ndim` axes."""
    if len(in_shapes) != 1:
        raise ValueError(f"{name} takes one input, got {len(in_shapes)}")
    shape = tuple(in_shapes[0])
    if len(shape) != ndim:
        want = "flat features (D,)" if ndim == 1 else "(C, H, W) per sample"
        raise ValueError(f"{name} needs {want}, got {shape}; {hint}")
    return shape


def _away_from_zero(rng, n):
    """gamma for gradient checks: |gamma| in [0.5, 1.5], so no dx entry is tiny by a small
    gamma alone (a relative error of tiny numbers measures rounding, not the backward)."""
    return rng.uniform(0.5, 1.5, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)


def _check_eps(eps):
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return float(eps)


MOMENTUM = Setting(0.9, float, ge=0.0, lt=1.0,
                   help="weight of the old running statistics at each training step: "
                        "running = momentum * running + (1 - momentum) * batch")
EPS = Setting(1e-5, float, gt=0.0, help="added to the variance before the square root, so a "
                                        "constant feature does not divide by zero")


class BatchNorm(Gate):
    """Batch normalization (Ioffe & Szegedy 2015), as CS231n's batchnorm_forward/backward.

    forward(x, gamma, beta):  x (N, D), gamma (D,), beta (D,) -> out (N, D)
    backward(upstream):       upstream (N, D) -> dx (N, D), dgamma (D,), dbeta (D,)

    Training: each feature is normalized by the batch mean and biased variance, and
        running_mean = momentum * running_mean + (1 - momentum) * batch mean
        running_var  = momentum * running_var  + (1 - momentum) * batch variance (biased).
    Evaluation: the running statistics instead; then out is affine in x (constants are used).
    running_mean/running_var (D,) are buffers: zeros/ones from `build`, or from the first
    forward, in the input's dtype.
    """
    name, kind = "batchnorm", "layer"
    buffers = ("running_mean", "running_var")
    settings = {"momentum": MOMENTUM, "eps": EPS}
    axes = (0,)          # the axes the statistics are taken over
    sample_ndim = 1      # axes per sample, without the batch axis

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.eps = float(momentum), _check_eps(eps)
        self.running_mean = self.running_var = None

    def label(self) -> str:
        return _label(self.name, self)

    def forward(self, x, gamma, beta):
        if x.ndim != self.sample_ndim + 1:
            raise ValueError(f"{self.name} needs x with {self.sample_ndim + 1} axes, "
                             f"got shape {x.shape}")
        self._check_running(x.shape[1], x.dtype)
        self.gamma = _channel_view(gamma, x.ndim)
        # Backward must follow the statistics this forward used, whatever the mode is later.
        self.batch_stats = self.training
        if self.training:
            self.xhat, mean, var, self.inv_std = _normalize(x, self.axes, self.eps)
            m = self.momentum
            self.running_mean = m * self.running_mean + (1.0 - m) * mean.reshape(-1)
            self.running_var = m * self.running_var + (1.0 - m) * var.reshape(-1)
        else:
            mean = _channel_view(self.running_mean, x.ndim)
            self.inv_std = 1.0 / np.sqrt(_channel_view(self.running_var, x.ndim) + self.eps)
            self.xhat = (x - mean) * self.inv_std
        return self.gamma * self.xhat + _channel_view(beta, x.ndim)

    def backward(self, upstream):
        dbeta = upstream.sum(axis=self.axes)
        dgamma = (upstream * self.xhat).sum(axis=self.axes)
        dxhat = upstream * self.gamma
        if self.batch_stats:
            dx = _normalize_backward(dxhat, self.xhat, self.inv_std, self.axes)
        else:  # running statistics are constants: dxhat/dx = 1/sqrt(running_var + eps)
            dx = dxhat * self.inv_std
        return dx, dgamma, dbeta

    def _check_running(self, channels, dtype):
        """Create the running statistics on first use; keep them in the input's dtype (a
        float32 model keeps float32 buffers even when `build` made them float64)."""
        if self.running_mean is None or self.running_var is None:
            self.running_mean = np.zeros(channels, dtype)
            self.running_var = np.ones(channels, dtype)
        if self.running_mean.shape != (channels,) or self.running_var.shape != (channels,):
            raise ValueError(f"{self.name} has running statistics of shapes "
                             f"{self.running_mean.shape} and {self.running_var.shape}, but "
                             f"the input has {channels} channels")
        self.running_mean = self.running_mean.astype(dtype, copy=False)
        self.running_var = self.running_var.astype(dtype, copy=False)

    @classmethod
    def build(cls, in_shapes, settings, init):
        shape = _one_shape(cls.name, in_shapes, 1, "use spatial_batchnorm for (C, H, W) inputs")
        return _built_with_buffers(cls, shape, settings)

    @classmethod
    def examples(cls, rng):
        # Few entries per statistic: each of the M outputs a perturbation moves adds its
        # rounding to the centered difference, and a (4, 3, 5, 5) batch (M = 100) already
        # brings dx's smallest entries near a 1e-7 relative error.
        shape = (8, 5) if cls.sample_ndim == 1 else (2, 3, 3, 3)
        C = shape[1]

        def batch():  # not already normalized, so the statistics matter
            return rng.standard_normal(shape) + 2.0

        gamma, beta = _away_from_zero(rng, C), rng.standard_normal(C)
        warm = cls()
        for _ in range(5):
            warm.forward(batch(), gamma, beta)
        warm.training = False
        return [(f"{cls.name} train", cls(), [batch(), gamma, beta]),
                (f"{cls.name} eval", warm, [batch(), gamma.copy(), beta.copy()])]


def _built_with_buffers(cls, shape, settings):
    gate = cls(**settings)
    C = shape[0]
    gate.running_mean, gate.running_var = np.zeros(C), np.ones(C)
    return Built(gate, {"gamma": np.ones(C), "beta": np.zeros(C)}, shape)


class SpatialBatchNorm(BatchNorm):
    """Batch normalization per channel of an image batch (CS231n's spatial_batchnorm): each
    channel's statistics are taken over the batch and every position, axes (0, 2, 3).

    forward(x, gamma, beta):  x (N, C, H, W), gamma (C,), beta (C,) -> out (N, C, H, W)
    backward(upstream):       upstream (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)

    The same as batchnorm on x.transpose(0, 2, 3, 1).reshape(-1, C), without the copies.
    running_mean/running_var have shape (C,).
    """
    name, kind = "spatial_batchnorm", "layer"
    input_rank = 3
    axes = (0, 2, 3)
    sample_ndim = 3

    @classmethod
    def build(cls, in_shapes, settings, init):
        shape = _one_shape(cls.name, in_shapes, 3, "use batchnorm for flat (D,) features")
        return _built_with_buffers(cls, shape, settings)


class LayerNorm(Gate):
    """Layer normalization (Ba et al. 2016): each sample normalized over its features, the
    same in training and evaluation (no running statistics).

    forward(x, gamma, beta):  x (N, D), gamma (D,), beta (D,) -> out (N, D)
    backward(upstream):       upstream (N, D) -> dx (N, D), dgamma (D,), dbeta (D,)
    """
    name, kind = "layernorm", "layer"
    settings = {"eps": EPS}

    def __init__(self, eps: float = 1e-5):
        self.eps = _check_eps(eps)

    def label(self) -> str:
        return _label(self.name, self)

    def forward(self, x, gamma, beta):
        if x.ndim != 2:
            raise ValueError(f"layernorm needs x of shape (N, D), got {x.shape}")
        self.gamma = gamma
        self.xhat, _, _, self.inv_std = _normalize(x, (1,), self.eps)
        return gamma * self.xhat + beta

    def backward(self, upstream):
        # Batch norm's backward along the other axis: the statistics are per row.
        dx = _normalize_backward(upstream * self.gamma, self.xhat, self.inv_std, (1,))
        return dx, (upstream * self.xhat).sum(axis=0), upstream.sum(axis=0)

    @classmethod
    def build(cls, in_shapes, settings, init):
        shape = _one_shape(cls.name, in_shapes, 1, "flatten first, or use groupnorm with "
                                                  "groups=1 for (C, H, W) inputs")
        D = shape[0]
        return Built(cls(**settings), {"gamma": np.ones(D), "beta": np.zeros(D)}, shape)

    @classmethod
    def examples(cls, rng):
        x = rng.standard_normal((6, 7)) + 2.0
        return [(cls.name, cls(), [x, _away_from_zero(rng, 7), rng.standard_normal(7)])]


class GroupNorm(Gate):
    """Group normalization (Wu & He 2018), CS231n's spatial_groupnorm: the C channels of each
    sample split into `groups` groups of C/groups consecutive channels; each group is
    normalized over its (C/groups, H, W) entries. The same in training and evaluation.
    groups=1 is layer norm over (C, H, W); groups=C is instance norm.

    forward(x, gamma, beta):  x (N, C, H, W), gamma (C,), beta (C,) -> out (N, C, H, W)
    backward(upstream):       upstream (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)
    (CS231n's gamma and beta have shape (1, C, 1, 1); here they are (C,) like batch norm's.)
    """
    name, kind = "groupnorm", "layer"
    input_rank = 3
    settings = {"groups": Setting(1, int, gt=0, help="channel groups, each normalized on its "
                                                     "own; must divide C (1: layer norm over "
                                                     "(C, H, W); C: instance norm)"),
                "eps": EPS}
    axes = (2, 3, 4)  # of the grouped view (N, G, C/G, H, W)

    def __init__(self, groups: int = 1, eps: float = 1e-5):
        if int(groups) != groups or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups}")
        self.groups, self.eps = int(groups), _check_eps(eps)

    def label(self) -> str:
        return _label(self.name, self, shown=("groups",))

    def _check_channels(self, C):
        if C % self.groups:
            raise ValueError(f"groupnorm with groups={self.groups} needs a channel count "
                             f"divisible by {self.groups}, got C={C}")

    def forward(self, x, gamma, beta):
        if x.ndim != 4:
            raise ValueError(f"groupnorm needs x of shape (N, C, H, W), got {x.shape}")
        N, C, H, W = x.shape
        self._check_channels(C)
        self.grouped = (N, self.groups, C // self.groups, H, W)
        xhat, _, _, self.inv_std = _normalize(x.reshape(self.grouped), self.axes, self.eps)
        self.xhat = xhat.reshape(x.shape)
        self.gamma = _channel_view(gamma, 4)
        return self.gamma * self.xhat + _channel_view(beta, 4)

    def backward(self, upstream):
        dxhat = (upstream * self.gamma).reshape(self.grouped)
        dx = _normalize_backward(dxhat, self.xhat.reshape(self.grouped), self.inv_std,
                                 self.axes).reshape(upstream.shape)
        return dx, (upstream * self.xhat).sum(axis=(0, 2, 3)), upstream.sum(axis=(0, 2, 3))

    @classmethod
    def build(cls, in_shapes, settings, init):
        shape = _one_shape(cls.name, in_shapes, 3, "use layernorm for flat (D,) features")
        gate = cls(**settings)
        gate._check_channels(shape[0])
        C = shape[0]
        return Built(gate, {"gamma": np.ones(C), "beta": np.zeros(C)}, shape)

    @classmethod
    def examples(cls, rng):
        x = rng.standard_normal((3, 4, 3, 3)) + 2.0
        return [(f"{cls.name}(2)", cls(2), [x, _away_from_zero(rng, 4), rng.standard_normal(4)])]
