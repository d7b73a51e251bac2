"""Issue 17 (hardening), training side: run folders and the file system, damaged or stale
runs, sweeps that explode, and the rough edges of the trainer (best, divergence, Ctrl-C,
update-ratio warnings). One short real run is trained per module; the damaged copies are
made from it.
"""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from bptrain.errors import BptrainError, ConfigError, DataError, DivergenceError
from bptrain.net.config import load_config
from bptrain.net.data import load_npz_safely
from bptrain.training import rundir
from bptrain.training.rundir import RunDir, StorageError, atomic_write_bytes
from bptrain.training.runs import evaluate_run, list_runs, read_run
from bptrain.training.trainer import Interrupted, Trainer, train

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
SMALL = ["train.epochs=2", "model.hidden=[8]"]


def small(*extra: str):
    return load_config(MLP, [*SMALL, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-epoch run, never modified (copies are)."""
    base = tmp_path_factory.mktemp("hardening")
    return train(small(), out=base / "good").run_dir


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---- 3. run folders and the file system ---------------------------------------------------------
def test_a_name_too_long_for_the_file_system_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="too long for the file system"):
        RunDir.create(tmp_path / ("n" * 300))


@pytest.mark.parametrize("kind", ["dangling symlink", "regular file"])
def test_something_in_the_way_of_the_runs_folder(tmp_path, kind):
    root = tmp_path / "runs"
    if kind == "dangling symlink":
        root.symlink_to(tmp_path / "nowhere")
    else:
        root.write_text("not a folder")
    with pytest.raises(StorageError, match="is in the way"):
        RunDir.create(root / "mlp")


@pytest.mark.parametrize("kind", ["dangling symlink", "regular file"])
def test_something_in_the_way_of_the_run_folder_is_never_touched(tmp_path, kind):
    root = tmp_path / "runs"
    root.mkdir()
    if kind == "dangling symlink":
        (root / "mlp").symlink_to(tmp_path / "nowhere")
    else:
        (root / "mlp").write_text("mine")
    d = RunDir.create(root / "mlp")
    assert d.path == root / "mlp-2"
    assert (root / "mlp").is_symlink() or (root / "mlp").read_text() == "mine"


def test_out_dot_is_refused_unless_the_folder_is_empty(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path), "/"):
        with pytest.raises(StorageError, match="the folder you are in"):
            RunDir.create(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert RunDir.create(".").path == empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine.txt"]


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only"),
                                         (errno.EACCES, "you may not write there"),
                                         (errno.ENOSPC, "the disk is full")])
def test_a_read_only_or_full_disk_when_making_the_folder(tmp_path, monkeypatch, code, words):
    real = Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "run":
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(StorageError, match=words):
        RunDir.create(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_leaves_no_tmp_and_the_last_good_file_whole(tmp_path):
    path = tmp_path / "summary.json"
    rundir.save_json(path, {"steps": 1})
    before = path.read_bytes()

    def full(f):
        f.write(b'{"steps": 2, "half')
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):
        atomic_write_bytes(path, full)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no .tmp


def test_a_run_whose_config_cannot_be_written_leaves_no_folder(tmp_path, monkeypatch):
    def full(path, writer):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(rundir, "atomic_write_bytes", full)
    with pytest.raises(OSError):
        train(small(), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _claim(args):
    root, barrier = args
    barrier.wait()
    return str(RunDir.create(Path(root) / "same").path)


@pytest.mark.parametrize("pre_existing", [False, True], ids=["new", "empty folder"])
def test_runs_started_at_the_same_moment_get_one_folder_each(tmp_path, pre_existing):
    if pre_existing:
        (tmp_path / "same").mkdir()  # an empty folder both may find: claimed by one only
    ctx = mp.get_context("fork")
    n = 6
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            got = pool.map(_claim, [(str(tmp_path), barrier)] * n)
    assert len(set(got)) == n
    assert {Path(g).name for g in got} == {"same"} | {f"same-{i}" for i in range(2, n + 1)}
    assert all((Path(g) / rundir.CLAIM).is_file() for g in got)


def test_the_claim_is_released_once_config_yaml_is_written(finished):
    assert not (finished / rundir.CLAIM).exists()
    assert (finished / "config.yaml").is_file()


# ---- 4. damaged and stale runs ---------------------------------------------------------------------
def _set_meta(run: Path, **changes) -> None:
    arrays = load_npz_safely(run / "checkpoint.npz")
    meta = json.loads(str(arrays["meta"]))
    meta.update(changes)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(run / "checkpoint.npz", **arrays)


@pytest.mark.parametrize("changes, words", [
    ({"step": "12"}, "meta 'step'"),
    ({"step": 10**6}, "meta 'step'"),
    ({"epoch": -1}, "meta 'epoch'"),
    ({"batch_index": 9999}, "meta 'batch_index'"),
    ({"epoch": 1, "batch_index": 0, "step": 7}, "not where epoch 1"),
    ({"elapsed": "soon"}, "meta 'elapsed'"),
    ({"best": [1, 2]}, "meta 'best'"),
    ({"gate_rngs": {"a": 1}}, "meta 'gate_rngs'"),
])
def test_checkpoint_meta_of_wrong_types_or_out_of_range_is_refused(finished, tmp_path,
                                                                    changes, words):
    run = copy_run(finished, tmp_path / "run")
    _set_meta(run, **changes)
    before = tree(run)
    with pytest.raises(DataError) as info:
        train(None, resume=run)
    assert words in str(info.value) and "cannot be resumed" in str(info.value)
    assert tree(run) == before  # nothing touched


@pytest.mark.parametrize("make", [
    lambda a: a.update({"param/W1": a["param/W1"].astype(np.complex128)}),
    lambda a: a.update({"param/W1": np.full(a["param/W1"].shape, "x")}),
    lambda a: a.update({"optim/v/W1": np.full(a["optim/v/W1"].shape, np.nan)}),
    lambda a: a.update({"perm": np.arange(5)}),
    lambda a: a.update({"meta": np.array(3.5)}),
], ids=["complex weights", "string weights", "nan optimizer state", "short perm", "meta float"])
def test_checkpoint_arrays_of_the_right_shape_but_wrong_kind_are_refused(finished, tmp_path,
                                                                        make):
    run = copy_run(finished, tmp_path / "run")
    arrays = load_npz_safely(run / "checkpoint.npz")
    make(arrays)
    np.savez(run / "checkpoint.npz", **arrays)
    with pytest.raises(DataError, match="checkpoint.npz"):
        train(None, resume=run)


@pytest.mark.parametrize("dtype", [np.complex128, "U3"], ids=["complex", "string"])
def test_eval_refuses_weights_of_a_wrong_dtype(finished, tmp_path, dtype):
    run = copy_run(finished, tmp_path / "run")
    arrays = load_npz_safely(run / "model.npz")
    arrays["W1"] = np.zeros(arrays["W1"].shape, dtype=dtype)
    np.savez(run / "model.npz", **arrays)
    with pytest.raises(DataError, match=r"model\.npz: parameter 'W1' has dtype"):
        evaluate_run(run)


def _npz_run(tmp_path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(60, 4)), y=rng.integers(0, 3, 60))
    return tmp_path / "d.npz"


def test_a_data_file_that_changed_since_the_run_started_is_refused(tmp_path):
    _npz_run(tmp_path, 0)
    (tmp_path / "c.yaml").write_text("name: d\ndata: {source: npz, path: d.npz}\n"
                                     "model: {hidden: [4]}\ntrain: {epochs: 2}\n")
    run = train(load_config(tmp_path / "c.yaml"), out=tmp_path / "run").run_dir
    meta = json.loads(str(load_npz_safely(run / "checkpoint.npz")["meta"]))
    assert meta["data_sha256"] == json.loads((run / "summary.json").read_text())["data_sha256"]
    assert evaluate_run(run).n > 0            # unchanged data: fine
    _npz_run(tmp_path, 1)                      # the file is replaced
    before = tree(run)
    with pytest.raises(DataError, match="the data changed since this run started"):
        train(None, resume=run)
    with pytest.raises(DataError, match="the data changed since this run trained"):
        evaluate_run(run)
    assert tree(run) == before


def test_eval_data_checks_widths_and_label_shapes_first(finished, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", X=rng.normal(size=(10, 65)), y=np.arange(10))
    np.savez(tmp_path / "y2d.npz", X=rng.normal(size=(10, 64)), y=np.zeros((10, 3)))
    np.savez(tmp_path / "big.npz", X=rng.normal(size=(10, 64)), y=np.arange(10) + 10)
    with pytest.raises(DataError, match="has 65 features .* the model takes 64"):
        evaluate_run(finished, str(tmp_path / "wide.npz"))
    with pytest.raises(DataError, match=r"y has shape \(10, 3\)|regression targets"):
        evaluate_run(finished, str(tmp_path / "y2d.npz"))
    with pytest.raises(DataError, match="class label"):
        evaluate_run(finished, str(tmp_path / "big.npz"))


@pytest.mark.parametrize("name, damage, words", [
    ("summary-binary", lambda r: (r / "summary.json").write_bytes(b"\xff\xfe\x00"),
     "not UTF-8"),
    ("summary-list", lambda r: (r / "summary.json").write_text("[1, 2]"), "not a mapping"),
    ("summary-strings", lambda r: (r / "summary.json").write_text(json.dumps(
        {**json.loads((r / "summary.json").read_text()), "seconds": "fast"})), "'seconds'"),
    ("config-binary", lambda r: (r / "config.yaml").write_bytes(b"\xff\xfe\x00x"), "UTF-8"),
    ("config-shape", lambda r: (r / "config.yaml").write_text("train: 5\n"), "'train' is"),
    ("config-list", lambda r: (r / "config.yaml").write_text("- 1\n"), "not a mapping"),
])
def test_runs_lists_every_healthy_run_and_marks_the_damaged(finished, tmp_path, name, damage,
                                                           words):
    root = tmp_path / "runs"
    copy_run(finished, root / "healthy")
    damage(copy_run(finished, root / name))
    found = {r.name: r for r in list_runs(root)}
    assert set(found) == {"healthy", name}
    assert found["healthy"].problem is None and found["healthy"].metrics()["best_by"]
    assert words in found[name].problem
    with pytest.raises(DataError, match="damaged"):
        read_run(root / name)   # compare: one clear error, not a traceback


def test_metrics_with_strings_where_numbers_belong_end_the_log(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["val_acc"] = "high"
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    assert len(RunDir(run).read_metrics()) == 1           # the one rule: the log ends there
    rec = read_run(run)
    assert rec.metrics()["best_val_acc"] == json.loads(lines[0])["val_acc"]
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe\n" + lines[0].encode())
    assert RunDir(run).read_metrics() == []


# ---- 2. sweeps that explode ------------------------------------------------------------------------
def _sweep(tmp_path: Path, text: str):
    from bptrain.training.sweep import load_sweep
    (tmp_path / "s.yaml").write_text(text)
    return load_sweep(tmp_path / "s.yaml")


GRID_1E9 = "name: s\nbase: {}\naxes:\n" + "".join(
    f"  {k}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" for k in
    ("seed", "train.epochs", "train.batch_size", "train.eval_every", "train.checkpoint_every",
     "train.accumulate", "train.train_eval_samples", "schedule.every", "model.hidden"))


@pytest.mark.parametrize("text, words", [
    (GRID_1E9, "the grid has 1,000,000,000 trials (10 x 10"),
    ("name: s\nbase: {}\nmethod: random\ntrials: 1000000000\naxes:\n"
     "  optimizer.lr: {loguniform: [0.001, 0.1]}\n", "trials: 1,000,000,000 trials"),
])
def test_sweeps_of_a_billion_trials_are_refused_at_once(tmp_path, text, words):
    t = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        _sweep(tmp_path, text)
    assert time.perf_counter() - t < 1
    assert words in str(info.value) and "max_trials" in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 's.yaml'}:")


def test_a_trial_count_past_64_bits_is_refused_by_the_config_validator(tmp_path):
    t = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        _sweep(tmp_path, "name: s\nbase: {}\nmethod: random\ntrials: 1" + "0" * 400 +
               "\naxes:\n  optimizer.lr: {loguniform: [0.001, 0.1]}\n")
    assert time.perf_counter() - t < 1
    assert str(info.value).startswith(f"{tmp_path / 's.yaml'}:4:")
    assert "trials:" in str(info.value) and "too large" in str(info.value)


def test_max_trials_raises_the_limit_and_memory_still_bounds_it(tmp_path):
    from bptrain.training.sweep import expand
    sw = _sweep(tmp_path, "name: s\nbase: {}\nmethod: random\ntrials: 12\nmax_trials: 20\n"
                          "axes:\n  optimizer.lr: {loguniform: [0.001, 0.1]}\n")
    assert len(expand(sw)) == 12
    with pytest.raises(ConfigError, match="more than max_trials"):
        _sweep(tmp_path, "name: s\nbase: {}\nmethod: random\ntrials: 30\nmax_trials: 20\n"
                         "axes:\n  optimizer.lr: {loguniform: [0.001, 0.1]}\n")
    with pytest.raises(ConfigError, match="would need about"):
        _sweep(tmp_path, "name: s\nbase: {}\nmethod: random\ntrials: 1000000000000\n"
                         "max_trials: 1000000000000\naxes:\n"
                         "  optimizer.lr: {loguniform: [0.001, 0.1]}\n")
    sw.trials = 10**9            # built by hand past the file's checks: expand still counts
    with pytest.raises(ConfigError, match="more than max_trials"):
        expand(sw)


@pytest.mark.parametrize("axis, words", [
    ("{uniform: [1, 1" + "0" * 400 + "]}", "two finite numbers (integers within 64 bits)"),
    ("{uniform: [-1.0e308, 1.0e308]}", "wider than a float can hold"),
    ("{uniform: [0, .inf]}", "two finite numbers"),
    ("{loguniform: [1.0e-5, 1" + "0" * 400 + "]}", "two finite numbers"),
])
def test_sweep_bounds_that_overflow_are_config_errors(tmp_path, axis, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _sweep(tmp_path, f"name: s\nbase: {{}}\nmethod: random\ntrials: 3\naxes:\n"
                         f"  train.epochs: {axis}\n")


def test_billion_laughs_in_a_sweep_file_is_refused_as_fast_as_in_a_config(tmp_path):
    text = ("name: s\nbase: {}\naxes:\n  model.hidden: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(f"  x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)))
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="expand to"):
        _sweep(tmp_path, text)
    assert time.perf_counter() - t < 0.5
    from bptrain.training.sweep import sweep_from_dict  # and from Python, shared lists
    big: list = [1] * 9
    for _ in range(8):
        big = [big] * 9
    with pytest.raises(ConfigError, match="more than 10,000"):
        sweep_from_dict({"name": "s", "base": {}, "axes": {"model.hidden": [big]}})


# ---- 7. rough edges of training ----------------------------------------------------------------------
def test_best_is_one_evaluation_picked_by_one_metric_everywhere(finished):
    summary = json.loads((finished / "summary.json").read_text())
    history = RunDir(finished).read_metrics()
    assert summary["best_by"] == "val_acc" == rundir.best_by(history)
    assert summary["best"] == rundir.best_record(history)
    m = read_run(finished).metrics()
    assert (m["best_by"], m["best_epoch"]) == ("val_acc", summary["best"]["epoch"])
    assert m["best_val_acc"] == summary["best"]["val_acc"] == m["best_value"]
    assert m["best_loss"] == summary["best"]["val_loss"]   # that evaluation's, not a minimum
    regression = [{"epoch": 1, "step": 1, "train_loss": 3.0, "val_loss": None},
                  {"epoch": 2, "step": 2, "train_loss": 1.0, "val_loss": None}]
    assert rundir.best_by(regression) == "train_loss"
    assert rundir.best_record(regression)["epoch"] == 2


def test_the_divergence_message_promises_a_checkpoint_only_when_there_is_one(tmp_path):
    with pytest.raises(DivergenceError) as info:
        train(small("optimizer.lr=1e4", "train.checkpoint_every=50"), out=tmp_path / "a")
    assert "no checkpoint to resume" in str(info.value)
    assert not (tmp_path / "a" / "checkpoint.npz").exists()
    with pytest.raises(DivergenceError) as info:
        train(small("optimizer.lr=1e4", "train.epochs=3"), out=tmp_path / "b")
    assert "The last good checkpoint (step 23) is kept" in str(info.value)
    assert (tmp_path / "b" / "checkpoint.npz").exists()


def test_a_second_ctrl_c_stops_at_once_with_a_message(tmp_path):
    class SecondCtrlC:
        def start(self, info): pass
        def evaluation(self, record): pass
        def end(self, summary, history): pass
        def message(self, text): pass

        def step(self, step, epoch, loss):
            if step == 30:
                raise KeyboardInterrupt   # what _StopFlag raises on the second signal

    cfg = small()
    d = RunDir.create(tmp_path / "run")
    d.write_config("name: x\n")
    with pytest.raises(Interrupted) as info:
        Trainer(cfg, d, SecondCtrlC()).run()
    assert info.value.exit_code == 130
    assert "interrupted again" in str(info.value)
    assert "the checkpoint of step 23 is kept" in str(info.value)


def test_no_update_ratio_warning_when_the_loss_fell_before_the_first_evaluation(tmp_path):
    cfg = load_config(ROOT / "configs" / "regression.yaml", ["train.eval_every=500"])
    result = train(cfg, out=tmp_path / "r")
    assert result.history[0]["train_loss"] < 1e-3      # from about 2.9e7 at the first step
    assert not any(w["kind"] == "update_low" for r in result.history for w in r["warnings"])
    stuck = train(small("optimizer.lr=1e-9", "train.epochs=1"), out=tmp_path / "s")
    assert any(w["kind"] == "update_low" for w in stuck.history[0]["warnings"])  # still seen
