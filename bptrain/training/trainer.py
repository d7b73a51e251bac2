"""Training: minibatch SGD (and successors) over a model built once, with evaluation,
checkpoints that resume bit-identically, and every output in a run directory (rundir.py owns
its files). The console hears about it through a Reporter; this module prints nothing.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bptrain.errors import BptrainError, ConfigError, DataError, DivergenceError, EXIT_INTERRUPTED
from bptrain.net.config import Config, dump_config, load_config
from bptrain.net.augment import augment_batch
from bptrain.net.data import Dataset, load_data, load_npz_safely
from bptrain.net.model import Model, build_for_data
from bptrain.net.optim import Optimizer, clip_global_norm, learning_rate
from bptrain.training import rundir
from bptrain.training.curves import save_loss_curves
from bptrain.training.diagnostics import Diagnostics, announcements, warnings_summary
from bptrain.training.rundir import RunDir


class Interrupted(BptrainError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    exit_code = EXIT_INTERRUPTED


class Reporter(Protocol):
    """What training tells the console (report.py implements it; tests may record it)."""

    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, step: int, epoch: int, loss: float) -> None: ...
    def evaluation(self, record: dict[str, Any]) -> None: ...
    def end(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def start(self, info): pass
    def step(self, step, epoch, loss): pass
    def evaluation(self, record): pass
    def end(self, summary, history): pass
    def message(self, text): pass


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]            # the last evaluation
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(scores.argmax(axis=1) == y)) if len(y) else float("nan")


# ---- the loop -----------------------------------------------------------------------------
class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps, so a checkpoint is
    always taken at a clean step boundary (never halfway through an update)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Trainer:
    """Holds everything one run needs; `run()` trains to the configured end."""

    def __init__(self, cfg: Config, run_dir: RunDir | Path, reporter: Reporter | None = None,
                 data: Dataset | None = None, model: Model | None = None):
        self.cfg = cfg
        self.dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.dir.path
        self.reporter = reporter or SilentReporter()
        self.data = data if data is not None else load_data(cfg)
        self.model = model if model is not None else build_for_data(cfg, self.data)
        dtype = self.model.dtype
        d = self.data
        # Cast once: float32 stays float32 end to end, and no step converts anything.
        # Images reach the network as (N, C, H, W): a view of the flat rows, no copy.
        shape = (-1, *self.model.input_shape)
        self.X = np.ascontiguousarray(d.X_train, dtype=dtype).reshape(shape)
        self.y = d.y_train if d.is_classification else np.ascontiguousarray(d.y_train, dtype)
        self.X_val = np.ascontiguousarray(d.X_val, dtype=dtype).reshape(shape)
        self.y_val = d.y_val if d.is_classification else np.ascontiguousarray(d.y_val, dtype)
        self.optimizer = Optimizer(cfg.optimizer, dict(self.model.params))
        self.param_nodes = self.model.params.nodes()
        self.diagnostics = Diagnostics(self.model)  # per-layer numbers at each evaluation
        t = cfg.train
        n = len(self.X)
        # One optimizer step reads `accumulate` micro-batches of batch_size.
        self.micro_batch = min(t.batch_size, n)
        self.batch_size = min(t.batch_size * t.accumulate, n)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        self.total_steps = t.iterations or t.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.shuffle_rng = np.random.default_rng([cfg.seed, 1])
        aug = cfg.data.augment
        self.augment = aug if (aug.flip or aug.crop_pad) else None
        if self.augment is not None and self.X.ndim != 4:
            raise ConfigError("data.augment: flips and crops need images, and this network "
                              f"reads flat rows of {self.X.shape[1]} features; use a network "
                              "with image layers (conv, pooling) or drop data.augment.")
        self.augment_rng = np.random.default_rng([cfg.seed, 3])
        self._X_batch = np.empty((self.batch_size,) + self.X.shape[1:], dtype=self.X.dtype)
        self._y_batch = np.empty((self.batch_size,) + self.y.shape[1:], dtype=self.y.dtype)
        # A fixed sample of training data for train_loss / train_acc at each evaluation.
        sample_rng = np.random.default_rng([cfg.seed, 2])
        k = min(t.train_eval_samples, n)
        self.train_sample = np.sort(sample_rng.choice(n, k, replace=False))
        # Position and bookkeeping (all of it goes into checkpoints).
        self.epoch, self.batch_index, self.step = 0, 0, 0
        self.perm: np.ndarray | None = None
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        self.best: dict[str, Any] = {}
        self.best_score = -math.inf
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.last_finite_loss: float | None = None

    # -- evaluation --
    def evaluate(self, lr: float, batch_loss: float | None) -> dict[str, Any]:
        m = self.model
        Xs, ys = self.X[self.train_sample], self.y[self.train_sample]
        train_loss, train_scores = m.evaluate_loss(Xs, ys)
        diag = self.diagnostics.collect()  # reads the activations this forward left in the graph
        train_acc = accuracy(train_scores, ys) if m.num_classes and self.data.is_classification else None
        val_loss = val_acc = None
        if len(self.X_val):
            val_loss, val_scores = m.evaluate_loss(self.X_val, self.y_val)
            if m.num_classes and self.data.is_classification:
                val_acc = accuracy(val_scores, self.y_val)
        rec = {"epoch": self.epoch + 1, "step": self.step, "train_loss": train_loss,
               "val_loss": val_loss, "train_acc": train_acc, "val_acc": val_acc,
               "batch_loss": batch_loss, "lr": lr,
               "seconds": round(self.elapsed(), 4)}
        self.diagnostics.annotate(rec, diag, self.history)
        return rec

    def _score(self, rec: dict[str, Any]) -> float:
        """Higher is better: validation accuracy, else minus a loss."""
        if rec["val_acc"] is not None:
            return rec["val_acc"]
        return -(rec["val_loss"] if rec["val_loss"] is not None else rec["train_loss"])

    # -- checkpoints --
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"param/{k}": v for k, v in self.model.params.items()}
        arrays.update({f"buffer/{k}": v for k, v in self.model.buffer_arrays().items()})
        arrays.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        meta = {"epoch": self.epoch, "batch_index": self.batch_index, "step": self.step,
                "epoch_loss_sum": self.epoch_loss_sum, "epoch_loss_count": self.epoch_loss_count,
                "best": self.best, "best_score": self.best_score,
                "elapsed": self.elapsed(), "last_finite_loss": self.last_finite_loss,
                "shuffle_rng": self.shuffle_rng.bit_generator.state,
                "augment_rng": self.augment_rng.bit_generator.state,
                "gate_rngs": [g.rng.bit_generator.state for g in self.model.rng_gates()]}
        arrays["meta"] = rundir.json_array(meta)
        if self.perm is not None:
            arrays["perm"] = self.perm
        return arrays

    def elapsed(self) -> float:
        """Training seconds, including those before a resume."""
        return self.elapsed_before + time.perf_counter() - self.started

    def save_checkpoint(self) -> None:
        self.dir.save_arrays(rundir.CHECKPOINT, self.checkpoint_arrays())

    def restore(self, ckpt: dict[str, np.ndarray]) -> None:
        for k in self.model.params:
            self.model.params[k] = ckpt[f"param/{k}"]
        self.model.load_buffers({k: ckpt[f"buffer/{k}"] for k in self.model.buffers})
        self.optimizer.load_state_dict({k[len("optim/"):]: v for k, v in ckpt.items()
                                        if k.startswith("optim/")})
        meta = json.loads(str(ckpt["meta"]))
        self.epoch, self.batch_index, self.step = meta["epoch"], meta["batch_index"], meta["step"]
        self.epoch_loss_sum = meta["epoch_loss_sum"]
        self.epoch_loss_count = meta["epoch_loss_count"]
        self.best, self.best_score = meta["best"], meta["best_score"]
        self.elapsed_before = meta["elapsed"]
        self.last_finite_loss = meta["last_finite_loss"]
        self.shuffle_rng.bit_generator.state = meta["shuffle_rng"]
        if "augment_rng" in meta:
            self.augment_rng.bit_generator.state = meta["augment_rng"]
        for g, state in zip(self.model.rng_gates(), meta["gate_rngs"]):
            g.rng.bit_generator.state = state
        self.perm = ckpt["perm"] if "perm" in ckpt else None

    # -- the loop --
    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Minibatch `index` of this epoch's order. Unshuffled: a view, no copy. Shuffled: a
        full batch is gathered into buffers reused every step, so no step allocates one."""
        lo = index * self.batch_size
        if not self.cfg.train.shuffle:
            return self.X[lo:lo + self.batch_size], self.y[lo:lo + self.batch_size]
        idx = self.perm[lo:lo + self.batch_size]
        if len(idx) < self.batch_size:  # the last, short batch of an epoch
            return self.X[idx], self.y[idx]
        np.take(self.X, idx, axis=0, out=self._X_batch)
        np.take(self.y, idx, axis=0, out=self._y_batch)
        return self._X_batch, self._y_batch

    def train_step(self, X: np.ndarray, y: np.ndarray, lr: float) -> float:
        """Forward, backward, (clip), update: one step of training. Returns the loss."""
        if self.augment is not None:
            X = augment_batch(X, self.augment_rng, self.augment.flip, self.augment.crop_pad)
        if self.cfg.train.accumulate == 1:
            loss = self.model.forward_backward(X, y)
            grads = {p.name: p.grad for p in self.param_nodes}
        else:
            loss, grads = self.accumulated(X, y)
        if not math.isfinite(loss):
            raise self.diverged(loss, lr)
        watched = self.diagnostics.before_step(self)  # only the step before an evaluation
        if self.cfg.train.grad_clip:
            clip_global_norm(grads, self.cfg.train.grad_clip)
        self.optimizer.step(grads, lr)
        if watched:
            self.diagnostics.after_step()
        self.last_finite_loss = loss
        return loss

    def accumulated(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Gradient accumulation: forward and backward on each micro-batch of `batch_size`
        rows, gradients (and losses) averaged with weights by rows, so that k equal
        micro-batches give exactly the gradient of one k-times larger batch."""
        total = len(X)
        loss, grads = 0.0, {}
        for lo in range(0, total, self.micro_batch):
            part = slice(lo, lo + self.micro_batch)
            weight = len(X[part]) / total
            loss += weight * self.model.forward_backward(X[part], y[part])
            for p in self.param_nodes:
                if p.name in grads:
                    grads[p.name] += weight * p.grad
                else:
                    grads[p.name] = weight * p.grad
        return loss, grads

    def run(self) -> RunResult:
        cfg, t = self.cfg, self.cfg.train
        n = len(self.X)
        self.started = time.perf_counter()
        self.reporter.start(self.describe())
        if cfg.model.init == "zeros" and len(self.model.weights) > 1:
            self.reporter.message(
                "model.init is zeros: every hidden unit starts identical and receives the same "
                "gradient, so they stay identical (symmetry is never broken). Use init he or "
                "xavier to train a real network.")
        # Overflow inside a diverging step is reported once, as a DivergenceError, not as
        # NumPy warnings.
        with self.dir.open_metrics() as metrics_file, _StopFlag() as stop, \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while self.step < self.total_steps:
                lr = learning_rate(cfg.schedule, cfg.optimizer.lr, self.epoch, self.epochs)
                if self.perm is None:
                    self.perm = (self.shuffle_rng.permutation(n) if t.shuffle
                                 else np.arange(n))
                    self.batch_index = 0
                while self.batch_index < self.steps_per_epoch and self.step < self.total_steps:
                    loss = self.train_step(*self.batch(self.batch_index), lr)
                    self.epoch_loss_sum += loss
                    self.epoch_loss_count += 1
                    self.batch_index += 1
                    self.step += 1
                    self.reporter.step(self.step, self.epoch, loss)
                    # Not after an epoch's last step: its evaluation reads diagnostics of that
                    # step that no checkpoint holds; stop after the evaluation instead (below).
                    if (stop.signum is not None and self.batch_index < self.steps_per_epoch
                            and self.step < self.total_steps):
                        self.save_checkpoint()
                        raise Interrupted(self.interrupted_message(stop.signum))
                end_of_epoch = self.batch_index >= self.steps_per_epoch
                finished = self.step >= self.total_steps
                if end_of_epoch:
                    self.perm = None
                if end_of_epoch or finished:
                    self.end_epoch(lr, metrics_file, finished)
                if stop.signum is not None and not finished:
                    self.save_checkpoint()
                    raise Interrupted(self.interrupted_message(stop.signum))
        summary = self.finish()
        last = self.history[-1] if self.history else {}
        return RunResult(self.run_dir, last, summary, self.history)

    def end_epoch(self, lr: float, metrics_file, finished: bool) -> None:
        t = self.cfg.train
        epoch_number = self.epoch + 1
        if epoch_number % t.eval_every == 0 or finished:
            batch_loss = self.epoch_loss_sum / max(self.epoch_loss_count, 1)
            rec = self.evaluate(lr, batch_loss)
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
            self.history.append(rec)
            score = self._score(rec)
            if score > self.best_score:
                self.best_score, self.best = score, rec
                self.dir.save_arrays(rundir.BEST, self.weight_arrays())
            self.reporter.evaluation(rec)
            for text in announcements(rec, self.history, self.cfg.optimizer.lr):
                self.reporter.message(text)  # each pattern once, when it first appears
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        if not finished or self.batch_index >= self.steps_per_epoch:
            self.epoch += 1
        if epoch_number % t.checkpoint_every == 0 or finished:
            self.save_checkpoint()

    def describe(self) -> dict[str, Any]:
        d, m, cfg = self.data, self.model, self.cfg
        return {"run_dir": str(self.run_dir), "data": d.name,
                "train_shape": self.X.shape, "val_shape": self.X_val.shape,
                "num_classes": d.num_classes, "layers": m.layers, "num_params": m.num_params,
                "loss": cfg.loss, "regularization": cfg.regularization,
                "optimizer": cfg.optimizer, "schedule": cfg.schedule, "dtype": cfg.train.dtype,
                "epochs": self.epochs, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size,
                "resumed_at": self.step, "user_code": list(m.user_code)}

    def diverged(self, loss: float, lr: float) -> DivergenceError:
        return DivergenceError(
            f"training diverged: the loss became {loss} at epoch {self.epoch + 1}, step "
            f"{self.step + 1} (last finite loss {self.last_finite_loss}, learning rate {lr:g}). "
            f"The last good checkpoint is kept in {self.run_dir}. Try a smaller learning rate "
            "(e.g. --set optimizer.lr=...), gradient clipping (--set train.grad_clip=5), "
            "or standardized inputs.")

    def interrupted_message(self, signum: int) -> str:
        name = signal.Signals(signum).name
        return (f"{name} received: stopped at epoch {self.epoch + 1}, step {self.step} and "
                f"saved a checkpoint. Resume with: bptrain run --resume {self.run_dir}")

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and running statistics: what best.npz and model.npz hold."""
        return {**self.model.params, **self.model.buffer_arrays()}

    def finish(self) -> dict[str, Any]:
        elapsed = self.elapsed()
        arrays = self.weight_arrays()
        if self.data.feature_mean is not None:
            arrays["_feature_mean"] = self.data.feature_mean
            arrays["_feature_std"] = self.data.feature_std
        self.dir.save_arrays(rundir.MODEL, arrays)
        last = self.history[-1] if self.history else {}
        summary = {"name": self.cfg.name, "config": str(self.cfg.source_path or ""),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   # epochs begun, like the epoch numbers in metrics.jsonl (the last may be
                   # partial when train.iterations ends mid-epoch)
                   "steps": self.step, "epochs": math.ceil(self.step / self.steps_per_epoch),
                   "seconds": round(elapsed, 3),
                   "num_params": self.model.num_params, "final": last, "best": self.best,
                   "warnings": warnings_summary(self.history, self.cfg.optimizer.lr)}
        self.dir.write_summary(summary)
        save_loss_curves(self.dir / rundir.CURVES, self.history, self.cfg.name)
        self.reporter.end(summary, self.history)
        return summary


def train(cfg: Config | dict | str, *, out: str | Path | None = None,
          reporter: Reporter | None = None, resume: str | Path | None = None,
          runs_root: str | Path = "runs") -> RunResult:
    """Run what `bptrain run` runs: returns the run directory and the final metrics.

    `out` is the run directory (default runs/<name>, with a fresh suffix if taken).
    `resume` continues the run in that directory from its checkpoint."""
    if resume is not None:
        return _resume(Path(resume), reporter)
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    data = load_data(cfg)
    model = build_for_data(cfg, data)  # built once: fails before any directory exists
    if cfg.data.path is not None:
        # config.yaml is read back from the run directory (eval, --resume), where a relative
        # data.path would resolve against the wrong folder: record the path actually read.
        base = Path(cfg.source_path).parent if cfg.source_path else Path.cwd()
        path = os.path.abspath(base / Path(cfg.data.path).expanduser())
        cfg = replace(cfg, data=replace(cfg.data, path=path))
    run_dir = RunDir.create(Path(out) if out else Path(runs_root) / cfg.name)
    run_dir.write_config(dump_config(cfg))
    trainer = Trainer(cfg, run_dir, reporter, data, model)
    return trainer.run()


def _resume(path: Path, reporter: Reporter | None) -> RunResult:
    run_dir = RunDir(path)
    if not (run_dir / rundir.CONFIG).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml). Give the folder "
                          "that `bptrain run` printed, e.g. runs/mlp.")
    if not (run_dir / rundir.CHECKPOINT).is_file():
        raise ConfigError(f"{run_dir}: no checkpoint.npz to resume from; the run stopped "
                          "before its first checkpoint. Start it again with bptrain run.")
    cfg = load_config(run_dir / rundir.CONFIG)
    ckpt = load_npz_safely(run_dir / rundir.CHECKPOINT)
    trainer = Trainer(cfg, run_dir, reporter)
    try:
        trainer.restore(ckpt)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{run_dir / 'checkpoint.npz'}: does not match {run_dir / 'config.yaml'}"
                        f" ({e}); it cannot be resumed.") from None
    trainer.history = run_dir.read_metrics(upto_step=trainer.step)
    # Rewrite the log without records past the checkpoint (they will be produced again).
    run_dir.rewrite_metrics(trainer.history)
    return trainer.run()
