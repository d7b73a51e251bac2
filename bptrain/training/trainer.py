"""Training: minibatch SGD (and successors) over a model built once, with evaluation,
checkpoints that resume bit-identically, and every output in a run directory (rundir.py owns
its files). The console hears about it through a Reporter; this module prints nothing.
"""
from __future__ import annotations

import contextlib
import json
import math
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
from bptrain.net.data import Dataset, data_path, load_data, load_npz_safely
from bptrain.net.model import Model, build_for_data
from bptrain.net.optim import Optimizer, clip_global_norm, learning_rate
from bptrain.net.schedules import Schedule
from bptrain.training import rundir
from bptrain.training.curves import save_loss_curves
from bptrain.training.diagnostics import Diagnostics, announcements, warnings_summary
from bptrain.training.heldout import data_info, evaluate_test_split
from bptrain.training.rundir import RunDir
from bptrain.training.stopping import EarlyStopping


class Interrupted(BptrainError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    exit_code = EXIT_INTERRUPTED


class Reporter(Protocol):
    """What training tells the console (app/report.py's RichReporter prints it; tests record it)."""

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

    def __repr__(self) -> str:  # compact: the run and its numbers, not every record
        from bptrain.training.notebook import metric_line
        return f"RunResult('{self.run_dir}', {metric_line(self.summary, self.history)})"

    def _repr_html_(self) -> str:  # notebooks: the numbers and the loss curves (inline SVG)
        from bptrain.training.notebook import html_card, result_rows
        return html_card(f"RunResult {self.run_dir}", result_rows(self.summary, self.history),
                         self.history)


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
        self.first_loss: float | None = None    # of step 1: how far the loss has come
        self.checkpoint_step: int | None = None  # the step of the last checkpoint saved
        # What the run trains on, so a resume notices a data file that changed meanwhile.
        self.data_sha256 = rundir.data_fingerprint(
            d.X_train, d.y_train, d.X_val, d.y_val, d.X_test, d.y_test)
        # The learning rate of each step, and early stopping (their states go into checkpoints).
        self.schedule = Schedule(cfg.schedule, cfg.optimizer.lr, self.steps_per_epoch,
                                 self.total_steps, self.epochs)
        self.stopping = EarlyStopping(t.early_stopping) if t.early_stopping else None
        if self.stopping is not None:
            self.stopping.check_metric(len(self.X_val) > 0, bool(
                self.model.num_classes and self.data.is_classification))

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
        self.diagnostics.first_loss = self.first_loss
        self.diagnostics.annotate(rec, diag, self.history)
        return rec

    def _score(self, rec: dict[str, Any]) -> float:
        """Higher is better: validation accuracy, else minus a loss (rundir.best_by: the one
        rule that says which evaluation is "best", here and in summaries, runs, compare)."""
        return rundir.score(rec, rundir.best_by([rec]) or "train_loss")

    # -- checkpoints --
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"param/{k}": v for k, v in self.model.params.items()}
        arrays.update({f"buffer/{k}": v for k, v in self.model.buffer_arrays().items()})
        arrays.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        meta = {"epoch": self.epoch, "batch_index": self.batch_index, "step": self.step,
                "epoch_loss_sum": self.epoch_loss_sum, "epoch_loss_count": self.epoch_loss_count,
                "best": self.best, "best_score": self.best_score,
                "elapsed": self.elapsed(), "last_finite_loss": self.last_finite_loss,
                "first_loss": self.first_loss, "data_sha256": self.data_sha256,
                "shuffle_rng": self.shuffle_rng.bit_generator.state,
                "augment_rng": self.augment_rng.bit_generator.state,
                "gate_rngs": [g.rng.bit_generator.state for g in self.model.rng_gates()]}
        meta["schedule"] = self.schedule.state_dict()
        if self.stopping is not None:
            meta["early_stopping"] = self.stopping.state_dict()
            arrays.update(self.stopping.arrays())
        arrays["meta"] = rundir.json_array(meta)
        if self.perm is not None:
            arrays["perm"] = self.perm
        return arrays

    def elapsed(self) -> float:
        """Training seconds, including those before a resume."""
        return self.elapsed_before + time.perf_counter() - self.started

    def save_checkpoint(self) -> None:
        self.dir.save_arrays(rundir.CHECKPOINT, self.checkpoint_arrays())
        self.checkpoint_step = self.step

    def check_checkpoint(self, ckpt: dict[str, np.ndarray]) -> dict[str, Any]:
        """The checkpoint's meta, after checking everything restore() reads: the arrays'
        dtypes and shapes, the meta's types, and the position's indices against this run's
        epochs and steps. A DataError says what is wrong (nothing is half-restored)."""
        path = self.dir / rundir.CHECKPOINT
        fix = ("It cannot be resumed: start the run again with bptrain run, or restore the "
               "file.")
        rundir.check_arrays({k[len("param/"):]: v for k, v in ckpt.items()
                             if k.startswith("param/")},
                            {k: v.shape for k, v in self.model.params.items()}, path,
                            fix=fix)
        rundir.check_arrays({k[len("buffer/"):]: v for k, v in ckpt.items()
                             if k.startswith("buffer/")},
                            {k: v.shape for k, v in self.model.buffer_arrays().items()}, path,
                            "running statistic", fix)
        state = self.optimizer.state_dict()
        rundir.check_arrays({k[len("optim/"):]: v for k, v in ckpt.items()
                             if k.startswith("optim/")},
                            {k: v.shape for k, v in state.items() if k != "t"}, path,
                            "optimizer state", fix)
        t = ckpt.get("optim/t")
        if t is None or t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise DataError(f"{path}: the optimizer's step count 'optim/t' is missing or not "
                            f"a whole number >= 0; the checkpoint is damaged. {fix}")
        if "meta" not in ckpt or ckpt["meta"].dtype.kind != "U" or ckpt["meta"].shape != ():
            raise DataError(f"{path}: has no readable 'meta' (its position in training); the "
                            f"checkpoint is damaged. {fix}")
        try:
            meta = json.loads(str(ckpt["meta"]))
        except (ValueError, RecursionError):
            meta = None
        if not isinstance(meta, dict):
            raise DataError(f"{path}: its 'meta' is not a JSON mapping; the checkpoint is "
                            f"damaged. {fix}")

        def bad(key: str, what: str) -> DataError:
            return DataError(f"{path}: meta '{key}' is {str(meta.get(key))[:60]!r}, {what}; "
                             f"the checkpoint is damaged or from another config. {fix}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        spe = self.steps_per_epoch
        bounds = {"epoch": self.epochs, "batch_index": spe, "step": self.total_steps,
                  "epoch_loss_count": spe}
        for key, top in bounds.items():
            v = meta.get(key)
            if type(v) is not int or not 0 <= v <= top:
                raise bad(key, f"not a whole number from 0 to {top}")
        for key in ("epoch_loss_sum", "elapsed"):
            if not (number(meta.get(key)) and math.isfinite(meta[key])):
                raise bad(key, "not a finite number")
        if not number(meta.get("best_score")) or meta["best_score"] != meta["best_score"]:
            raise bad("best_score", "not a number")
        for key in ("last_finite_loss", "first_loss"):
            if meta.get(key) is not None and not number(meta[key]):
                raise bad(key, "not a number")
        if not (meta.get("best") == {} or rundir.valid_record(meta.get("best"))):
            raise bad("best", "not an evaluation record")
        rngs = meta.get("gate_rngs")
        if not isinstance(rngs, list) or len(rngs) != len(self.model.rng_gates()):
            raise bad("gate_rngs", f"not a list of {len(self.model.rng_gates())} random states")
        perm = ckpt.get("perm")
        n = len(self.X)
        if perm is not None:
            if (perm.dtype.kind not in "iu" or perm.shape != (n,)
                    or not np.array_equal(np.sort(perm), np.arange(n))):
                raise DataError(f"{path}: 'perm' is not an order of the {n} training samples "
                                f"(dtype {perm.dtype}, shape {perm.shape}); the checkpoint is "
                                f"damaged or from other data. {fix}")
        expected = meta["epoch"] * spe + (meta["batch_index"] if perm is not None else 0)
        if meta["step"] != expected:
            raise bad("step", f"not where epoch {meta['epoch']} and batch {meta['batch_index']} "
                      f"of {spe} put it (step {expected})")
        return meta

    def restore(self, ckpt: dict[str, np.ndarray]) -> None:
        meta = self.check_checkpoint(ckpt)
        for k in self.model.params:
            self.model.params[k] = ckpt[f"param/{k}"]
        self.model.load_buffers({k: ckpt[f"buffer/{k}"] for k in self.model.buffers})
        self.optimizer.load_state_dict({k[len("optim/"):]: v for k, v in ckpt.items()
                                        if k.startswith("optim/")})
        self.first_loss = meta.get("first_loss")
        self.checkpoint_step = meta["step"]
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
        self.schedule.load_state_dict(meta.get("schedule"))
        if self.stopping is not None:
            self.stopping.load(meta.get("early_stopping"), ckpt)

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
        np.take(self.X, idx, axis=0, out=self._X_batch, mode="clip")  # a permutation: valid
        np.take(self.y, idx, axis=0, out=self._y_batch, mode="clip")
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
        if self.step == 0:
            self.first_loss = loss
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
        # NumPy warnings. A second Ctrl-C stops at once (no new checkpoint), with a message.
        try:
            self._loop(metrics_file_opener=self.dir.open_metrics)
        except KeyboardInterrupt:
            raise Interrupted(self.forced_message()) from None
        summary = self.finish()
        last = self.history[-1] if self.history else {}
        return RunResult(self.run_dir, last, summary, self.history)

    def forced_message(self) -> str:
        kept = (f"the checkpoint of step {self.checkpoint_step} is kept; resume with: "
                f"bptrain run --resume {self.run_dir}" if self.checkpoint_step is not None
                else "no checkpoint had been saved yet, so start it again with bptrain run")
        return (f"interrupted again: stopped at once at epoch {self.epoch + 1}, step "
                f"{self.step}, without saving a new checkpoint; {kept}.")

    def _loop(self, metrics_file_opener) -> None:
        cfg, t = self.cfg, self.cfg.train
        n = len(self.X)
        with metrics_file_opener() as metrics_file, _StopFlag() as stop, \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                self.open_tensorboard():
            while self.step < self.total_steps and not self.stopped_early:
                lr = self.schedule.lr(self.epoch, self.step)
                if self.perm is None:
                    self.perm = (self.shuffle_rng.permutation(n) if t.shuffle
                                 else np.arange(n))
                    self.batch_index = 0
                while self.batch_index < self.steps_per_epoch and self.step < self.total_steps:
                    if self.schedule.per_step:
                        lr = self.schedule.lr(self.epoch, self.step)
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
                if stop.signum is not None and not finished and not self.stopped_early:
                    self.save_checkpoint()
                    raise Interrupted(self.interrupted_message(stop.signum))

    tensorboard: Any = None  # the TensorBoardLog while run() runs with train.tensorboard

    def open_tensorboard(self) -> Any:
        """train.tensorboard: event files in <run>/tensorboard/ (closed when run() ends)."""
        if not self.cfg.train.tensorboard:
            return contextlib.nullcontext()
        from bptrain.training.tensorboard import TensorBoardLog
        self.tensorboard = TensorBoardLog(self.dir / rundir.TENSORBOARD)
        return self.tensorboard

    def end_epoch(self, lr: float, metrics_file, finished: bool) -> None:
        t = self.cfg.train
        epoch_number = self.epoch + 1
        if epoch_number % t.eval_every == 0 or finished:
            batch_loss = self.epoch_loss_sum / max(self.epoch_loss_count, 1)
            rec = self.evaluate(lr, batch_loss)
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
            self.history.append(rec)
            if self.tensorboard is not None:  # train.tensorboard: scalars and histograms
                self.tensorboard.evaluation(rec, self.model.params,
                                            {p.name: p.grad for p in self.param_nodes})
            score = self._score(rec)
            if score > self.best_score:
                self.best_score, self.best = score, rec
                self.dir.save_arrays(rundir.BEST, self.weight_arrays())
            self.reporter.evaluation(rec)
            for text in announcements(rec, self.history, self.cfg.optimizer.lr):
                self.reporter.message(text)  # each pattern once, when it first appears
            self.schedule.observe(rec)  # reduce-on-plateau
            if self.stopping is not None and self.stopping.update(rec, self.weight_arrays()):
                s = self.stopping
                self.reporter.message(
                    f"early stopping: {s.cfg.metric} has not improved for {s.cfg.patience} "
                    f"evaluation(s); stopped at epoch {rec['epoch']} and restoring the weights "
                    f"of epoch {s.best_epoch} ({s.cfg.metric} {s.best_value:.6g}).")
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        if not finished or self.batch_index >= self.steps_per_epoch:
            self.epoch += 1
        if epoch_number % t.checkpoint_every == 0 or finished or self.stopped_early:
            self.save_checkpoint()

    @property
    def stopped_early(self) -> bool:
        return self.stopping is not None and self.stopping.stopped

    def describe(self) -> dict[str, Any]:
        d, m, cfg = self.data, self.model, self.cfg
        return {"run_dir": str(self.run_dir), "data": d.name,
                "train_shape": self.X.shape, "val_shape": self.X_val.shape,
                "test_size": len(d.X_test),
                "num_classes": d.num_classes, "layers": m.layers, "num_params": m.num_params,
                "loss": cfg.loss, "regularization": cfg.regularization,
                "optimizer": cfg.optimizer, "schedule": cfg.schedule, "dtype": cfg.train.dtype,
                "epochs": self.epochs, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size,
                "resumed_at": self.step, "user_code": list(m.user_code)}

    def diverged(self, loss: float, lr: float) -> DivergenceError:
        if self.checkpoint_step is not None:
            kept = (f"The last good checkpoint (step {self.checkpoint_step}) is kept in "
                    f"{self.run_dir}.")
        else:
            kept = (f"It diverged before the first checkpoint, so {self.run_dir} holds no "
                    "checkpoint to resume; start again with the fix below.")
        return DivergenceError(
            f"training diverged: the loss became {loss} at epoch {self.epoch + 1}, step "
            f"{self.step + 1} (last finite loss {self.last_finite_loss}, learning rate {lr:g}). "
            f"{kept} Try a smaller learning rate "
            "(e.g. --set optimizer.lr=...), gradient clipping (--set train.grad_clip=5), "
            "or standardized inputs.")

    def interrupted_message(self, signum: int) -> str:
        name = signal.Signals(signum).name
        return (f"{name} received: stopped at epoch {self.epoch + 1}, step {self.step} and "
                f"saved a checkpoint. Resume with: bptrain run --resume {self.run_dir}")

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and running statistics: what best.npz and model.npz hold."""
        return {**self.model.params, **self.model.buffer_arrays()}

    def load_weight_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the parameters and running statistics from `weight_arrays()`-style arrays."""
        for k in self.model.params:
            self.model.params[k] = arrays[k]
        self.model.load_buffers({k: arrays[k] for k in self.model.buffers})

    def finish(self) -> dict[str, Any]:
        elapsed = self.elapsed()
        if self.stopped_early:  # model.npz (and the test split) get the kept weights
            self.load_weight_arrays(self.stopping.weights)
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
                   # the metric that picked "best" (rundir.best_by), and the data it ran on
                   "best_by": rundir.best_by(self.history), "data_sha256": self.data_sha256,
                   "warnings": warnings_summary(self.history, self.cfg.optimizer.lr)}
        if self.stopping is not None:
            summary["early_stopping"] = self.stopping.summary()
        test = evaluate_test_split(self)  # once, at the end: it chose nothing
        if test is not None:
            summary["test"] = test
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
    if cfg.train.tensorboard:  # a missing tensorboardX fails here too
        from bptrain.training.tensorboard import require
        require()
    if cfg.train.early_stopping is not None:
        EarlyStopping(cfg.train.early_stopping).check_metric(
            len(data.X_val) > 0, bool(model.num_classes and data.is_classification))
    if cfg.data.path is not None:  # config.yaml records the path actually read, absolute
        cfg = replace(cfg, data=replace(cfg.data, path=data_path(cfg)))
    run_dir = RunDir.create(Path(out) if out else Path(runs_root) / cfg.name)
    try:
        run_dir.write_config(dump_config(cfg))
    except BaseException:  # a full or read-only disk: leave no empty folder behind
        run_dir.release()
        raise
    run_dir.write_json(rundir.DATA_INFO, data_info(data, model, cfg.data.source))
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
    recorded = json.loads(str(ckpt["meta"])).get("data_sha256")
    if recorded is not None and recorded != trainer.data_sha256:
        raise DataError(f"{run_dir}: the data changed since this run started ({trainer.data.name}"
                        " is not what checkpoint.npz recorded: its sha256 differs), so resuming "
                        "would train one model on two datasets. Restore the original data, or "
                        f"start a new run on the new data: bptrain run {run_dir / 'config.yaml'}")
    trainer.history = run_dir.read_metrics(upto_step=trainer.step)
    # Rewrite the log without records past the checkpoint (they will be produced again).
    run_dir.rewrite_metrics(trainer.history)
    return trainer.run()
