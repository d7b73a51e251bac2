"""bptrain.net.data: the shipped digits, the synthetic sources, every file loader and every DataError.

Each file format is exercised on tiny files written here into tmp_path, in that format.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bptrain.net.data import (Dataset, apply_standardization, feature_stats, load_dataset,
                          load_npz_safely)
from bptrain.errors import DataError

DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]   # sklearn's, digits 0..9


# --- digits ---------------------------------------------------------------------------------

def test_digits_raw_values():
    ds = load_dataset("digits", val_fraction=0.0, standardize=False)
    assert ds.name == "digits"
    assert ds.X_train.shape == (1797, 64) and ds.X_val.shape == (0, 64)
    assert ds.y_train.shape == (1797,) and ds.y_val.shape == (0,)
    assert ds.X_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and ds.input_dim == 64 and ds.output_dim == 10
    assert ds.is_classification
    assert np.bincount(ds.y_train).tolist() == DIGIT_COUNTS
    assert ds.X_train.min() == 0 and ds.X_train.max() == 16
    assert np.array_equal(ds.X_train, np.round(ds.X_train))       # whole pixel counts
    assert ds.feature_mean is None and ds.feature_std is None
    # The blank pixels: columns 0, 32 and 39 are 0 in every image.
    assert np.flatnonzero(ds.X_train.std(axis=0) == 0).tolist() == [0, 32, 39]


def test_digits_split_sizes_and_contents():
    raw = load_dataset("digits", val_fraction=0.0, standardize=False)
    ds = load_dataset("digits", standardize=False)                  # val_fraction 0.2
    assert ds.X_train.shape == (1437, 64) and ds.X_val.shape == (360, 64)
    assert ds.y_train.shape == (1437,) and ds.y_val.shape == (360,)
    # The split is a permutation: together the halves are exactly the original samples.
    whole = np.column_stack([np.concatenate([ds.X_train, ds.X_val]),
                             np.concatenate([ds.y_train, ds.y_val])])
    original = np.column_stack([raw.X_train, raw.y_train])
    assert np.array_equal(np.unique(whole, axis=0), np.unique(original, axis=0))
    assert len(whole) == 1797


def test_digits_split_is_determined_by_seed():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_val, b.y_val)
    assert np.array_equal(a.X_val, b.X_val)
    assert not np.array_equal(a.y_val, c.y_val)


def test_digits_standardized_with_training_statistics_only():
    raw = load_dataset("digits", standardize=False)
    ds = load_dataset("digits")
    assert ds.X_train.dtype == np.float64 and ds.X_train.flags.c_contiguous
    assert ds.X_val.flags.c_contiguous
    varying = raw.X_train.std(axis=0) > 0
    assert varying.sum() == 61
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(ds.X_train.std(axis=0)[varying], 1, rtol=1e-12)
    # Constant columns: std taken as 1 and the column stays exactly 0, no division by zero.
    assert np.all(ds.feature_std[~varying] == 1) and np.all(ds.X_train[:, ~varying] == 0)
    assert np.isfinite(ds.X_val).all()
    # The statistics are the training split's, so val is not exactly centred...
    np.testing.assert_allclose(ds.feature_mean, raw.X_train.mean(axis=0), rtol=1e-12)
    assert np.abs(ds.X_val.mean(axis=0)).max() > 0.01
    # ...and applying the exposed statistics to raw validation data reproduces X_val.
    np.testing.assert_allclose(apply_standardization(raw.X_val, ds.feature_mean, ds.feature_std),
                               ds.X_val, rtol=1e-12, atol=1e-12)


def test_feature_stats_constant_column_is_exact():
    X = np.column_stack([np.full(7, 0.1), np.arange(7.0)])
    mean, std = feature_stats(X)
    assert mean[0] == 0.1 and std[0] == 1.0 and std[1] == pytest.approx(2.0)
    assert np.all(apply_standardization(X, mean, std)[:, 0] == 0)


def test_import_uses_only_numpy_and_stdlib():
    code = ("import sys; before = set(sys.modules); import bptrain.net.data; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'numpy', 'bptrain'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- synthetic ---------------------------------------------------------------------------------

def test_spiral_shapes_labels_and_geometry():
    ds = load_dataset("spiral", val_fraction=0.0, standardize=False)
    assert ds.name == "spiral"
    assert ds.X_train.shape == (300, 2) and ds.num_classes == 3
    assert np.bincount(ds.y_train).tolist() == [100, 100, 100]
    # r = linspace(0, 1, 100) per class: radii run from 0 to 1, whatever the angle noise.
    r = np.hypot(ds.X_train[:, 0], ds.X_train[:, 1])
    for j in range(3):
        np.testing.assert_allclose(np.sort(r[ds.y_train == j]), np.linspace(0, 1, 100),
                                   atol=1e-12)
    # Without noise, the angle is exactly linspace(j*4, (j+1)*4, N).
    clean = load_dataset("spiral", val_fraction=0.0, standardize=False, noise=0.0,
                         n_samples=10, n_classes=2)
    t = np.arctan2(clean.X_train[:, 0], clean.X_train[:, 1])       # x = r sin t, y = r cos t
    expected = np.concatenate([np.linspace(0, 4, 5), np.linspace(4, 8, 5)])
    keep = np.tile(np.arange(5) > 0, 2)                               # r = 0 has no angle
    np.testing.assert_allclose(np.angle(np.exp(1j * (t - expected)))[keep], 0, atol=1e-12)


def test_spiral_options_and_seed():
    ds = load_dataset("spiral", n_samples=50, n_classes=5, seed=1)
    assert ds.num_classes == 5 and len(ds.X_train) + len(ds.X_val) == 50
    assert np.array_equal(ds.X_train, load_dataset("spiral", n_samples=50, n_classes=5,
                                                   seed=1).X_train)
    other = load_dataset("spiral", n_samples=50, n_classes=5, seed=2)
    assert not np.array_equal(ds.X_train, other.X_train)


def test_blobs_xor_regression():
    blobs = load_dataset("blobs", val_fraction=0.0, standardize=False)
    assert blobs.X_train.shape == (300, 2) and blobs.num_classes == 3
    assert np.bincount(blobs.y_train).tolist() == [100, 100, 100]
    blobs4 = load_dataset("blobs", n_samples=40, n_features=5, n_classes=4)
    assert blobs4.input_dim == 5 and blobs4.output_dim == 4

    xor = load_dataset("xor", val_fraction=0.0, standardize=False)
    assert xor.X_train.shape == (400, 2) and xor.num_classes == 2
    X, y = xor.X_train, xor.y_train
    assert np.array_equal(y, (np.sign(X[:, 0]) != np.sign(X[:, 1])).astype(np.int64))
    assert set(np.unique(y)) == {0, 1}

    reg = load_dataset("regression", val_fraction=0.0, standardize=False)
    assert reg.X_train.shape == (64, 1000) and reg.y_train.shape == (64, 10)
    assert reg.X_val.shape == (0, 1000) and reg.y_val.shape == (0, 10)
    assert reg.num_classes is None and not reg.is_classification and reg.output_dim == 10
    assert reg.y_train.dtype == np.float64
    assert abs(reg.X_train.mean()) < 0.02 and abs(reg.X_train.std() - 1) < 0.02   # randn
    small = load_dataset("regression", n_samples=20, n_features=3, n_outputs=2)
    assert small.X_train.shape == (16, 3) and small.y_val.shape == (4, 2)


def test_option_not_for_this_source_is_an_error():
    with pytest.raises(DataError, match="n_samples.*digits"):
        load_dataset("digits", n_samples=10)
    with pytest.raises(DataError, match="data.path"):
        load_dataset("npz")
    with pytest.raises(DataError, match="unknown source"):
        load_dataset("imagenet")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_val_fraction_out_of_range(fraction):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("spiral", val_fraction=fraction)


def test_split_leaving_no_training_data(tmp_path):
    f = tmp_path / "one.npz"
    np.savez(f, X=np.ones((1, 2)), y=np.array([[0.5]]))
    with pytest.raises(DataError, match="one.npz.*nothing to train"):
        load_dataset("npz", path=str(f))


# --- npz ----------------------------------------------------------------------------------------

def test_npz_split_by_bptrain(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    np.savez(tmp_path / "data.npz", X=X, y=y)
    ds = load_dataset("npz", path="data.npz", base_dir=tmp_path, standardize=False)
    assert ds.name == "data.npz" and ds.num_classes == 3
    assert ds.X_train.shape == (8, 2) and ds.X_val.shape == (2, 2)
    # Each row keeps its own label through the permutation.
    for Xs, ys in ((ds.X_train, ds.y_train), (ds.X_val, ds.y_val)):
        assert np.array_equal(y[(Xs[:, 0] / 2).astype(int)], ys)


def test_npz_with_own_validation_set(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", X=np.array([[0.0, 1], [2, 3], [4, 5]]), y=np.array([0., 1, 1]),
             X_val=np.array([[6.0, 7]]), y_val=np.array([2]))
    monkeypatch.chdir(tmp_path)                                       # relative to the CWD
    ds = load_dataset("npz", path="d.npz", val_fraction=0.5)         # no split is made
    assert ds.X_train.shape == (3, 2) and ds.X_val.shape == (1, 2)
    assert ds.num_classes == 3                                        # the union with y_val
    assert ds.y_train.dtype == np.int64 and ds.y_val.tolist() == [2]
    np.testing.assert_allclose(ds.feature_mean, [2, 3])               # training rows only
    np.testing.assert_allclose(ds.X_val, [[(6 - 2) / np.sqrt(8 / 3), (7 - 3) / np.sqrt(8 / 3)]])


def test_npz_regression_targets(tmp_path):
    np.savez(tmp_path / "r.npz", X=np.ones((5, 3)), y=np.linspace(0, 1, 10).reshape(5, 2))
    ds = load_dataset("npz", path=str(tmp_path / "r.npz"), val_fraction=0.0)
    assert ds.num_classes is None and ds.y_train.shape == (5, 2) and ds.output_dim == 2


def test_load_npz_safely_reads_all_arrays(tmp_path):
    np.savez_compressed(tmp_path / "w.npz", W1=np.eye(2), b1=np.zeros(2, np.float32))
    arrays = load_npz_safely(tmp_path / "w.npz")
    assert set(arrays) == {"W1", "b1"} and arrays["b1"].dtype == np.float32
    assert np.array_equal(arrays["W1"], np.eye(2))


def test_npz_object_array_is_refused(tmp_path):
    f = tmp_path / "obj.npz"
    np.savez(f, X=np.array([[1.0]]), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match=r"obj.npz.*'y'.*object array"):
        load_npz_safely(f)
    with pytest.raises(DataError, match="object array"):
        load_dataset("npz", path=str(f))


def test_npz_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="missing.npz: no such file"):
        load_dataset("npz", path=str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="no such file"):
        load_npz_safely(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="is a directory"):
        load_npz_safely(tmp_path)
    (tmp_path / "text.npz").write_text("X,y\n1,2\n")
    with pytest.raises(DataError, match="text.npz: is not an .npz"):
        load_npz_safely(tmp_path / "text.npz")
    np.savez(tmp_path / "full.npz", X=np.ones((100, 10)), y=np.zeros(100))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:3000])
    with pytest.raises(DataError, match="cut.npz.*truncated"):
        load_npz_safely(tmp_path / "cut.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(DataError, match="single .npy array"):
        load_npz_safely(tmp_path / "single.npy")


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.ones((3, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="a.npz: has no array named X.*features"):
        load_dataset("npz", path=str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", X=np.ones((3, 2)), y=np.zeros(3), X_val=np.ones((1, 2)))
    with pytest.raises(DataError, match="only one of X_val and y_val"):
        load_dataset("npz", path=str(tmp_path / "b.npz"))


def _npz(tmp_path, name="bad.npz", **arrays):
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)


def test_nan_and_inf_are_counted_and_located(tmp_path):
    X = np.ones((20, 8))
    X[12, 5] = X[13, 0] = X[19, 7] = np.nan
    X[15, 1] = np.inf
    path = _npz(tmp_path, X=X, y=np.arange(20) % 2)
    with pytest.raises(DataError) as e:
        load_dataset("npz", path=path)
    msg = str(e.value)
    assert "bad.npz" in msg and "X has 3 NaN and 1 infinite values" in msg
    assert "first at row 12, column 5" in msg
    y = np.zeros((20, 1))
    y[4, 0] = -np.inf
    with pytest.raises(DataError, match=r"bad2.npz: y has 1 infinite values \(first at row 4"):
        load_dataset("npz", path=_npz(tmp_path, "bad2.npz", X=np.ones((20, 2)), y=y))


def test_label_errors(tmp_path):
    X = np.ones((4, 2))
    with pytest.raises(DataError, match=r"neg.npz: y has negative class label -1"):
        load_dataset("npz", path=_npz(tmp_path, "neg.npz", X=X, y=np.array([0, 1, -1, 2])))
    with pytest.raises(DataError, match=r"frac.npz: y is 1-D but holds non-integer.*reshape"):
        load_dataset("npz", path=_npz(tmp_path, "frac.npz", X=X, y=np.array([0, 1.5, 1, 0])))
    with pytest.raises(DataError, match=r"range.npz: has class label 5 but data.n_classes is 3"):
        load_dataset("npz", path=_npz(tmp_path, "range.npz", X=X, y=np.array([0, 1, 5, 2])),
                     n_classes=3)
    ok = load_dataset("npz", path=_npz(tmp_path, "ok.npz", X=X, y=np.array([0, 1, 1, 0])),
                      n_classes=4)
    assert ok.num_classes == 4                  # a class absent from a small file still counts


def test_shape_errors(tmp_path):
    with pytest.raises(DataError, match=r"flat.npz: X has shape \(4,\).*reshape\(-1, 1\)"):
        load_dataset("npz", path=_npz(tmp_path, "flat.npz", X=np.ones(4), y=np.zeros(4)))
    with pytest.raises(DataError, match="n.npz: X has 4 samples but y has 3"):
        load_dataset("npz", path=_npz(tmp_path, "n.npz", X=np.ones((4, 2)), y=np.zeros(3)))
    with pytest.raises(DataError, match="empty.npz.*empty"):
        load_dataset("npz", path=_npz(tmp_path, "empty.npz", X=np.ones((0, 2)), y=np.zeros(0)))
    with pytest.raises(DataError, match="str.npz: X has dtype <U1"):
        load_dataset("npz", path=_npz(tmp_path, "str.npz", X=np.array([["a"]]), y=np.zeros(1)))
    with pytest.raises(DataError, match="val.npz: X_val .* do not match"):
        load_dataset("npz", path=_npz(tmp_path, "val.npz", X=np.ones((4, 2)), y=np.arange(4),
                                      X_val=np.ones((2, 3)), y_val=np.arange(2)))


# --- csv ----------------------------------------------------------------------------------------

def test_csv_named_label_column(tmp_path):
    (tmp_path / "iris.csv").write_text(
        "sepal,species,petal\n5.1,0,1.4\n4.9, 2 ,1.5\n6.2,1,4.5\n5.9,2,5.1\n\n")
    ds = load_dataset("csv", path="iris.csv", base_dir=tmp_path, label="species",
                      val_fraction=0.0, standardize=False)
    assert ds.name == "iris.csv" and ds.num_classes == 3
    assert ds.X_train.tolist() == [[5.1, 1.4], [4.9, 1.5], [6.2, 4.5], [5.9, 5.1]]
    assert ds.y_train.tolist() == [0, 2, 1, 2] and ds.y_train.dtype == np.int64
    (tmp_path / "last.csv").write_text("x,label\n0.5,1\n0.25,0\n")
    last = load_dataset("csv", path=str(tmp_path / "last.csv"), val_fraction=0.0,
                        standardize=False)                    # default label: the last column
    assert last.X_train.tolist() == [[0.5], [0.25]] and last.y_train.tolist() == [1, 0]
    with pytest.raises(DataError, match="iris.csv: the label column 'petal' holds non-integer"):
        load_dataset("csv", path=str(tmp_path / "iris.csv"))
    by_index = load_dataset("csv", path=str(tmp_path / "iris.csv"), label=1,
                            val_fraction=0.0, standardize=False)
    assert by_index.y_train.tolist() == [0, 2, 1, 2]


@pytest.mark.parametrize("text, match", [
    ("a,b,label\n1,2,0\n3,4\n", r"rag.csv: line 3 has 2 cells but the header has 3"),
    ("a,b,label\n1,2,0\n3,x,1\n", r"rag.csv: line 3, column 2 \('b'\) is 'x', not a number"),
    ("a,b,label\n1,,0\n", r"line 2, column 2 \('b'\) is ''"),
    ("1,2,0\n3,4,1\n", r"rag.csv: the first row .* header row .* required"),
    ("a,b,label\n", r"rag.csv: has a header but no data rows"),
    ("", r"rag.csv: is empty"),
    ("a,b,label\n1,nan,0\n2,3,1\n", r"rag.csv: 1 cells are NaN or infinite \(first at line 2, "
                                    r"column 2 'b'"),
    ("a,b,label\n1,2,0.5\n", r"rag.csv: the label column 'label' holds non-integer"),
    ("a,b,label\n1,2,-1\n3,4,1\n", r"rag.csv: y has negative class label"),
])
def test_csv_malformed(tmp_path, text, match):
    (tmp_path / "rag.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_dataset("csv", path=str(tmp_path / "rag.csv"))


def test_csv_unknown_label_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="d.csv: has no column named 'class'.*a, b, label"):
        load_dataset("csv", path=str(tmp_path / "d.csv"), label="class")


def test_missing_file_names_resolved_path(tmp_path):
    with pytest.raises(DataError, match=r"nope.csv: no such file \('nope.csv' resolved against"):
        load_dataset("csv", path="nope.csv", base_dir=tmp_path)


# --- cifar10 ------------------------------------------------------------------------------------

def _write_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": name.encode(), b"filenames": [b"x.png"] * per_batch,
                 b"data": np.full((per_batch, 3072), i, dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        batch[b"labels"][0] = 9 if i == 0 else 0
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_directory(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", path=str(tmp_path / "cifar-10-batches-py"), standardize=False)
    assert ds.name == "cifar-10-batches-py" and ds.num_classes == 10
    assert ds.X_train.shape == (20, 3072) and ds.X_val.shape == (4, 3072)
    assert ds.X_train.dtype == np.float64 and ds.y_train.dtype == np.int64
    # data_batch_k holds pixel value k-1; the batches are concatenated in order, test_batch is 5.
    assert ds.X_train[:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert np.all(ds.X_val == 5)
    # The parent folder (where the archive was unpacked) works too.
    assert load_dataset("cifar10", path=str(tmp_path)).X_train.shape == (20, 3072)


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 str (SHORT_BINSTRING / BINSTRING), as the cPickle that wrote the
    real CIFAR-10 batches did; Python 3's protocol 2 would route bytes through _codecs.encode."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = lambda self, obj: self.save_bytes(obj.encode("latin1"))


def test_cifar10_python2_pickles(tmp_path):
    """The real batches: protocol 2, str keys read back as bytes, NumPy 1's module name."""
    folder = tmp_path / "cifar"
    _write_cifar(folder)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"data": np.full((2, 3072), 7, np.uint8),
                                       b"labels": [3, 4]})
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    (folder / "test_batch").write_bytes(raw)
    ds = load_dataset("cifar10", path=str(folder), standardize=False)
    assert ds.y_val.tolist() == [3, 4] and np.all(ds.X_val == 7) and ds.X_val.shape == (2, 3072)


class _Evil:
    def __reduce__(self):
        return (__import__("os").system, ("touch pwned",))


def test_cifar10_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar"
    _write_cifar(folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil()]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: refused to unpickle it \(it asks for "
                                        r"(posix|os|nt)\.system\)"):
        load_dataset("cifar10", path=str(folder))
    assert not (tmp_path / "pwned").exists()


def test_cifar10_errors(tmp_path):
    folder = tmp_path / "cifar"
    _write_cifar(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="cifar: is missing data_batch_5"):
        load_dataset("cifar10", path=str(folder))
    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_5: data is \(2, 100\)"):
        load_dataset("cifar10", path=str(folder))
    (folder / "data_batch_5").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_5: is not a readable CIFAR-10 batch"):
        load_dataset("cifar10", path=str(folder))
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("cifar10", path=str(tmp_path / "absent"))


# --- mnist --------------------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    """IDX bytes: magic 00 00 08 <ndim>, big-endian uint32 sizes, then uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, gz: bool) -> tuple[np.ndarray, ...]:
    folder.mkdir()
    rng = np.random.default_rng(1)
    arrays = (rng.integers(0, 256, (5, 28, 28)), np.array([0, 1, 2, 3, 9]),
              rng.integers(0, 256, (3, 28, 28)), np.array([4, 5, 6]))
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    for name, array in zip(names, arrays):
        data = _idx(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    X, y, X_val, y_val = _write_mnist(tmp_path / "mnist", gz)
    ds = load_dataset("mnist", path=str(tmp_path / "mnist"), standardize=False)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.X_train.shape == (5, 784) and ds.X_val.shape == (3, 784)
    assert np.array_equal(ds.X_train, X.reshape(5, 784)) and ds.y_train.tolist() == y.tolist()
    assert np.array_equal(ds.X_val, X_val.reshape(3, 784)) and ds.y_val.tolist() == [4, 5, 6]


def test_mnist_malformed(tmp_path):
    folder = tmp_path / "mnist"
    _write_mnist(folder, gz=False)
    labels = folder / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: does not start with an IDX "
                                        "magic number"):
        load_dataset("mnist", path=str(folder))
    labels.write_bytes(good[:-2])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: is truncated.*\(5,\)"):
        load_dataset("mnist", path=str(folder))
    labels.write_bytes(good[:6])
    with pytest.raises(DataError, match="truncated inside its header"):
        load_dataset("mnist", path=str(folder))
    labels.write_bytes(_idx(np.array([0, 1, 2])))
    with pytest.raises(DataError, match=r"train-images is \(5, 28, 28\) and train-labels \(3,\)"):
        load_dataset("mnist", path=str(folder))
    labels.unlink()
    with pytest.raises(DataError, match="mnist: has no train-labels-idx1-ubyte"):
        load_dataset("mnist", path=str(folder))
    gz = tmp_path / "gz"
    _write_mnist(gz, gz=True)
    images = gz / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-20])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot be read"):
        load_dataset("mnist", path=str(gz))


def test_dataset_is_a_plain_dataclass():
    ds = Dataset(X_train=np.zeros((2, 3)), y_train=np.zeros((2, 4)), X_val=np.zeros((0, 3)),
                 y_val=np.zeros((0, 4)), num_classes=None, name="t")
    assert ds.input_dim == 3 and ds.output_dim == 4 and not ds.is_classification
    assert ds.feature_mean is None
