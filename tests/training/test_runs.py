"""bptrain compare and bptrain runs, on real small runs."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app
from bptrain.net.config import load_config
from bptrain.training.runs import differing_settings, flatten, list_runs, read_run, run_labels
from bptrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")
BRAILLE = re.compile("[\u2801-\u28ff]")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = train(load_config(MLP, ["train.epochs=3", "model.hidden=[32]"]), runs_root=root)
    b = train(load_config(MLP, ["train.epochs=2", "model.hidden=[16]", "optimizer.lr=0.05",
                                "loss.type=svm"]), runs_root=root)
    return root, a, b


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("BPTRAIN_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    return CliRunner()


def test_flatten_and_differing_settings(two_runs):
    root, a, b = two_runs
    assert flatten({"model": {"hidden": [32], "layers": [{"type": "affine", "units": 4}]},
                    "seed": 0}) == {"model.hidden": [32], "model.layers[0].type": "affine",
                                    "model.layers[0].units": 4, "seed": 0}
    runs = [read_run(a.run_dir), read_run(b.run_dir)]
    diff = dict(differing_settings(runs))
    assert diff == {"model.hidden": [[32], [16]], "loss.type": ["softmax", "svm"],
                    "optimizer.lr": [0.1, 0.05], "train.epochs": [3, 2]}
    assert run_labels([a.run_dir, b.run_dir]) == ["mlp", "mlp-2"]


def test_metrics_come_from_the_run_files(two_runs):
    _, a, _ = two_runs
    m = read_run(a.run_dir).metrics()
    best = max(r["val_acc"] for r in a.history)
    assert m["best_val_acc"] == best == a.summary["best"]["val_acc"]
    assert m["final_val_loss"] == a.history[-1]["val_loss"]
    assert m["epochs"] == 3 and m["steps"] == a.summary["steps"]
    assert m["best_loss_kind"] == "val"


def test_compare_shows_differences_metrics_and_one_chart(two_runs, runner):
    _, a, b = two_runs
    out = runner.invoke(app, ["compare", str(a.run_dir), str(b.run_dir)])
    assert out.exit_code == 0, out.output
    text = out.output
    settings = text[text.index("settings that differ"):text.index("metrics")]
    for key in ("model.hidden", "loss.type", "optimizer.lr", "train.epochs"):
        assert key in settings
    assert "model.activation" not in settings and "seed" not in settings   # equal: hidden
    assert re.search(r"optimizer\.lr\s+.*0\.1\s+.*0\.05", settings)
    # final and best metrics, in percent, for both runs
    acc_a = f"{100 * a.history[-1]['val_acc']:.2f}%"
    acc_b = f"{100 * b.history[-1]['val_acc']:.2f}%"
    assert re.search(rf"final val acc\s+.*{re.escape(acc_a)}\s+.*{re.escape(acc_b)}", text)
    # "best" is one evaluation, picked by val_acc; its val loss is "at best" (issue 17)
    assert "best val acc" in text and "val loss at best" in text
    # one loss chart, one series per run (val loss), braille dots drawn; not a terminal, so
    # each series has its own marker in the legend
    assert text.count("val loss per run") == 1
    assert "─*─ mlp (val)" in text and "─o─ mlp-2 (val)" in text
    assert len(BRAILLE.findall(text)) > 20


def test_compare_marks_unfinished_runs(two_runs, runner, tmp_path):
    import shutil
    _, a, b = two_runs
    cut = tmp_path / "cut"
    shutil.copytree(b.run_dir, cut)
    (cut / "summary.json").unlink()
    out = runner.invoke(app, ["compare", str(a.run_dir), str(cut)])
    assert out.exit_code == 0, out.output
    assert re.search(r"status\s+.*finished\s+.*unfinished", out.output)


def test_compare_needs_two_real_runs(two_runs, runner, tmp_path):
    _, a, _ = two_runs
    one = runner.invoke(app, ["compare", str(a.run_dir)])
    assert one.exit_code == 2 and "two or more" in one.output
    missing = runner.invoke(app, ["compare", str(a.run_dir), str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_runs_lists_name_date_config_and_best_accuracy(two_runs, runner, tmp_path):
    root, a, b = two_runs
    out = runner.invoke(app, ["runs", "--dir", str(root)])
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines()
             if line.split() and line.split()[0] in ("mlp", "mlp-2")}
    assert set(lines) == {"mlp", "mlp-2"}
    for name, result in (("mlp", a), ("mlp-2", b)):
        best = f"{100 * result.summary['best']['val_acc']:.2f}%"
        assert best in lines[name] and "mlp.yaml" in lines[name]
        assert re.search(r"\d\d-\d\d \d\d:\d\d", lines[name])         # the date
    assert "32 relu softmax sgd 0.1" in lines["mlp"]
    assert "16 relu svm sgd 0.05" in lines["mlp-2"]
    # JSON, and an unfinished run (no summary.json yet)
    (b.run_dir / "summary.json").rename(b.run_dir / "summary.bak")
    try:
        data = json.loads(runner.invoke(app, ["runs", "--dir", str(root), "--json"]).output)
        state = {r["run"]: r["finished"] for r in data}
        assert state == {"mlp": True, "mlp-2": False}
        table = runner.invoke(app, ["runs", "--dir", str(root)]).output
        assert "2/2 unfinished" in table
    finally:
        (b.run_dir / "summary.bak").rename(b.run_dir / "summary.json")
    empty = runner.invoke(app, ["runs", "--dir", str(tmp_path)])
    assert empty.exit_code == 0 and "no runs yet" in empty.output
    gone = runner.invoke(app, ["runs", "--dir", str(tmp_path / "nope")])
    assert gone.exit_code == 2 and "no such directory" in gone.output


def test_runs_finds_sweep_trials_and_skips_broken_dirs(two_runs, tmp_path):
    import shutil
    root, a, _ = two_runs
    nested = tmp_path / "r"
    shutil.copytree(a.run_dir, nested / "sweep1" / "trial-001")
    (nested / "broken").mkdir(parents=True)
    (nested / "broken" / "config.yaml").write_text("model: [unclosed\n")
    found = list_runs(nested)
    # issue 17: a damaged run is listed and marked, never hiding (or hidden among) the others
    healthy = [r.name for r in found if r.problem is None]
    assert healthy == [os.path.join("sweep1", "trial-001")]
    assert [r.name for r in found if r.problem] == ["broken"]


def test_eval_hint_matches_what_the_run_saved(tmp_path):
    from pathlib import Path
    from bptrain.errors import DataError
    from bptrain.training.runs import _load_run_parts as load_run
    from bptrain.training.trainer import train
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mlp.yaml",
                      ["train.epochs=1"])
    run = train(cfg, out=tmp_path / "r").run_dir
    (run / "model.npz").unlink()  # as if stopped before the end: best.npz exists
    with pytest.raises(DataError, match="--weights best"):
        load_run(run)
    (run / "best.npz").unlink()   # as if diverged before the first evaluation
    with pytest.raises(DataError, match="saved no weights") as e:
        load_run(run)
    assert "--weights best" not in str(e.value)
