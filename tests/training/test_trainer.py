"""Training end to end: a digits run and its files, determinism, note 004's regression, fresh
run directories, impossible data/loss pairs, evaluate_run, and bit-identical resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bptrain.net.config import load_config
from bptrain.errors import ConfigError
from bptrain.training.runs import _load_run_parts as load_run, evaluate_run
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data
from bptrain.training.trainer import SilentReporter, train
from conftest import Boom, StopAtStep  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
METRIC_KEYS = {"epoch", "step", "train_loss", "val_loss", "train_acc", "val_acc", "lr", "seconds"}
RUN_FILES = ["config.yaml", "metrics.jsonl", "model.npz", "checkpoint.npz", "best.npz",
             "summary.json"]
# digits: 1797 images, 360 held out at val_fraction 0.2, 1437 to train on = 23 batches of 64
N_VAL, STEPS_PER_EPOCH = 360, 23


def mlp(*overrides):
    return load_config(CONFIGS / "mlp.yaml", list(overrides))


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def assert_same_arrays(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """configs/mlp.yaml for 5 epochs: trained once, read by several tests."""
    out = tmp_path_factory.mktemp("digits") / "run"
    result = train(mlp("train.epochs=5"), out=out)
    return result


# ---- a short digits run --------------------------------------------------------------------

def test_digits_run_reaches_accuracy(digits_run):
    # measured: 0.978 at epoch 5 (best 0.981); 0.95 leaves room for BLAS rounding differences
    assert digits_run.metrics["val_acc"] >= 0.95
    assert digits_run.summary["best"]["val_acc"] >= digits_run.metrics["val_acc"]
    assert digits_run.metrics["train_acc"] >= 0.97
    h = digits_run.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["train_loss"] < 0.2


def test_digits_run_writes_every_file(digits_run):
    run_dir = digits_run.run_dir
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.tmp"))
    # config.yaml is the resolved config
    assert load_config(run_dir / "config.yaml").to_dict() == mlp("train.epochs=5").to_dict()


def test_metrics_jsonl_one_record_per_evaluation(digits_run):
    records = read_metrics(digits_run.run_dir)
    assert len(records) == 5
    for i, rec in enumerate(records, start=1):
        assert METRIC_KEYS <= set(rec)
        assert rec["epoch"] == i and rec["step"] == i * STEPS_PER_EPOCH
        assert rec["lr"] == 0.1                          # step schedule: halves at epoch 10
        for k in ("train_loss", "val_loss", "train_acc", "val_acc", "seconds"):
            assert isinstance(rec[k], float), k
        assert 0 <= rec["val_acc"] <= 1
        # accuracies are fractions of 360 (val) and of the 1000-sample training subset
        assert abs(rec["val_acc"] * N_VAL - round(rec["val_acc"] * N_VAL)) < 1e-9
    assert [r["seconds"] for r in records] == sorted(r["seconds"] for r in records)
    assert digits_run.history == records
    assert digits_run.metrics == records[-1]


def test_summary_and_saved_arrays(digits_run):
    run_dir = digits_run.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_metrics(run_dir)
    assert summary["name"] == "mlp"
    assert summary["steps"] == 5 * STEPS_PER_EPOCH and summary["epochs"] == 5
    assert summary["final"] == records[-1]
    best = max(records, key=lambda r: r["val_acc"])
    assert summary["best"]["val_acc"] == best["val_acc"]
    assert summary["num_params"] == 64 * 100 + 100 + 100 * 10 + 10
    model = npz(run_dir / "model.npz")
    assert sorted(model) == sorted(["W1", "b1", "W2", "b2", "_feature_mean", "_feature_std"])
    assert model["W1"].shape == (64, 100) and model["W1"].dtype == np.float64
    ckpt = npz(run_dir / "checkpoint.npz")
    for k in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(ckpt[f"param/{k}"], model[k])
    assert int(ckpt["optim/t"]) == 5 * STEPS_PER_EPOCH
    assert {"optim/v/W1", "optim/v/b2", "meta"} <= set(ckpt)
    best_arrays = npz(run_dir / "best.npz")
    assert sorted(best_arrays) == ["W1", "W2", "b1", "b2"]
    if best["epoch"] == 5:
        assert_same_arrays(best_arrays, {k: model[k] for k in best_arrays})


def test_evaluate_run_matches_summary(digits_run):
    summary = digits_run.summary
    ev = evaluate_run(digits_run.run_dir)
    assert ev.n == N_VAL
    assert ev.accuracy == summary["final"]["val_acc"]
    assert ev.loss == pytest.approx(summary["final"]["val_loss"], rel=1e-12)
    assert ev.confusion.shape == (10, 10)
    assert ev.confusion.sum() == N_VAL
    assert np.trace(ev.confusion) / N_VAL == pytest.approx(ev.accuracy, abs=1e-15)
    # rows are true classes: their sums are the class counts of the validation split
    _, _, data = load_run(digits_run.run_dir)
    np.testing.assert_array_equal(ev.confusion.sum(axis=1), np.bincount(data.y_val, minlength=10))
    best = evaluate_run(digits_run.run_dir, weights="best")
    assert best.accuracy == summary["best"]["val_acc"]


def test_evaluate_run_on_a_data_file(digits_run, tmp_path):
    """--data: a file of raw (unstandardized) digits, standardized with the run's statistics."""
    _, model, data = load_run(digits_run.run_dir)
    raw_val = data.X_val * data.feature_std + data.feature_mean
    path = tmp_path / "val.npz"
    np.savez(path, X=raw_val, y=data.y_val)
    ev = evaluate_run(digits_run.run_dir, str(path))
    assert ev.n == N_VAL
    assert ev.accuracy == pytest.approx(digits_run.metrics["val_acc"], abs=1e-12)


# ---- determinism ---------------------------------------------------------------------------

SMALL = ("train.epochs=2", "model.hidden=[32]", "model.dropout=0.2")


def test_same_config_gives_bit_identical_runs(tmp_path):
    a = train(mlp(*SMALL), out=tmp_path / "a")
    b = train(mlp(*SMALL), out=tmp_path / "b")
    assert without_seconds(read_metrics(a.run_dir)) == without_seconds(read_metrics(b.run_dir))
    for name in ("model.npz", "best.npz"):
        assert_same_arrays(npz(a.run_dir / name), npz(b.run_dir / name))
    c = train(mlp(*SMALL, "seed=1"), out=tmp_path / "c")
    ma, mc = npz(a.run_dir / "model.npz"), npz(c.run_dir / "model.npz")
    assert not np.array_equal(ma["W1"], mc["W1"])
    assert read_metrics(a.run_dir)[-1]["val_loss"] != read_metrics(c.run_dir)[-1]["val_loss"]


# ---- note 004: the regression network ------------------------------------------------------

def test_regression_config_reproduces_note_004(tmp_path):
    cfg = load_config(CONFIGS / "regression.yaml")
    # the loss at the start, from the same seeded data and weights the run will use
    data = load_data(cfg)
    model = build_for_data(cfg, data)
    assert data.X_train.shape == (64, 1000) and data.y_train.shape == (64, 10)
    assert list(model.params) == ["W1", "W2"]                 # no biases
    start, _ = model.evaluate_loss(data.X_train, data.y_train)
    assert start > 1e6                                      # "about 2.5e7"
    # 500 full-batch steps, in a subprocess with single-threaded BLAS: on a busy machine a
    # multi-threaded BLAS can make these 1000-wide products 20x slower.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", BPTRAIN_DEBUG="")
    out = tmp_path / "reg"
    proc = subprocess.run([sys.executable, "-m", "bptrain", "run", str(CONFIGS / "regression.yaml"),
                           "--quiet", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(25, 501, 25))
    assert records[0]["batch_loss"] < start                  # mean of steps 1-25, falling
    losses = [r["train_loss"] for r in records]
    assert all(x > y for x, y in zip(losses, losses[1:]))  # falls at every evaluation
    assert losses[-1] < 1e-3
    assert records[-1]["val_loss"] is None and records[-1]["val_acc"] is None
    assert json.loads((out / "summary.json").read_text())["steps"] == 500


# ---- run directories -----------------------------------------------------------------------

def test_taken_run_dir_gets_a_fresh_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ("train.epochs=1", "model.hidden=[8]")
    first = train(mlp(*small))
    assert first.run_dir == Path("runs") / "mlp"
    before = (first.run_dir / "metrics.jsonl").read_bytes()
    second = train(mlp(*small))
    assert second.run_dir == Path("runs") / "mlp-2"
    third = train(mlp(*small), out=first.run_dir)          # an explicit --out is not overwritten
    assert third.run_dir == Path("runs") / "mlp-3"
    assert (first.run_dir / "metrics.jsonl").read_bytes() == before
    assert len(read_metrics(first.run_dir)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(mlp(*small), out=empty).run_dir == empty   # an empty folder is used as is


def test_dict_config_and_runs_root(tmp_path):
    result = train({"name": "tiny", "data": {"source": "xor", "n_samples": 80},
                    "model": {"hidden": [4]}, "train": {"epochs": 1}},
                   runs_root=tmp_path / "elsewhere")
    assert result.run_dir == tmp_path / "elsewhere" / "tiny"
    assert (result.run_dir / "summary.json").is_file()


# ---- impossible combinations -----------------------------------------------------------------

def test_mse_on_class_labels_needs_an_encoding(tmp_path):
    with pytest.raises(ConfigError, match="data.encoding=onehot"):
        train(mlp("loss.type=mse"), out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()                  # failed before making a run dir
    ok = train(mlp("loss.type=mse", "data.encoding=onehot", "loss.reduction=mean",
                   "optimizer.type=adam", "optimizer.lr=0.01", "train.epochs=3",
                   "model.hidden=[32]"), out=tmp_path / "ok")
    # accuracy is the argmax of the regressed one-hot rows (measured 0.48, 0.75, 0.85)
    accs = [r["val_acc"] for r in ok.history]
    assert accs[-1] > 0.7 and accs[-1] > accs[0]
    assert ok.history[-1]["train_loss"] < ok.history[0]["train_loss"]


def test_softmax_on_regression_data_is_an_error(tmp_path):
    cfg = load_config(CONFIGS / "regression.yaml", ["loss.type=softmax"])
    with pytest.raises(ConfigError, match="real-valued targets"):
        train(cfg, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ---- resume ------------------------------------------------------------------------------------

def test_resume_continues_bit_identically(tmp_path):
    overrides = ("train.epochs=4", "model.hidden=[32]", "model.dropout=0.2",
                 "optimizer.type=adam", "optimizer.lr=0.005", "schedule.type=exponential",
                 "schedule.gamma=0.7")
    a = train(mlp(*overrides), out=tmp_path / "a")
    b_dir = tmp_path / "b"
    # checkpoints after each epoch (steps 23, 46, ...); crash in epoch 3, at step 60
    with pytest.raises(Boom):
        train(mlp(*overrides), out=b_dir, reporter=StopAtStep(60))
    assert not (b_dir / "model.npz").exists()
    assert int(npz(b_dir / "checkpoint.npz")["optim/t"]) == 2 * STEPS_PER_EPOCH
    assert len(read_metrics(b_dir)) == 2
    b = train(None, resume=b_dir)
    assert b.run_dir == b_dir
    assert without_seconds(read_metrics(a.run_dir)) == without_seconds(read_metrics(b_dir))
    assert without_seconds(b.history) == without_seconds(a.history)
    for name in ("model.npz", "best.npz"):
        assert_same_arrays(npz(a.run_dir / name), npz(b_dir / name))
    ca, cb = npz(a.run_dir / "checkpoint.npz"), npz(b_dir / "checkpoint.npz")
    assert_same_arrays({k: v for k, v in ca.items() if k != "meta"},
                       {k: v for k, v in cb.items() if k != "meta"})
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a.run_dir, b_dir))
    assert sa["steps"] == sb["steps"] == 4 * STEPS_PER_EPOCH
    assert without_seconds([sa["final"], sa["best"]]) == without_seconds([sb["final"], sb["best"]])


def test_resume_needs_a_run_with_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        train(None, resume=tmp_path)
    b_dir = tmp_path / "b"
    with pytest.raises(Boom):                               # crash before the first checkpoint
        train(mlp("model.hidden=[8]"), out=b_dir, reporter=StopAtStep(3))
    with pytest.raises(ConfigError, match="no checkpoint.npz"):
        train(None, resume=b_dir)


# ---- file data with a relative path ----------------------------------------------------------

def test_relative_data_path_survives_eval_and_resume(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    np.savez(project / "configs" / "data.npz", X=X, y=y)
    (project / "configs" / "c.yaml").write_text(
        "name: rel\ndata: {source: npz, path: data.npz}\nmodel: {hidden: [8]}\n"
        "optimizer: {type: adam, lr: 0.01}\ntrain: {epochs: 3, batch_size: 32}\n")
    monkeypatch.chdir(project)
    result = train("configs/c.yaml", out="runs/rel")
    monkeypatch.chdir(tmp_path)                              # somewhere else entirely
    run_dir = project / "runs" / "rel"
    ev = evaluate_run(run_dir)
    assert ev.n == 24 and ev.accuracy == result.metrics["val_acc"]
    resumed = train(None, resume=run_dir)                    # already finished: just re-saves
    assert resumed.summary["steps"] == result.summary["steps"]


# ---- float32 ---------------------------------------------------------------------------------

def test_float32_run_saves_float32(tmp_path):
    r = train(mlp("train.dtype=float32", "train.epochs=2", "model.hidden=[32]"),
              out=tmp_path / "f32")
    model = npz(r.run_dir / "model.npz")
    for k in ("W1", "b1", "W2", "b2"):
        assert model[k].dtype == np.float32, k
    assert r.metrics["val_acc"] > 0.9


def test_zeros_init_warns_at_start_that_symmetry_is_never_broken(tmp_path):
    from bptrain.training.trainer import train

    class Recorder(SilentReporter):
        def __init__(self):
            self.messages = []

        def message(self, text):
            self.messages.append(text)

    rec = Recorder()
    train(load_config(CONFIGS / "mlp.yaml", ["model.init=zeros", "train.epochs=1"]),
          out=tmp_path / "z", reporter=rec)
    assert any("symmetry" in m and "zeros" in m for m in rec.messages)
    rec_he = Recorder()
    train(load_config(CONFIGS / "mlp.yaml", ["train.epochs=1"]), out=tmp_path / "h",
          reporter=rec_he)
    assert not any("symmetry" in m for m in rec_he.messages)


def test_summary_epochs_count_a_partial_last_epoch(tmp_path):
    from pathlib import Path
    from bptrain.net.config import load_config
    from bptrain.training.trainer import train
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mlp.yaml",
                      ["train.iterations=30"])  # 23 steps per epoch: 1 full + 7 of the next
    result = train(cfg, out=tmp_path / "r")
    assert result.summary["epochs"] == 2 == result.history[-1]["epoch"]
