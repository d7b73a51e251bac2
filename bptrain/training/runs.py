"""Reading run directories back: reload a trained model and evaluate it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bptrain.net.config import Config, load_config
from bptrain.net.data import Dataset, load_dataset, load_npz_safely
from bptrain.errors import DataError
from bptrain.net.data import load_data
from bptrain.net.model import Model, build_for_data
from bptrain.training.rundir import BEST, CONFIG, MODEL, WEIGHTS


@dataclass
class Evaluation:
    name: str            # what was evaluated, e.g. "validation split of digits"
    n: int
    loss: float
    accuracy: float | None
    confusion: np.ndarray | None  # (C, C): rows true class, columns predicted
    split: str | None = None      # "val", "test", "train"; None for a --data file
    classes: list[str] | None = None  # class names (string labels of a CSV), else None

    def per_class(self) -> dict[str, Any] | None:
        """Precision, recall, F1 and support per class, and their macro and weighted means."""
        return None if self.confusion is None else per_class_metrics(self.confusion, self.classes)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "split": self.split, "n": self.n, "loss": self.loss,
               "accuracy": self.accuracy}
        if self.confusion is not None:
            out["confusion"] = self.confusion.tolist()
            out.update(self.per_class())
        return out


def per_class_metrics(confusion: np.ndarray, classes: list[str] | None = None
                      ) -> dict[str, Any]:
    """From a confusion matrix (rows true, columns predicted): per class, precision =
    TP / predicted as the class, recall = TP / truly the class, F1 their harmonic mean, and
    support = truly the class. A ratio whose denominator is 0 is 0 (scikit-learn's default,
    zero_division=0). Macro: the plain mean over classes; weighted: by support."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    predicted, support = c.sum(axis=0), c.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / (precision + recall), 0.0)
    rows = [{"class": i, **({"name": classes[i]} if classes else {}),
             "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i in range(len(c))]
    total = support.sum()

    def mean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
        if weights is None:
            return float(values.mean())
        return float((values * weights).sum() / total) if total else 0.0
    return {"per_class": rows,
            "macro": {"precision": mean(precision), "recall": mean(recall), "f1": mean(f1)},
            "weighted": {"precision": mean(precision, support),
                         "recall": mean(recall, support), "f1": mean(f1, support)}}


def weights_file(run_dir: str | Path, weights: str = "model") -> Path:
    """The file of a --weights choice (model/final: model.npz, best: best.npz), or a DataError
    that says why it is missing and what to do."""
    run_dir = Path(run_dir)
    if weights not in WEIGHTS:
        raise DataError(f"weights: {weights!r} is not one of {', '.join(WEIGHTS)} "
                        "(model and final: the last weights, best: the best evaluation's).")
    path = run_dir / WEIGHTS[weights]
    if not path.is_file():
        if WEIGHTS[weights] == MODEL and (run_dir / BEST).is_file():
            hint = ("the run has not finished: evaluate its best weights so far with "
                    "--weights best, or finish it with bptrain run --resume " + str(run_dir))
        else:
            hint = ("the run saved no weights of that kind (it stopped before its first "
                    "evaluation, e.g. it diverged at once); start it again with bptrain run")
        raise DataError(f"{path}: not found; {hint}.")
    return path


def load_weights(model: Model, path: Path) -> dict[str, np.ndarray]:
    """Set the model's parameters and running statistics from a weights file (shapes checked);
    returns every array of the file (the standardization statistics among them)."""
    from bptrain.training.rundir import check_arrays
    arrays = load_npz_safely(path)
    # names, shapes, real floating-point dtypes and finite values, before anything is set
    check_arrays(arrays, {name: model.params[name].shape for name in model.params}, path)
    check_arrays(arrays, {name: np.shape(getattr(*model.buffers[name]))
                          for name in model.buffers}, path, "running statistic")
    for name in model.params:
        model.params[name] = arrays[name]
    model.load_buffers({name: arrays[name] for name in model.buffers})
    return arrays


def read_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise DataError(f"{run_dir}: not a run directory (no config.yaml). Runs live in "
                        "runs/<name>/; `bptrain runs` lists them.")
    return load_config(cfg_path)


def _load_run_parts(run_dir: str | Path, weights: str = "model"
                    ) -> tuple[Config, Model, Dataset]:
    """A run's config, its model with the saved weights (`model`/`final` or `best`) and
    running statistics, and its data (loaded again, as data.path names it)."""
    from bptrain.training.rundir import RunDir, data_fingerprint
    cfg = read_config(run_dir)
    path = weights_file(run_dir, weights)
    data = load_data(cfg)
    model = build_for_data(cfg, data)
    arrays = load_weights(model, path)
    if "_feature_mean" in arrays and "_feature_std" in arrays:  # the statistics it trained with
        data.saved_stats = (arrays["_feature_mean"], arrays["_feature_std"])
    recorded = (RunDir(run_dir).read_summary() or {}).get("data_sha256")
    if isinstance(recorded, str):
        now = data_fingerprint(data.X_train, data.y_train, data.X_val, data.y_val,
                               data.X_test, data.y_test)
        data.changed = now != recorded
    return cfg, model, data


def evaluate(model: Model, X: np.ndarray, y: np.ndarray, name: str, split: str | None = None,
             classes: list[str] | None = None) -> Evaluation:
    X = np.ascontiguousarray(X, dtype=model.dtype)
    loss, scores = model.evaluate_loss(X, y)
    if model.num_classes and y.ndim == 1:
        pred = scores.argmax(axis=1)
        k = model.num_classes
        if k > MAX_CONFUSION:  # k x k counts would not fit, nor be readable
            return Evaluation(name, len(y), loss, float(np.mean(pred == y)), None, split,
                              classes)
        confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
        return Evaluation(name, len(y), loss, float(np.mean(pred == y)), confusion, split,
                          classes)
    return Evaluation(name, len(y), loss, None, None, split, classes)


SPLITS = ("val", "test", "train")
MAX_CONFUSION = 1000   # classes up to which a confusion matrix is counted


def evaluate_run(run_dir: str | Path, data_path: str | None = None,
                 weights: str = "model", split: str | None = None) -> Evaluation:
    """Evaluate a run on its validation split (its training set when it has none), on
    `split` (val, test, train), or on a file (npz/csv) standardized with the training
    statistics the run saved."""
    return evaluate_splits(run_dir, data_path, weights, split or "default")[0]


def evaluate_splits(run_dir: str | Path, data_path: str | None = None,
                    weights: str = "model", split: str | None = None) -> list[Evaluation]:
    """What `bptrain eval` reports: with no split, the validation split (or the training set)
    and then, separately, the test split when the run has one; with `split`, that one."""
    cfg, model, data = _load_run_parts(run_dir, weights)
    classes = data.class_names
    if data_path is not None:
        return [_evaluate_file(cfg, model, data, data_path)]
    if getattr(data, "changed", False):
        raise DataError(f"{run_dir}: the data changed since this run trained ({data.name} is not "
                        "what summary.json recorded: its sha256 differs), so its splits are not "
                        "the ones the run saw. Restore the original data, evaluate a file with "
                        "--data FILE, or train again: bptrain run "
                        f"{Path(run_dir) / CONFIG}")
    parts = {"val": (data.X_val, data.y_val, f"validation split of {data.name}"),
             "test": (data.X_test, data.y_test, f"test split of {data.name}"),
             "train": (data.X_train, data.y_train, f"training set of {data.name}")}
    if split in (None, "default"):
        chosen = ["val" if len(data.y_val) else "train"]
        if split is None and len(data.y_test):
            chosen.append("test")
    elif split in SPLITS:
        chosen = [split]
        if not len(parts[split][1]):
            fix = ("set data.test_fraction (e.g. --set data.test_fraction=0.2) when training"
                   if split == "test" else "set data.val_fraction when training")
            raise DataError(f"{run_dir}: the run has no {'test' if split == 'test' else 'validation'}"
                            f" split; {fix}, or evaluate another split (--split train).")
    else:
        raise DataError(f"split: {split!r} is not one of {', '.join(SPLITS)}.")
    return [evaluate(model, parts[s][0], parts[s][1], parts[s][2], s, classes) for s in chosen]


def _evaluate_file(cfg: Config, model: Model, data: Dataset, data_path: str) -> Evaluation:
    suffix = Path(data_path).suffix.lower().lstrip(".")
    if suffix not in ("npz", "csv"):
        raise DataError(f"{data_path}: --data takes a .npz or .csv file.")
    csv = suffix == "csv"
    new = load_dataset(suffix, path=data_path, val_fraction=0.0, standardize=False,
                       label=cfg.data.label if csv else None,
                       n_classes=model.num_classes if data.is_classification else None,
                       classes=data.class_names if csv else None)
    X, y = new.X_train, new.y_train
    # Widths and label shapes first: nothing is computed on data the model cannot read.
    width = int(np.prod(model.input_shape))
    if X.shape[1] != width:
        raise DataError(f"{data_path}: has {X.shape[1]} features (X {X.shape}); the model "
                        f"takes {width} (rows of shape (N, {width})).")
    if data.is_classification and y.ndim != 1:
        raise DataError(f"{data_path}: y has shape {y.shape}, but the run classifies into "
                        f"{model.num_classes} classes: give y as (N,) integer labels "
                        f"0..{model.num_classes - 1}.")
    if not data.is_classification:
        k = data.output_dim
        if y.ndim != 2 or y.shape[1] != k:
            raise DataError(f"{data_path}: y has shape {y.shape}, but the run predicts {k} "
                            f"regression target{'s' if k != 1 else ''}: give y as (N, {k}) "
                            "real numbers" + (" (y.reshape(-1, 1))" if k == 1 else "") + ".")
    mean, std = getattr(data, "saved_stats", (data.feature_mean, data.feature_std))
    if mean is not None:
        if np.shape(mean) != (X.shape[1],) or np.shape(std) != (X.shape[1],):
            raise DataError(f"{data_path}: the run's standardization statistics have "
                            f"{np.size(mean)} features, the file {X.shape[1]}.")
        with np.errstate(all="ignore"):
            X = (X - mean) / std
        bad = ~np.isfinite(X).all(axis=0)
        if bad.any():
            j = int(np.argmax(bad))
            raise DataError(f"{data_path}: feature column {j} overflows when standardized with "
                            "the run's statistics (values too large for float64 arithmetic); "
                            "rescale that column of the file.")
    return evaluate(model, X, y, str(data_path), None, data.class_names)


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
    problem: str | None = None     # why the run is damaged (bptrain runs marks it), else None

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
        """Final and best numbers: from metrics.jsonl (finished or not), else summary.json.
        "Best" is one evaluation, the one `rundir.best_by` picks (the highest val_acc, else the
        lowest val_loss, else the lowest train_loss), as in training, summary.json and best.npz:
        every best_* number is that evaluation's, and best_by says which metric chose it."""
        from bptrain.training.rundir import best_by, best_record
        h = self.history
        final = h[-1] if h else (self.summary or {}).get("final") or {}
        best = best_record(h) if h else ((self.summary or {}).get("best") or None)
        by = best_by(h) if h else ((self.summary or {}).get("best_by") or
                                   (best_by([best]) if best else None))
        best = best or {}
        loss_kind = "val" if best.get("val_loss") is not None else "train"
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
                "best_by": by, "best_epoch": best.get("epoch"),
                "best_value": best.get(by) if by else None,
                "best_val_acc": best.get("val_acc"),
                "best_val_acc_epoch": best.get("epoch") if best.get("val_acc") is not None
                else None,
                "best_loss": best.get(f"{loss_kind}_loss"), "best_loss_epoch": best.get("epoch"),
                "best_loss_kind": loss_kind,
                "warnings": [f"{w['kind']} ({w['layer']})" for w in warnings],
                **({"damaged": self.problem} if self.problem else {})}


def _config_problem(config: Any) -> str | None:
    """What is wrong with a run's config.yaml content for reading it back, else None."""
    if not isinstance(config, dict):
        return f"holds a {type(config).__name__}, not a mapping of sections"
    for key, value in config.items():
        if not isinstance(key, str):
            return f"has a key {str(key)[:40]!r} that is not a name"
        if key not in ("name", "seed") and value is not None and not isinstance(value, dict):
            return f"'{key}' is {str(value)[:40]!r}, not a section of keys"
    model = config.get("model") or {}
    if model.get("hidden") is not None and not (
            isinstance(model["hidden"], list) and all(type(h) is int for h in model["hidden"])):
        return "model.hidden is not a list of whole numbers"
    if model.get("layers") is not None and not (
            isinstance(model["layers"], list) and all(isinstance(l, dict)
                                                      for l in model["layers"])):
        return "model.layers is not a list of layer mappings"
    return None


def _date(run_dir: Path, summary: dict[str, Any] | None) -> str:
    import time
    if summary and isinstance(summary.get("finished"), str) and summary["finished"]:
        return summary["finished"].replace("T", " ")[:19]
    try:
        stamps = [p.stat().st_mtime for p in run_dir.iterdir() if p.is_file()]
    except OSError:
        stamps = []
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(stamps))) if stamps else "-"


def read_run(run_dir: str | Path, name: str | None = None, strict: bool = True) -> RunRecord:
    """A run directory's config, summary and metrics. A folder that is not a run is a
    DataError. A damaged run (config.yaml, summary.json or metrics.jsonl not UTF-8, not the
    expected shape, strings where numbers belong) is a DataError saying which file and what,
    or with strict=False a RunRecord whose `problem` says so (what `bptrain runs` lists)."""
    from bptrain.errors import BptrainError
    from bptrain.net.config import read_yaml_file
    from bptrain.training.rundir import RunDir
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise DataError(f"{run_dir}: not a run directory ({what}). Runs live in runs/<name>/; "
                        "`bptrain runs` lists them.")
    label = name or str(run_dir)
    problem = None
    try:
        config = read_yaml_file(cfg_path, "config", "runs/NAME/config.yaml")
    except BptrainError as e:
        config, problem = {}, str(e)
    else:
        why = _config_problem(config)
        if why:
            config, problem = {}, f"{cfg_path}: {why}"
    d = RunDir(run_dir)
    summary, why = d.load_summary()
    problem = problem or why
    history = d.read_metrics()
    if problem and strict:
        raise DataError(f"{problem.rstrip('.')}. The run {run_dir} is damaged; bptrain runs "
                        "lists the healthy ones. Restore the file, or train the run again.")
    train_cfg = config.get("train") or {}
    total = None if train_cfg.get("iterations") else train_cfg.get("epochs")
    return RunRecord(run_dir, label, config, summary, history, _date(run_dir, summary),
                     total if type(total) is int else None, problem)


def list_runs(root: str | Path = "runs") -> list[RunRecord]:
    """Every run under `root` (runs/<name>/, and runs/<sweep>/<trial>/), oldest first."""
    from bptrain.errors import BptrainError
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; runs are written to runs/ by bptrain run "
                        "(give another folder with --dir).")
    found = []
    # runs/<name>/, runs/<sweep>/<trial>/ and one level more: never a walk of a whole disk
    # (bptrain runs --dir /)
    for cfg_path in sorted(p for depth in (1, 2, 3)
                           for p in root.glob("/".join(["*"] * depth) + "/config.yaml")):
        run_dir = cfg_path.parent
        if run_dir == root or len(run_dir.relative_to(root).parts) > 3:
            continue
        label = str(run_dir.relative_to(root))
        try:  # a damaged run must not hide the others: it is listed, marked damaged
            found.append(read_run(run_dir, label, strict=False))
        except (BptrainError, OSError, ValueError) as e:
            found.append(RunRecord(run_dir, label, {}, None, [], _date(run_dir, None), None,
                                   str(e)))
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
