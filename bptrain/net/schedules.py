"""The learning rate of every training step: a schedule type, an optional linear warm-up, and
the state that reduce-on-plateau keeps between evaluations (saved in checkpoints).

With base the optimizer's lr, e the 0-based epoch, s the 0-based step, E the epochs and S the
steps of the run (PyTorch's torch.optim.lr_scheduler formulas):

  constant, step, exponential, cosine   `learning_rate` in optim.py, once per epoch
  cosine, per_step: true                min_lr + (base - min_lr) (1 + cos(pi s / S)) / 2 at each
                                        step (CosineAnnealingLR(T_max=S) stepped per step)
  plateau                               ReduceLROnPlateau(mode="min", factor=gamma, patience,
                                        threshold, threshold_mode="rel", min_lr) on val_loss
                                        (train_loss without a validation split), at each
                                        evaluation
  warmup_epochs: W                      times (t + 1) / (W + 1) while t < W, with t the epoch
                                        (or the step, and W * steps per epoch, with per_step):
                                        LinearLR(start_factor=1/(W+1), total_iters=W), chained
                                        (multiplied) with the type, as ChainedScheduler does
"""
from __future__ import annotations

import math
from typing import Any

from bptrain.net.config import ScheduleConfig
from bptrain.net.optim import learning_rate

PLATEAU_EPS = 1e-8  # ReduceLROnPlateau's eps: smaller reductions are skipped


class Schedule:
    """`lr(epoch, step)` for the step about to run; `observe(record)` after each evaluation."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int,
                 total_steps: int, epochs: int):
        self.cfg, self.base_lr = cfg, base_lr
        self.steps_per_epoch, self.total_steps, self.epochs = steps_per_epoch, total_steps, epochs
        self.per_step = cfg.per_step
        # reduce-on-plateau's state
        self.plateau_lr = base_lr
        self.best = math.inf
        self.bad_evaluations = 0

    def lr(self, epoch: int, step: int) -> float:
        c = self.cfg
        if c.type == "plateau":
            rate = self.plateau_lr
        elif c.type == "cosine" and c.per_step:
            frac = min(step / max(self.total_steps, 1), 1.0)
            rate = c.min_lr + (self.base_lr - c.min_lr) * (1 + math.cos(math.pi * frac)) / 2
        else:
            rate = learning_rate(c, self.base_lr, epoch, self.epochs)
        return rate * self.warmup_factor(epoch, step)

    def warmup_factor(self, epoch: int, step: int) -> float:
        W = self.cfg.warmup_epochs
        if W == 0:
            return 1.0
        t = epoch
        if self.per_step:
            t, W = step, W * self.steps_per_epoch
        return (t + 1) / (W + 1) if t < W else 1.0

    def observe(self, record: dict[str, Any]) -> None:
        """An evaluation happened: reduce-on-plateau reads its validation loss."""
        if self.cfg.type != "plateau":
            return
        value = record.get("val_loss")
        if value is None:
            value = record["train_loss"]
        if value < self.best * (1.0 - self.cfg.threshold):
            self.best, self.bad_evaluations = value, 0
        else:
            self.bad_evaluations += 1
        if self.bad_evaluations > self.cfg.patience:
            new = max(self.plateau_lr * self.cfg.gamma, self.cfg.min_lr)
            if self.plateau_lr - new > PLATEAU_EPS:
                self.plateau_lr = new
            self.bad_evaluations = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state for checkpoint meta (inf written as None)."""
        return {"plateau_lr": self.plateau_lr,
                "best": None if math.isinf(self.best) else self.best,
                "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.plateau_lr = float(state["plateau_lr"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_evaluations = int(state["bad_evaluations"])
