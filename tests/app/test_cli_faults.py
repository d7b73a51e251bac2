"""Bad input through the command line: config and data errors, divergence, atomic writes, nothing executed.

Every case runs the command line (`bptrain ...`) as a separate process with its own working
directory, exit status, stdout and stderr: forked children for the whole matrix, and a fresh
`python -m bptrain` interpreter for a subset that must agree with them (see `Child`). One
module fixture runs them all, several at a time; each test then asserts on one case.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bptrain.net.config import activations, losses
ACTIVATIONS, LOSSES = activations(), losses()
from bptrain.net.data import load_npz_safely
from bptrain.errors import DataError

import bptrain.app.cli
from processes import ENV, MLP, Child, run_all  # tests/processes.py

ROOT = Path(__file__).resolve().parents[2]

# ---- the cases ----------------------------------------------------------------------------
# id: (files to write into the case's folder, arguments after `bptrain`, strings the message
# must contain: the key path or file position first).
CONFIG_CASES = {
    "yaml_syntax": ({"bad.yaml": "name: x\ntrain:\n  epochs: 3\n   batch_size: 8\n"},
                    ["run", "bad.yaml"], ["bad.yaml:4:14", "YAML"]),
    "unknown_key": ({"c.yaml": "name: x\ntrain: {epochs: 2, batchsize: 8}\n"},
                    ["run", "c.yaml"], ["train.batchsize", "Did you mean 'batch_size'"]),
    "negative_lr": ({"c.yaml": "name: x\noptimizer: {type: sgd, lr: -0.1}\n"},
                    ["run", "c.yaml"], ["optimizer.lr", "greater than 0", "-0.1"]),
    "batch_size_0": ({}, ["run", str(MLP), "--set", "train.batch_size=0"],
                     ["train.batch_size", "greater than 0"]),
    "unknown_loss": ({}, ["run", str(MLP), "--set", "loss.type=softmx"],
                     ["loss.type", "'softmx'", ", ".join(LOSSES), "Did you mean 'softmax'"]),
    "unknown_activation": ({"c.yaml": "name: x\nmodel: {hidden: [16], activation: sigmod}\n"},
                           ["run", "c.yaml"],
                           ["model.activation", ", ".join(ACTIVATIONS), "Did you mean 'sigmoid'"]),
    "output_units": ({"c.yaml": "name: x\nmodel:\n  layers:\n    - {type: affine, units: 32}\n"
                                "    - {type: relu}\n    - {type: affine, units: 7}\n"},
                     ["run", "c.yaml"], ["model.layers[2].units", "7 units", "10 classes"]),
    "mse_on_labels": ({}, ["run", str(MLP), "--set", "loss.type=mse"],
                      ["loss.type", "data.encoding=onehot"]),
    "missing_config": ({}, ["run", "nope.yaml"], ["nope.yaml", "not found"]),
    "missing_data": ({"c.yaml": "name: x\ndata: {source: npz, path: nothere.npz}\n"},
                     ["run", "c.yaml"], ["nothere.npz", "data.path", "no such file"]),
    "set_unknown_key": ({}, ["run", str(MLP), "--set", "optimizer.momentun=0.5"],
                        ["optimizer.momentun", "Did you mean 'momentum'"]),
    "set_bad_value": ({}, ["run", str(MLP), "--set", "train.epochs=ten"],
                      ["train.epochs", "expected an integer", "'ten'"]),
}

NPZ_CONFIG = "name: d\ndata: {source: npz, path: data.npz}\ntrain: {epochs: 2}\n"


def _data_arrays(kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    if kind == "nan":
        X[3, 1] = np.nan
    elif kind == "inf":
        X[5, 2] = -np.inf
    elif kind == "negative_label":
        y[4] = -1
    elif kind == "label_too_big":
        y[2] = 9
    elif kind == "fractional_label":
        y = y.astype(float)
        y[7] = 0.5
    elif kind == "empty":
        X, y = X[:0], y[:0]
    elif kind == "length_mismatch":
        y = y[:50]
    elif kind == "object_array":
        X = np.array([[1.0, "a", None]] * 60, dtype=object)
    return {"X": X, "y": y}


# id: (extra arguments, strings the message must contain)
DATA_CASES = {
    "nan": ([], ["data.npz", "X has 1 NaN", "row 3, column 1"]),
    "inf": ([], ["data.npz", "X has 1 infinite", "row 5, column 2"]),
    "negative_label": ([], ["data.npz", "negative class label -1", "row 4"]),
    "label_too_big": (["--set", "data.n_classes=3"], ["data.npz", "class label 9",
                                                       "data.n_classes is 3"]),
    "fractional_label": ([], ["data.npz", "non-integer", "row 7"]),
    "empty": ([], ["data.npz", "empty"]),
    "length_mismatch": ([], ["data.npz", "X has 60 samples but y has 50"]),
    "object_array": ([], ["data.npz", "object array", "does not unpickle"]),
}

PWNED_YAML = 'name: x\nseed: !!python/object/apply:os.system ["touch PWNED"]\n'




def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _short_mlp():
    from bptrain.net.config import load_config
    return load_config(MLP, ["train.epochs=1"])


def _object_model(path: Path) -> None:
    path.unlink()
    np.savez(path, W1=np.array([{"a": 1}, None], dtype=object))


def _truncated_model(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _foreign_names(path: Path) -> None:
    np.savez(path, weights=np.zeros((3, 3)), bias=np.zeros(3))


def _foreign_shapes(path: Path) -> None:
    arrays = dict(load_npz_safely(path))
    arrays["W1"] = np.zeros((64, 7))
    np.savez(path, **arrays)


EVAL_CASES = {"eval_object": _object_model, "eval_truncated": _truncated_model,
              "eval_foreign_names": _foreign_names, "eval_foreign_shapes": _foreign_shapes}

# Also run in a fresh `python -m bptrain` interpreter.
REAL = ["yaml_syntax-debug", "set_bad_value", "data-nan", "diverge", "pwned_yaml",
        "eval_truncated"]
# --debug takes the same path for every error (the CLI re-raises it), and rendering a rich
# traceback costs a fifth of a second, so it is checked on one case of each kind.
DEBUG_CASES = ["yaml_syntax", "unknown_key", "set_bad_value", "missing_config", "missing_data"]


def _prepare(base: Path, only: list[str] | None, run: Path) -> dict[str, tuple[list[str], Path]]:
    """Write each case's folder under `base`; {id: (arguments, folder)}."""
    jobs: dict[str, tuple[list[str], Path]] = {}

    def add(cid: str, args: list[str], files: dict[str, str]) -> Path | None:
        if only is not None and cid not in only:
            return None
        jobs[cid] = (args, _write(base / cid, files))
        return base / cid

    for cid, (files, args, _) in CONFIG_CASES.items():
        add(cid, args, files)
        if cid in DEBUG_CASES:
            add(f"{cid}-debug", ["--debug", *args], files)
    for cid, (extra, _) in DATA_CASES.items():
        folder = add(f"data-{cid}", ["run", "d.yaml", "--out", "out", *extra],
                     {"d.yaml": NPZ_CONFIG})
        if folder:
            np.savez(folder / "data.npz", **_data_arrays(cid))
    # Divergence: a learning rate of 1e4 on the main config.
    add("diverge", ["run", str(MLP), "--set", "optimizer.lr=1e4", "--out", "dv", "--quiet"], {})
    # Nothing runs that the user did not write.
    add("pwned_yaml", ["run", "p.yaml"], {"p.yaml": PWNED_YAML})
    add("pwned_set", ["run", str(MLP), "--set",
                      "name=!!python/object/apply:os.system ['touch PWNED']"], {})
    add("pwned_trace", ["trace", "__import__('os').system('touch PWNED')"], {})
    add("pwned_trace_attr", ["trace", "x.__class__.__bases__[0]", "x=1"], {})
    # `bptrain eval` on copies of a finished run whose model.npz was replaced.
    for cid, make in EVAL_CASES.items():
        folder = add(cid, ["eval", "run"], {})
        if folder:
            shutil.copytree(run, folder / "run")
            make(folder / "run" / "model.npz")
    return jobs


def _warm_up(base: Path) -> None:
    """Do once here what every child would otherwise do for itself: the first call of each
    command builds typer's parser and imports what the commands import lazily."""
    from typer.testing import CliRunner
    runner = CliRunner()
    for args in (["run", str(base / "none.yaml")], ["trace", "x +"],
                 ["eval", str(base / "none")]):
        runner.invoke(bptrain.app.cli.app, args)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Every case's result: {id: (CompletedProcess, its folder)}; REAL ones also as
    {"real:" + id: ...}."""
    from bptrain.training.trainer import train
    base = tmp_path_factory.mktemp("faults")
    run = base / "finished-run"
    train(_short_mlp(), out=run)  # one short real run, for the eval cases
    _warm_up(base)
    real_jobs = _prepare(base / "real", REAL, run)
    real = {cid: Child(args, cwd, real=True) for cid, (args, cwd) in real_jobs.items()}
    jobs = _prepare(base / "fork", None, run)
    results = {cid: (proc, jobs[cid][1]) for cid, proc in run_all(jobs).items()}
    for cid, child in real.items():
        results["real:" + cid] = (child.wait(), real_jobs[cid][1])
    return results


def message(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())  # one line, whitespace collapsed


def assert_clean_error(proc: subprocess.CompletedProcess, expected: list[str],
                       code: int = 2) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    assert out.count("\n") <= 3, out  # a short paragraph, not a dump
    for text in expected:
        assert text in message(proc), (text, out)


# ---- 1. config errors ---------------------------------------------------------------------
@pytest.mark.parametrize("cid", sorted(CONFIG_CASES))
def test_config_error_is_one_paragraph_with_exit_2(cases, cid):
    proc, folder = cases[cid]
    assert_clean_error(proc, CONFIG_CASES[cid][2])
    assert proc.stderr.startswith("error: "), proc.stderr
    assert not (folder / "runs").exists()  # nothing was created


@pytest.mark.parametrize("cid", DEBUG_CASES)
def test_debug_shows_the_traceback(cases, cid):
    proc, folder = cases[f"{cid}-debug"]
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert re.search(r"bptrain\.errors\.(Config|Data)Error|(Config|Data)Error:", proc.stderr)
    assert not (folder / "runs").exists()


# ---- 2. data errors -----------------------------------------------------------------------
@pytest.mark.parametrize("cid", sorted(DATA_CASES))
def test_data_error_before_training(cases, cid):
    proc, folder = cases[f"data-{cid}"]
    assert_clean_error(proc, DATA_CASES[cid][1])
    assert not (folder / "out").exists(), "a run directory was created for bad data"
    assert not (folder / "runs").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["d.yaml", "data.npz"]


# ---- 3. divergence ------------------------------------------------------------------------
def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(cases):
    proc, folder = cases["diverge"]
    assert_clean_error(proc, ["diverged", "last finite loss", "learning rate 10000",
                              "smaller learning rate", "grad_clip"], code=3)
    m = re.search(r"loss became (nan|inf|-inf) at epoch (\d+), step (\d+) \(last finite loss "
                  r"([-+0-9.e]+|None), learning rate", message(proc))
    assert m, message(proc)
    epoch, step = int(m.group(2)), int(m.group(3))
    assert epoch >= 1 and step >= 1
    run = folder / "dv"
    ckpt = load_npz_safely(run / "checkpoint.npz")
    meta = json.loads(str(ckpt["meta"]))
    assert meta["step"] < step  # taken before the loss went non-finite
    assert meta["epoch"] <= epoch
    for key, value in ckpt.items():
        if key.startswith("param/"):
            assert np.isfinite(value).all(), key
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines, "no evaluation was logged"
    records = [json.loads(line) for line in lines]  # every line parses
    assert all(r["step"] <= meta["step"] for r in records)
    assert not (run / "model.npz").exists()  # a diverged run is not passed off as finished


# ---- 6. atomic writes ---------------------------------------------------------------------
def test_failed_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from bptrain.training import trainer as train_module
    from bptrain.training.trainer import Trainer

    cfg = _short_mlp()
    trainer = Trainer(cfg, tmp_path)
    trainer.save_checkpoint()
    path = tmp_path / "checkpoint.npz"
    before = path.read_bytes()
    real_savez = np.savez

    def savez_then_crash(file, **arrays):
        real_savez(file, **arrays)       # most of the bytes are out...
        file.truncate(file.tell() // 2)  # ...a torn file...
        raise OSError(28, "No space left on device")  # ...and the writer dies

    # Change the state, so a successful write would differ.
    trainer.step, trainer.epoch = 99, 4
    monkeypatch.setattr(train_module.np, "savez", savez_then_crash)
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    assert path.read_bytes() == before
    meta = json.loads(str(load_npz_safely(path)["meta"]))
    assert meta["step"] == 0 and meta["epoch"] == 0
    # A torn temporary file, if left, is itself a clear DataError, never the checkpoint.
    tmp = tmp_path / "checkpoint.npz.tmp"
    if tmp.exists():
        with pytest.raises(DataError):
            load_npz_safely(tmp)

    monkeypatch.setattr(train_module.np, "savez", real_savez)
    trainer.save_checkpoint()  # and the next write goes through
    assert json.loads(str(load_npz_safely(path)["meta"]))["step"] == 99


def test_failed_json_write_leaves_the_previous_summary_whole(tmp_path, monkeypatch):
    from bptrain.training.rundir import atomic_write_bytes, save_json

    path = tmp_path / "summary.json"
    save_json(path, {"steps": 1})
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def writer(f):
        f.write(b'{"steps": 2, "tor')
        raise Boom

    with pytest.raises(Boom):
        atomic_write_bytes(path, writer)
    assert path.read_bytes() == before
    assert json.loads(path.read_text()) == {"steps": 1}


# ---- 8. nothing runs that the user did not write ------------------------------------------
@pytest.mark.parametrize("cid", ["pwned_yaml", "pwned_set"])
def test_python_yaml_tag_is_a_config_error_never_executed(cases, cid):
    proc, folder = cases[cid]
    assert_clean_error(proc, ["never run", "python/object/apply:os.system"])
    assert not (folder / "PWNED").exists()
    assert not (ROOT / "PWNED").exists()


@pytest.mark.parametrize("cid", ["pwned_trace", "pwned_trace_attr"])
def test_trace_parses_expressions_never_evaluates_them(cases, cid):
    proc, folder = cases[cid]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert not (folder / "PWNED").exists()
    assert not (ROOT / "PWNED").exists()


def test_object_array_in_data_is_a_data_error(tmp_path):
    # (the CLI case is data-object_array above); in-process, the loader refuses too
    np.savez(tmp_path / "o.npz", **_data_arrays("object_array"))
    with pytest.raises(DataError, match="object array"):
        load_npz_safely(tmp_path / "o.npz")


@pytest.mark.parametrize("cid, expected", [
    ("eval_object", ["model.npz", "object array", "does not unpickle"]),
    ("eval_truncated", ["model.npz", "truncated"]),
    ("eval_foreign_names", ["model.npz", "has no array 'W1'", "W1, b1, W2, b2"]),
    ("eval_foreign_shapes", ["model.npz", "W1 has shape (64, 7)", "(64, 100)"]),
])
def test_eval_on_a_bad_model_file_is_a_clear_error(cases, cid, expected):
    proc, folder = cases[cid]
    assert_clean_error(proc, expected)


# ---- the fresh interpreter agrees with the forked children ---------------------------------
@pytest.mark.parametrize("cid", REAL)
def test_python_dash_m_bptrain_gives_the_same_result(cases, cid):
    real, folder = cases["real:" + cid]
    forked, _ = cases[cid]
    assert real.returncode == forked.returncode, (real, forked)
    if cid.endswith("-debug"):
        assert "Traceback (most recent call last)" in real.stderr
        assert real.stderr.splitlines()[-1] == forked.stderr.splitlines()[-1]
    else:
        assert "Traceback" not in real.stdout + real.stderr
        assert real.stderr == forked.stderr
    assert not (folder / "PWNED").exists()
