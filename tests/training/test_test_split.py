"""The test split (data.test_fraction, X_test/y_test in npz): held out from training and from
every choice, evaluated once at the end; CSV class labels given as strings."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import bptrain
from bptrain.errors import ConfigError, DataError
from bptrain.net.config import load_config
from bptrain.net.data import load_dataset, load_npz_safely
from bptrain.training.runs import evaluate_splits
from bptrain.training.sweep import run_sweep, sweep_from_dict
from bptrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
SPECIES = ("virginica", "setosa", "versicolor")   # file order; classes are sorted


def numbered(tmp_path: Path, n: int = 200) -> Path:
    """Rows whose first feature is their index, so every sample can be traced."""
    X = np.column_stack([np.arange(n), np.arange(n) % 7]).astype(float)
    path = tmp_path / "numbered.npz"
    np.savez(path, X=X, y=np.arange(n) % 3)
    return path


def test_splits_are_disjoint_and_drawn_test_first(tmp_path):
    path = numbered(tmp_path)
    ds = load_dataset("npz", path=str(path), val_fraction=0.2, test_fraction=0.15,
                      standardize=False, seed=4)
    ids = {k: getattr(ds, f"X_{k}")[:, 0].astype(int) for k in ("train", "val", "test")}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (130, 40, 30)
    assert sorted(np.concatenate(list(ids.values()))) == list(range(200))
    # the documented draw: the test split by default_rng([seed, 3]), first
    np.testing.assert_array_equal(ids["test"], np.random.default_rng([4, 3]).permutation(200)[:30])
    np.testing.assert_array_equal(ds.y_test, ids["test"] % 3)
    # no test split: exactly the split of before
    a = load_dataset("npz", path=str(path), seed=4, standardize=False)
    b = load_dataset("npz", path=str(path), seed=4, standardize=False, test_fraction=0.0)
    np.testing.assert_array_equal(a.X_val, b.X_val)
    assert a.X_test.shape == (0, 2) and a.y_test.shape == (0,)
    # standardized with the training split's statistics only
    s = load_dataset("npz", path=str(path), val_fraction=0.2, test_fraction=0.15, seed=4)
    np.testing.assert_allclose(s.feature_mean, ds.X_train.mean(axis=0))
    np.testing.assert_allclose(s.X_test, (ds.X_test - s.feature_mean) / s.feature_std)


def test_npz_test_arrays_and_bad_fractions(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(50, 3)), np.arange(50) % 2
    np.savez(tmp_path / "t.npz", X=X, y=y, X_test=X[:7] + 100, y_test=y[:7])
    ds = load_dataset("npz", path=str(tmp_path / "t.npz"), test_fraction=0.5, standardize=False)
    np.testing.assert_array_equal(ds.X_test, X[:7] + 100)      # the file's test set wins
    assert len(ds.X_train) + len(ds.X_val) == 50
    np.savez(tmp_path / "half.npz", X=X, y=y, X_test=X[:7])
    with pytest.raises(DataError, match="only one of X_test and y_test"):
        load_dataset("npz", path=str(tmp_path / "half.npz"))
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="data.test_fraction"):
            load_config({"data": {"test_fraction": bad}})
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.5)


def _forward(arrays: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """mlp.yaml's network written out by hand: affine - relu - affine."""
    h = np.maximum(0, X @ arrays["W1"] + arrays["b1"])
    return h @ arrays["W2"] + arrays["b2"]


def test_summary_test_entry_matches_an_independent_evaluation(tmp_path):
    result = train(load_config(MLP, ["train.epochs=4", "data.test_fraction=0.2"]),
                   out=tmp_path / "run")
    run_dir = result.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    test = summary["test"]
    raw = load_dataset("digits", standardize=False, test_fraction=0.2)
    assert test["n"] == len(raw.y_test) == math.ceil(1797 * 0.2)
    model = load_npz_safely(run_dir / "model.npz")
    X = (raw.X_test - model["_feature_mean"]) / model["_feature_std"]
    for which, file in (("final", "model.npz"), ("best", "best.npz")):
        scores = _forward(load_npz_safely(run_dir / file), X)
        assert test[which]["accuracy"] == float(np.mean(scores.argmax(1) == raw.y_test))
        z = scores - scores.max(axis=1, keepdims=True)
        data_loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)),
                                                                     raw.y_test]))
        arrays = load_npz_safely(run_dir / file)
        reg = 0.5 * 1e-4 * sum(float(np.sum(arrays[w] ** 2)) for w in ("W1", "W2"))
        assert test[which]["loss"] == pytest.approx(data_loss + reg, rel=1e-10)
    # the best epoch is chosen on validation accuracy; the test split chose nothing
    history = result.history
    assert summary["best"]["epoch"] == max(history, key=lambda r: r["val_acc"])["epoch"]
    assert all("test_acc" not in r and "test_loss" not in r for r in history)
    # eval reports the validation split, then the test split, separately
    val, tst = evaluate_splits(run_dir, weights="best")
    assert (val.split, tst.split) == ("val", "test")
    assert tst.accuracy == test["best"]["accuracy"] and tst.n == test["n"]
    assert val.accuracy == summary["best"]["val_acc"]
    train_ev, = evaluate_splits(run_dir, split="train")
    assert train_ev.n == 1797 - 360 - 360


def test_eval_test_split_of_a_run_without_one(tmp_path):
    result = train(load_config(MLP, ["train.epochs=1", "model.hidden=[8]"]), out=tmp_path / "r")
    assert "test" not in result.summary
    assert [e.split for e in evaluate_splits(result.run_dir)] == ["val"]
    with pytest.raises(DataError, match="test_fraction"):
        evaluate_splits(result.run_dir, split="test")


def test_sweep_reports_test_metrics_without_ranking_by_them(tmp_path):
    sweep = sweep_from_dict({
        "name": "s", "base": {"data": {"source": "digits", "test_fraction": 0.2},
                              "model": {"hidden": [8]}, "train": {"epochs": 2}},
        "axes": {"optimizer.lr": [0.01, 0.3]}})
    result = run_sweep(sweep, workers=1, runs_root=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "s" / "sweep.jsonl").read_text().splitlines()]
    for row in rows:
        summary = json.loads((Path(row["dir"]) / "summary.json").read_text())
        assert row["test_acc"] == summary["test"]["best"]["accuracy"]
        assert row["test_weights"] == "best" and row["test_n"] == 360
    assert result.best["metric"] == max(r["metric"] for r in rows)   # ranked by validation
    head = (tmp_path / "s" / "best.yaml").read_text()
    assert "not used to choose" in head


def iris_like(path: Path, n: int = 90, seed: int = 0, species=SPECIES) -> list[str]:
    rng = np.random.default_rng(seed)
    names = [species[i % len(species)] for i in range(n)]
    centers = {"setosa": 0.0, "versicolor": 3.0, "virginica": 6.0}
    lines = ["sepal_length,species,petal_length"]
    for name in names:
        a, b = rng.normal(centers[name], 0.5, size=2)
        lines.append(f"{a:.3f},{name},{b:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return names


def test_csv_string_labels_are_mapped_saved_and_used(tmp_path):
    names = iris_like(tmp_path / "iris.csv")
    ds = load_dataset("csv", path=str(tmp_path / "iris.csv"), label="species")
    assert ds.class_names == ["setosa", "versicolor", "virginica"]
    assert ds.feature_names == ["sepal_length", "petal_length"] and ds.label_name == "species"
    cfg = load_config({"name": "iris", "data": {"source": "csv", "path": str(tmp_path / "iris.csv"),
                                               "label": "species", "test_fraction": 0.2},
                       "model": {"hidden": [16]}, "optimizer": {"lr": 0.1, "momentum": 0.9},
                       "train": {"epochs": 30, "batch_size": 16}})
    result = train(cfg, out=tmp_path / "run")
    info = json.loads((result.run_dir / "data.json").read_text())
    assert info["classes"] == ["setosa", "versicolor", "virginica"]
    run = bptrain.load_run(result.run_dir)
    raw = load_dataset("csv", path=str(tmp_path / "iris.csv"), label="species",
                       standardize=False, val_fraction=0.0)
    predicted = run.predict(raw.X_train)
    assert set(predicted) <= set(SPECIES) and predicted.dtype.kind == "U"
    truth = np.array(names)
    assert np.mean(predicted == truth) > 0.9
    # a file with only some classes is evaluated on the run's classes, not its own
    iris_like(tmp_path / "two.csv", n=20, seed=1, species=("virginica", "versicolor"))
    ev, = evaluate_splits(result.run_dir, data_path=str(tmp_path / "two.csv"))
    assert ev.confusion.shape == (3, 3) and ev.confusion[0].sum() == 0
    assert ev.classes == ["setosa", "versicolor", "virginica"]
    (tmp_path / "odd.csv").write_text("sepal_length,species,petal_length\n1,daisy,2\n")
    with pytest.raises(DataError, match="'daisy', which is not one of the run's classes"):
        evaluate_splits(result.run_dir, data_path=str(tmp_path / "odd.csv"))
