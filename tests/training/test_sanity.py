"""bptrain sanity: the course's checks pass on the shipped MLP and fail on configs built to
fail, with exit codes 0 / 1 / 2."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app
from bptrain.net.config import load_config
from bptrain.training.sanity import _no_reg
from bptrain.training.sanity import (check_initial_loss, check_overfit, check_regularization,
                            run_sanity)
from bptrain.net.data import load_data

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")
SVM = str(ROOT / "configs" / "svm.yaml")


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("BPTRAIN_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def by_name(checks):
    return {c.name: c for c in checks}


def test_mlp_passes_every_check():
    checks = by_name(run_sanity(load_config(MLP)))
    assert list(checks) == ["initial loss, small weights", "initial loss, your init",
                            "regularization raises the loss", "overfit 50 samples"]
    assert all(c.status == "pass" for c in checks.values())
    small = checks["initial loss, small weights"]
    assert small.expected == pytest.approx(math.log(10))
    assert small.value == pytest.approx(math.log(10), abs=1e-6)   # scores ~ 0: exactly chance
    init = checks["initial loss, your init"]
    assert math.log(10) < init.value < 3 * math.log(10)            # He init: a little above
    reg = checks["regularization raises the loss"]
    assert reg.value == pytest.approx(reg.expected, rel=1e-9) and reg.value > 1e4
    fit = checks["overfit 50 samples"]
    assert fit.value == 1.0 and "100% training accuracy at step" in fit.measured


def test_svm_expects_c_minus_one():
    cfg = load_config(SVM)
    check, expected = check_initial_loss(cfg, load_data(cfg))
    assert check.status == "pass" and expected == 9.0
    assert check.value == pytest.approx(9.0, abs=1e-6)


def test_mse_expects_the_loss_of_zero_outputs():
    cfg = load_config(MLP, ["loss.type=mse", "data.encoding=onehot", "loss.reduction=mean"])
    check, expected = check_initial_loss(cfg, load_data(cfg))
    # one-hot rows: each sample's squared targets sum to 1
    assert check.status == "pass" and expected == pytest.approx(1.0)


def test_regularization_check_with_l1_and_with_none():
    for reg in ("l1", "none"):
        cfg = load_config(MLP, [f"regularization.type={reg}"])
        c = check_regularization(cfg, load_data(cfg))
        assert c.status == "pass", c.measured
        assert ("L1" if reg == "l1" else "L2") in c.measured  # none: checked with L2


def test_overfit_fails_with_a_tiny_learning_rate():
    cfg = load_config(MLP, ["optimizer.lr=1e-6"])
    c = check_overfit(cfg, load_data(cfg), max_steps=100)
    assert c.status == "fail" and c.value < 0.5
    assert "cannot even memorize 50 samples" in c.meaning


def test_huge_init_fails_the_init_check():
    checks = by_name(run_sanity(load_config(MLP, ["model.init=gaussian", "model.std=1"]),
                                max_steps=100))
    init = checks["initial loss, your init"]
    assert init.status == "fail" and init.value > 10 * math.log(10)
    assert checks["initial loss, small weights"].status == "pass"   # the loss itself is fine


def test_zero_init_fails_regularization_and_overfit():
    checks = by_name(run_sanity(load_config(MLP, ["model.init=zeros"]), max_steps=100))
    assert checks["regularization raises the loss"].status == "fail"
    assert "zero" in checks["regularization raises the loss"].meaning
    assert checks["overfit 50 samples"].status == "fail"


def test_cli_exit_codes(runner, tmp_path):
    ok = runner.invoke(app, ["sanity", MLP])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("PASS ") == 4 and "PASS: 4 checks passed" in ok.output
    assert "the loss function and the labels agree" in ok.output
    bad = runner.invoke(app, ["sanity", MLP, "--set", "optimizer.lr=1e-6", "--steps", "50"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL overfit 50 samples" in bad.output and "FAIL: 1 of 4 checks failed" in bad.output
    js = runner.invoke(app, ["sanity", MLP, "--set", "optimizer.lr=1e-6", "--steps", "20",
                             "--json"])
    data = json.loads(js.output)
    assert js.exit_code == 1 and data["passed"] is False
    assert [c["status"] for c in data["checks"]] == ["pass", "pass", "pass", "fail"]
    err = runner.invoke(app, ["sanity", MLP, "--set", "optimizer.lr=-1"])
    assert err.exit_code == 2 and err.output.startswith("error: optimizer.lr")
    missing = runner.invoke(app, ["sanity", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_sanity_drops_dropout_layers_of_an_explicit_layer_list():
    # README: the overfit check runs with "no regularization or dropout". The shorthand's
    # model.dropout was zeroed, but dropout layers in model.layers stayed in.
    cfg = load_config({"model": {"layers": [
        {"type": "affine", "units": 8}, {"type": "relu"}, {"type": "dropout", "p": 0.9},
        {"type": "affine"}]}})
    variant = load_config(cfg, _no_reg(cfg))
    # the dropout layer keeps its place (a graph may name it) with p = 0: the identity
    assert [(l["type"], l.get("p")) for l in variant.model.layers] == [
        ("affine", None), ("relu", None), ("dropout", 0.0), ("affine", None)]
    assert variant.model.layers[0]["units"] == 8
    assert variant.regularization.type == "none"


def test_sanity_runs_without_optimizer_weight_decay():
    cfg = load_config({"optimizer": {"type": "adamw", "lr": 1e-3}})
    assert cfg.optimizer.weight_decay == 0.01
    assert load_config(cfg, _no_reg(cfg)).optimizer.weight_decay == 0.0

