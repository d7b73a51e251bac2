"""The command line: help, --print-config, one-paragraph errors with exit code 2, run, eval."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bptrain.app.cli import app
from bptrain.net.config import load_config
from bptrain.training.runs import evaluate_run

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")
QUICK = ["--set", "train.epochs=2", "--set", "model.hidden=[32]"]


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("BPTRAIN_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "100")
    return CliRunner()


def assert_one_paragraph_error(result, code=2):
    assert result.exit_code == code, result.output
    text = result.output
    assert "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert text.startswith("error: ")
    assert "\n\n" not in text.strip()                      # one paragraph (wrapped or not)
    return " ".join(text.split())                         # unwrapped, for matching


def test_help_lists_run_and_eval(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = re.findall(r"^\s{2}(\w+)\s", result.output.split("Commands:")[1], re.M)
    assert {"run", "eval"} <= set(commands)


def test_print_config_applies_overrides(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", MLP, "--print-config", "--set", "optimizer.lr=0.05",
                                 "--set", "model.hidden=[64, 32]"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.05" in result.output
    raw = yaml.safe_load(result.output)
    assert raw["optimizer"]["lr"] == 0.05 and raw["model"]["hidden"] == [64, 32]
    # what is printed is a loadable, fully resolved config
    (tmp_path / "printed.yaml").write_text(result.output)
    printed = load_config(tmp_path / "printed.yaml")
    assert printed.to_dict() == load_config(MLP, ["optimizer.lr=0.05",
                                                  "model.hidden=[64, 32]"]).to_dict()
    assert not (tmp_path / "runs").exists()                # nothing was trained


def test_bad_config_key_is_a_one_paragraph_error(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", MLP, "--set", "optimizer.lrr=0.1"])
    message = assert_one_paragraph_error(result)
    assert "optimizer.lrr: unknown key. Did you mean 'lr'?" in message
    assert not (tmp_path / "runs").exists()


def test_bad_yaml_file_reports_its_position(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  hidden: [100\n  activation: relu\n")
    message = assert_one_paragraph_error(runner.invoke(app, ["run", str(bad)]))
    assert re.search(re.escape(str(bad)) + r":\d+:\d+:", message)


def test_missing_config_file_exits_2(runner, tmp_path):
    missing = tmp_path / "nope.yaml"
    message = assert_one_paragraph_error(runner.invoke(app, ["run", str(missing)]))
    assert "nope.yaml" in message and "not found" in message


def test_run_without_config_exits_2(runner):
    assert_one_paragraph_error(runner.invoke(app, ["run"]))


def test_run_quiet_writes_the_run_and_eval_reports_it(runner, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", MLP, "--quiet", "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ""                    # --quiet: only errors
    for name in ("config.yaml", "metrics.jsonl", "model.npz", "checkpoint.npz", "best.npz",
                 "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 * 23
    assert load_config(out / "config.yaml").model.hidden == [32]

    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    ev = evaluate_run(out)
    assert f"accuracy {100 * ev.accuracy:.2f}%" in text
    assert ev.accuracy == summary["final"]["val_acc"]
    assert "360 samples" in text
    assert "confusion matrix" in text
    # the table's rows: true class, then ten counts that sum to that class's row of the matrix
    rows = [list(map(int, re.findall(r"\d+", line)))
            for line in text.split("per class")[0].splitlines() if re.match(r"^\s*\d\s*│", line)]
    assert len(rows) == 10
    np.testing.assert_array_equal(np.array([r[1:] for r in rows]), ev.confusion)
    assert sum(sum(r[1:]) for r in rows) == 360

    best = runner.invoke(app, ["eval", str(out), "--weights", "best"])
    assert best.exit_code == 0
    assert f"accuracy {100 * summary['best']['val_acc']:.2f}%" in best.output
    bad = runner.invoke(app, ["eval", str(out), "--weights", "last"])
    assert bad.exit_code == 2 and "'model', 'final', 'best'" in bad.output  # typer's choices


def test_eval_on_a_directory_that_is_not_a_run(runner, tmp_path):
    message = assert_one_paragraph_error(runner.invoke(app, ["eval", str(tmp_path)]))
    assert "not a run directory" in message


def test_resume_rejects_config_and_set(runner, tmp_path):
    message = assert_one_paragraph_error(
        runner.invoke(app, ["run", MLP, "--resume", str(tmp_path)]))
    assert "--resume" in message


def test_debug_shows_the_exception(runner, tmp_path):
    result = runner.invoke(app, ["--debug", "run", str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    from bptrain.errors import ConfigError
    assert isinstance(result.exception, ConfigError)


# ---- as a real process ----------------------------------------------------------------------

def _bptrain(*args, cwd):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="100")
    env.pop("BPTRAIN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "bptrain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_m_bptrain_help(tmp_path):
    proc = _bptrain("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "run" in proc.stdout and "eval" in proc.stdout


def test_python_m_bptrain_bad_key_exit_code_and_stderr(tmp_path):
    proc = _bptrain("run", MLP, "--set", "train.epoch=3", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert message.startswith("error: train.epoch: unknown key. Did you mean 'epochs'?")
    assert not (tmp_path / "runs").exists()
