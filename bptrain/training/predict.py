"""Using a trained run: `load_run(path)` gives a `TrainedRun` that predicts on raw inputs.

    run = bptrain.load_run("runs/mlp")          # best weights; weights="final" for the last
    run.predict(X)                              # classes (names, if the labels were strings)
    run.predict_proba(X)                        # softmax probabilities (softmax runs only)
    run.scores(X)                               # raw scores / regression outputs

X is what the training data looked like before bptrain touched it: the run's saved
preprocessing (the training split's standardization statistics) is applied here, exactly as
training and `bptrain eval` apply it. The model is rebuilt from config.yaml and data.json, so
the training data need not be at hand (an unfinished run, or one older than data.json, reads
it once for the statistics / shapes).

`read_inputs(file, run)` reads unlabeled inputs from a file (npz with X, npy, CSV with or
without the run's label column, IDX images, a CIFAR-10 batch) for `bptrain predict`;
`prediction_table` turns predictions into the rows it writes.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bptrain.errors import BptrainError, DataError
from bptrain.net.config import Config
from bptrain.net.data import load_data, load_npz_safely
from bptrain.net.model import Model, build_for_data, build_model
from bptrain.training import rundir
from bptrain.training.rundir import RunDir
from bptrain.training.runs import read_config, weights_file, load_weights

CHUNK = 8192  # rows per forward pass: bounded memory for large files


class TrainedRun:
    """A run directory's model with its saved weights and preprocessing.

    path, weights (the file read: best.npz or model.npz), config (the run's Config), model
    (the bptrain Model; it expects preprocessed inputs), classes (class names when the
    training labels were strings, else None), num_classes, history (metrics.jsonl records),
    summary (summary.json, None while unfinished), info (data.json)."""

    def __init__(self, path: Path, weights_path: Path, config: Config, model: Model,
                 info: dict[str, Any], mean: np.ndarray | None, std: np.ndarray | None):
        self.path = path
        self.weights_path = weights_path
        self.config = config
        self.model = model
        self.info = info
        self.feature_mean = mean
        self.feature_std = std
        self.classes: list[str] | None = info.get("classes")
        self.num_classes: int | None = model.num_classes
        image = info.get("image_shape")
        self.input_shape = tuple(model.input_shape)
        self.image_shape = (tuple(self.input_shape) if len(self.input_shape) > 1 else
                            tuple(image) if image else None)
        self.input_dim = int(np.prod(self.input_shape))

    @property
    def weights(self) -> str:
        return self.weights_path.name

    @property
    def history(self) -> list[dict[str, Any]]:
        return RunDir(self.path).read_metrics()

    @property
    def summary(self) -> dict[str, Any] | None:
        return RunDir(self.path).read_summary()

    # ---- inputs ----------------------------------------------------------------------------
    def expected_shape(self) -> str:
        text = f"(N, {self.input_dim}) rows of {self.input_dim} features"
        if self.image_shape:
            text += f", or (N, {', '.join(map(str, self.image_shape))}) images"
        return text

    def rows(self, X: Any, where: str = "X") -> np.ndarray:
        """X as (N, D) float64 rows, shape and values checked (not yet standardized)."""
        X = np.asarray(X)
        if X.dtype.kind not in "biuf":
            raise DataError(f"{where}: has dtype {X.dtype}; it must hold real numbers.")
        img = self.image_shape
        if X.ndim == 2 and X.shape[1] == self.input_dim:
            pass
        elif img and X.ndim == 4 and tuple(X.shape[1:]) == tuple(img):
            X = X.reshape(len(X), -1)
        elif img and img[0] == 1 and X.ndim == 3 and tuple(X.shape[1:]) == tuple(img[1:]):
            X = X.reshape(len(X), -1)
        else:
            hint = (f" For one sample use X.reshape(1, -1)." if X.ndim == 1 and
                    X.size == self.input_dim else "")
            raise DataError(f"{where}: has shape {X.shape}, but the run's model takes "
                            f"{self.expected_shape()}.{hint}")
        X = X.astype(np.float64, copy=False)
        bad = ~np.isfinite(X)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{where}: has {int(bad.sum())} NaN or infinite values (first at "
                            f"row {r}, column {c}); fill or drop those rows.")
        return X

    def preprocess(self, X: Any, where: str = "X") -> np.ndarray:
        """Raw inputs as the network reads them: checked, standardized with the training
        split's statistics, in the model's dtype."""
        X = self.rows(X, where)
        if self.feature_mean is not None:
            X = (X - self.feature_mean) / self.feature_std
        return np.ascontiguousarray(X, dtype=self.model.dtype)

    # ---- outputs ---------------------------------------------------------------------------
    def scores(self, X: Any) -> np.ndarray:
        """The network's outputs on raw X: class scores (N, C) or regression outputs (N, K)."""
        Xp = self.preprocess(X)
        if len(Xp) == 0:
            return np.zeros((0, self.model.output_dim), dtype=self.model.dtype)
        return np.concatenate([self.model.scores(Xp[i:i + CHUNK])
                               for i in range(0, len(Xp), CHUNK)])

    def predict(self, X: Any) -> np.ndarray:
        """The predicted class of each row (its name when the training labels were strings);
        regression: the outputs."""
        s = self.scores(X)
        if not self.num_classes:
            return s
        pred = s.argmax(axis=1)
        return np.array(self.classes)[pred] if self.classes else pred

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, C), the softmax of the scores; only for softmax runs."""
        loss = self.config.loss.type
        if loss != "softmax" or not self.num_classes:
            raise BptrainError(f"predict_proba: the run was trained with the {loss} loss, whose "
                               "scores are not probabilities; use .scores(X) or .predict(X) "
                               "(or train with loss.type=softmax).")
        return softmax(self.scores(X))

    def evaluate(self, split: str | None = None, data: str | None = None) -> list[Any]:
        """What `bptrain eval` reports for these weights (a list of runs.Evaluation)."""
        from bptrain.training.runs import evaluate_splits
        which = "best" if self.weights_path.name == rundir.BEST else "model"
        return evaluate_splits(self.path, data, which, split)

    # ---- display ---------------------------------------------------------------------------
    def _describe(self) -> str:
        out = (f"{self.num_classes} classes" if self.num_classes else
               f"{self.model.output_dim} outputs")
        return f"{self.input_dim} features -> {out}, {self.config.loss.type} loss"

    def __repr__(self) -> str:
        from bptrain.training.notebook import metric_line
        return (f"TrainedRun('{self.path}', {self.weights}: {self._describe()}; "
                f"{metric_line(self.summary, self.history)})")

    def _repr_html_(self) -> str:
        from bptrain.training.notebook import html_card, result_rows
        rows = [("weights", str(self.weights_path)), ("model", self._describe())]
        if self.classes:
            rows.append(("classes", ", ".join(self.classes)))
        history = self.history
        return html_card(f"TrainedRun {self.path}", rows + result_rows(self.summary, history),
                         history)


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _info_from_data(cfg: Config) -> tuple[dict[str, Any], Any]:
    from bptrain.training.heldout import data_info
    data = load_data(cfg)
    return data_info(data, build_for_data(cfg, data), cfg.data.source), data


def load_run(path: str | Path, weights: str = "best") -> TrainedRun:
    """A trained run, ready to predict on raw inputs: `weights` best (best.npz, the best
    validation evaluation) or final (model.npz, the last weights; "model" is the same)."""
    path = Path(path)
    cfg = read_config(path)
    wpath = weights_file(path, weights)
    info = RunDir(path).read_json(rundir.DATA_INFO)
    data = None
    if not (isinstance(info, dict) and info.get("input_shape") and "output_dim" in info):
        info, data = _info_from_data(cfg)
    shape = tuple(info["input_shape"])
    model = build_model(cfg, shape if len(shape) > 1 else shape[0], int(info["output_dim"]),
                        info.get("num_classes"))
    arrays = load_weights(model, wpath)
    mean, std = arrays.get("_feature_mean"), arrays.get("_feature_std")
    if mean is None and cfg.data.standardize:
        final = path / rundir.MODEL
        saved = load_npz_safely(final) if final.is_file() else {}
        mean, std = saved.get("_feature_mean"), saved.get("_feature_std")
        if mean is None:  # an unfinished run: the statistics are the training split's
            if data is None:
                data = load_data(cfg)
            mean, std = data.feature_mean, data.feature_std
    return TrainedRun(path, wpath, cfg, model, info, mean, std)


# ---- files of unlabeled inputs (bptrain predict) ------------------------------------------
INPUT_FORMATS = (".npz (an array X), .npy, .csv (a header row; the run's label column, if "
                 "present, is dropped), IDX image files (MNIST's *-idx3-ubyte[.gz]) and CIFAR-10 "
                 "batch files")


def read_inputs(file: str | Path, run: TrainedRun) -> np.ndarray:
    """The inputs in `file`, as raw (N, D) rows for `run` (shapes checked)."""
    from bptrain.net import data as D
    p = Path(file)
    if not p.exists():
        raise DataError(f"{p}: no such file.")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; --data takes one file: {INPUT_FORMATS}.")
    name = p.name.lower()
    if name.endswith(".npz"):
        arrays = load_npz_safely(p)
        if "X" not in arrays:
            raise DataError(f"{p}: has no array named X (it has: "
                            f"{', '.join(sorted(arrays)) or 'nothing'}); save the inputs as X: "
                            "np.savez(path, X=X).")
        X = arrays["X"]
    elif name.endswith(".npy"):
        try:
            X = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{p}: is not a readable .npy array of numbers ({e}).") from None
    elif name.endswith(".csv"):
        X = _read_csv_inputs(p, run)
    elif "idx" in name and "ubyte" in name:
        X = D._read_idx(p)
    elif name.startswith(("data_batch", "test_batch")):
        X, _ = D._read_cifar_batch(p)
    else:
        raise DataError(f"{p}: unknown input format; --data takes {INPUT_FORMATS}.")
    return run.rows(X, str(p))


def _read_csv_inputs(path: Path, run: TrainedRun) -> np.ndarray:
    from bptrain.net.data import _all_numbers, _is_number, read_csv_rows
    header, body, lines = read_csv_rows(path)
    if _all_numbers(header):
        raise DataError(f"{path}: the first row is numbers, but a header row naming the "
                        "columns is required (as in training); add one.")
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise DataError(f"{path}: line {lines[bad + 1]} has {len(body[bad])} cells but the "
                        f"header has {len(header)} columns; every row needs one value per "
                        "column.")
    label = run.info.get("label") or run.config.data.label
    names = run.info.get("feature_names")
    if names and all(n in header for n in names):
        extra = [h for h in header if h not in names and h != label]
        if extra:
            raise DataError(f"{path}: has columns the run was not trained on: "
                            f"{', '.join(extra)}; the run reads {', '.join(names)}"
                            + (f" (and drops its label column '{label}')" if label else "")
                            + ".")
        columns = [header.index(n) for n in names]
    else:
        columns = [i for i, h in enumerate(header) if h != label]
        if len(columns) != run.input_dim:
            known = f" ({', '.join(names)})" if names else ""
            raise DataError(f"{path}: has {len(columns)} feature columns (X would be "
                            f"({len(body)}, {len(columns)})), but the run's model takes "
                            f"{run.expected_shape()}{known}"
                            + (f"; its label column '{label}' is dropped when present"
                               if label else "") + ".")
    cells = np.char.strip(np.array([[r[c] for c in columns] for r in body], dtype=str))
    cells = cells.reshape(len(body), len(columns))
    try:
        return cells.astype(np.float64)
    except ValueError:
        r, k = next((r, k) for r, k in np.ndindex(cells.shape) if not _is_number(cells[r, k]))
        raise DataError(f"{path}: line {lines[r + 1]}, column {columns[k] + 1} "
                        f"('{header[columns[k]]}') is {str(cells[r, k])!r}, not a number; "
                        "every feature cell must be numeric.") from None


# ---- prediction tables --------------------------------------------------------------------
def prediction_table(run: TrainedRun, X: np.ndarray) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): row, predicted (the class, by name if it has one), then p_0..p_{C-1}
    (softmax probabilities) or score_0.. (svm, mse); regression: row, output_0..output_{K-1}.
    Column i is class i: the i-th name of run.classes when it has names."""
    s = run.scores(X)
    n, k = s.shape
    if not run.num_classes:
        header = ["row"] + [f"output_{j}" for j in range(k)]
        return header, [[i, *map(float, s[i])] for i in range(n)]
    softmax_run = run.config.loss.type == "softmax"
    values = softmax(s) if softmax_run else s
    prefix = "p" if softmax_run else "score"
    pred = s.argmax(axis=1)
    labels: Sequence[Any] = run.classes if run.classes else range(k)
    header = ["row", "predicted"] + [f"{prefix}_{j}" for j in range(k)]
    return header, [[i, labels[int(pred[i])] if run.classes else int(pred[i]),
                     *map(float, values[i])] for i in range(n)]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def table_csv(header: list[str], rows: list[list[Any]]) -> str:
    import io
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(v) for v in r])
    return out.getvalue()


def table_records(header: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(header, r)) for r in rows]
