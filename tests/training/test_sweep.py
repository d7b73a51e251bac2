"""bptrain sweep: the sweep file, grid and random trials, parallel local runs, failures,
resume, and (when Ray is installed) the Ray backend giving the local backend's results.

The sweeps train digits for 2 epochs with a tiny hidden layer: each trial takes well under a
second; most of the time here is starting worker processes (spawn)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bptrain.app.cli import app
from bptrain.net.config import load_config
from bptrain.errors import ConfigError
from bptrain.app.report import SweepReporter, make_console
from bptrain.training.sweep import (SweepFailed, expand, load_sweep, plan, run_sweep, sweep_from_dict,
                           trial_id)

BASE = {"data": {"source": "digits"}, "model": {"hidden": [8]},
        "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": 64}}


def make(tmp_path: Path, axes: dict, **extra) -> Path:
    """A sweep file in tmp_path with an inline base."""
    doc = {"name": extra.pop("name", "s"), "base": extra.pop("base", BASE), "axes": axes,
           **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def quiet() -> SweepReporter:
    return SweepReporter(make_console(), live=False)


def records(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / "sweep.jsonl").read_text().splitlines()]


# ---- the sweep file and its trials ------------------------------------------------------
def test_grid_is_the_product_of_the_axes_in_file_order(tmp_path):
    sw = load_sweep(make(tmp_path, {"optimizer.lr": [0.01, 0.1],
                                    "regularization.strength": [1e-4, 0.0, 1e-2]}))
    settings = expand(sw)
    assert settings == [{"optimizer.lr": lr, "regularization.strength": s}
                        for lr in (0.01, 0.1) for s in (1e-4, 0.0, 1e-2)]
    trials = plan(sw)
    assert [t.id for t in trials][:3] == ["t001-lr0.01-strength1e-4", "t002-lr0.01-strength0",
                                          "t003-lr0.01-strength0.01"]
    assert trials[4].config.optimizer.lr == 0.1
    assert trials[4].config.regularization.strength == 0.0
    assert trials[4].config.name == "s-" + trials[4].id
    assert trial_id(7, 120, {"model.hidden": [64, 32]}) == "t007-hidden64x32"


def test_random_search_is_seeded_and_within_bounds(tmp_path):
    axes = {"optimizer.lr": {"loguniform": [1e-4, 1e-1]},
            "optimizer.momentum": {"uniform": [0.5, 0.99]},
            "train.batch_size": {"uniform": [16, 128]},
            "model.hidden": {"choice": [[8], [16, 16]]}}
    one = expand(load_sweep(make(tmp_path, axes, method="random", trials=40, seed=3)))
    two = expand(load_sweep(make(tmp_path, axes, method="random", trials=40, seed=3)))
    other = expand(load_sweep(make(tmp_path, axes, method="random", trials=40, seed=4)))
    assert one == two and one != other and len(one) == 40
    lrs = [s["optimizer.lr"] for s in one]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)
    # log-uniform: about as many draws per decade (3 decades, 40 draws)
    assert all(sum(10 ** (k - 4) <= v < 10 ** (k - 3) for v in lrs) >= 5 for k in range(3))
    assert all(0.5 <= s["optimizer.momentum"] <= 0.99 for s in one)
    assert all(isinstance(s["train.batch_size"], int) and 16 <= s["train.batch_size"] <= 128
               for s in one)
    assert {tuple(s["model.hidden"]) for s in one} == {(8,), (16, 16)}


@pytest.mark.parametrize("doc, words", [
    ({"name": "s", "base": BASE, "axis": {"optimizer.lr": [0.1]}}, "Did you mean 'axes'"),
    ({"name": "s", "base": BASE, "axes": {"model.hidden_size": [[8]]}},
     "Did you mean 'model.hidden'"),   # (optimizer.learning_rate is lr's alias: accepted)
    ({"name": "s", "base": BASE, "axes": {"optimizer.lr": {"loguniform": [1e-3, 1e-1]}}},
     "method: random"),
    ({"name": "s", "base": BASE, "method": "random", "axes": {"optimizer.lr": [0.1]}},
     "trials"),
    ({"name": "s", "base": BASE, "axes": {"optimizer.lr": {"loguniform": [0, 1]}},
      "method": "random", "trials": 2}, "positive"),
    ({"name": "s", "base": BASE, "axes": {"optimizer.lr": [0.1]}, "metric": "best.val_accuracy"},
     "Did you mean 'best.val_acc'"),
    ({"name": "s/x", "base": BASE, "axes": {"optimizer.lr": [0.1]}}, "folder name"),
    ({"name": "s", "base": "nowhere.yaml", "axes": {"optimizer.lr": [0.1]}}, "not found"),
])
def test_sweep_file_errors_name_the_key_and_the_fix(tmp_path, doc, words):
    with pytest.raises(ConfigError, match=words):
        sweep_from_dict(doc, tmp_path / "sweep.yaml")


def test_validation_errors_exit_2_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    bad = make(tmp_path, {"optimizer.lrate": [0.1]})
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "optimizer.lr" in result.output
    all_invalid = make(tmp_path, {"model.hidden": [8, 16]})   # must be [[8], [16]]
    result = runner.invoke(app, ["sweep", str(all_invalid)])
    assert result.exit_code == 2 and "[[64], [128]]" in result.output
    assert not (tmp_path / "runs").exists()
    ok = make(tmp_path, {"optimizer.lr": [0.1, 0.2]})
    result = runner.invoke(app, ["sweep", str(ok), "--dry-run"])
    assert result.exit_code == 0 and result.output.split() == ["t001-lr0.1", "t002-lr0.2"]
    result = runner.invoke(app, ["sweep", str(ok), "--address", "h:6379"])
    assert result.exit_code == 2 and "--backend ray" in result.output


# ---- running ----------------------------------------------------------------------------
def test_parallel_local_sweep_with_a_failing_trial_then_resume(tmp_path):
    """2 workers; one trial diverges, one has an invalid value; the others finish; a second
    invocation trains nothing; a stopped trial continues from its checkpoint."""
    path = make(tmp_path, {"optimizer.lr": [0.1, 1e6, -1.0, 0.05]}, base=BASE)
    sw = load_sweep(path)
    result = run_sweep(sw, workers=2, runs_root=tmp_path / "runs", reporter=quiet())
    d = tmp_path / "runs" / "s"
    recs = {r["trial"]: r for r in records(d)}
    assert list(recs) == ["t001-lr0.1", "t002-lr1e6", "t003-lr-1", "t004-lr0.05"]
    assert recs["t002-lr1e6"]["status"] == "failed"
    assert "diverged" in recs["t002-lr1e6"]["reason"]
    assert recs["t003-lr-1"]["status"] == "failed"
    assert "optimizer.lr: must be greater than 0" in recs["t003-lr-1"]["reason"]
    for t in ("t001-lr0.1", "t004-lr0.05"):
        assert recs[t]["status"] == "done" and 0.5 < recs[t]["metric"] <= 1
        assert (d / t / "summary.json").is_file()
        # every trial is a normal run: its config.yaml trains it again alone
        cfg = load_config(d / t / "config.yaml")
        assert cfg.optimizer.lr == recs[t]["settings"]["optimizer.lr"]
    best = max((recs[t] for t in ("t001-lr0.1", "t004-lr0.05")), key=lambda r: r["metric"])
    assert result.best["trial"] == best["trial"]
    assert load_config(d / "best.yaml").to_dict() == \
        load_config(d / best["trial"] / "config.yaml").to_dict()

    # Re-running trains nothing that finished (summaries untouched).
    stamps = {t: (d / t / "summary.json").stat().st_mtime_ns for t in ("t001-lr0.1", "t004-lr0.05")}
    (d / "t004-lr0.05" / "summary.json").unlink()       # as if stopped during its last epoch
    (d / "t004-lr0.05" / "model.npz").unlink()
    again = run_sweep(sw, workers=2, runs_root=tmp_path / "runs", reporter=quiet())
    rec2 = {r["trial"]: r for r in again.records}
    assert rec2["t001-lr0.1"]["reused"] is True
    assert (d / "t001-lr0.1" / "summary.json").stat().st_mtime_ns == stamps["t001-lr0.1"]
    assert rec2["t004-lr0.05"]["reused"] is False and rec2["t004-lr0.05"]["status"] == "done"
    assert rec2["t004-lr0.05"]["metric"] == recs["t004-lr0.05"]["metric"]
    assert rec2["t002-lr1e6"]["status"] == "failed"


def test_every_trial_failing_is_an_error(tmp_path):
    sw = load_sweep(make(tmp_path, {"optimizer.lr": [1e6, 1e7]}))
    with pytest.raises(SweepFailed, match="diverged"):
        run_sweep(sw, workers=1, runs_root=tmp_path / "runs", reporter=quiet())
    assert len(records(tmp_path / "runs" / "s")) == 2


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k not in ("seconds", "dir")}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def test_ray_backend_equals_local_backend(tmp_path):
    pytest.importorskip("ray")
    sw = load_sweep(make(tmp_path, {"model.hidden": [[8], [16]]}))
    local = run_sweep(sw, workers=2, runs_root=tmp_path / "local", reporter=quiet())
    ray_result = run_sweep(sw, workers=2, backend="ray", runs_root=tmp_path / "ray",
                           reporter=quiet())
    assert [r["status"] for r in ray_result.records] == ["done", "done"]
    assert _without_seconds(ray_result.records) == _without_seconds(local.records)
    for r in local.records:
        lines = [_without_seconds(json.loads(x)) for x in
                 (tmp_path / "local" / "s" / r["trial"] / "metrics.jsonl").read_text().splitlines()]
        ray_lines = [_without_seconds(json.loads(x)) for x in
                     (tmp_path / "ray" / "s" / r["trial"] / "metrics.jsonl").read_text().splitlines()]
        assert lines == ray_lines and len(lines) == 2
        assert all(math.isfinite(x["val_loss"]) for x in lines)
