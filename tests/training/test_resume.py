"""Issue 8, nothing lost: SIGINT/SIGTERM/SIGKILL part-way through a real run, then
`bptrain run --resume DIR` finishes it bit-identically to a run never interrupted.

One module fixture starts every run at once (two in fresh `python -m bptrain` interpreters,
the rest as forked children, see tests/processes.py), signals each one at a seeded random moment
after its first checkpoint appears, checks and resumes them; the tests assert on the results.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from bptrain.net.data import load_npz_safely
from processes import MLP, Child  # tests/processes.py

EPOCHS = 30                       # 23 steps an epoch on digits: about a second of training
SETTINGS = ["--set", f"train.epochs={EPOCHS}"]
RNG = random.Random(8)            # the moments of the signals, after the first checkpoint
SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
KILLS = [f"sigkill{i}" for i in range(3)]


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    out = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rec.pop("seconds")
        out.append(rec)
    return out


def assert_same_run(run: Path, ref: Path) -> None:
    """Final and best parameters bit for bit, every metrics record (but its seconds), and
    the summary's numbers."""
    for name in ("model.npz", "best.npz"):
        a, b = load_npz_safely(run / name), load_npz_safely(ref / name)
        assert sorted(a) == sorted(b), name
        for k in b:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (name, k)
            assert a[k].tobytes() == b[k].tobytes(), (name, k)
    got, want = metrics(run), metrics(ref)
    assert len(got) == len(want) == EPOCHS
    for a, b in zip(got, want):
        assert a == b, (a["epoch"], {k: (a.get(k), b.get(k)) for k in b if a.get(k) != b[k]})
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
    for key in ("steps", "epochs", "num_params"):
        assert sa[key] == sb[key], key
    for key in ("final", "best"):
        sa[key].pop("seconds"), sb[key].pop("seconds")
        assert sa[key] == sb[key], key
    assert not list(run.glob("*.tmp")), "a temporary file was left behind"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    started: dict[str, Child] = {}
    try:
        for name in SIGNALS:   # real interpreters, as a user would start them
            started[name] = Child(["run", str(MLP), *SETTINGS, "--out", str(base / name),
                                   "--quiet"], base, real=True)
        for name in ["reference", *KILLS]:
            started[name] = Child(["run", str(MLP), *SETTINGS, "--out", str(base / name),
                                   "--quiet"], base)
        sig = {**SIGNALS, **{k: signal.SIGKILL for k in KILLS}}
        # The moment: after the k-th evaluation is logged (and so the first checkpoint is
        # written), plus up to about an epoch: random, yet part-way on any machine's speed.
        after = {name: RNG.randint(1, EPOCHS // 3) for name in sig}
        delay = {name: RNG.uniform(0.0, 0.06) for name in sig}
        signal_at: dict[str, float | None] = {}
        deadline = time.monotonic() + 300
        while any(started[n].poll() is None for n in started):
            assert time.monotonic() < deadline, "the runs did not finish"
            now = time.monotonic()
            for name in sig:
                if name in signal_at or started[name].poll() is not None:
                    continue
                log = base / name / "metrics.jsonl"
                if (base / name / "checkpoint.npz").exists() and \
                        log.read_bytes().count(b"\n") >= after[name]:
                    signal_at[name] = now + delay[name]
            for name, at in list(signal_at.items()):
                if at is not None and now >= at:
                    started[name].send_signal(sig[name])
                    signal_at[name] = None  # sent
            time.sleep(0.003)
        first = {name: child.wait() for name, child in started.items()}

        stopped_at = {name: json.loads(str(load_npz_safely(base / name / "checkpoint.npz")
                                           ["meta"])) for name in SIGNALS}
        after_kill = {}
        for name in KILLS:   # what a SIGKILL left, before anything touches it
            run = base / name
            after_kill[name] = {
                "files": sorted(p.name for p in run.iterdir()),
                "checkpoint": load_npz_safely(run / "checkpoint.npz"),
                "metrics_text": (run / "metrics.jsonl").read_text(encoding="utf-8"),
            }
        evals = {name: Child(["eval", str(base / name), "--weights", "best"], base)
                 for name in KILLS}
        evals = {name: child.wait() for name, child in evals.items()}
        # A torn temporary file from a kill during a write must not matter.
        ckpt = (base / KILLS[0] / "checkpoint.npz").read_bytes()
        (base / KILLS[0] / "checkpoint.npz.tmp").write_bytes(ckpt[:len(ckpt) // 2])
        (base / KILLS[0] / "model.npz.tmp").write_bytes(b"PK\x03\x04 torn")

        resumed = {}
        for name in SIGNALS:   # the command the run printed, in a fresh interpreter
            m = re.search(r"Resume with: bptrain (run --resume \S+)", first[name].stderr)
            args = m.group(1).split() if m else ["run", "--resume", str(base / name)]
            resumed[name] = Child([*args, "--quiet"], base, real=True)
        for name in KILLS:
            resumed[name] = Child(["run", "--resume", str(base / name), "--quiet"], base)
        resumed = {name: child.wait() for name, child in resumed.items()}
    finally:
        for child in started.values():
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    return {"base": base, "first": first, "stopped_at": stopped_at, "after_kill": after_kill,
            "evals": evals, "resumed": resumed}


# ---- SIGINT and SIGTERM -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_signal_saves_a_checkpoint_and_prints_the_resume_command(runs, name):
    proc = runs["first"][name]
    run = runs["base"] / name
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert SIGNALS[name].name in out
    assert f"bptrain run --resume {run}" in out
    assert "saved a checkpoint" in out
    step = runs["stopped_at"][name]["step"]  # the checkpoint it left
    assert 0 < step < EPOCHS * 23, "the run was not stopped part-way"
    assert f"step {step} " in out


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_resume_after_a_signal_is_bit_identical(runs, name):
    proc = runs["resumed"][name]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_run(runs["base"] / name, runs["base"] / "reference")


# ---- SIGKILL ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KILLS)
def test_sigkill_leaves_a_run_directory_that_loads(runs, name):
    assert runs["first"][name].returncode == -signal.SIGKILL, "killed before it finished"
    state = runs["after_kill"][name]
    assert {"config.yaml", "checkpoint.npz", "best.npz", "metrics.jsonl"} <= set(state["files"])
    meta = json.loads(str(state["checkpoint"]["meta"]))
    assert 0 < meta["step"] < EPOCHS * 23
    # metrics.jsonl is flushed as written: every evaluation up to the checkpoint is there,
    # and every complete line parses.
    text = state["metrics_text"]
    records = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]
    assert [r["epoch"] for r in records if r["step"] <= meta["step"]] == \
        list(range(1, meta["epoch"] + 1))
    ev = runs["evals"][name]
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "best.npz" in ev.stdout and "accuracy" in ev.stdout


@pytest.mark.parametrize("name", KILLS)
def test_resume_after_sigkill_is_bit_identical(runs, name):
    proc = runs["resumed"][name]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_run(runs["base"] / name, runs["base"] / "reference")


def test_a_stray_tmp_file_does_not_break_resume(runs):
    # KILLS[0] got a torn checkpoint.npz.tmp and model.npz.tmp before its resume
    run = runs["base"] / KILLS[0]
    assert runs["resumed"][KILLS[0]].returncode == 0
    assert not (run / "checkpoint.npz.tmp").exists() and not (run / "model.npz.tmp").exists()


def test_reference_run_finished(runs):
    proc = runs["first"]["reference"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(metrics(runs["base"] / "reference")) == EPOCHS


# ---- in-process: an interrupt at every kind of step ---------------------------------------
class _SignalAt:
    """A reporter that sends SIGINT to this process after step `at`."""

    def __init__(self, at: int):
        self.at = at

    def start(self, info): pass
    def evaluation(self, record): pass
    def end(self, summary, history): pass
    def message(self, text): pass

    def step(self, step, epoch, loss):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory):
    from bptrain.net.config import load_config
    from bptrain.training.trainer import train
    cfg = load_config(MLP, ["train.epochs=3"])
    run = tmp_path_factory.mktemp("short") / "ref"
    train(cfg, out=run)
    return cfg, run


# 23 steps an epoch: 22 is mid-epoch, 23 an epoch's last step (whose diagnostics the
# evaluation reads), 24 the first of the next, 68 the last but one.
@pytest.mark.parametrize("at", [1, 22, 23, 24, 46, 68])
def test_interrupt_at_any_step_resumes_bit_identically(short_reference, tmp_path, at):
    from bptrain.training.trainer import Interrupted, train
    cfg, ref = short_reference
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        train(cfg, out=run, reporter=_SignalAt(at))
    assert info.value.exit_code == 130
    assert f"bptrain run --resume {run}" in str(info.value)
    train(None, resume=run)
    for name in ("model.npz", "best.npz"):
        a, b = load_npz_safely(run / name), load_npz_safely(ref / name)
        assert all(a[k].tobytes() == b[k].tobytes() for k in b) and sorted(a) == sorted(b)
    assert metrics(run) == metrics(ref)


def test_resume_of_a_finished_run_changes_nothing(short_reference, tmp_path):
    from bptrain.training.trainer import train
    _, ref = short_reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    train(None, resume=run)
    assert metrics(run) == metrics(ref)
    a, b = load_npz_safely(run / "model.npz"), load_npz_safely(ref / "model.npz")
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)


def test_resume_refuses_a_foreign_checkpoint_with_a_clear_error(short_reference, tmp_path):
    from bptrain.errors import BptrainError
    from bptrain.training.trainer import train
    _, ref = short_reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.npz"}
    for arrays in ({"foo": np.zeros(3)},
                   {**load_npz_safely(ref / "checkpoint.npz"), "meta": np.array("[1, 2]")},
                   {**load_npz_safely(ref / "checkpoint.npz"), "param/W1": np.zeros((64, 7))}):
        np.savez(run / "checkpoint.npz", **arrays)
        with pytest.raises(BptrainError, match="cannot be resumed") as info:
            train(None, resume=run)
        assert info.value.exit_code == 2
    (run / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(BptrainError, match="checkpoint.npz"):
        train(None, resume=run)
    # nothing else in the run directory was touched by the refused resumes
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.npz"} \
        == before
