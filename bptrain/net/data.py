"""Data: every source bptrain trains on, loaded into one validated, split, standardized `Dataset`.

    ds = load_dataset("digits")                  # the shipped 8x8 digits, 1437 train / 360 val
    ds.X_train.shape, ds.y_train.shape           # (1437, 64) float64, (1437,) int64
    ds = load_dataset("csv", path="iris.csv", label="species")

Sources: `digits` (shipped in bptrain/datasets/), the seeded synthetic `spiral`, `blobs`, `xor`
and `regression`, and the user files `npz`, `csv`, `cifar10` (the "python version" batches) and
`mnist` (IDX files). Whatever the source, the result is checked the same way: X is (N, D) with
finite numbers; y is (N,) int64 class labels 0..C-1 or (N, K) float64 regression targets.
Every problem is a DataError whose message names the file or array and says how to fix it.

Only NumPy and the standard library are imported; no file format here can run code (npz is read
with allow_pickle=False, CIFAR's pickles with an unpickler that builds nothing but arrays).
"""
from __future__ import annotations

import csv
import gzip
import importlib.resources
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bptrain.errors import DataError

SYNTHETIC_SOURCES = ("spiral", "blobs", "xor", "regression")
FILE_SOURCES = ("npz", "csv", "cifar10", "mnist")
SOURCES = ("digits",) + SYNTHETIC_SOURCES + FILE_SOURCES

# The options each source understands. An option given to a source that ignores it is an error,
# not a silent no-op: `n_samples: 50` on digits would otherwise look like it did something.
_OPTIONS = {
    "digits": {"n_classes"},
    "spiral": {"n_samples", "n_classes", "noise"},
    "blobs": {"n_samples", "n_features", "n_classes", "noise"},
    "xor": {"n_samples", "noise"},
    "regression": {"n_samples", "n_features", "n_outputs"},
    "npz": {"path", "n_classes"},
    "csv": {"path", "label", "n_classes"},
    "cifar10": {"path", "n_classes"},
    "mnist": {"path", "n_classes"},
}


@dataclass
class Dataset:
    """Train and validation arrays, ready for a model.

    X_train (N, D) and X_val (M, D) are float64, C-contiguous. y_train (N,) and y_val (M,) are
    int64 labels in 0..num_classes-1, or, for regression, (N, K) and (M, K) float64 targets with
    num_classes None. M may be 0 (val_fraction 0), in which case X_val is (0, D).
    feature_mean and feature_std (D,) are the training-split statistics X was standardized with,
    None when it was not: apply them to new data with `apply_standardization(X, mean, std)`.
    X_test and y_test are the test split (data.test_fraction, or the file's X_test/y_test),
    standardized like X_val; (0, D) when there is none. class_names: the label names of a CSV
    whose labels are strings, class i = class_names[i] (sorted); feature_names and label_name:
    a CSV's header (None for other sources).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    num_classes: int | None
    name: str
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of each row, for images
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    label_name: str | None = None

    def __post_init__(self) -> None:
        if self.X_test is None:
            self.X_test = self.X_val[:0]
        if self.y_test is None:
            self.y_test = self.y_val[:0]

    @property
    def input_dim(self) -> int:
        """D, the number of features."""
        return int(self.X_train.shape[1])

    @property
    def output_dim(self) -> int:
        """The network's output width: num_classes, or K for (N, K) regression targets."""
        return self.num_classes if self.num_classes is not None else int(self.y_train.shape[1])

    @property
    def is_classification(self) -> bool:
        return self.num_classes is not None


def load_dataset(source: str, *, path: str | None = None, label: str | int | None = None,
                 val_fraction: float = 0.2, standardize: bool = True, seed: int = 0,
                 n_samples: int | None = None, n_features: int | None = None,
                 n_classes: int | None = None, n_outputs: int | None = None,
                 noise: float | None = None, base_dir: str | Path | None = None,
                 shape: tuple[int, ...] | None = None, per_channel: bool = False,
                 test_fraction: float = 0.0, classes: Any = None) -> Dataset:
    """Load `source`, validate it, split off test and validation data and standardize the
    features.

    path: the file (npz, csv) or directory (cifar10, mnist); relative to base_dir if given (the
    config file's folder), else to the current directory. label: the csv label column, by name
    or index (default: the last column). val_fraction: the share of samples held out, from a
    permutation by np.random.default_rng(seed); ignored when the file brings X_val and y_val.
    n_classes: for spiral and blobs, how many to make; for other classification sources, the
    class count to expect (labels must lie in 0..n_classes-1; default max label + 1).
    Images keep X flat, (N, C*H*W) in C order, and carry `image_shape` (C, H, W): digits
    (1, 8, 8), MNIST (1, 28, 28), CIFAR-10 (3, 32, 32), an npz whose X is 4-D, or `shape`.
    per_channel: standardize images by one mean and std per channel (for convolutional
    networks) instead of per feature.
    test_fraction: the share of all samples held out as the test split, drawn FIRST with its
    own permutation, np.random.default_rng([seed, 3]); the validation split (val_fraction, also
    a share of all samples) is then drawn from the rest, which keeps its order. So adding a test
    split changes which samples validate, and test_fraction 0 gives exactly the split of
    before. Ignored when the file brings X_test and y_test. Drawn from the training part when
    the file brings its own X_val.
    classes: a CSV's string label names in class order (a trained run's), to map a new file's
    labels onto the run's classes; by default string labels become classes in sorted order.
    """
    if source not in SOURCES:
        raise DataError(f"data.source: unknown source {source!r}; choose one of "
                        f"{', '.join(SOURCES)}.")
    _check_options(source, path=path, label=label, n_samples=n_samples, n_features=n_features,
                   n_classes=n_classes, n_outputs=n_outputs, noise=noise)
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction is {val_fraction!r}; it must be at least 0 and below 1 "
                        "(0.2 holds out a fifth of the samples, 0 holds out none).")
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
            or not 0.0 <= test_fraction < 1.0):
        raise DataError(f"data.test_fraction is {test_fraction!r}; it must be at least 0 and "
                        "below 1 (0.2 holds out a fifth of the samples as the test split).")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed is {seed!r}; it must be a whole number >= 0.")

    name = source
    X_val = y_val = X_test = y_test = None
    csv_info: dict[str, Any] = {}
    image_shape = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}.get(source)
    if source == "digits":
        X, y = _load_digits()
    elif source in SYNTHETIC_SOURCES:
        # Generation gets its own stream so the data does not share random numbers with the split.
        rng = np.random.default_rng([seed, 1])
        if source == "spiral":
            X, y = _make_spiral(rng, n_samples, n_classes, noise)
        elif source == "blobs":
            X, y = _make_blobs(rng, n_samples, n_features, n_classes, noise)
        elif source == "xor":
            X, y = _make_xor(rng, n_samples, noise)
        else:
            X, y = _make_regression(rng, n_samples, n_features, n_outputs)
    else:
        file = _resolve(source, path, base_dir)
        name = file.name
        if source == "npz":
            X, y, X_val, y_val, X_test, y_test = _load_npz_dataset(file)
        elif source == "csv":
            X, y, csv_info = _load_csv(file, label, classes)
        elif source == "cifar10":
            X, y, X_val, y_val = _load_cifar10(file)
        else:
            X, y, X_val, y_val = _load_mnist(file)

    if getattr(X, "ndim", 0) == 4:  # an npz of images (N, C, H, W): rows in C order
        image_shape = tuple(int(s) for s in X.shape[1:])
        X = X.reshape(len(X), -1)
        if X_val is not None and getattr(X_val, "ndim", 0) == 4:
            X_val = X_val.reshape(len(X_val), -1)
        if X_test is not None and getattr(X_test, "ndim", 0) == 4:
            X_test = X_test.reshape(len(X_test), -1)
    X, y = _check_arrays(X, y, name, "X", "y")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or int(np.prod(shape)) != X.shape[1]:
            raise DataError(f"data.shape: {list(shape)} does not fit {name}'s {X.shape[1]} "
                            "features; give [C, H, W] with C*H*W equal to the number of "
                            f"features (e.g. [1, {X.shape[1]}, 1]).")
        image_shape = shape
    if X_val is not None:
        X_val, y_val = _check_split(X_val, y_val, X, y, name, "val", "validation")
    if X_test is not None:
        X_test, y_test = _check_split(X_test, y_test, X, y, name, "test", "test")
    held = [a for a in (y_val, y_test) if a is not None and len(a)]
    num_classes = _labels_to_classes(y, np.concatenate(held) if len(held) > 1 else
                                     (held[0] if held else y_val), name, n_classes)

    total = len(X)
    if X_test is None:
        X, y, X_test, y_test = _split_test(X, y, test_fraction, seed, name)
    if X_val is None:
        X_train, y_train, X_val, y_val = _split(X, y, val_fraction, seed, name, total)
    else:
        X_train, y_train = X, y

    if num_classes is not None:
        y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
        y_test = y_test.astype(np.int64)
    else:
        y_train, y_val = y_train.astype(np.float64), y_val.astype(np.float64)
        y_test = y_test.astype(np.float64)

    mean = std = None
    if standardize and per_channel and image_shape is not None:
        mean, std = channel_stats(X_train, image_shape)
        X_train = apply_standardization(X_train, mean, std)
        X_val = apply_standardization(X_val, mean, std)
        X_test = apply_standardization(X_test, mean, std)
    elif standardize:
        mean, std = feature_stats(X_train)
        X_train = apply_standardization(X_train, mean, std)
        X_val = apply_standardization(X_val, mean, std)
        X_test = apply_standardization(X_test, mean, std)

    c = np.ascontiguousarray
    return Dataset(X_train=c(X_train, dtype=np.float64), y_train=c(y_train),
                   X_val=c(X_val, dtype=np.float64), y_val=c(y_val), num_classes=num_classes,
                   name=name, feature_mean=mean, feature_std=std, image_shape=image_shape,
                   X_test=c(X_test, dtype=np.float64), y_test=c(y_test),
                   class_names=csv_info.get("classes"), feature_names=csv_info.get("features"),
                   label_name=csv_info.get("label"))


# --- standardization ------------------------------------------------------------------------

MAX_MAGNITUDE = 1e150   # |values| beyond this overflow float64 once squared and summed


def _check_stats(X: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str,
                 columns: Any = None) -> None:
    """Statistics that overflowed (features of 1e200, 1e308) are a DataError naming the
    column, computed under np.errstate so no RuntimeWarning is printed on the way."""
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        j = int(np.argmax(bad))
        col = j if columns is None else columns(j)
        with np.errstate(all="ignore"):
            top = float(np.max(np.abs(X[:, j]))) if X.ndim == 2 else float("inf")
        raise DataError(f"{name}: feature column {col} (counting from 0) holds values up to "
                        f"{top:.3g}, too large to standardize: its variance overflows float64. "
                        "Rescale that column (e.g. divide it by a power of 10 or take its "
                        "logarithm), or drop it.")


def feature_stats(X: np.ndarray, name: str = "the data") -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (D,) of X (N, D), with std 1 for constant features.

    A constant column (digits' blank corner pixels) has std 0; using 1 there avoids a division
    by zero and leaves the column at exactly 0. Its mean is taken as the value itself, because a
    float mean of N equal numbers can be off by an ulp and would leave 1e-16 noise behind.
    Statistics that overflow float64 are a DataError naming the column.
    """
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(all="ignore"):
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        constant = np.ptp(X, axis=0) == 0
    mean[constant] = X[0, constant]
    std[constant] = 1.0
    _check_stats(X, mean, std, name)
    return mean, std


def channel_stats(X: np.ndarray, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One mean and std per channel over (N, H, W), repeated over each channel's pixels, so
    the result applies to flat rows like `feature_stats`'s (D,) arrays."""
    C = image_shape[0]
    images = np.asarray(X, dtype=np.float64).reshape(len(X), C, -1)
    with np.errstate(all="ignore"):
        mean = images.mean(axis=(0, 2))
        std = images.std(axis=(0, 2))
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        c = int(np.argmax(~(np.isfinite(mean) & np.isfinite(std))))
        raise DataError(f"the data: channel {c} holds values too large to standardize (its "
                        "variance overflows float64); rescale the images (e.g. pixels / 255).")
    std = np.where(std > 0, std, 1.0)
    per_pixel = int(np.prod(image_shape[1:]))
    return np.repeat(mean, per_pixel), np.repeat(std, per_pixel)


def apply_standardization(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(X - mean) / std for X (N, D) and the (D,) statistics of `feature_stats`; float64.
    A result that overflows (new data far outside the training range) is a DataError naming
    the column, not inf values and a RuntimeWarning."""
    with np.errstate(all="ignore"):
        out = (np.asarray(X, dtype=np.float64) - mean) / std
    if out.size and not np.isfinite(out).all():
        j = int(np.argmax(~np.isfinite(out).all(axis=0)))
        raise DataError(f"the data: feature column {j} (counting from 0) overflows float64 when "
                        "standardized (values far beyond the training statistics); rescale "
                        "that column.")
    return out


# --- npz ------------------------------------------------------------------------------------

def load_npz_safely(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read with allow_pickle=False (no code can run).

    Missing files, directories, files that are not npz archives, truncated archives and object
    arrays (which only a pickle could rebuild) are DataErrors naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file. Check the path (relative paths are resolved "
                        "against the config file's folder, or the current directory).")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an .npz file; give the path of the file.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError:
        # Neither a zip (npz) nor an .npy header: np.load would have to unpickle it, and won't.
        raise DataError(f"{path}: is not an .npz archive (not a zip file); save the arrays with "
                        "np.savez(path, X=X, y=y).") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: is not a readable .npz file, or is truncated "
                        f"({type(e).__name__}: {e}). Re-save it with np.savez.") from None
    if isinstance(loaded, np.ndarray):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive; save the arrays "
                        "with np.savez(path, X=X, y=y).")
    with loaded:
        key = None
        try:
            _check_npz_sizes(path, loaded)  # from the headers, before any array is read
            arrays = {}
            for key in loaded.files:
                arrays[key] = loaded[key]
            return arrays
        except ValueError as e:
            if "Object arrays" in str(e) or "pickle" in str(e):
                raise DataError(f"{path}: array {key!r} is an object array, which only a pickle "
                                "can rebuild, and bptrain does not unpickle (it can run arbitrary "
                                "code). Save plain numeric arrays, e.g. np.savez(path, "
                                "X=X.astype(float), y=y.astype(int)).") from None
            raise DataError(f"{path}: array {key!r} cannot be read ({e}); the file may be "
                            "truncated or corrupt. Re-save it with np.savez.") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{path}: array {key!r} cannot be read ({type(e).__name__}: {e}); "
                            "the file is truncated or corrupt. Re-save it with np.savez.") from None


def _check_npz_sizes(path: Path, loaded: Any) -> None:
    """Read each member's .npy header (shape and dtype) and refuse an archive whose arrays
    would not fit in memory, before decompressing any: a small compressed file can declare
    gigabytes of zeros."""
    from bptrain.net import budget
    total, largest = 0, ("", 0)
    for member in loaded.zip.namelist():
        try:
            with loaded.zip.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception:  # not an .npy member, or an unreadable header: np.load says so
            continue
        nbytes = math.prod(int(s) for s in shape) * max(dtype.itemsize, 1)
        total += nbytes
        if nbytes > largest[1]:
            largest = (member.removesuffix(".npy"), nbytes)
    budget.check(2 * total, f"{path}: its arrays (the largest, {largest[0]!r}, is "
                 f"{budget.human(largest[1])} as declared in the file)",
                 "use a smaller file, or a machine with more memory", DataError)


def _load_npz_dataset(path: Path) -> tuple:
    arrays = load_npz_safely(path)
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: has no array named {' or '.join(missing)} (it has: "
                        f"{', '.join(sorted(arrays)) or 'nothing'}). Save the features as X and "
                        "the labels or targets as y: np.savez(path, X=X, y=y).")
    if ("X_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{path}: has only one of X_val and y_val; save both to supply your own "
                        "validation set, or neither to have bptrain split one off.")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: has only one of X_test and y_test; save both to supply your "
                        "own test set, or neither (data.test_fraction splits one off).")
    return (arrays["X"], arrays["y"], arrays.get("X_val"), arrays.get("y_val"),
            arrays.get("X_test"), arrays.get("y_test"))


# --- digits -----------------------------------------------------------------------------------

def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The shipped 8x8 digits: X (1797, 64) uint8 in 0..16, y (1797,) uint8. See DIGITS.md."""
    resource = importlib.resources.files("bptrain.net").joinpath("datasets", "digits.npz")
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as archive:
            return archive["X"], archive["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"bptrain/net/datasets/digits.npz: the shipped digits dataset cannot be read "
                        f"({e}); reinstall bptrain.") from None


# --- synthetic ----------------------------------------------------------------------------------

def _make_spiral(rng: np.random.Generator, n_samples: int | None, n_classes: int | None,
                 noise: float | None) -> tuple[np.ndarray, np.ndarray]:
    """CS231n's K-arm spiral: class j's points run r 0->1 along angle j*4 -> (j+1)*4 (+ noise).

    n_samples is the total (default 100 per class); classes differ in size by at most one.
    """
    k = _count(n_classes, 3, "n_classes", 2)
    n = _count(n_samples, 100 * k, "n_samples", k)
    _fits("spiral", n, 2 + 6, k)
    noise = 0.2 if noise is None else _nonneg(noise, "noise")
    y = np.arange(n) * k // n                      # sorted, balanced class ids
    per_class = np.bincount(y, minlength=k)
    pos = np.arange(n) - np.concatenate(([0], np.cumsum(per_class)[:-1]))[y]  # index in class
    frac = pos / np.maximum(per_class[y] - 1, 1)   # linspace(0, 1, N_j) without a class loop
    r = frac
    t = (y + frac) * 4 + rng.standard_normal(n) * noise
    return np.column_stack([r * np.sin(t), r * np.cos(t)]), y


def _make_blobs(rng: np.random.Generator, n_samples: int | None, n_features: int | None,
                n_classes: int | None, noise: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters (std `noise`, default 1) around centers drawn in [-10, 10]^D."""
    k = _count(n_classes, 3, "n_classes", 2)
    n = _count(n_samples, 300, "n_samples", k)
    d = _count(n_features, 2, "n_features", 1)
    _fits("blobs", n, d, k)
    std = 1.0 if noise is None else _nonneg(noise, "noise")
    centers = rng.uniform(-10.0, 10.0, size=(k, d))
    y = np.arange(n) % k
    return centers[y] + rng.standard_normal((n, d)) * std, y


def _make_xor(rng: np.random.Generator, n_samples: int | None,
              noise: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform in [-1, 1]^2, label 1 where x0 and x1 have different signs.

    noise (default 0) is Gaussian jitter added after labelling, so points near the axes can
    cross into the other class: label noise that no model can fit.
    """
    n = _count(n_samples, 400, "n_samples", 2)
    _fits("xor", n, 2)
    X = rng.uniform(-1.0, 1.0, size=(n, 2))
    y = ((X[:, 0] > 0) != (X[:, 1] > 0)).astype(np.int64)
    if noise:
        X = X + rng.standard_normal((n, 2)) * _nonneg(noise, "noise")
    return X, y


def _make_regression(rng: np.random.Generator, n_samples: int | None, n_features: int | None,
                     n_outputs: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Note 004's random problem: X = randn(N, D_in), y = randn(N, D_out); 64, 1000, 10."""
    n = _count(n_samples, 64, "n_samples", 1)
    d = _count(n_features, 1000, "n_features", 1)
    k = _count(n_outputs, 10, "n_outputs", 1)
    _fits("regression", n, d + k)
    return rng.standard_normal((n, d)), rng.standard_normal((n, k))


def _fits(source: str, rows: int, columns: int, classes: int = 0) -> None:
    """Refuse synthetic data that cannot fit in memory before generating any of it."""
    from bptrain.net import budget
    if classes > MAX_CLASSES:
        raise DataError(f"data.n_classes is {classes}; bptrain handles at most "
                        f"{MAX_CLASSES:,} classes.")
    budget.check_data(rows, columns + classes // max(rows, 1) + 1,
                      f"the '{source}' data ({rows:,} samples x {columns:,} numbers)",
                      "lower data.n_samples, data.n_features or data.n_classes")


def _count(value: Any, default: int, key: str, minimum: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"data.{key} is {value!r}; it must be a whole number >= {minimum} "
                        f"(default {default}).")
    return int(value)


def _nonneg(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise DataError(f"data.{key} is {value!r}; it must be a finite number >= 0.")
    return float(value)


# --- csv ------------------------------------------------------------------------------------------

def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, file line numbers of the rows) of a CSV text file; blank lines (a trailing
    newline, say) skipped; an unreadable or empty file is a DataError."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as a CSV text file ({e}).") from None
    lines = [i + 1 for i, row in enumerate(rows) if row]
    rows = [row for row in rows if row]
    if not rows:
        raise DataError(f"{path}: is empty; it needs a header row naming the columns, then one "
                        "row per sample.")
    return [h.strip() for h in rows[0]], rows[1:], lines


def _load_csv(path: Path, label: str | int | None, classes: Any = None
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A CSV with a header row: the `label` column is y, every other column a numeric feature.

    Labels are class ids 0..C-1, or names (an iris-style `species` column: any label cell that
    is not a number makes them all names), mapped to 0..C-1 in sorted order, or onto `classes`
    (a trained run's names) when given. Returns X, y and {"features", "label", "classes"}."""
    from bptrain.net import budget
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    # Parsed into Python lists of strings first: about 16 bytes of memory per byte of text.
    budget.check(16 * size, f"{path}: reading this {budget.human(size)} CSV",
                 "use a smaller file, or save the arrays with np.savez and use source: npz",
                 DataError)
    header, body, lines = read_csv_rows(path)
    if _all_numbers(header):
        raise DataError(f"{path}: the first row ({', '.join(header[:5])}"
                        f"{', ...' if len(header) > 5 else ''}) is numbers, but a header row "
                        "naming the columns is required; add one, e.g. x1,x2,label.")
    if len(header) < 2:
        raise DataError(f"{path}: has {len(header)} column; it needs at least one feature column "
                        "and a label column, separated by commas.")
    if not body:
        raise DataError(f"{path}: has a header but no data rows.")
    widths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    if (widths != len(header)).any():
        bad = int(np.argmax(widths != len(header)))
        raise DataError(f"{path}: line {lines[bad + 1]} has {widths[bad]} cells but the header "
                        f"has {len(header)} columns; every row needs one value per column.")
    col = _label_column(path, header, label)

    cells = np.char.strip(np.array(body, dtype=str))
    info: dict[str, Any] = {"features": header[:col] + header[col + 1:], "label": header[col],
                            "classes": None}
    names = cells[:, col]
    columns = list(range(len(header)))     # file column of each cell column (for messages)
    if classes is not None or not all(_is_number(v) for v in names):
        y_named, info["classes"] = _label_names(path, header[col], names, lines, classes)
        cells = np.delete(cells, col, axis=1)
        del columns[col]
    else:
        y_named = None
    try:
        table = cells.astype(np.float64)
    except ValueError:
        # Only on failure do we walk the cells, to name the first one that is not a number.
        r, k = next((r, k) for r, k in np.ndindex(cells.shape) if not _is_number(cells[r, k]))
        c = columns[k]
        raise DataError(f"{path}: line {lines[r + 1]}, column {c + 1} ('{header[c]}') is "
                        f"{str(cells[r, k])!r}, not a number; every feature cell must be "
                        "numeric (labels may be class ids 0..C-1 or names).") from None
    bad = ~np.isfinite(table)
    if bad.any():
        r, k = np.argwhere(bad)[0]
        c = columns[k]
        raise DataError(f"{path}: {int(bad.sum())} cells are NaN or infinite (first at line "
                        f"{lines[r + 1]}, column {c + 1} '{header[c]}': {str(cells[r, k])!r}); "
                        "fill or drop those rows.")
    if y_named is not None:
        return table, y_named, info
    y = table[:, col]
    if not np.array_equal(y, np.round(y)):
        raise DataError(f"{path}: the label column '{header[col]}' holds non-integer values "
                        f"(e.g. {y[y != np.round(y)][0].item()!r}); csv labels are class ids "
                        "0..C-1. For regression targets, save an npz with y of shape (N, K).")
    return np.delete(table, col, axis=1), y, info


def _label_names(path: Path, column: str, names: np.ndarray, lines: list[int],
                 classes: Any) -> tuple[np.ndarray, list[str]]:
    """String labels as class ids: sorted names -> 0..C-1, or the order of `classes`."""
    empty = np.flatnonzero(names == "")
    if len(empty):
        raise DataError(f"{path}: line {lines[empty[0] + 1]} has an empty '{column}' (the label "
                        "column); give every row its class.")
    if classes is None:
        found, y = np.unique(names, return_inverse=True)
        return y.astype(np.int64).reshape(-1), [str(n) for n in found]
    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    unknown = [n for n in dict.fromkeys(names.tolist()) if n not in index]
    if unknown:
        raise DataError(f"{path}: the label column '{column}' has {unknown[0]!r}, which is not "
                        f"one of the run's classes ({', '.join(classes)}); it can only be "
                        "evaluated on labels it was trained on.")
    return np.array([index[n] for n in names.tolist()], dtype=np.int64), classes


def _label_column(path: Path, header: list[str], label: str | int | None) -> int:
    if label is None:
        return len(header) - 1
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if -len(header) <= label < len(header):
            return int(label) % len(header)
        raise DataError(f"{path}: label column index {label} is out of range; the file has "
                        f"{len(header)} columns (0..{len(header) - 1}).")
    if label in header:
        return header.index(label)
    raise DataError(f"{path}: has no column named {label!r}; its columns are "
                    f"{', '.join(header)}. Set data.label to one of them.")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _all_numbers(cells: list[str]) -> bool:
    return all(_is_number(c) for c in cells)


# --- cifar10 --------------------------------------------------------------------------------------

class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allow-list; nothing was imported or run."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and NumPy arrays, and nothing else.

    A pickle can name any importable callable (os.system, say) and have it called. CIFAR-10's
    batches only need NumPy's array-rebuilding function, ndarray and dtype, so those are the
    only globals handed out; any other name stops the load before it is imported.
    """

    # ndarray.__reduce__ names the rebuild function: numpy.core... in NumPy 1, numpy._core... in 2.
    _reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"it asks for {module}.{name}") from None


def _load_cifar10(path: Path) -> tuple:
    """CIFAR-10's python batches: data_batch_1..5 train, test_batch validates.

    X is (50000, 3072) pixels 0..255 (the 1024 red, then green, then blue values of each 32x32
    image), y (50000,) labels 0..9; X_val and y_val hold test_batch's 10000.
    """
    if not path.is_dir():
        raise DataError(f"{path}: is a file; the cifar10 source reads the directory of the "
                        "CIFAR-10 python version (cifar-10-batches-py) holding data_batch_1..5 "
                        "and test_batch.")
    if not (path / "data_batch_1").exists() and (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"        # the folder the archive unpacks to
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise DataError(f"{path}: is missing {', '.join(missing)}; the cifar10 source needs the "
                        "CIFAR-10 python version directory (cifar-10-python.tar.gz unpacked) "
                        "with data_batch_1..5 and test_batch.")
    train = [_read_cifar_batch(path / n) for n in names[:5]]
    X_val, y_val = _read_cifar_batch(path / "test_batch")
    X = np.concatenate([x for x, _ in train])
    y = np.concatenate([y for _, y in train])
    return X, y, X_val, y_val


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(file, "rb") as f:
            # The batches were pickled by Python 2; encoding="bytes" keeps their str keys as bytes.
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except _ForbiddenGlobal as e:
        raise DataError(f"{file}: refused to unpickle it ({e}); a CIFAR-10 batch holds only a "
                        "dict of arrays and lists, so this file is not one, or was tampered "
                        "with. Download the CIFAR-10 python version again.") from None
    except Exception as e:  # a corrupt pickle can raise almost anything; none of it is code run
        raise DataError(f"{file}: is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                        "download the CIFAR-10 python version again.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{file}: holds a {type(batch).__name__}, not the dict of a CIFAR-10 "
                        "batch with b'data' and b'labels'.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{file}: has no b'data' and b'labels' entries (it has "
                        f"{', '.join(map(repr, batch))}); it is not a CIFAR-10 batch.")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(f"{file}: data is {data.shape} and labels {labels.shape}; a CIFAR-10 "
                        "batch has (N, 3072) data (32x32x3 pixels) and N labels.")
    return data, labels


# --- mnist --------------------------------------------------------------------------------------

# IDX type byte -> big-endian dtype (http://yann.lecun.com/exdb/mnist/ describes the format).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _load_mnist(path: Path) -> tuple:
    """MNIST's four IDX files (optionally .gz): train is train-*, validation is t10k-*."""
    if not path.is_dir():
        raise DataError(f"{path}: is a file; the mnist source reads a directory holding "
                        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                        "and t10k-labels-idx1-ubyte (each may end in .gz).")
    arrays = [_read_idx(_find_idx(path, stem, kind)) for stem, kind in
              (("train-images", "idx3"), ("train-labels", "idx1"),
               ("t10k-images", "idx3"), ("t10k-labels", "idx1"))]
    X, y, X_val, y_val = arrays
    for images, labels, which in ((X, y, "train"), (X_val, y_val, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{path}: {which}-images is {images.shape} and {which}-labels "
                            f"{labels.shape}; MNIST needs (N, rows, cols) images and N labels.")
    # Flatten each image row-major: (N, 28, 28) -> (N, 784).
    return X.reshape(len(X), -1), y, X_val.reshape(len(X_val), -1), y_val


def _find_idx(folder: Path, stem: str, kind: str) -> Path:
    # Both spellings are in circulation: train-images-idx3-ubyte and train-images.idx3-ubyte.
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = folder / f"{stem}{sep}{kind}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder}: has no {stem}-{kind}-ubyte (or .gz); the mnist source needs "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                    "t10k-labels-idx1-ubyte in that directory.")


def _read_idx(file: Path) -> np.ndarray:
    """One IDX file: magic 00 00 <type> <ndim>, ndim big-endian uint32 sizes, then the data."""
    try:
        from bptrain.net import budget
        limit = budget.available_bytes() // 2
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as f:
            raw = f.read(limit + 1)  # a gzip bomb stops here, not at the machine's memory
        if len(raw) > limit:
            raise DataError(f"{file}: holds more than {budget.human(limit)} of data, more than "
                            "this machine can load; use a smaller file.")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{file}: cannot be read ({type(e).__name__}: {e}); if it is gzipped it "
                        "may be truncated, so download it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{file}: does not start with an IDX magic number (00 00 <type> <ndim>, "
                        f"got {raw[:4].hex(' ') or 'nothing'}); it is not an IDX file. If it is "
                        "gzipped, give it a .gz name.")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{file}: is truncated inside its header ({len(raw)} bytes, the header "
                        f"needs {start}); download it again.")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - start != expected:
        what = "truncated" if len(raw) - start < expected else "longer than its header says"
        raise DataError(f"{file}: is {what}: the header promises {shape} values of {dtype.name} "
                        f"({expected} bytes) but {len(raw) - start} bytes follow; download it "
                        "again.")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)


# --- validation and splitting -------------------------------------------------------------------

def _check_options(source: str, **given: Any) -> None:
    extra = [k for k, v in given.items() if v is not None and k not in _OPTIONS[source]]
    if extra:
        takes = ", ".join(sorted(_OPTIONS[source])) or "none of them"
        raise DataError(f"data.{extra[0]} does not apply to the '{source}' source (it takes "
                        f"{takes}); remove data.{extra[0]} from the config.")
    if source in FILE_SOURCES and not given["path"]:
        raise DataError(f"data.path: the '{source}' source reads a "
                        f"{'file' if source in ('npz', 'csv') else 'directory'}; set data.path.")


def _resolve(source: str, path: str, base_dir: str | Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if not p.exists():
        kind = "file" if source in ("npz", "csv") else "directory"
        where = "" if Path(path).expanduser().is_absolute() else \
            f" ({path!r} resolved against {base_dir or 'the current directory'})"
        raise DataError(f"{p}: no such {kind}{where} for the '{source}' source; check data.path.")
    if source in ("npz", "csv") and not p.is_file() and not p.is_dir():
        # a device (/dev/zero), a pipe or a socket: reading it may never end
        raise DataError(f"{p}: is not a regular file (a device, pipe or socket); the "
                        f"'{source}' source reads a file saved on disk.")
    return p


def _check_split(Xs: Any, ys: Any, X: np.ndarray, y: np.ndarray, name: str, suffix: str,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """A file's own X_val/y_val (or X_test/y_test): checked like X and y, and of their widths."""
    Xs, ys = _check_arrays(Xs, ys, name, f"X_{suffix}", f"y_{suffix}", allow_empty=True)
    if Xs.shape[1] != X.shape[1] or ys.shape[1:] != y.shape[1:]:
        raise DataError(f"{name}: X_{suffix} {Xs.shape} / y_{suffix} {ys.shape} do not match "
                        f"X {X.shape} / y {y.shape}; the {what} arrays need the same number "
                        "of features (and targets) as the training arrays.")
    return Xs, ys


def _check_arrays(X: Any, y: Any, name: str, xname: str, yname: str,
                  allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """X as (N, D) float64 and y as (N,) or (N, K) numbers, all finite."""
    X, y = np.asarray(X), np.asarray(y)
    for arr, an in ((X, xname), (y, yname)):
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{name}: {an} has dtype {arr.dtype}; it must hold real numbers "
                            f"(convert it with {an}.astype(float)).")
    if X.ndim != 2:
        hint = (f" For a single feature use {xname}.reshape(-1, 1)." if X.ndim == 1 else
                f" Flatten each sample: {xname}.reshape(len({xname}), -1)." if X.ndim > 2 else "")
        raise DataError(f"{name}: {xname} has shape {X.shape}; it must be 2-D, (samples, "
                        f"features).{hint}")
    if y.ndim not in (1, 2):
        raise DataError(f"{name}: {yname} has shape {y.shape}; it must be (N,) class labels or "
                        "(N, K) regression targets.")
    if len(X) != len(y):
        raise DataError(f"{name}: {xname} has {len(X)} samples but {yname} has {len(y)}; they "
                        "need one label (or target row) per sample.")
    if (len(X) == 0 and not allow_empty) or X.shape[1] == 0 or (y.ndim == 2 and y.shape[1] == 0):
        raise DataError(f"{name}: {xname} {X.shape} / {yname} {y.shape} is empty; the data "
                        "needs at least one sample, one feature and one target.")
    X = X.astype(np.float64, copy=False)
    _check_finite(X, name, xname)
    _check_finite(y, name, yname)
    _check_scale(X, name, xname)
    if y.ndim == 2:
        _check_scale(y, name, yname)
    return X, y


def _check_scale(a: np.ndarray, name: str, an: str) -> None:
    """Values so large that squaring and summing them overflows float64 (|v| > 1e150) break
    standardization and every loss: a DataError naming the column, before anything trains."""
    if a.dtype.kind != "f" or not a.size:
        return
    with np.errstate(all="ignore"):
        top = np.max(np.abs(a), axis=0)
    if (top > MAX_MAGNITUDE).any():
        j = int(np.argmax(top > MAX_MAGNITUDE))
        i = int(np.argmax(np.abs(a[:, j]) > MAX_MAGNITUDE))
        raise DataError(f"{name}: {an} column {j} (counting from 0) holds {a[i, j].item():.3g} "
                        f"(row {i}), beyond the {MAX_MAGNITUDE:.0e} that float64 arithmetic can "
                        "square and sum (standardizing or training on it overflows). Rescale "
                        "that column (divide it by a power of 10, or take its logarithm).")


def _check_finite(a: np.ndarray, name: str, an: str) -> None:
    if a.dtype.kind != "f":
        return                                      # integers cannot be NaN or inf
    finite = np.isfinite(a)
    if finite.all():
        return
    bad = ~finite
    nan = np.isnan(a)
    parts = [f"{int(nan.sum())} NaN"] if nan.any() else []
    if (bad & ~nan).any():
        parts.append(f"{int((bad & ~nan).sum())} infinite")
    first = np.argwhere(bad)[0]
    at = f"row {first[0]}, column {first[1]}" if a.ndim == 2 else f"row {first[0]}"
    raise DataError(f"{name}: {an} has {' and '.join(parts)} values (first at {at}, counting "
                    "from 0); remove or fill those samples before training.")


MAX_CLASSES = 1_000_000   # class ids beyond this are data errors, not a network to build


def _labels_to_classes(y: np.ndarray, y_val: np.ndarray | None, name: str,
                       n_classes: int | None) -> int | None:
    """The class count for 1-D labels (checking they are integers 0..C-1), None for 2-D targets."""
    if y.ndim == 2:
        if n_classes is not None:
            raise DataError(f"{name}: y is 2-D {y.shape}, regression targets, but data.n_classes "
                            "is set; remove it, or give y as (N,) integer class labels.")
        return None
    parts = [("y", y)] + ([("y_val", y_val)] if y_val is not None and len(y_val) else [])
    if n_classes is not None and n_classes > MAX_CLASSES:
        raise DataError(f"data.n_classes is {n_classes}; bptrain handles at most "
                        f"{MAX_CLASSES:,} classes (the output layer has one unit per class).")
    for an, labels in parts:
        if labels.max() >= MAX_CLASSES:  # before any conversion: 2**64-1 or 1e300 as a label
            i = int(np.argmax(labels))
            v = labels[i].item()  # 18446744073709551615 as it is; 1e+300 in short
            shown = str(v) if isinstance(v, int) else f"{v:.6g}"
            raise DataError(f"{name}: {an} has class label {shown} (row {i}); "
                            f"1-D y is class labels 0..C-1, and bptrain handles at most "
                            f"{MAX_CLASSES:,} classes. Remap the labels (np.unique(y, "
                            f"return_inverse=True)[1]), or give real-valued targets as (N, K), "
                            f"e.g. {an}.reshape(-1, 1).")
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            i = int(np.argmax(labels != np.round(labels)))
            raise DataError(f"{name}: {an} is 1-D but holds non-integer values (first at row {i}: "
                            f"{labels[i].item()!r}); 1-D y is class labels 0..C-1. For regression "
                            f"targets give {an} shape (N, K), e.g. {an}.reshape(-1, 1).")
        if labels.min() < 0:
            i = int(np.argmin(labels))
            raise DataError(f"{name}: {an} has negative class label {labels[i].item()!r} (row "
                            f"{i}); labels must be 0..C-1. Remap them, e.g. with np.unique(y, "
                            "return_inverse=True)[1].")
    top = int(max(labels.max() for _, labels in parts))
    if n_classes is not None:
        if top >= n_classes:
            raise DataError(f"{name}: has class label {top} but data.n_classes is {n_classes}; "
                            f"labels must be 0..{n_classes - 1}. Raise data.n_classes or remap "
                            "the labels.")
        return int(n_classes)
    if top < 1:
        raise DataError(f"{name}: every label is 0, a single class; classification needs at "
                        "least two classes, labelled 0..C-1.")
    return top + 1


def _split(X: np.ndarray, y: np.ndarray, val_fraction: float, seed: int,
           name: str, total: int | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ceil(N * val_fraction) samples, chosen by a permutation from default_rng(seed).

    ceil, as scikit-learn's train_test_split does: digits at 0.2 gives 360 val / 1437 train.
    The rounding to 9 places first keeps 100 * 0.07 = 7.000000000000001 at 7. `total`: the
    number of samples the fraction is of (all of them, when a test split was taken first).
    """
    n = len(X)
    n_val = math.ceil(round((n if total is None else total) * val_fraction, 9))
    if n_val >= n:
        raise DataError(f"{name}: val_fraction {val_fraction} of {n} samples holds out {n_val}, "
                        "leaving nothing to train on; lower data.val_fraction or supply more "
                        "data.")
    if n_val == 0:
        return X, y, X[:0], y[:0]
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]


def _split_test(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
                name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ceil(N * test_fraction) samples as the test split, by a permutation of its own
    (default_rng([seed, 3])); the rest keep their order for the validation split."""
    n = len(X)
    n_test = math.ceil(round(n * test_fraction, 9))
    if n_test == 0:
        return X, y, X[:0], y[:0]
    if n_test >= n:
        raise DataError(f"{name}: test_fraction {test_fraction} of {n} samples holds out "
                        f"{n_test}, leaving nothing to train on; lower data.test_fraction.")
    order = np.random.default_rng([seed, 3]).permutation(n)
    test, rest = order[:n_test], np.sort(order[n_test:])
    return X[rest], y[rest], X[test], y[test]


def data_path(cfg: Any, default_base: str | Path | None = None) -> str | None:
    """The one rule that resolves `data.path`: `~` expanded, a relative path taken from the
    config file's folder (for a dict config, `default_base` or the current folder); returned
    absolute, as a run's config.yaml records it (eval and --resume read it from elsewhere)."""
    if cfg.data.path is None:
        return None
    p = Path(cfg.data.path).expanduser()
    if not p.is_absolute():
        base = (Path(cfg.source_path).parent if cfg.source_path else
                Path(default_base) if default_base is not None else Path.cwd())
        p = base / p
    return os.path.abspath(p)


def load_data(cfg: Any) -> Dataset:
    """The dataset a config names, its `data.path` resolved by `data_path`."""
    d = cfg.data
    base = Path(cfg.source_path).parent if cfg.source_path else None
    return load_dataset(d.source, path=d.path, label=d.label, val_fraction=d.val_fraction,
                        standardize=d.standardize, seed=cfg.seed, n_samples=d.n_samples,
                        n_features=d.n_features, n_classes=d.n_classes,
                        n_outputs=d.n_outputs, noise=d.noise, base_dir=base,
                        shape=d.shape, per_channel=cfg.takes_images(),
                        test_fraction=getattr(d, "test_fraction", 0.0))

