"""Gradient-flow diagnostics: the per-layer numbers in metrics.jsonl, and each warning produced
by a run built to show it (and not by a healthy run)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app
from bptrain.net.config import load_config
from bptrain.training.diagnostics import Diagnostics, layers_of
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data
from bptrain.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
SPIRAL = ROOT / "configs" / "spiral.yaml"


class Recorder:
    """A reporter that keeps the messages (the warnings) and the evaluation records."""

    def __init__(self):
        self.messages: list[str] = []
        self.records: list[dict] = []

    def start(self, info): pass
    def step(self, step, epoch, loss): pass
    def end(self, summary, history): pass

    def evaluation(self, record):
        self.records.append(record)

    def message(self, text):
        self.messages.append(text)


def run(tmp_path, base, *overrides, name="run"):
    rec = Recorder()
    result = train(load_config(base, list(overrides)), out=tmp_path / name, reporter=rec)
    kinds = {(w["kind"], w["layer"]) for w in result.summary["warnings"]}
    return result, rec, kinds


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- a healthy run ------------------------------------------------------------------------
def test_healthy_mlp_has_numbers_and_no_warnings(tmp_path):
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=3")
    assert kinds == set() and rec.messages == []
    records = read_metrics(result.run_dir)
    assert len(records) == 3
    for r in records:
        d = r["diagnostics"]
        assert list(d) == ["fc1", "scores"]
        assert r["warnings"] == []
        fc1, scores = d["fc1"], d["scores"]
        assert fc1["activation"] == "relu" and "activation" not in scores
        assert fc1["dead"] == 0.0 and fc1["identical"] is False
        for layer in (fc1, scores):
            assert 1e-3 < layer["grad_norm"] < 10
            assert 1 < layer["weight_norm"] < 50
            assert 1e-4 < layer["update_ratio"] < 1e-1      # near the healthy 1e-3
        # gradient flows: the first layer's gradient is of the output layer's order
        assert 0.1 < fc1["grad_norm"] / scores["grad_norm"] < 10
    # the weight norm is that of the saved weights
    W1 = np.load(result.run_dir / "model.npz")["W1"]
    assert records[-1]["diagnostics"]["fc1"]["weight_norm"] == pytest.approx(
        np.linalg.norm(W1), rel=1e-3)
    assert json.loads((result.run_dir / "summary.json").read_text())["warnings"] == []


@pytest.mark.parametrize("reg", ["l2", "l1"])
def test_numbers_are_those_of_the_last_step(tmp_path, reg):
    """grad_norm is the data-loss gradient (regularizer share removed) of the last step before
    the evaluation; update_ratio is that step's |W_after - W_before| / |W_before|."""
    cfg = load_config(MLP, ["train.iterations=1", "train.shuffle=false",
                            f"regularization.type={reg}", "regularization.strength=0.5",
                            "optimizer.momentum=0"])
    data = load_data(cfg)
    t = Trainer(cfg, tmp_path / "one", data=data)
    (tmp_path / "one").mkdir()
    W_before = {k: t.model.params[k].copy() for k in ("W1", "W2")}
    result = t.run()
    d = result.metrics["diagnostics"]
    # the same step by hand, on a model without the regularizer: the data gradient
    plain = build_for_data(load_config(cfg, ["regularization.type=none"]), data)
    _, grads = plain.loss_and_grads(np.asarray(data.X_train[:64]), data.y_train[:64])
    for layer, W in (("fc1", "W1"), ("scores", "W2")):
        assert d[layer]["grad_norm"] == pytest.approx(np.linalg.norm(grads[W]), rel=1e-3)
        after = t.model.params[W]
        ratio = np.linalg.norm(after - W_before[W]) / np.linalg.norm(W_before[W])
        assert d[layer]["update_ratio"] == pytest.approx(ratio, rel=1e-3)
        # plain SGD: the update is lr x (data gradient + 0.5 W), or + 0.5 sign(W) for L1
        share = W_before[W] if reg == "l2" else np.sign(W_before[W])
        total = grads[W] + 0.5 * share
        assert ratio == pytest.approx(0.1 * np.linalg.norm(total) / np.linalg.norm(W_before[W]),
                                      rel=1e-6)


def test_layers_pair_each_affine_with_its_activation():
    cfg = load_config(MLP, ["model.hidden=[8,6]", "model.activation=tanh",
                            "model.dropout=0.5"])
    from bptrain.net.model import build_model
    layers = layers_of(build_model(cfg, 4, 3))
    assert [(l.name, l.activation, l.hidden) for l in layers] == [
        ("fc1", "tanh", True), ("fc2", "tanh", True), ("scores", None, False)]


# ---- each warning from a run built to show it ---------------------------------------------
def test_vanishing_gradients_in_a_sigmoid_stack(tmp_path):
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=1", "model.activation=sigmoid",
                             "model.hidden=[50,50,50,50,50,50]", "model.init=gaussian",
                             "model.std=0.01", "regularization.type=none")
    assert ("vanishing", "fc1") in kinds
    d = result.metrics["diagnostics"]
    assert d["fc1"]["grad_norm"] / d["scores"]["grad_norm"] < 1e-6   # many orders down
    # each sigmoid layer shrinks it further: fc1 < fc2 < ... < fc6
    norms = [d[f"fc{i}"]["grad_norm"] for i in range(1, 7)]
    assert norms == sorted(norms)
    [text] = [m for m in rec.messages if "vanishing" in m]
    assert "fc1" in text and "Likely fix" in text and "relu" in text


def test_exploding_norms_with_a_huge_learning_rate(tmp_path):
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=1", "optimizer.lr=5")
    assert {("exploding", "fc1"), ("exploding", "scores")} <= kinds
    d = result.metrics["diagnostics"]
    assert d["fc1"]["weight_norm"] > 1e5 * 14          # He init: |W1| is about 14
    assert d["fc1"]["update_ratio"] > 0.5
    [text] = [m for m in rec.messages if "exploding" in m]
    assert "fc1" in text and "scores" in text and "optimizer.lr=0.5" in text


def test_update_ratio_too_high(tmp_path):
    # plain SGD at lr 1: it still learns, but every step moves the output weights by > 10%
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=1", "optimizer.lr=1",
                             "optimizer.momentum=0")
    assert ("update_high", "scores") in kinds
    assert not any(k == "exploding" for k, _ in kinds)
    assert result.metrics["diagnostics"]["scores"]["update_ratio"] > 0.1
    assert any("too high" in m and "optimizer.lr=0.1" in m for m in rec.messages)


def test_update_ratio_too_low(tmp_path):
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=2", "optimizer.lr=1e-6")
    assert {("update_low", "fc1"), ("update_low", "scores")} <= kinds
    for layer in ("fc1", "scores"):
        assert result.metrics["diagnostics"][layer]["update_ratio"] < 1e-5
    assert any("too low" in m and "optimizer.lr=1e-05" in m for m in rec.messages)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_identical_hidden_units_with_zero_init(tmp_path, activation):
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=2", "model.init=zeros",
                             f"model.activation={activation}")
    assert ("identical", "fc1") in kinds
    W1 = np.load(result.run_dir / "model.npz")["W1"]
    assert np.allclose(W1, W1[:, :1])                  # symmetry never broken
    assert result.metrics["diagnostics"]["fc1"]["identical"] is True
    assert sum("identical hidden units" in m for m in rec.messages) == 1   # announced once


def test_most_relus_dead_after_a_huge_learning_rate(tmp_path):
    result, rec, kinds = run(tmp_path, SPIRAL, "optimizer.lr=1", "train.epochs=10")
    assert ("dead_relu", "fc1") in kinds
    dead = result.metrics["diagnostics"]["fc1"]["dead"]
    assert dead > 0.5
    # the definition: units that output 0 for every sample of the evaluated training sample
    t = Trainer(load_config(SPIRAL), tmp_path / "x")
    for k, v in np.load(result.run_dir / "model.npz").items():
        if not k.startswith("_"):
            t.model.params[k] = v
    t.model.evaluate_loss(t.X[t.train_sample], t.y[t.train_sample])
    h = t.model.graph["relu1"].value
    assert dead == pytest.approx(np.mean(~(h > 0).any(axis=0)), abs=1e-3)
    assert any("ReLUs dead" in m and "fc1" in m for m in rec.messages)


def test_dead_relus_from_a_large_negative_bias(tmp_path):
    cfg = load_config(MLP, ["train.epochs=1"])
    t = Trainer(cfg, tmp_path / "b")
    (tmp_path / "b").mkdir()
    t.model.params["b1"] = np.full(100, -50.0)
    result = t.run()
    assert result.metrics["diagnostics"]["fc1"]["dead"] == 1.0
    assert [w["kind"] for w in result.metrics["warnings"]] == ["dead_relu"]


def test_saturated_sigmoid_units(tmp_path):
    result, rec, kinds = run(tmp_path, MLP, "train.epochs=1", "model.activation=sigmoid",
                             "model.init=gaussian", "model.std=3")
    assert ("saturated", "fc1") in kinds
    assert result.metrics["diagnostics"]["fc1"]["saturated"] > 0.5


# ---- output -------------------------------------------------------------------------------
def test_warnings_are_recorded_in_metrics_and_summary(tmp_path):
    result, _, _ = run(tmp_path, MLP, "train.epochs=2", "model.init=zeros")
    records = read_metrics(result.run_dir)
    assert all(r["warnings"] == [{"kind": "identical", "layer": "fc1",
                                  "detail": r["warnings"][0]["detail"]}] for r in records)
    [w] = json.loads((result.run_dir / "summary.json").read_text())["warnings"]
    assert w["kind"] == "identical" and w["first_epoch"] == 1 and w["evaluations"] == 2
    assert w["text"].startswith("fc1: identical hidden units:") and "model.init=he" in w["text"]


def test_run_diagnostics_flag_prints_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    runner = CliRunner()
    args = ["run", str(MLP), "--set", "train.epochs=2", "--set", "model.hidden=[16]"]
    with_flag = runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--diagnostics"])
    assert with_flag.exit_code == 0, with_flag.output
    assert with_flag.output.count("diagnostics at epoch") == 2
    assert "update/|W|" in with_flag.output and "0% dead" in with_flag.output
    without = runner.invoke(app, args + ["--out", str(tmp_path / "b")])
    assert without.exit_code == 0 and "diagnostics at epoch" not in without.output
    # collected either way
    assert "diagnostics" in read_metrics(tmp_path / "b")[0]


def test_warning_is_printed_without_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["run", str(MLP), "--set", "train.epochs=1", "--set",
                                   "optimizer.lr=1e-6", "--out", str(tmp_path / "a")])
    assert out.exit_code == 0
    assert "note: epoch 1: updates too small in fc1, scores" in out.output


def test_diagnostics_cost_is_small():
    """collect + the hook at one step, against one evaluation forward: a few percent at most."""
    import time
    cfg = load_config(MLP)
    data = load_data(cfg)
    model = build_for_data(cfg, data)
    X = np.ascontiguousarray(data.X_train[:1000])
    y = data.y_train[:1000]
    diag = Diagnostics(model)

    class At:  # a trainer position at which an evaluation follows
        step, total_steps, batch_index, steps_per_epoch, epoch = 0, 1, 0, 1, 0
        cfg = load_config(MLP)

    def best(f, n=20):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    model.forward_backward(X[:64], y[:64])
    forward = best(lambda: model.evaluate_loss(X, y))
    extra = best(lambda: (diag.before_step(At), diag.after_step(), diag.collect()))
    assert extra < 0.5 * forward, (extra, forward)
