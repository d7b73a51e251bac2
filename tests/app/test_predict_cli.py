"""bptrain predict (unlabeled files in, a CSV or JSON of predictions out) and bptrain eval's
--split, --json and per-class precision, recall and F1."""
from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app
from bptrain.net.config import load_config
from bptrain.net.data import load_dataset
from bptrain.training.predict import load_run
from bptrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("BPTRAIN_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    return CliRunner()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cfg = load_config(MLP, ["train.epochs=4", "model.hidden=[32]", "data.test_fraction=0.1"])
    return train(cfg, out=tmp_path_factory.mktemp("cli") / "mlp").run_dir


@pytest.fixture(scope="module")
def raw():
    return load_dataset("digits", standardize=False, test_fraction=0.1)


def read_csv(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def error_text(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    return " ".join(result.output.split())


def test_predict_npz_without_labels_writes_a_csv(runner, digits_run, raw, tmp_path):
    np.savez(tmp_path / "x.npz", X=raw.X_test)                  # X only, raw pixels
    result = runner.invoke(app, ["predict", str(digits_run), "--data", str(tmp_path / "x.npz")])
    assert result.exit_code == 0, result.output
    header, rows = read_csv(result.stdout)
    assert header == ["row", "predicted"] + [f"p_{i}" for i in range(10)]
    assert [int(r[0]) for r in rows] == list(range(len(raw.X_test)))
    predicted = np.array([int(r[1]) for r in rows])
    np.testing.assert_array_equal(predicted, load_run(digits_run).predict(raw.X_test))
    proba = np.array([[float(v) for v in r[2:]] for r in rows])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba, load_run(digits_run).predict_proba(raw.X_test),
                               rtol=1e-15)                     # full precision in the CSV
    ev = json.loads(runner.invoke(app, ["eval", str(digits_run), "--weights", "best", "--split",
                                        "test", "--json"]).stdout)
    assert np.mean(predicted == raw.y_test) == ev["evaluations"][0]["accuracy"]


def test_predict_json_and_out_file(runner, digits_run, raw, tmp_path):
    np.save(tmp_path / "x.npy", raw.X_test[:4].reshape(4, 8, 8))   # images work too
    out = tmp_path / "pred.json"
    result = runner.invoke(app, ["predict", str(digits_run), "--data", str(tmp_path / "x.npy"),
                                 "--weights", "final", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "4 predictions (model.npz)" in result.stderr
    records = json.loads(out.read_text())
    assert len(records) == 4 and set(records[0]) == {"row", "predicted", *(f"p_{i}" for i in
                                                                         range(10))}
    expected = load_run(digits_run, "final").predict(raw.X_test[:4])
    assert [r["predicted"] for r in records] == expected.tolist()


def _csv_of(path: Path, X: np.ndarray, y: np.ndarray | None = None, label: str = "label"):
    cols = [f"px{i}" for i in range(X.shape[1])]
    lines = [",".join(cols + ([label] if y is not None else []))]
    for i, row in enumerate(X):
        lines.append(",".join([f"{v:g}" for v in row] + ([str(y[i])] if y is not None else [])))
    path.write_text("\n".join(lines) + "\n")


def test_predict_csv_with_and_without_the_label_column(runner, tmp_path):
    """A CSV-trained run drops its label column from a CSV given to predict, if present."""
    data = load_dataset("digits", standardize=False, val_fraction=0.0)
    _csv_of(tmp_path / "train.csv", data.X_train[:600], data.y_train[:600], "digit")
    cfg = load_config(MLP, ["train.epochs=3", "model.hidden=[16]", "data.source=csv",
                            f"data.path={tmp_path / 'train.csv'}", "data.label=digit"])
    run_dir = train(cfg, out=tmp_path / "run").run_dir
    _csv_of(tmp_path / "with.csv", data.X_train[600:620], data.y_train[600:620], "digit")
    _csv_of(tmp_path / "without.csv", data.X_train[600:620])
    outs = []
    for name in ("with.csv", "without.csv"):
        result = runner.invoke(app, ["predict", str(run_dir), "--data", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        outs.append(result.stdout)
    assert outs[0] == outs[1] and len(read_csv(outs[0])[1]) == 20
    _csv_of(tmp_path / "narrow.csv", data.X_train[600:620, :60])
    text = error_text(runner.invoke(app, ["predict", str(run_dir), "--data",
                                          str(tmp_path / "narrow.csv")]))
    assert "(20, 60)" in text and "(N, 64)" in text


def test_predict_svm_scores_and_string_classes(runner, tmp_path):
    rng = np.random.default_rng(0)
    lines = ["a,b,species"]
    for i in range(60):
        name = ("setosa", "virginica")[i % 2]
        lines.append(f"{rng.normal(0 if i % 2 else 5):.3f},{rng.normal():.3f},{name}")
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    cfg = load_config({"name": "svm", "data": {"source": "csv", "path": str(tmp_path / "iris.csv"),
                                              "label": "species"},
                       "loss": {"type": "svm"}, "model": {"hidden": [8]},
                       "optimizer": {"lr": 0.1, "momentum": 0.9}, "train": {"epochs": 20}})
    run_dir = train(cfg, out=tmp_path / "run").run_dir
    (tmp_path / "new.csv").write_text("b,a\n0.1,5.2\n-0.3,0.1\n")   # columns by name
    result = runner.invoke(app, ["predict", str(run_dir), "--data", str(tmp_path / "new.csv")])
    assert result.exit_code == 0, result.output
    header, rows = read_csv(result.stdout)
    assert header == ["row", "predicted", "score_0", "score_1"]
    assert [r[1] for r in rows] == ["setosa", "virginica"]


def test_predict_idx_images(runner, digits_run, raw, tmp_path):
    images = raw.X_test[:5].reshape(5, 8, 8).astype(np.uint8)
    idx = tmp_path / "t10k-images-idx3-ubyte"
    idx.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">III", 5, 8, 8) + images.tobytes())
    result = runner.invoke(app, ["predict", str(digits_run), "--data", str(idx)])
    assert result.exit_code == 0, result.output
    predicted = [int(r[1]) for r in read_csv(result.stdout)[1]]
    assert predicted == load_run(digits_run).predict(raw.X_test[:5]).tolist()


def test_predict_errors(runner, digits_run, tmp_path):
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 7, 9)))
    text = error_text(runner.invoke(app, ["predict", str(digits_run), "--data",
                                          str(tmp_path / "bad.npz")]))
    assert "(3, 7, 9)" in text and "(N, 64)" in text and "(N, 1, 8, 8)" in text
    np.savez(tmp_path / "noX.npz", features=np.zeros((3, 64)))
    assert "no array named X" in error_text(runner.invoke(
        app, ["predict", str(digits_run), "--data", str(tmp_path / "noX.npz")]))
    (tmp_path / "x.txt").write_text("1 2 3")
    assert "unknown input format" in error_text(runner.invoke(
        app, ["predict", str(digits_run), "--data", str(tmp_path / "x.txt")]))
    assert "not a run directory" in error_text(runner.invoke(
        app, ["predict", str(tmp_path), "--data", str(tmp_path / "x.txt")]))


def test_eval_json_splits_and_per_class(runner, digits_run):
    result = runner.invoke(app, ["eval", str(digits_run), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["weights"] == "model.npz"
    val, test = out["evaluations"]
    assert (val["split"], val["n"], test["split"], test["n"]) == ("val", 360, "test", 180)
    for ev in (val, test):
        c = np.array(ev["confusion"])
        assert c.sum() == ev["n"] and np.trace(c) / ev["n"] == pytest.approx(ev["accuracy"])
        for k, row in enumerate(ev["per_class"]):   # by hand from the confusion matrix
            tp, col, line = c[k, k], c[:, k].sum(), c[k].sum()
            assert row["precision"] == pytest.approx(tp / col if col else 0.0)
            assert row["recall"] == pytest.approx(tp / line if line else 0.0)
            assert row["support"] == line
        assert set(ev["macro"]) == {"precision", "recall", "f1"}
    table = runner.invoke(app, ["eval", str(digits_run), "--split", "train"])
    assert table.exit_code == 0, table.output
    assert "training set of digits" in table.stdout and "precision" in table.stdout
    assert "macro" in table.stdout and "test split" not in table.stdout
    both = runner.invoke(app, ["eval", str(digits_run)])
    assert "validation split of digits: 360" in both.stdout
    assert "test split of digits: 180" in both.stdout
    bad = runner.invoke(app, ["eval", str(digits_run), "--split", "test", "--data", "x.npz"])
    assert "give one" in error_text(bad)
