"""TensorBoard event files for a run: `train.tensorboard: true` (or `bptrain run --tensorboard`)
writes them to runs/NAME/tensorboard/ through tensorboardX, an optional extra
(pip install "bptrain[tensorboard]"); view them with `tensorboard --logdir runs`.

At each evaluation (the step is the optimizer step of the record in metrics.jsonl):

  scalars     loss/train, loss/val, accuracy/train, accuracy/val, loss/batch_mean (the mean
              minibatch loss of the epoch), learning_rate; per layer (fc1, ..., scores)
              grad_norm/<layer>, update_ratio/<layer>, weight_norm/<layer>, and dead/<layer>
              or saturated/<layer> where it has them: the numbers of the record's
              "diagnostics"
  histograms  weights/<param> of every parameter, gradients/<param> of the gradient that the
              last training step left in the parameter's node (with train.accumulate > 1: the
              last micro-batch's)

This module is imported only when the option is on, so tensorboardX (0.18 s to import) costs
nothing otherwise.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bptrain.errors import ConfigError

# metrics.jsonl key -> scalar tag
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
           "val_acc": "accuracy/val", "batch_loss": "loss/batch_mean", "lr": "learning_rate"}
# per-layer diagnostics key -> tag prefix (the layer's name follows: grad_norm/fc1)
LAYER_SCALARS = ("grad_norm", "update_ratio", "weight_norm", "dead", "saturated")


def require() -> Any:
    """The SummaryWriter class, or a ConfigError that says how to install it."""
    # tensorboardX imports PyTorch at import time when it is installed (2+ s) only to accept
    # torch tensors; bptrain gives it NumPy arrays, so hide torch while it loads (0.2 s).
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]  # import torch -> ImportError
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard is on (or --tensorboard was given), but the tensorboardX "
            "package is not installed. Install the optional extra with "
            'pip install "bptrain[tensorboard]" (or pip install tensorboardX), or turn the '
            "option off (--set train.tensorboard=false); the run is recorded in "
            "metrics.jsonl either way.") from None
    finally:
        if hide_torch and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


def scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """tag -> value of one metrics record: what `TensorBoardLog.evaluation` writes."""
    out: dict[str, float] = {}
    for key, tag in SCALARS.items():
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[tag] = float(v)
    for layer, d in (rec.get("diagnostics") or {}).items():
        for key in LAYER_SCALARS:
            v = d.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{key}/{layer}"] = float(v)
    return out


class TensorBoardLog:
    """One run's event writer; a context manager that closes (and flushes) it."""

    def __init__(self, logdir: str | Path):
        SummaryWriter = require()
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=30)

    def evaluation(self, rec: Mapping[str, Any], params: Mapping[str, np.ndarray],
                   grads: Mapping[str, np.ndarray | None]) -> None:
        step = int(rec["step"])
        for tag, value in scalars(rec).items():
            self.writer.add_scalar(tag, value, step)
        for name, value in params.items():
            self._histogram(f"weights/{name}", value, step)
        for name, g in grads.items():
            if g is not None:
                self._histogram(f"gradients/{name}", g, step)
        self.writer.flush()

    def _histogram(self, tag: str, value: np.ndarray, step: int) -> None:
        a = np.asarray(value, dtype=np.float64).ravel()
        a = a[np.isfinite(a)]
        if a.size:
            self.writer.add_histogram(tag, a, step)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
