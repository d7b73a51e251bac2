"""Reading run directories back: reload a trained model and evaluate it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bptrain.net.config import Config, load_config
from bptrain.net.data import Dataset, load_dataset, load_npz_safely
from bptrain.errors import DataError
from bptrain.net.model import Model
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data


@dataclass
class Evaluation:
    name: str            # what was evaluated, e.g. "validation split of digits"
    n: int
    loss: float
    accuracy: float | None
    confusion: np.ndarray | None  # (C, C): rows true class, columns predicted


def load_run(run_dir: str | Path, weights: str = "model") -> tuple[Config, Model, Dataset]:
    """A run's config, its model with the saved weights (`model` or `best`), and its data."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{run_dir}: not a run directory (no config.yaml). Runs live in "
                        "runs/<name>/; `bptrain runs` lists them.")
    cfg = load_config(cfg_path)
    data = load_data(cfg)
    model = build_for_data(cfg, data)
    path = run_dir / f"{weights}.npz"
    if not path.is_file():
        if weights == "model" and (run_dir / "best.npz").is_file():
            hint = ("the run has not finished: evaluate its best weights so far with "
                    "--weights best, or finish it with bptrain run --resume " + str(run_dir))
        else:
            hint = ("the run saved no weights of that kind (it stopped before its first "
                    "evaluation, e.g. it diverged at once); start it again with bptrain run")
        raise DataError(f"{path}: not found; {hint}.")
    arrays = load_npz_safely(path)
    for name in model.params:
        if name not in arrays:
            raise DataError(f"{path}: has no array {name!r}; it was not written by this run's "
                            "model (expected " + ", ".join(model.params) + ").")
        if arrays[name].shape != model.params[name].shape:
            raise DataError(f"{path}: {name} has shape {arrays[name].shape} but the run's model "
                            f"needs {model.params[name].shape}.")
        model.params[name] = arrays[name]
    return cfg, model, data


def evaluate(model: Model, X: np.ndarray, y: np.ndarray, name: str) -> Evaluation:
    X = np.ascontiguousarray(X, dtype=model.dtype)
    loss, scores = model.evaluate_loss(X, y)
    if model.num_classes and y.ndim == 1:
        pred = scores.argmax(axis=1)
        k = model.num_classes
        confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
        return Evaluation(name, len(y), loss, float(np.mean(pred == y)), confusion)
    return Evaluation(name, len(y), loss, None, None)


def evaluate_run(run_dir: str | Path, data_path: str | None = None,
                 weights: str = "model") -> Evaluation:
    """Evaluate a run on its validation split, or on a file (npz/csv) standardized with the
    training statistics the run saved."""
    cfg, model, data = load_run(run_dir, weights)
    if data_path is None:
        if len(data.y_val) == 0:
            return evaluate(model, data.X_train, data.y_train, f"training set of {data.name}")
        return evaluate(model, data.X_val, data.y_val, f"validation split of {data.name}")
    suffix = Path(data_path).suffix.lower().lstrip(".")
    if suffix not in ("npz", "csv"):
        raise DataError(f"{data_path}: --data takes a .npz or .csv file.")
    new = load_dataset(suffix, path=data_path, val_fraction=0.0, standardize=False,
                       label=cfg.data.label if suffix == "csv" else None,
                       n_classes=model.num_classes if data.is_classification else None)
    X = new.X_train
    if data.feature_mean is not None:
        X = (X - data.feature_mean) / data.feature_std
    if X.shape[1] != model.input_dim:
        raise DataError(f"{data_path}: has {X.shape[1]} features; the model takes "
                        f"{model.input_dim}.")
    return evaluate(model, X, new.y_train, str(data_path))


# ---- listing and comparing runs (bptrain runs, bptrain compare) ---------------------------
@dataclass
class RunRecord:
    """What a run directory says about itself, read without building anything."""
    path: Path
    name: str                      # how the run is labelled (its path relative to runs/)
    config: dict[str, Any]         # the resolved config.yaml, as a mapping
    summary: dict[str, Any] | None  # summary.json; None while unfinished
    history: list[dict[str, Any]]  # metrics.jsonl, one record per evaluation
    date: str                      # when it finished, else when it last wrote a file
    total_epochs: int | None       # what the config asks for (None: set by iterations)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def source(self) -> str:
        """The config file the run was started from ('' when unknown)."""
        return str((self.summary or {}).get("config") or "")

    @property
    def epochs_done(self) -> int:
        if self.summary and self.summary.get("epochs") is not None:
            return int(self.summary["epochs"])
        return int(self.history[-1]["epoch"]) if self.history else 0

    def curve(self) -> tuple[str, list[int], list[float | None]]:
        """("val" or "train", epochs, losses): the validation loss when the run has one."""
        kind = "val" if any(r.get("val_loss") is not None for r in self.history) else "train"
        return (kind, [r["epoch"] for r in self.history],
                [r.get(f"{kind}_loss") for r in self.history])

    def metrics(self) -> dict[str, Any]:
        """Final and best numbers: from metrics.jsonl (finished or not), else summary.json."""
        h = self.history
        final = h[-1] if h else (self.summary or {}).get("final") or {}
        accs = [(r["val_acc"], r["epoch"]) for r in h if r.get("val_acc") is not None]
        losses = [(r["val_loss"], r["epoch"]) for r in h if r.get("val_loss") is not None]
        train = [(r["train_loss"], r["epoch"]) for r in h if r.get("train_loss") is not None]
        best_acc = max(accs, key=lambda t: t[0]) if accs else (None, None)
        best_loss = min(losses or train, key=lambda t: t[0]) if (losses or train) else (None, None)
        warnings = (self.summary or {}).get("warnings")
        if warnings is None:
            warnings = []
            for r in h:
                for w in r.get("warnings") or ():
                    if not any((w["kind"], w["layer"]) == (x["kind"], x["layer"]) for x in warnings):
                        warnings.append(w)
        return {"epochs": self.epochs_done, "steps": (self.summary or {}).get("steps",
                                                                               final.get("step")),
                "seconds": (self.summary or {}).get("seconds", final.get("seconds")),
                "final_train_loss": final.get("train_loss"), "final_val_loss": final.get("val_loss"),
                "final_train_acc": final.get("train_acc"), "final_val_acc": final.get("val_acc"),
                "best_val_acc": best_acc[0], "best_val_acc_epoch": best_acc[1],
                "best_loss": best_loss[0], "best_loss_epoch": best_loss[1],
                "best_loss_kind": "val" if losses else "train",
                "warnings": [f"{w['kind']} ({w['layer']})" for w in warnings]}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    import json
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "epoch" in rec:
            out.append(rec)
    return out


def read_run(run_dir: str | Path, name: str | None = None) -> RunRecord:
    """A run directory's config, summary and metrics (DataError if it is not a run)."""
    import json
    import time

    from bptrain.net.config import parse_yaml
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise DataError(f"{run_dir}: not a run directory ({what}). Runs live in runs/<name>/; "
                        "`bptrain runs` lists them.")
    config = parse_yaml(cfg_path.read_text(encoding="utf-8"), str(cfg_path))
    if not isinstance(config, dict):
        raise DataError(f"{cfg_path}: not a bptrain config (expected a mapping of sections).")
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            summary = None
    history = _read_jsonl(run_dir / "metrics.jsonl")
    if summary and summary.get("finished"):
        date = str(summary["finished"]).replace("T", " ")[:19]
    else:
        stamps = [p.stat().st_mtime for p in run_dir.iterdir() if p.is_file()]
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(stamps)))
    train_cfg = config.get("train") or {}
    total = None if train_cfg.get("iterations") else train_cfg.get("epochs")
    return RunRecord(run_dir, name or str(run_dir), config, summary, history, date,
                     total if isinstance(total, int) else None)


def list_runs(root: str | Path = "runs") -> list[RunRecord]:
    """Every run under `root` (runs/<name>/, and runs/<sweep>/<trial>/), oldest first."""
    from bptrain.errors import BptrainError
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; runs are written to runs/ by bptrain run "
                        "(give another folder with --dir).")
    found = []
    for cfg_path in sorted(root.rglob("config.yaml")):
        run_dir = cfg_path.parent
        if run_dir == root or len(run_dir.relative_to(root).parts) > 3:
            continue
        try:
            found.append(read_run(run_dir, str(run_dir.relative_to(root))))
        except (BptrainError, OSError):  # a damaged run must not hide the others
            continue
    return sorted(found, key=lambda r: (r.date, r.name))


def flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"hidden": [100]}} -> {"model.hidden": [100]}; lists of mappings (model.layers)
    become model.layers[0].type, ..."""
    out: dict[str, Any] = {}
    if isinstance(mapping, dict):
        for k, v in mapping.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(mapping, list) and any(isinstance(v, (dict, list)) for v in mapping):
        for i, v in enumerate(mapping):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = mapping
    return out


MISSING_SETTING = "(absent)"


def differing_settings(runs: list[RunRecord]) -> list[tuple[str, list[Any]]]:
    """(dotted key, value per run) for every config key whose values are not all the same;
    a key one run lacks shows as "(absent)"."""
    flat = [flatten(r.config) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out = []
    for k in keys:
        values = [f.get(k, MISSING_SETTING) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out.append((k, values))
    return out


def run_labels(paths: list[str | Path]) -> list[str]:
    """Short, distinct labels: the directory names, or the paths when names collide."""
    names = [Path(p).name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]
