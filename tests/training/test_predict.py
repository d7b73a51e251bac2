"""bptrain.load_run: a trained run predicts on raw inputs with its saved preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bptrain
from bptrain.errors import BptrainError, DataError
from bptrain.net.config import load_config
from bptrain.net.data import load_dataset
from bptrain.training.predict import TrainedRun, load_run, softmax
from bptrain.training.runs import evaluate_run, evaluate_splits, per_class_metrics
from bptrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cfg = load_config(MLP, ["train.epochs=6"])
    return train(cfg, out=tmp_path_factory.mktemp("predict") / "mlp")


@pytest.fixture(scope="module")
def raw():
    """The digits as stored (pixels 0..16), split exactly as the run split them."""
    return load_dataset("digits", standardize=False)


def test_load_run_is_exported_lazily():
    assert "load_run" in bptrain.__all__ and "TrainedRun" in bptrain.__all__
    assert bptrain.load_run is load_run and bptrain.TrainedRun is TrainedRun


@pytest.mark.parametrize("weights,eval_weights", [("best", "best"), ("final", "model")])
def test_raw_digits_predict_matches_eval(digits_run, raw, weights, eval_weights):
    """The bug of issue 16: model.predict on raw pixels skips the standardization (far lower
    accuracy); load_run(...).predict applies it and matches `bptrain eval` exactly."""
    run = bptrain.load_run(digits_run.run_dir, weights=weights)
    ev = evaluate_run(digits_run.run_dir, weights=eval_weights)
    accuracy = float(np.mean(run.predict(raw.X_val) == raw.y_val))
    assert accuracy == ev.accuracy and accuracy > 0.95
    plain = float(np.mean(run.model.predict(raw.X_val) == raw.y_val))
    assert plain < accuracy - 0.05


def test_predict_proba_scores_and_image_shapes(digits_run, raw):
    run = load_run(digits_run.run_dir)
    X = raw.X_val[:20]
    scores = run.scores(X)
    proba = run.predict_proba(X)
    assert scores.shape == proba.shape == (20, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba, softmax(scores), rtol=1e-12)
    np.testing.assert_array_equal(proba.argmax(axis=1), run.predict(X))
    # images (N, 1, 8, 8) and (N, 8, 8) are the same rows
    np.testing.assert_array_equal(run.scores(X.reshape(-1, 1, 8, 8)), scores)
    np.testing.assert_array_equal(run.scores(X.reshape(-1, 8, 8)), scores)
    # integer pixels work as they are stored
    np.testing.assert_allclose(run.scores(X.astype(np.uint8)), scores, rtol=1e-12)
    assert run.predict(X[:0]).shape == (0,)


def test_wrong_shapes_name_both_shapes(digits_run):
    run = load_run(digits_run.run_dir)
    with pytest.raises(DataError) as e:
        run.predict(np.zeros((5, 63)))
    assert "(5, 63)" in str(e.value) and "(N, 64)" in str(e.value)
    with pytest.raises(DataError, match=r"reshape\(1, -1\)"):
        run.predict(np.zeros(64))
    with pytest.raises(DataError, match="NaN"):
        run.predict(np.full((2, 64), np.nan))


def test_attributes_and_reprs(digits_run):
    run = load_run(digits_run.run_dir)
    assert run.config.name == "mlp" and run.weights == "best.npz"
    assert run.history == digits_run.history
    assert run.summary == json.loads((digits_run.run_dir / "summary.json").read_text())
    assert run.classes is None and run.num_classes == 10
    for obj in (run, digits_run):
        text = repr(obj)
        assert "\n" not in text and len(text) < 250 and "val_acc" in text
        page = obj._repr_html_()
        assert page.count("<svg") == 1 and page.count("<polyline") == 2  # train and val loss
        assert len(page) < 6000


def test_softmax_only_probabilities_and_regression_outputs(tmp_path):
    svm = train(load_config(MLP, ["train.epochs=1", "loss.type=svm", "model.hidden=[16]"]),
                out=tmp_path / "svm")
    run = load_run(svm.run_dir)
    with pytest.raises(BptrainError, match="svm loss"):
        run.predict_proba(np.zeros((1, 64)))
    assert run.scores(np.zeros((3, 64))).shape == (3, 10)
    reg = train({"name": "reg", "data": {"source": "regression", "n_samples": 40,
                                         "n_features": 5, "n_outputs": 2},
                 "model": {"hidden": [8]}, "loss": {"type": "mse"}, "train": {"epochs": 1}},
                out=tmp_path / "reg")
    run = load_run(reg.run_dir, "final")
    out = run.predict(np.ones((4, 5)))
    assert out.shape == (4, 2) and out.dtype == np.float64
    with pytest.raises(BptrainError, match="mse loss"):
        run.predict_proba(np.ones((4, 5)))


def test_batchnorm_running_statistics_are_loaded(tmp_path, raw):
    """eval and load_run read the running statistics with the weights (not the init values)."""
    result = train(load_config(MLP, ["train.epochs=2", "model.hidden=[32]",
                                     "model.normalization=batchnorm"]), out=tmp_path / "bn")
    ev = evaluate_run(result.run_dir)
    assert ev.accuracy == result.summary["final"]["val_acc"]
    run = load_run(result.run_dir, "final")
    assert float(np.mean(run.predict(raw.X_val) == raw.y_val)) == ev.accuracy


def test_an_unfinished_or_older_run_still_loads(tmp_path, digits_run, raw):
    import shutil
    run_dir = tmp_path / "copy"
    shutil.copytree(digits_run.run_dir, run_dir)
    expected = load_run(run_dir).predict(raw.X_val)
    (run_dir / "data.json").unlink()              # a run from before data.json
    np.testing.assert_array_equal(load_run(run_dir).predict(raw.X_val), expected)
    (run_dir / "model.npz").unlink()              # unfinished: no final weights, no saved stats
    np.testing.assert_array_equal(load_run(run_dir, "best").predict(raw.X_val), expected)
    with pytest.raises(DataError, match="--weights best"):
        load_run(run_dir, "final")
    with pytest.raises(DataError, match="not a run directory"):
        load_run(tmp_path)


def test_per_class_metrics_match_an_independent_computation(digits_run):
    ev, = evaluate_splits(digits_run.run_dir, split="val")
    data = load_dataset("digits")
    run = load_run(digits_run.run_dir, "final")
    pred = run.model.predict(data.X_val)       # the standardized split: no preprocessing again
    got = ev.per_class()
    for c in range(10):
        tp = sum(1 for p, t in zip(pred, data.y_val) if p == c and t == c)
        predicted = sum(1 for p in pred if p == c)
        actual = sum(1 for t in data.y_val if t == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        row = got["per_class"][c]
        assert row["support"] == actual
        assert row["precision"] == pytest.approx(precision, abs=1e-12)
        assert row["recall"] == pytest.approx(recall, abs=1e-12)
        assert row["f1"] == pytest.approx(f1, abs=1e-12)
    assert got["macro"]["f1"] == pytest.approx(np.mean([r["f1"] for r in got["per_class"]]))
    assert got["weighted"]["recall"] == pytest.approx(ev.accuracy, abs=1e-12)
    try:
        from sklearn.metrics import precision_recall_fscore_support
    except ImportError:
        return
    p, r, f, s = precision_recall_fscore_support(data.y_val, pred, labels=range(10),
                                                 zero_division=0)
    np.testing.assert_allclose([x["f1"] for x in got["per_class"]], f, atol=1e-12)


def test_per_class_metrics_of_an_empty_class():
    """A class never predicted and never present: precision, recall, F1 0 (zero_division=0)."""
    m = per_class_metrics(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), ["a", "b", "c"])
    a, b, c = m["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.75, 4)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0
    assert (c["precision"], c["recall"], c["f1"], c["name"]) == (0.0, 0.0, 0.0, "c")
