"""Early stopping: `train.early_stopping: {metric, patience, min_delta}`.

At each evaluation the chosen metric either improves on the best so far (a loss falls by more
than min_delta, an accuracy rises by more than min_delta; the first evaluation always does),
and the weights and running statistics of that evaluation are kept, or it does not, and after
`patience` evaluations in a row without improvement training stops. The kept weights then go
into model.npz. Its state (counters and the kept arrays) is saved in every checkpoint, so a
resumed run stops where an uninterrupted one does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bptrain.errors import ConfigError
from bptrain.net.config import EarlyStoppingConfig

PREFIX = "stop/"  # the kept arrays' names in checkpoint.npz


class EarlyStopping:
    def __init__(self, cfg: EarlyStoppingConfig):
        self.cfg = cfg
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0                       # evaluations since the last improvement
        self.stopped_epoch: int | None = None
        self.weights: dict[str, np.ndarray] = {}

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def check_metric(self, has_val: bool, has_acc: bool) -> None:
        m = self.cfg.metric
        if m.startswith("val_") and not has_val:
            raise ConfigError(f"train.early_stopping.metric: {m} needs a validation split, and "
                              "this run has none; set data.val_fraction above 0 or use "
                              "metric: train_loss.")
        if m == "val_acc" and not has_acc:
            raise ConfigError("train.early_stopping.metric: val_acc needs class labels, and "
                              "this run has real-valued targets; use metric: val_loss.")

    def improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        d = self.cfg.min_delta
        if self.cfg.metric.endswith("_acc"):
            return value > self.best_value + d
        return value < self.best_value - d

    def update(self, record: dict[str, Any], weights: dict[str, np.ndarray]) -> bool:
        """Read one evaluation; True when training should stop now. `weights` are the
        current parameters and running statistics (copied when kept)."""
        value = record[self.cfg.metric]
        if self.improved(value):
            self.best_value, self.best_epoch, self.wait = value, record["epoch"], 0
            self.weights = {k: np.array(v, copy=True) for k, v in weights.items()}
            return False
        self.wait += 1
        if self.wait >= self.cfg.patience:
            self.stopped_epoch = record["epoch"]
            return True
        return False

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def arrays(self) -> dict[str, np.ndarray]:
        return {PREFIX + k: v for k, v in self.weights.items()}

    def load(self, state: dict[str, Any] | None, ckpt: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.wait, self.stopped_epoch = int(state["wait"]), state["stopped_epoch"]
        self.weights = {k[len(PREFIX):]: v for k, v in ckpt.items() if k.startswith(PREFIX)}

    def summary(self) -> dict[str, Any]:
        """What summary.json says: whether it stopped, when, and whose weights were kept."""
        return {"metric": self.cfg.metric, "patience": self.cfg.patience,
                "min_delta": self.cfg.min_delta, "stopped": self.stopped,
                "stopped_epoch": self.stopped_epoch,
                "restored_epoch": self.best_epoch if self.stopped else None,
                "best_epoch": self.best_epoch, "best_value": self.best_value}
