"""Optimizers and learning-rate schedules, with PyTorch's formulas (torch.optim), in place.

With g the gradient, p the parameter, and wd the coupled weight decay (g <- g + wd p, as
PyTorch's `weight_decay`; 0 by default because the config's regularization already adds it):

  sgd       p -= lr g                       (with momentum > 0: as `momentum` below)
  momentum  v = mu v + g;            p -= lr v
  nesterov  v = mu v + g;            p -= lr (g + mu v)
  rmsprop   s = a s + (1 - a) g^2;   p -= lr g / (sqrt(s) + eps)          (a = decay_rate)
  adam      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
            p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
  adamw     p -= lr wd p (decoupled), then the adam step without coupled decay

Momentum as PyTorch writes it (v accumulates gradients, lr applied after) equals CS231n's
v = mu v - lr g; p += v while the learning rate is constant.
"""
from __future__ import annotations

import math

import numpy as np

from bptrain.net.config import OptimizerConfig, ScheduleConfig


class Optimizer:
    """Updates parameter arrays in place from their gradients: `step(grads, lr)`.
    State (velocities, moments, step count) lives in `state`, name -> array, for checkpoints."""

    def __init__(self, cfg: OptimizerConfig, params: dict[str, np.ndarray]):
        self.cfg = cfg
        self.params = params
        self.t = 0
        kind = cfg.type
        if kind == "sgd" and cfg.momentum:
            kind = "momentum"
        self.kind = kind
        slots = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "rmsprop": ("s",),
                 "adam": ("m", "v"), "adamw": ("m", "v")}[kind]
        self.state = {f"{slot}/{name}": np.zeros_like(p)
                      for name, p in params.items() for slot in slots}
        self._scratch: dict[str, np.ndarray] = {}  # made on first use, then reused

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.state, "t": np.array(self.t)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for key, arr in self.state.items():
            if key not in state or state[key].shape != arr.shape:
                raise ValueError(f"optimizer state {key!r} is missing or has the wrong shape")
            np.copyto(arr, state[key])
        self.t = int(state["t"])

    def _scratch_for(self, name: str, p: np.ndarray) -> np.ndarray:
        if name not in self._scratch:
            self._scratch[name] = np.empty_like(p)
        return self._scratch[name]

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """Update every parameter in place. The update is computed into a scratch array kept
        per parameter, so no step allocates, and the gradients are left as they were."""
        self.t += 1
        c = self.cfg
        for name, p in self.params.items():
            g = grads[name]
            if g is None:
                continue
            if c.weight_decay and self.kind != "adamw":
                g = g + c.weight_decay * p
            tmp = self._scratch_for(name, p)  # the update, before it is subtracted from p
            if self.kind == "sgd":
                np.multiply(g, lr, out=tmp)
            elif self.kind in ("momentum", "nesterov"):
                v = self.state[f"v/{name}"]
                v *= c.momentum
                v += g
                if self.kind == "nesterov":
                    np.multiply(v, c.momentum, out=tmp)
                    tmp += g
                    tmp *= lr
                else:
                    np.multiply(v, lr, out=tmp)
            elif self.kind == "rmsprop":
                s = self.state[f"s/{name}"]
                s *= c.decay_rate
                s += (1 - c.decay_rate) * (g * g)
                np.sqrt(s, out=tmp)  # the denominator first
                tmp += c.eps
                np.divide(g, tmp, out=tmp)
                tmp *= lr
            else:  # adam, adamw
                if self.kind == "adamw" and c.weight_decay:
                    p *= 1 - lr * c.weight_decay
                m, v = self.state[f"m/{name}"], self.state[f"v/{name}"]
                m *= c.beta1
                m += (1 - c.beta1) * g
                v *= c.beta2
                v += (1 - c.beta2) * (g * g)
                bias1 = 1 - c.beta1 ** self.t
                bias2 = 1 - c.beta2 ** self.t
                np.divide(v, bias2, out=tmp)
                np.sqrt(tmp, out=tmp)
                tmp += c.eps
                np.divide(m, tmp, out=tmp)
                tmp *= lr / bias1
            p -= tmp


def learning_rate(cfg: ScheduleConfig, base_lr: float, epoch: int, total_epochs: int) -> float:
    """The learning rate for `epoch` (0-based), set once per epoch as PyTorch's schedulers do.

    constant: lr;  step: lr gamma^(epoch // every);  exponential: lr gamma^epoch;
    cosine: min_lr + (lr - min_lr) (1 + cos(pi epoch / total_epochs)) / 2.
    """
    if cfg.type == "step":
        return base_lr * cfg.gamma ** (epoch // cfg.every)
    if cfg.type == "exponential":
        return base_lr * cfg.gamma ** epoch
    if cfg.type == "cosine":
        frac = min(epoch / max(total_epochs, 1), 1.0)
        return cfg.min_lr + (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * frac)) / 2
    return base_lr


def clip_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm.
    Returns the norm before clipping."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values() if g is not None))
    if norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for g in grads.values():
            if g is not None:
                g *= scale
    return norm
