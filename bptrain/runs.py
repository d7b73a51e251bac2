"""Reading run directories back: reload a trained model and evaluate it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bptrain.config import Config, load_config
from bptrain.data import Dataset, load_dataset, load_npz_safely
from bptrain.errors import DataError
from bptrain.model import Model
from bptrain.train import build_for_data, load_data


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
        raise DataError(f"{path}: not found; the run has not finished (try --weights best, "
                        "or resume it with bptrain run --resume).")
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
