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

from bptrain.errors import BptrainError, DataError

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
CLAIM = ".bptrain-claim"   # exists only between RunDir.create and the first config.yaml


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


# ---- the file system's answers, in words --------------------------------------------------
class StorageError(BptrainError):
    """A run folder or file cannot be made or written (full or read-only disk, a name too
    long, a file where a folder should be); the message says which and what to do."""


def describe_os_error(e: OSError, what: str = "") -> str:
    """An OSError as one sentence naming the path and the likely fix."""
    import errno
    where = str(e.filename) if e.filename is not None else (what or "a file")
    reason = e.strerror or str(e)
    fix = {
        errno.ENOSPC: "the disk is full: free some space, or write the run elsewhere with "
                      "--out DIR; files already written are kept whole",
        errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere with "
                      "--out DIR",
        errno.EROFS: "the file system is read-only: write the run to a writable folder with "
                     "--out DIR (or run from a writable folder)",
        errno.EACCES: "you may not write there: choose a folder you own with --out DIR",
        errno.EPERM: "you may not write there: choose a folder you own with --out DIR",
        errno.ENAMETOOLONG: "the name is too long for the file system (most allow 255 bytes "
                            "per folder name): shorten `name:` in the config, or give --out",
        errno.ENOTDIR: "a file stands where a folder should be: move it away, or give "
                       "--out DIR",
        errno.EEXIST: "something that is not a folder (a file or a broken link) is in the "
                      "way: move it, or give --out DIR",
        errno.ELOOP: "a symbolic link loop is in the path: fix the link, or give --out DIR",
        errno.EISDIR: "a folder stands where a file should be: move it away",
    }.get(e.errno, "check the path and the disk, or write elsewhere with --out DIR")
    return f"{where}: {what + ': ' if what else ''}{reason}; {fix}."


# ---- metrics.jsonl ----------------------------------------------------------------------------
NUMBER_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc", "batch_loss", "lr", "seconds",
               "test_loss", "test_acc")
DIAGNOSTIC_KEYS = ("grad_norm", "weight_norm", "update_ratio", "dead", "saturated")


def _number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def valid_record(rec: Any) -> bool:
    """An evaluation record as bptrain writes it: a JSON object with integer `epoch` and
    `step` (>= 0), numbers (or null) for the metrics, a mapping of mappings for
    `diagnostics` and a list of {kind, layer, detail} for `warnings`."""
    if not (isinstance(rec, dict) and type(rec.get("epoch")) is int
            and type(rec.get("step")) is int and rec["epoch"] >= 0 and rec["step"] >= 0):
        return False
    if not all(_number_or_none(rec.get(k)) for k in NUMBER_KEYS):
        return False
    diag = rec.get("diagnostics")
    if diag is not None and not (isinstance(diag, dict) and all(
            isinstance(d, dict) and all(_number_or_none(d.get(k)) for k in DIAGNOSTIC_KEYS)
            for d in diag.values())):
        return False
    warnings = rec.get("warnings")
    if warnings is not None:
        from bptrain.training.diagnostics import TITLES
        if not (isinstance(warnings, list) and all(
                isinstance(w, dict) and w.get("kind") in TITLES
                and isinstance(w.get("layer"), str) and isinstance(w.get("detail", ""), str)
                for w in warnings)):
            return False
    return True


def parse_metrics(text: str, upto_step: int | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl text, by the one rule: the first line that is not a
    complete record (`valid_record`: a JSON object with an integer `epoch` and `step`, numbers
    where numbers belong) ends the log (a torn last line after a kill, a damaged file); with
    `upto_step`, so does the first record past that step (a resume drops them)."""
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            break
        if not valid_record(rec):
            break
        if upto_step is not None and rec["step"] > upto_step:
            break
        records.append(rec)
    return records


def summary_problem(summary: Any) -> str | None:
    """What is wrong with a summary.json's content, or None when it has the shape bptrain
    writes (a mapping; numbers for steps, epochs, seconds, num_params; evaluation records for
    final and best; a list of warnings)."""
    if not isinstance(summary, dict):
        return f"holds a {type(summary).__name__}, not a mapping"
    for key in ("steps", "epochs", "num_params"):
        v = summary.get(key)
        if v is not None and (type(v) is not int or v < 0):
            return f"'{key}' is {str(v)[:40]!r}, not a whole number"
    if not _number_or_none(summary.get("seconds")):
        return f"'seconds' is {str(summary.get('seconds'))[:40]!r}, not a number"
    for key in ("name", "config", "finished", "best_by"):
        v = summary.get(key)
        if v is not None and not isinstance(v, str):
            return f"'{key}' is not a string"
    for key in ("final", "best"):
        v = summary.get(key)
        if v not in (None, {}) and not valid_record(v):
            return f"'{key}' is not an evaluation record (epoch, step and numbers)"
    warnings = summary.get("warnings")
    if warnings is not None and not (isinstance(warnings, list) and all(
            isinstance(w, dict) and isinstance(w.get("kind"), str)
            and isinstance(w.get("layer"), str) for w in warnings)):
        return "'warnings' is not a list of {kind, layer, ...}"
    return None


# ---- the best evaluation: one rule for the trainer, summaries, runs and compare -------------
def best_by(records: Iterable[dict[str, Any]]) -> str | None:
    """The metric that picks a run's best evaluation: val_acc when the run measures it, else
    val_loss, else train_loss (None for no records)."""
    records = list(records)
    for key in ("val_acc", "val_loss", "train_loss"):
        if any(r.get(key) is not None for r in records):
            return key
    return None


def score(record: dict[str, Any], key: str) -> float:
    """Higher is better: the accuracy, or minus the loss; -inf when the record lacks it."""
    v = record.get(key)
    if v is None or v != v:
        return -float("inf")
    return float(v) if key.endswith("_acc") else -float(v)


def best_record(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The best evaluation by `best_by` (the first one, when several tie)."""
    records = list(records)
    key = best_by(records)
    if key is None:
        return None
    best = None
    for r in records:
        if best is None or score(r, key) > score(best, key):
            best = r
    return best


# ---- arrays read back ------------------------------------------------------------------------
def check_arrays(arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]],
                 path: Path | str, what: str = "parameter",
                 fix: str = "Train the run again, or restore the file.") -> None:
    """Every `expected` array present with its shape, real floating-point numbers, finite: a
    DataError naming the file and the array otherwise (complex or string weights of the right
    shape, NaN, a missing array)."""
    for name, shape in expected.items():
        if name not in arrays:
            raise DataError(f"{path}: has no array {name!r} (a {what}); it was not written "
                            f"for this run's model (expected {', '.join(expected)}). " + fix)
        a = arrays[name]
        if a.dtype.kind != "f":
            raise DataError(f"{path}: {what} {name!r} has dtype {a.dtype}, not real "
                            "floating-point numbers (float64 or float32); the file was not "
                            "written by bptrain or was altered. " + fix)
        if tuple(a.shape) != tuple(shape):
            raise DataError(f"{path}: {name} has shape {tuple(a.shape)} but the run's model "
                            f"needs {tuple(shape)} (a {what}); the file belongs to another run "
                            "or config. " + fix)
        if a.size and not np.isfinite(a).all():
            raise DataError(f"{path}: {what} {name!r} holds NaN or infinite values; the file "
                            "is damaged. " + fix)


def data_fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' shapes, dtypes and bytes: what a run trained on, to notice a data
    file that changed before it is resumed or evaluated."""
    import hashlib
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


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
        """`path`, or path-2, path-3, ... if it is taken: never overwrite a run. A folder is
        claimed by creating CLAIM in it with O_EXCL, which exactly one process can do, so two
        runs started at the same moment get one folder each, also when both find the same
        empty folder (an empty folder made for the run is used as is). Anything in the way
        (a file, a broken link, a full or read-only disk, a name too long) is a StorageError
        saying what to do; the folder you are in is never taken over."""
        path = Path(path)
        here = Path.cwd().resolve()
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError, ValueError) as e:
            raise StorageError(f"{path}: cannot be used as a run folder ({e}); give --out "
                               "a new folder, e.g. --out runs/mine.") from None
        if resolved == here or resolved in here.parents:
            if resolved != here or any(here.iterdir()):
                raise StorageError(f"{path}: is the folder you are in (or one around it), and "
                                   "it is not empty; give a new folder, e.g. --out runs/mine "
                                   "(a run never writes over existing files).")
            path = resolved  # an empty folder you are in: the run's, as any empty folder
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(describe_os_error(e, "cannot make the folder for the run")
                               ) from None
        for n in range(1, 10_000):
            candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                if not candidate.is_dir() or candidate.is_symlink() or any(candidate.iterdir()):
                    continue  # taken: a run, a file, a link (dangling or not), anything
            except OSError as e:
                raise StorageError(describe_os_error(e, "cannot make the run folder")) from None
            try:
                os.close(os.open(candidate / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue  # another run claimed this folder first
            except OSError as e:
                raise StorageError(describe_os_error(e, "cannot write in the run folder")
                                   ) from None
            return cls(candidate)
        raise StorageError(f"{path}: it and {path.name}-2 ... {path.name}-9999 are all taken; "
                           "give another name or --out.")

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    # ---- config -----------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        write_text(self.path / CONFIG, text)
        try:
            (self.path / CLAIM).unlink()  # the folder is a run now: config.yaml claims it
        except OSError:
            pass

    def release(self) -> None:
        """Remove a folder `create` made when the run failed before writing anything in it."""
        try:
            (self.path / CLAIM).unlink()
            self.path.rmdir()
        except OSError:
            pass

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
        """summary.json as a mapping; None if missing or damaged (see `load_summary`)."""
        return self.load_summary()[0]

    def load_summary(self) -> tuple[dict[str, Any] | None, str | None]:
        """(summary.json, None), (None, None) when there is none, or (None, what is wrong)
        when it is damaged: not UTF-8, not JSON, not a mapping, or strings where numbers
        belong."""
        path = self.path / SUMMARY
        if not path.is_file():
            return None, None
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            return None, f"{path}: is not UTF-8 text"
        except (OSError, ValueError, RecursionError) as e:
            return None, f"{path}: is not valid JSON ({type(e).__name__})"
        problem = summary_problem(summary)
        return (None, f"{path}: {problem}") if problem else (summary, None)

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
