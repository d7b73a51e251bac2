"""Issue 17 (hardening), command-line side: the one error boundary (OSError and Ctrl-C
included), --version / -h / shell completion, tables that fit 80 columns, the words a new user
reads (date, best, plurals), and `bptrain trace` on long flat expressions, huge literals and
Unicode names.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")
ENV = {"NO_COLOR": "1", "BPTRAIN_DEBUG": None, "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def cli(*args: str, columns: int = 200):
    result = CliRunner().invoke(app, list(args), env={**ENV, "COLUMNS": str(columns)})
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    from bptrain.net.config import load_config
    from bptrain.training.trainer import train
    root = tmp_path_factory.mktemp("cli-hardening") / "runs"
    train(load_config(MLP, ["train.epochs=2", "model.hidden=[8]",
                            "name=a-fairly-long-run-name"]), runs_root=root)
    train(load_config(ROOT / "configs" / "regression.yaml", ["train.epochs=30"]),
          runs_root=root)
    return root


# ---- the error boundary --------------------------------------------------------------------------
def test_version_help_and_shell_completion():
    from bptrain import __version__
    v = cli("--version")
    assert v.exit_code == 0 and v.output.strip() == f"bptrain {__version__}"
    for args in (["-h"], ["run", "-h"], ["trace", "-h"]):
        h = cli(*args)
        assert h.exit_code == 0 and "Usage:" in h.output
    top = cli("--help").output
    assert "--install-completion" in top and "--show-completion" in top
    shown = cli("--show-completion", "bash")
    assert shown.exit_code == 0 and "complete" in shown.output


def test_a_file_system_error_is_one_paragraph_with_the_fix(tmp_path, monkeypatch):
    import errno

    import bptrain.training.trainer as trainer

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npz"))
    monkeypatch.setattr(trainer, "train", full)
    r = cli("run", MLP, "--quiet")
    assert r.exit_code == 2
    assert re.match(r"error: .*x\.npz: No space left on device; the disk is full", r.output)
    assert r.output.count("\n") <= 3


def test_ctrl_c_outside_training_exits_130_with_a_message(monkeypatch):
    import bptrain.training.trainer as trainer

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "train", interrupted)
    r = cli("run", MLP, "--quiet")
    assert r.exit_code == 130 and r.output.startswith("stopped: interrupted (Ctrl-C)")


# ---- tables at 80 columns ----------------------------------------------------------------------------
def _fits(text: str, width: int) -> None:
    lines = text.splitlines()
    assert lines and all(len(line.rstrip()) <= width for line in lines), \
        max(lines, key=len)


def test_runs_fits_80_columns_one_line_a_run_with_a_plain_date(runs_dir):
    r = cli("runs", "--dir", str(runs_dir), columns=80)
    assert r.exit_code == 0, r.output
    _fits(r.output, 80)
    rows = [line for line in r.output.splitlines() if line.startswith(("a-fairly", "regression"))]
    assert len(rows) == 2                                     # each run on exactly one line
    assert all(re.search(r"\b\d\d-\d\d \d\d:\d\d\b", row) for row in rows)
    assert "(m-d)" not in r.output and "date" in r.output
    assert re.search(r"\d+\.\d\d% val acc", rows[0]) and "train loss" in rows[1]
    wide = cli("runs", "--dir", str(runs_dir), columns=160).output
    assert "network" in wide and "config" in wide and "mlp.yaml" in wide


def test_show_and_gradcheck_fit_80_columns_without_doubled_rows():
    show = cli("show", MLP, columns=80)
    assert show.exit_code == 0
    _fits(show.output.split("copy:")[0], 80)
    nodes = [line.split()[0] for line in show.output.splitlines()
             if line and line.split()[0] in ("X", "W1", "b1", "fc1", "relu1", "loss")]
    assert nodes == ["X", "W1", "b1", "fc1", "relu1", "loss"]   # one line each
    wide = cli("show", MLP, columns=200).output
    assert "│" in wide and "MACs" in wide                    # unchanged when it fits
    grad = cli("gradcheck", MLP, "--samples", "5", columns=80)
    assert grad.exit_code == 0
    _fits(grad.output, 80)
    checks = [line for line in grad.output.splitlines() if re.match(r"^(W|b)\d", line)]
    assert len(checks) == 4 and all(line.rstrip().endswith("pass") for line in checks)


def test_the_summary_says_which_metric_picked_best(tmp_path):
    r = cli("run", MLP, "--set", "train.epochs=2", "--set", "model.hidden=[8]", "--out",
            str(tmp_path / "r"), columns=100)
    assert r.exit_code == 0, r.output
    assert "best (by val acc)" in r.output and "the highest val acc (best.npz)" in r.output


def test_sweep_messages_use_singular_and_plural(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sweep writes runs/s/ here
    (tmp_path / "s.yaml").write_text(f"name: s\nbase: {MLP}\naxes:\n  train.epochs: [1]\n"
                                     "  model.hidden: [[4]]\n")
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "s.yaml"), "--workers", "1"],
                           env={**ENV, "COLUMNS": "200"})
    out = r.output
    assert r.exit_code == 0, out
    assert "1 trial, 1 to run on 1 worker process;" in out
    assert re.search(r"for 1 trial on 1 worker; its training time", out)
    assert "1 trials" not in out and "1 workers" not in out


# ---- trace -------------------------------------------------------------------------------------------
def test_trace_of_20000_flat_terms_works_and_prints_a_readable_report():
    expr = " + ".join(["x"] * 20000)
    t = time.perf_counter()
    r = cli("trace", expr, "x=1.5", "--json")
    assert r.exit_code == 0, r.output[-500:]
    data = json.loads(r.output)
    assert data["gradients"] == {"x": 20000.0} and data["output"] == pytest.approx(30000.0)
    text = cli("trace", " * ".join(["y"] * 20000), "y=1.0001").output
    assert "more" in text and len(text.splitlines()) < 800
    assert time.perf_counter() - t < 30


@pytest.mark.parametrize("expr, words", [
    ("x + 1" + "0" * 400, "beyond what a float holds"),
    ("x ** 1" + "0" * 400, "constant exponent"),
    ("x * 1e400", "beyond what a float holds"),
    ("-" * 5000 + "x", "nests too deeply"),
    ("(" * 300 + "x" + ")" * 300, "syntax error"),
])
def test_trace_of_huge_literals_and_deep_nesting_fails_cleanly(expr, words):
    r = cli("trace", "--", expr, "x=2")   # "--": an expression may start with "-"
    assert r.exit_code == 2 and words in r.output, r.output
    assert r.output.count("\n") <= 4 and len(r.output) < 1000    # the place, not the whole


def test_trace_names_are_normalized_like_pythons_parser():
    r = cli("trace", "ﬁ * 2 + ｘ", "ﬁ=3", "ｘ=1", "--json")     # NFKC: fi and x
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["gradients"] == {"fi": 2.0, "x": 1.0}


def test_every_traced_gate_has_a_pattern():
    r = cli("trace", "sigmoid(x) * exp(y) + abs(x) - log(y) / tanh(x)", "x=0.5", "y=2",
            "--json")
    steps = json.loads(r.output)["backward"]
    assert all(s["pattern"] for s in steps), [s["gate"] for s in steps if not s["pattern"]]
    assert {s["gate"]: s["pattern"] for s in steps}["sigmoid"] == "squasher"
