"""Sweeps: many trainings of one base config with some keys varied, run in parallel.

A sweep file (YAML) names a base config and the axes to vary:

    name: sweep-digits
    base: mlp.yaml                     # relative to this file, or an inline mapping
    method: grid                       # grid | random
    axes:
      optimizer.lr: [0.03, 0.1, 0.3]   # grid: a list of values
      regularization.strength: {loguniform: [1.0e-5, 1.0e-2]}   # random only
    trials: 20                         # random only
    metric: best.val_acc               # default; goal follows (maximize accuracies)
    seed: 0                            # drives random sampling only
    max_trials: 10000                  # default; a sweep of more trials is refused at once

The trials are counted before any is made (the product of the grid's axis sizes, or
`trials`): more than `max_trials` is a ConfigError naming the count, and so is a trial list
that memory could not hold even below it. Random-search bounds must be finite floats or
integers within 64 bits, and a uniform range must not overflow a float.

Every trial is a normal run (`bptrain.training.trainer.train`) in runs/<sweep>/<trial-id>/ with its own
resolved config.yaml, so `bptrain run runs/<sweep>/<trial-id>/config.yaml` repeats it alone.
`run_trial` is the one function both backends call for a trial: local worker processes
(concurrent.futures with the spawn context) or Ray tasks. Results land in
runs/<sweep>/sweep.jsonl (one line a trial) and the winner's config in runs/<sweep>/best.yaml.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bptrain.formatting import format_value
from bptrain.net.data import data_path
from bptrain.net.config import (Config, _build, _opt, _suggest, check_key, config_from_dict,
                                dump_config, load_config, read_yaml_file)
from bptrain.training import rundir
from bptrain.errors import (BptrainError, ConfigError, DivergenceError, EXIT_FAILED,
                            EXIT_INTERRUPTED)

# A sweep's trials are counted (the product of the grid's axis sizes, or `trials`) before any
# is made, and more than this many are refused at once unless the file raises `max_trials`.
MAX_TRIALS = 10_000
TRIAL_BYTES = 32 * 1024    # memory per planned trial (its config, id, settings), about
METHODS = ("grid", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
METRIC_KEYS = ("val_acc", "val_loss", "train_acc", "train_loss")
METRICS = tuple(f"{w}.{k}" for w in ("best", "final") for k in METRIC_KEYS)
GOALS = ("maximize", "minimize")
RUN_FILES = rundir.FILES
# BLAS threads per trial: 1. Measured with configs/sweep-digits.yaml on 2 cores: with one
# worker, 1 or 2 BLAS threads take the same time on an idle machine (the matrices are small) and
# 2 threads are 3x slower when other jobs use the cores; with two workers, 2 threads each are 4x
# slower than 1. Results are identical either way.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


RAY_MISSING = ("the ray backend needs Ray: pip install -e \".[ray]\" in a bptrain checkout (or "
               "pip install ray), or use --backend local.")


class SweepInterrupted(BptrainError):
    """Ctrl-C or SIGTERM stopped the sweep; finished trials are kept."""

    exit_code = EXIT_INTERRUPTED


class SweepFailed(BptrainError):
    """Every trial of the sweep failed."""

    exit_code = EXIT_FAILED


# ---- the sweep file ------------------------------------------------------------------------
@dataclass
class Axis:
    key: str                   # dotted config key, e.g. optimizer.lr
    kind: str                  # values (a list) | uniform | loguniform | choice
    values: list[Any] = field(default_factory=list)   # values, choice
    low: float = 0.0           # uniform, loguniform
    high: float = 0.0
    integer: bool = False      # both bounds integers: draw integers


@dataclass
class Sweep:
    name: str
    base: str | dict           # a config path (resolved) or an inline mapping
    axes: list[Axis]
    method: str = "grid"
    trials: int | None = None
    metric: str = "best.val_acc"
    goal: str = "maximize"
    seed: int = 0
    path: Path | None = None   # the sweep file, if read from one
    max_trials: int = MAX_TRIALS

    @property
    def folder(self) -> Path:
        """Where relative paths of an inline base are taken from."""
        return self.path.parent if self.path else Path.cwd()


@dataclass
class Trial:
    index: int                 # 1-based, in generation order
    id: str                    # t003-lr0.1-strength1e-4-hidden128
    settings: dict[str, Any]   # axis key -> value, in axis order
    config: Config | None = None
    error: str | None = None   # the ConfigError of an invalid setting

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.settings.items()]


def load_sweep(path: str | Path) -> Sweep:
    """Read and strictly validate a sweep file; an error about one of its keys names the
    file:line:column where that key is written."""
    from bptrain.net.config import locate
    p = Path(path)
    marks: dict = {}
    data = read_yaml_file(p, "sweep", "configs/sweep-digits.yaml", marks)
    try:
        return sweep_from_dict(data, p)
    except ConfigError as e:
        text = str(e)
        head = f"{p}: "
        if text.startswith(head):
            placed = locate(text[len(head):], marks, str(p))
            if placed != text[len(head):]:
                raise ConfigError(placed) from None
        raise


_AS_GIVEN = {"validator": lambda value, path, ctx: value}  # checked by sweep_from_dict


@dataclass
class SweepFile:
    """The keys of a sweep file, checked by the config validator like a config's sections
    (unknown keys with a did-you-mean, types, choices, ranges)."""
    name: str | None = None               # default: the sweep file's name
    base: Any = field(default=None, metadata=_AS_GIVEN)   # a config file, or a mapping
    axes: Any = field(default=None, metadata=_AS_GIVEN)   # key -> values or a distribution
    method: str = _opt("grid", choices=METHODS)
    trials: int | None = _opt(None, gt=0)                  # random search: how many to draw
    max_trials: int = _opt(MAX_TRIALS, gt=0)               # the most trials a sweep may have
    metric: str = _opt("best.val_acc", choices=METRICS)
    goal: str | None = _opt(None, choices=GOALS)           # default: by the metric
    seed: int = _opt(0, ge=0)


def sweep_from_dict(data: Any, path: str | Path | None = None) -> Sweep:
    """Validate a raw sweep mapping; `path` (the sweep file) anchors a relative base path."""
    where = str(path) if path else "sweep"
    p = Path(path) if path else None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a sweep file is a mapping with the keys "
                          f"{', '.join(f.name for f in fields(SweepFile))}; got "
                          f"{type(data).__name__}.")
    try:
        f = _build(SweepFile, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    name = f.name if f.name is not None else (p.stem if p else None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{where}: name: give the sweep a folder name of letters, digits, "
                          f"'.', '_' and '-' (its runs go to runs/<name>/), got {name!r}.")
    base = _check_base(f.base, where, p)
    axes = _check_axes(f.axes, f.method, where)
    if f.method == "random":
        if f.trials is None:
            raise ConfigError(f"{where}: trials: random search needs the number of trials to "
                              "draw, e.g. trials: 20.")
        count = f.trials
    else:
        count = math.prod(len(a.values) for a in axes)
    _check_count(count, f.method, axes, f.max_trials, where)
    if f.method == "grid" and f.trials is not None:
        raise ConfigError(f"{where}: trials: only random search draws a number of trials; a "
                          f"grid runs every combination ({count} here). Remove 'trials' or set "
                          "method: random.")
    goal = f.goal or ("maximize" if f.metric.endswith("_acc") else "minimize")
    return Sweep(name=name, base=base, axes=axes, method=f.method, trials=f.trials,
                 metric=f.metric, goal=goal, seed=f.seed, path=p, max_trials=f.max_trials)


def _count_text(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about 10**{len(str(n)) - 1}"


def _check_count(count: int, method: str, axes: list[Axis], max_trials: int,
                 where: str) -> None:
    """Refuse a sweep of more trials than max_trials, or than memory can plan, from its count
    alone: nothing is expanded before this."""
    from bptrain.net.budget import check, human
    if method == "grid":
        sizes = " x ".join(str(len(a.values)) for a in axes)
        what = f"axes: the grid has {_count_text(count)} trials ({sizes} values)"
        fix = "fewer values per axis, fewer axes, or method: random with a number of trials"
    else:
        what = f"trials: {_count_text(count)} trials"
        fix = "fewer trials"
    if count > max_trials:
        raise ConfigError(f"{where}: {what}, more than max_trials ({max_trials:,}); give "
                          f"{fix}, or raise max_trials in the sweep file if you mean it.")
    check(count * TRIAL_BYTES, f"{where}: {what}, whose list", fix)


def _check_base(base: Any, where: str, path: Path | None) -> str | dict:
    if base is None:
        raise ConfigError(f"{where}: base: the key 'base' is required: a config file relative "
                          "to the sweep file (base: mlp.yaml) or an inline mapping "
                          "(base: {data: {source: spiral}, ...}).")
    if isinstance(base, dict):
        return base
    if not isinstance(base, str):
        raise ConfigError(f"{where}: base: expected a config path or a mapping, got {base!r}.")
    bp = Path(base).expanduser()
    if not bp.is_absolute() and path is not None:
        bp = path.parent / bp
    if not bp.is_file():
        raise ConfigError(f"{where}: base: config file {str(bp)!r} not found (a relative base "
                          "is taken from the sweep file's folder).")
    return str(bp)


def _check_axis_key(key: Any, where: str) -> None:
    if key == "name":
        raise ConfigError(f"{where}: axes.name: the sweep names its trials itself; vary "
                          "other keys.")
    try:
        check_key(key)  # the config validator's own knowledge of keys, aliases and sections
    except ConfigError as e:
        raise ConfigError(f"{where}: axes.{e}") from None


def _number(x: Any) -> bool:
    """A finite float, or an integer that fits in 64 bits (what a random draw can produce)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return -2**63 <= x < 2**63
    return isinstance(x, float) and math.isfinite(x)


def _show(value: Any) -> str:
    from bptrain.net.config import _show as show
    return show(value)


def _check_plain(values: list, at: str) -> None:
    """Values become `key=value` overrides and JSON records: plain YAML values only."""
    for v in values:
        if _too_big(v, 10_000):
            raise ConfigError(f"{at}: a value holds more than 10,000 numbers, strings, lists "
                              "and mappings (nested aliases?); an axis value is one setting, "
                              "such as 0.1 or [64, 32].")
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise ConfigError(f"{at}: {_show(v)} is not a plain value (a number, string, "
                              "true/false, null, list or mapping); quote dates and "
                              "similar.") from None


def _too_big(value: Any, limit: int) -> bool:
    """True when `value`, with shared parts counted each time they occur (as json.dumps
    would write them), has more than `limit` items; stops counting at the limit."""
    stack, n = [value], 0
    while stack:
        v = stack.pop()
        n += 1
        if n > limit:
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


def _check_axes(axes: Any, method: str, where: str) -> list[Axis]:
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{where}: axes: give at least one config key to vary, e.g. "
                          "axes: {optimizer.lr: [0.01, 0.1]}.")
    out = []
    for key, spec in axes.items():
        _check_axis_key(key, where)
        at = f"{where}: axes.{key}"
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{at}: the list of values is empty; give at least one.")
            _check_plain(spec, at)
            out.append(Axis(key, "values", values=list(spec)))
            continue
        if not (isinstance(spec, dict) and len(spec) == 1):
            raise ConfigError(f"{at}: expected a list of values ([0.01, 0.1]) or one "
                              "distribution ({uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
                              f"{{choice: [a, b]}}), got {spec!r}. A single value belongs in "
                              "the base config.")
        (kind, arg), = spec.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"{at}: unknown distribution {kind!r}.{_suggest(kind, DISTRIBUTIONS)}"
                              f" Choose one of {', '.join(DISTRIBUTIONS)}.")
        if method == "grid":
            raise ConfigError(f"{at}: a distribution ({kind}) is drawn from by random search; "
                              "set method: random (and trials), or give a list of values for "
                              "the grid.")
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{at}: choice: expected a non-empty list of values, got "
                                  f"{arg!r}.")
            _check_plain(arg, at)
            out.append(Axis(key, "choice", values=list(arg)))
            continue
        if not (isinstance(arg, list) and len(arg) == 2 and all(_number(v) for v in arg)):
            raise ConfigError(f"{at}: {kind}: expected [low, high], two finite numbers "
                              f"(integers within 64 bits), got {_show(arg)}.")
        lo, hi = arg
        if not lo < hi:
            raise ConfigError(f"{at}: {kind}: low must be less than high, got [{lo}, {hi}].")
        if kind == "uniform" and not math.isfinite(float(hi) - float(lo)):
            raise ConfigError(f"{at}: uniform: the range [{lo:g}, {hi:g}] is wider than a float "
                              "can hold (its width overflows); narrow it, or use loguniform "
                              "for ranges over many orders of magnitude.")
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(f"{at}: loguniform: both bounds must be positive (it samples the "
                              f"logarithm), got [{lo}, {hi}]; use uniform for ranges with 0.")
        integer = all(isinstance(v, int) for v in arg)
        out.append(Axis(key, kind, low=lo, high=hi, integer=integer))
    return out


# ---- trials --------------------------------------------------------------------------------
def short_names(keys: list[str]) -> dict[str, str]:
    """optimizer.lr -> lr; the full key when two axes end the same way."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def trial_id(index: int, total: int, settings: dict[str, Any]) -> str:
    names = short_names(list(settings))
    width = max(3, len(str(total)))
    parts = [f"t{index:0{width}d}"]
    for k, v in settings.items():
        text = re.sub(r"[^A-Za-z0-9.+=,_-]", "_", format_value(v))[:24]
        parts.append(f"{names[k]}{text}")
    return "-".join(parts)


def _round4(x: float, lo: float, hi: float) -> float:
    """4 significant digits (readable configs and ids), kept within [lo, hi]."""
    return min(max(float(f"{x:.4g}"), lo), hi)


def expand(sweep: Sweep) -> list[dict[str, Any]]:
    """The trials' settings: grid = the product of the axes in file order (the first axis
    varies slowest); random = `trials` draws, seeded by the sweep's seed. Counted first:
    more than the sweep's max_trials is a ConfigError, never a list in memory."""
    count = (math.prod(len(a.values) for a in sweep.axes) if sweep.method == "grid"
             else sweep.trials or 0)
    _check_count(count, sweep.method, sweep.axes, sweep.max_trials,
                 str(sweep.path) if sweep.path else "sweep")
    if sweep.method == "grid":
        keys = [a.key for a in sweep.axes]
        return [dict(zip(keys, combo)) for combo in
                itertools.product(*(a.values for a in sweep.axes))]
    import numpy as np
    rng = np.random.default_rng(sweep.seed)
    out = []
    for _ in range(sweep.trials or 0):
        s = {}
        for a in sweep.axes:
            if a.kind in ("values", "choice"):
                s[a.key] = a.values[int(rng.integers(len(a.values)))]
            elif a.kind == "uniform":
                if a.integer:
                    s[a.key] = int(rng.integers(a.low, a.high, endpoint=True))
                else:
                    s[a.key] = _round4(float(rng.uniform(a.low, a.high)), a.low, a.high)
            else:  # loguniform
                x = math.exp(float(rng.uniform(math.log(a.low), math.log(a.high))))
                s[a.key] = (min(max(int(round(x)), a.low), a.high) if a.integer
                            else _round4(x, a.low, a.high))
        out.append(s)
    return out


def plan(sweep: Sweep) -> list[Trial]:
    """Every trial with its validated config (or the ConfigError that rules it out).

    An axis key unknown to configs is an error before this (exit 2). A value that a key does
    not allow makes only its trials invalid; if every trial is invalid, that is an error too."""
    settings = expand(sweep)
    trials = []
    raw, marks, source = sweep.base, None, None
    if isinstance(sweep.base, str):  # read and parsed once, not once per trial
        marks = {}
        raw = read_yaml_file(sweep.base, "config", "configs/mlp.yaml", marks)
        source = sweep.base
    for i, s in enumerate(settings, 1):
        t = Trial(i, trial_id(i, len(settings), s), s)
        try:
            cfg = config_from_dict(raw, t.overrides, source, marks)
        except ConfigError as e:
            t.error = str(e)
        else:
            if cfg.source_path is None:
                cfg.source_path = str(sweep.path) if sweep.path else None
            _absolute_data_path(cfg, sweep)
            cfg.name = f"{sweep.name}-{t.id}"
            t.config = cfg
        trials.append(t)
    if trials and all(t.error for t in trials):
        first = trials[0].error
        hint = (" Each axis value is a whole value: for a list-valued key such as model.hidden "
                "write [[64], [128]]." if "expected a list" in first else "")
        raise ConfigError(f"every trial of the sweep is invalid; the first ({trials[0].id}): "
                          f"{first}{hint}")
    return trials


def _absolute_data_path(cfg: Config, sweep: Sweep) -> None:
    """A relative data.path made absolute, so the trial's config.yaml works from its folder."""
    if cfg.data.path:
        cfg.data.path = data_path(cfg, default_base=sweep.folder)


# ---- one trial (both backends) ---------------------------------------------------------------
_STOP = None  # a multiprocessing Event in local worker processes: set = start nothing new


def _worker_init(stop_event: Any) -> None:
    """Local worker processes: their own process group (the terminal's Ctrl-C reaches only the
    parent, which forwards one SIGINT to each worker), and SIGINT ignored while idle."""
    global _STOP
    _STOP = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgrp()
    except OSError:
        pass


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations in a run's metrics.jsonl, by rundir's one rule (the first line that is
    not a complete record ends the log: a torn last line, a damaged file)."""
    from bptrain.training.rundir import RunDir
    return RunDir(run_dir).read_metrics()


def metric_of(history: list[dict[str, Any]], metric: str, goal: str
              ) -> tuple[float | None, int | None]:
    """(value, epoch) of `metric` over a run's evaluations: best.K = the best K in the goal's
    direction (the first epoch that reached it), final.K = K at the last evaluation."""
    which, key = metric.split(".")
    recs = [r for r in history if r.get(key) is not None]
    if not recs:
        return None, None
    if which == "final":
        rec = history[-1] if history[-1].get(key) is not None else None
        return (rec[key], rec.get("epoch")) if rec else (None, None)
    pick = max if goal == "maximize" else min
    best = pick(recs, key=lambda r: r[key])
    return best[key], best.get("epoch")


def test_fields(summary: dict[str, Any] | None, metric: str) -> dict[str, Any]:
    """The test split's numbers for sweep.jsonl (reported, never ranked by): of the best
    weights for a best.* metric, of the final weights for final.*."""
    test = (summary or {}).get("test")
    if not test:
        return {}
    which = metric.split(".")[0]
    t = test.get(which) or test.get("final") or {}
    return {"test_acc": t.get("accuracy"), "test_loss": t.get("loss"), "test_n": test.get("n"),
            "test_weights": which if test.get(which) else "final"}


def _summaries(history: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in METRIC_KEYS:
        vals = [r[k] for r in history if r.get(k) is not None]
        if vals:
            out[f"best_{k}"] = max(vals) if k.endswith("_acc") else min(vals)
            out[f"final_{k}"] = history[-1].get(k)
    return out


def run_trial(job: dict[str, Any]) -> dict[str, Any]:
    """Train one trial and return its record; never raises for a failed trial.

    job: id, config (a resolved config mapping), out (the run directory), metric, goal,
    resume (continue from the directory's checkpoint)."""
    from bptrain.training.trainer import Interrupted, train
    out = Path(job["out"])
    rec = {"trial": job["id"], "status": "failed", "metric": None, "epoch": None,
           "seconds": None, "reason": None}
    if _STOP is not None and _STOP.is_set():
        rec.update(status="interrupted", reason="stopped before it started")
        return rec
    try:
        cfg = config_from_dict(job["config"], source=str(out / rundir.CONFIG))
        if job.get("resume") and (out / rundir.CHECKPOINT).is_file():
            result = train(None, resume=out)
        else:
            if out.exists():
                shutil.rmtree(out)
            result = train(cfg, out=out, reporter=None)
    except DivergenceError as e:
        rec["reason"] = str(e)
        return rec
    except Interrupted:
        rec.update(status="interrupted", reason="stopped by Ctrl-C (checkpoint kept)")
        return rec
    except KeyboardInterrupt:
        rec.update(status="interrupted", reason="stopped by Ctrl-C")
        return rec
    except BptrainError as e:
        rec["reason"] = str(e)
        return rec
    except Exception as e:  # any bug or surprise in one trial must not stop the sweep
        rec["reason"] = f"{type(e).__name__}: {e}"
        return rec
    value, epoch = metric_of(result.history, job["metric"], job["goal"])
    rec.update(seconds=result.summary.get("seconds"), epoch=epoch, metric=value,
               **_summaries(result.history), **test_fields(result.summary, job["metric"]))
    if value is None:
        rec["reason"] = (f"the run logged no {job['metric'].split('.')[1]} (no validation "
                         "split, or targets without classes); choose another metric, e.g. "
                         "best.train_loss")
    else:
        rec["status"] = "done"
    return rec


def ray_trial(job: dict[str, Any]) -> dict[str, Any]:
    """`run_trial` as a Ray task: train in a scratch folder on whichever node runs it, then
    return the run's files with the record, so the driver's runs/ folder gets them even when
    the node is another machine."""
    scratch = Path(tempfile.mkdtemp(prefix="bptrain-trial-"))
    try:
        rec = run_trial(dict(job, out=str(scratch / "run"), resume=False))
        run = scratch / "run"
        rec["files"] = {name: (run / name).read_bytes() for name in RUN_FILES
                        if (run / name).is_file()}
        return rec
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the sweep -----------------------------------------------------------------------------
@dataclass
class SweepResult:
    dir: Path
    records: list[dict[str, Any]]      # one per trial, in trial order
    best: dict[str, Any] | None
    wall_seconds: float
    workers: int
    backend: str
    interrupted: bool = False


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _same_config(run_dir: Path, cfg: Config) -> bool:
    try:
        return load_config(run_dir / rundir.CONFIG).to_dict() == cfg.to_dict()
    except BptrainError:
        return False


def finished_record(trial: Trial, run_dir: Path, metric: str, goal: str
                    ) -> dict[str, Any] | None:
    """The record of a trial already finished in run_dir with the same config, else None."""
    if trial.config is None or not (run_dir / rundir.SUMMARY).is_file():
        return None
    if not _same_config(run_dir, trial.config):
        return None
    from bptrain.training.rundir import RunDir
    summary = RunDir(run_dir).read_summary()  # None when damaged: the trial is run again
    if summary is None:
        return None
    history = read_history(run_dir)
    value, epoch = metric_of(history, metric, goal)
    if value is None:
        return None
    return {"trial": trial.id, "status": "done", "metric": value, "epoch": epoch,
            "seconds": summary.get("seconds"), "reason": None, "reused": True,
            **_summaries(history), **test_fields(summary, metric)}


def sort_key(goal: str):
    sign = -1 if goal == "maximize" else 1
    return lambda r: (sign * r["metric"], r["index"])


class _ThreadEnv:
    """BLAS threads = 1 in the processes started inside (unless the user set them)."""

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in THREAD_VARS}
        if not any(self.saved.values()):
            for k in THREAD_VARS:
                os.environ[k] = "1"
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _SigtermAsInterrupt:
    def __enter__(self):
        self.old = None
        try:
            self.old = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


class SilentSweepReporter:
    """What a sweep tells the console (app/report.py's SweepReporter prints it)."""
    def start(self, info, rows): pass
    def update(self, rows, progress): pass
    def trial_finished(self, row, rows): pass
    def message(self, text): pass
    def close(self): pass
    def end(self, info, records, result): pass


def run_sweep(sweep: Sweep, *, workers: int | None = None, backend: str = "local",
              address: str | None = None, runs_root: str | Path = "runs",
              reporter: Any = None) -> SweepResult:
    """Run every trial not already finished; write sweep.jsonl and best.yaml; return results.

    Raises SweepInterrupted on Ctrl-C (after recording the finished trials) and SweepFailed
    when every trial failed."""
    if backend not in ("local", "ray"):
        raise BptrainError(f"--backend: choose local or ray, not {backend!r}.")
    if address and backend != "ray":
        raise BptrainError("--address joins a Ray cluster; add --backend ray.")
    if backend == "ray":
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            raise BptrainError(RAY_MISSING)
    trials = plan(sweep)
    sweep_dir = Path(runs_root) / sweep.name
    workers = workers or default_workers()
    if workers < 1:
        raise BptrainError(f"--workers: must be at least 1, got {workers}.")
    names = short_names([a.key for a in sweep.axes])
    rows: dict[str, dict[str, Any]] = {}
    jobs = []
    for t in trials:
        run_dir = sweep_dir / t.id
        row = {"trial": t.id, "index": t.index, "status": "queued", "settings": t.settings,
               "metric": None, "epoch": None, "seconds": None, "reason": None,
               "dir": str(run_dir), "reused": False}
        if t.error:
            row.update(status="failed", reason=f"invalid setting: {t.error}")
        else:
            done = finished_record(t, run_dir, sweep.metric, sweep.goal)
            if done:
                row.update(done)
            else:
                resume = (backend == "local" and (run_dir / rundir.CHECKPOINT).is_file()
                          and _same_config(run_dir, t.config))
                jobs.append({"id": t.id, "config": t.config.to_dict(), "out": str(run_dir),
                             "metric": sweep.metric, "goal": sweep.goal, "resume": resume,
                             "epochs": None if t.config.train.iterations else
                             t.config.train.epochs})
        rows[t.id] = row
    sweep_dir.mkdir(parents=True, exist_ok=True)
    workers = min(workers, max(len(jobs), 1))
    reporter = reporter or SilentSweepReporter()
    info = {"name": sweep.name, "dir": str(sweep_dir), "trials": len(trials),
            "to_run": len(jobs), "reused": sum(r["reused"] for r in rows.values()),
            "invalid": sum(t.error is not None for t in trials), "workers": workers,
            "backend": backend, "address": address, "metric": sweep.metric,
            "goal": sweep.goal, "axes": names}
    reporter.start(info, list(rows.values()))
    state = _State(rows, sweep_dir, reporter, len(trials))
    started = time.perf_counter()
    interrupted, crashed = False, True
    try:
        if jobs:
            if backend == "local":
                interrupted = _run_local(jobs, workers, state)
            else:
                interrupted = _run_ray(jobs, workers, address, state)
        crashed = False
    finally:
        wall = time.perf_counter() - started
        for r in rows.values():
            if r["status"] in ("queued", "running", "submitted"):
                r.update(status="interrupted", reason=r["reason"] or "not run (sweep stopped)")
        records = [rows[t.id] for t in trials]
        state.save()
        done = sorted((r for r in records if r["status"] == "done"), key=sort_key(sweep.goal))
        best = done[0] if done else None
        if best is not None:
            _write_best(sweep, trials[best["index"] - 1], best, sweep_dir)
        elif (sweep_dir / "best.yaml").exists():
            (sweep_dir / "best.yaml").unlink()   # from an earlier run of a changed sweep
        result = SweepResult(sweep_dir, records, best, wall, workers, backend, interrupted)
        if crashed:   # an error on its way out (e.g. Ray could not start): no leaderboard
            reporter.close()
        else:
            reporter.end(info, records, result)
    if interrupted:
        left = sum(r["status"] != "done" for r in records)
        raise SweepInterrupted(f"{len(done)} of {len(records)} trials finished and are kept "
                               f"in {sweep_dir}/. Run the same command again to run the other "
                               f"{left}" + (" (stopped trials continue from their "
                                            "checkpoints)." if backend == "local" else "."))
    if best is None:
        first = next((r for r in records if r["reason"]), {"trial": "-", "reason": "-"})
        raise SweepFailed(f"every trial of the sweep failed; see {sweep_dir}/sweep.jsonl. The "
                          f"first ({first['trial']}): {first['reason']}")
    return result


def _write_best(sweep: Sweep, trial: Trial, rec: dict[str, Any], sweep_dir: Path) -> None:
    assert trial.config is not None
    head = (f"# best trial of sweep '{sweep.name}': {trial.id}\n"
            f"# {sweep.metric} = {rec['metric']} (epoch {rec['epoch']}; goal: {sweep.goal}); "
            f"its run: {sweep_dir / trial.id}/\n"
            f"# train it again: bptrain run {sweep_dir / 'best.yaml'}\n")
    if rec.get("test_loss") is not None:  # reported, not used to choose
        head += (f"# test split ({rec.get('test_n')} samples, {rec.get('test_weights')} "
                 f"weights; not used to choose): loss {rec['test_loss']}"
                 + (f", accuracy {rec['test_acc']}" if rec.get("test_acc") is not None else "")
                 + "\n")
    from bptrain.training.rundir import atomic_write_bytes
    atomic_write_bytes(sweep_dir / "best.yaml",
                       lambda f: f.write((head + dump_config(trial.config)).encode()))


class _State:
    """The trials' rows, sweep.jsonl and the reporter, updated as results come in."""

    def __init__(self, rows: dict[str, dict], sweep_dir: Path, reporter: Any, total: int):
        self.rows, self.dir, self.reporter, self.total = rows, sweep_dir, reporter, total

    def save(self) -> None:
        from bptrain.training.rundir import atomic_write_bytes
        lines = "".join(json.dumps(r) + "\n" for r in
                        sorted(self.rows.values(), key=lambda r: r["index"]))
        atomic_write_bytes(self.dir / "sweep.jsonl", lambda f: f.write(lines.encode()))

    def finished(self, rec: dict[str, Any]) -> None:
        row = self.rows[rec["trial"]]
        files = rec.pop("files", None)
        if files is not None:  # ray: the run's files come back with the record
            out = Path(row["dir"])
            if out.exists():
                shutil.rmtree(out)
            if files:
                out.mkdir(parents=True)
                for name, data in files.items():
                    (out / name).write_bytes(data)
        row.update(rec)
        self.save()
        self.reporter.trial_finished(row, list(self.rows.values()))

    def refresh(self, progress: dict[str, Any] | None = None) -> None:
        self.reporter.update(list(self.rows.values()), progress or {})


def _progress(job: dict[str, Any], metric: str, goal: str) -> dict[str, Any] | None:
    """A running local trial's progress, read from its metrics.jsonl."""
    history = read_history(Path(job["out"]))
    if not history:
        return None
    value, _ = metric_of(history, metric, goal)
    return {"epoch": history[-1].get("epoch"), "epochs": job.get("epochs"), "metric": value}


def _touched_since(run_dir: Path, since: float) -> bool:
    for name in (rundir.METRICS, rundir.CONFIG):
        try:
            if (run_dir / name).stat().st_mtime >= since - 1:
                return True
        except OSError:
            pass
    return False


def _run_local(jobs: list[dict], workers: int, state: _State) -> bool:
    """Worker processes (spawn); returns True if stopped by Ctrl-C."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    started = time.time()
    with _ThreadEnv(), _SigtermAsInterrupt():
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                 initializer=_worker_init, initargs=(stop,))
        futures = {ex.submit(run_trial, job): job for job in jobs}
        pending = set(futures)
        interrupted, forced = False, False

        def collect(done):
            for f in done:
                job = futures[f]
                if f.cancelled():
                    rec = {"trial": job["id"], "status": "interrupted",
                           "reason": "not run (sweep stopped)"}
                elif f.exception() is not None:
                    e = f.exception()
                    rec = {"trial": job["id"], "status": "failed",
                           "reason": f"the worker process died ({type(e).__name__}: {e})"}
                else:
                    rec = f.result()
                state.finished(rec)

        def progress():
            # f.running() is also true for the one call queued ahead for an idle worker, so a
            # trial counts as running once its folder shows it (written since the sweep began).
            out = {}
            for f in pending:
                job = futures[f]
                if f.running() and _touched_since(Path(job["out"]), started):
                    state.rows[job["id"]]["status"] = "running"
                    out[job["id"]] = _progress(job, job["metric"], job["goal"])
            return out

        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                collect(done)
                state.refresh(progress())
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            for f in pending:
                f.cancel()
            state.reporter.message("stopping: running trials stop at their next step "
                                   "(Ctrl-C again to force)")
            _signal_workers(ex)
            presses = 1
            while pending:
                try:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    collect(done)
                    state.refresh(progress())
                except KeyboardInterrupt:
                    presses += 1
                    if presses == 2:
                        _signal_workers(ex)
                    else:
                        forced = True
                        _signal_workers(ex, signal.SIGKILL)
                        break
        finally:
            ex.shutdown(wait=not forced, cancel_futures=True)
    return interrupted


def _signal_workers(ex: Any, sig: int = signal.SIGINT) -> None:
    for pid in list(getattr(ex, "_processes", None) or {}):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _run_ray(jobs: list[dict], workers: int, address: str | None, state: _State) -> bool:
    """Ray tasks (one CPU each) running `ray_trial`; returns True if stopped by Ctrl-C."""
    try:
        import ray
    except ImportError:
        raise BptrainError(RAY_MISSING) from None
    import logging
    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here:
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
        except Exception as e:  # ConnectionError, RuntimeError, ...
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise BptrainError(f"cannot start or join {where} ({type(e).__name__}: {e}). For a "
                               "cluster, run `ray start --head` on the head machine and give "
                               "--address HEAD:6379.") from None
        cpus = ray.cluster_resources().get("CPU", 0)
        state.reporter.message(f"Ray {'joined at ' + address if address else 'started locally'}"
                               f" in {time.perf_counter() - t0:.1f}s: {cpus:g} CPUs")
    task = ray.remote(num_cpus=1, max_retries=0)(ray_trial)
    refs = {task.remote(job): job for job in jobs}
    for job in jobs:  # Ray schedules them; which are running is not visible from here
        state.rows[job["id"]]["status"] = "submitted"
    interrupted = False
    try:
        with _SigtermAsInterrupt():
            try:
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.25)
                    for ref in ready:
                        job = refs.pop(ref)
                        try:
                            rec = ray.get(ref)
                        except Exception as e:
                            rec = {"trial": job["id"], "status": "failed",
                                   "reason": f"the Ray task failed ({type(e).__name__}: {e})"}
                        state.finished(rec)
                    state.refresh()
            except KeyboardInterrupt:
                interrupted = True
                for ref in refs:
                    ray.cancel(ref, force=True)
    finally:
        if started_here:
            ray.shutdown()
    return interrupted
