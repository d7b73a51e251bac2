"""The run directory: the one module that knows its file names and reads and writes them.

    runs/<name>/
      config.yaml      the fully resolved config (defaults and overrides applied)
      metrics.jsonl    one JSON object per evaluation, flushed as written
      checkpoint.npz   params, running statistics, optimizer state, RNG states, position
      best.npz         parameters (+ running statistics) of the best evaluation
      model.npz        final parameters (+ running statistics, standardization statistics)
      summary.json     final and best metrics (and the test split's, evaluated once), timing
      data.json        what the model reads: input shape, classes (a CSV's class names,
                       feature and label columns), so a run predicts without its training data
      curves.png       loss curves, when matplotlib is installed
      report.html      the run report page (bptrain report; bptrain run writes it at the end)
      tensorboard/     TensorBoard event files, with train.tensorboard: true

Every file but metrics.jsonl is written to a temporary file and renamed, so a kill or a full
disk leaves the previous version whole (and no .tmp behind). metrics.jsonl is appended a line
at a time; its one rule for damage: the first line that is not a complete JSON record ends the
log (a kill mid-write can only tear the last line).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from bptrain.errors import DataError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
MODEL = "model.npz"
SUMMARY = "summary.json"
CURVES = "curves.png"
REPORT = "report.html"
TENSORBOARD = "tensorboard"   # a folder of event files
DATA_INFO = "data.json"
FILES = (CONFIG, METRICS, CHECKPOINT, BEST, MODEL, SUMMARY, CURVES, DATA_INFO)
WEIGHTS = {"model": MODEL, "final": MODEL, "best": BEST}  # --weights choices -> file


def atomic_write_bytes(path: Path, writer: Callable[[Any], Any]) -> None:
    """Write via `writer(file)` into path.tmp, fsync, then rename over path. On any failure
    (a full or read-only disk) the temporary file is removed and `path` is untouched."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def save_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def json_array(obj: Any) -> np.ndarray:
    """JSON text as a plain unicode array: storable in .npz without pickles."""
    return np.array(json.dumps(obj))


def parse_metrics(text: str, upto_step: int | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl text, by the one rule: the first line that is not a
    JSON object with an integer `epoch` and `step` ends the log (a torn last line after a
    kill); with `upto_step`, so does the first record past that step (a resume drops them)."""
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            break
        if not (isinstance(rec, dict) and type(rec.get("epoch")) is int
                and type(rec.get("step")) is int):
            break
        if upto_step is not None and rec["step"] > upto_step:
            break
        records.append(rec)
    return records


class RunDir:
    """One run's folder. `RunDir.create(path)` makes a fresh one; `RunDir(path)` opens one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, path: str | Path) -> "RunDir":
        """`path`, or path-2, path-3, ... if it is taken: never overwrite a run. The folder
        is made with one mkdir, which fails if it exists, so two runs started at the same
        moment get one folder each."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                if candidate.is_dir() and not candidate.is_symlink() and not any(candidate.iterdir()):
                    return cls(candidate)  # an empty folder made for the run is fine
                n += 1

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    # ---- config -----------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        write_text(self.path / CONFIG, text)

    # ---- metrics.jsonl ----------------------------------------------------------------------
    def open_metrics(self):
        """The log, opened for appending one line per evaluation."""
        return open(self.path / METRICS, "a", encoding="utf-8")

    def read_metrics(self, upto_step: int | None = None) -> list[dict[str, Any]]:
        try:
            text = (self.path / METRICS).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return parse_metrics(text, upto_step)

    def rewrite_metrics(self, records: Iterable[dict[str, Any]]) -> None:
        write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in records))

    # ---- arrays -----------------------------------------------------------------------------
    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        save_npz(self.path / name, arrays)

    def weights_path(self, weights: str) -> Path:
        return self.path / WEIGHTS[weights]

    # ---- summary ----------------------------------------------------------------------------
    def write_summary(self, summary: dict[str, Any]) -> None:
        save_json(self.path / SUMMARY, summary)

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json as a mapping; None if missing or damaged (not JSON, not a mapping)."""
        try:
            summary = json.loads((self.path / SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return summary if isinstance(summary, dict) else None

    def write_json(self, name: str, obj: Any) -> None:
        save_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        """A JSON file of the run; None if missing or damaged."""
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None

    def require(self, name: str, hint: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise DataError(f"{path}: not found; {hint}.")
        return path
