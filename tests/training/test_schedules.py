"""Issue 16 item 4: warm-up, reduce-on-plateau and per-step cosine schedules (against
torch.optim.lr_scheduler and hand-computed values), early stopping that restores the best
weights, bit-identical resume of both, and `learning_rate` as lr's alias in overrides."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from bptrain.errors import ConfigError
from bptrain.net.config import ScheduleConfig, load_config
from bptrain.net.schedules import Schedule
from bptrain.training.trainer import SilentReporter, train
from conftest import Boom, StopAtStep  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
STEPS_PER_EPOCH = 23  # digits: 1437 training rows in batches of 64
SMALL = ["model.hidden=[16]", "schedule.type=constant"]


def schedule(epochs=10, steps_per_epoch=5, base=0.1, **kw):
    return Schedule(ScheduleConfig(**kw), base, steps_per_epoch, epochs * steps_per_epoch, epochs)


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def metrics(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def assert_same_files(a: Path, b: Path) -> None:
    for name in ("model.npz", "best.npz"):
        x, y = npz(a / name), npz(b / name)
        assert sorted(x) == sorted(y), name
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), (name, k)
    assert metrics(a) == metrics(b)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert sa["early_stopping"] == sb["early_stopping"]
    assert sa["steps"] == sb["steps"] and sa["epochs"] == sb["epochs"]


# ---- formulas, by hand ----------------------------------------------------------------------

def test_warmup_rises_linearly_then_leaves_the_schedule_alone():
    s = schedule(warmup_epochs=3)
    assert [s.lr(e, 0) for e in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert schedule(warmup_epochs=0).lr(0, 0) == 0.1  # exactly the base rate: old runs unchanged


def test_warmup_multiplies_step_decay_and_cosine():
    s = schedule(type="step", every=2, gamma=0.5, warmup_epochs=1)
    assert [s.lr(e, 0) for e in range(5)] == pytest.approx([0.05, 0.1, 0.05, 0.05, 0.025])
    c = schedule(epochs=4, type="cosine", min_lr=0.02, warmup_epochs=2)
    want = [0.02 + 0.08 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [c.lr(e, 0) for e in range(4)] == pytest.approx(
        [want[0] / 3, want[1] * 2 / 3, want[2], want[3]], rel=1e-14)


def test_per_step_cosine_and_per_step_warmup():
    s = schedule(epochs=2, steps_per_epoch=4, type="cosine", per_step=True, min_lr=0.01)
    got = [s.lr(step // 4, step) for step in range(8)]
    assert got == pytest.approx([0.01 + 0.09 * (1 + math.cos(math.pi * k / 8)) / 2
                                 for k in range(8)], rel=1e-14)
    assert got[4] == pytest.approx(0.055)  # half-way through the steps: the midpoint
    w = schedule(epochs=3, steps_per_epoch=2, per_step=True, warmup_epochs=1)  # 2 warm-up steps
    assert [w.lr(k // 2, k) for k in range(4)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])


def test_plateau_by_hand():
    s = schedule(type="plateau", gamma=0.5, patience=1, threshold=0.1, min_lr=0.02)
    lrs = []
    for loss in (1.0, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5):
        s.observe({"val_loss": loss, "train_loss": 9.0})
        lrs.append(s.lr(0, 0))
    # 0.95 is not 10% better than 1.0: one bad evaluation (patience 1 allows it); 0.5 is;
    # then every second bad evaluation halves the rate, down to the floor 0.02
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02])
    t = schedule(type="plateau", patience=0)
    t.observe({"val_loss": None, "train_loss": 1.0})  # no validation split: the train loss
    t.observe({"val_loss": None, "train_loss": 1.0})
    assert t.lr(0, 0) == pytest.approx(0.05)


# ---- formulas, against torch ----------------------------------------------------------------

def _torch_lrs(make, steps, metrics=None):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(*([metrics[i]] if metrics is not None else []))
    return out


@pytest.mark.parametrize("kind", ["step", "exponential", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_per_epoch_schedules_match_torch_chained_with_linear_warmup(kind, warmup):
    E = 12
    s = schedule(epochs=E, type=kind, every=4, gamma=0.7, warmup_epochs=warmup)
    ours = [s.lr(e, 0) for e in range(E)]

    def make(L, opt):
        main = {"step": lambda: L.StepLR(opt, step_size=4, gamma=0.7),
                "exponential": lambda: L.ExponentialLR(opt, gamma=0.7),
                "cosine": lambda: L.CosineAnnealingLR(opt, T_max=E),
                "constant": lambda: L.ConstantLR(opt, factor=1.0, total_iters=0)}[kind]()
        if not warmup:
            return main
        return L.ChainedScheduler([L.LinearLR(opt, start_factor=1 / (warmup + 1),
                                              total_iters=warmup), main])
    assert ours == pytest.approx(_torch_lrs(make, E), rel=1e-12)


def test_per_step_cosine_matches_torch_cosine_annealing_per_step():
    s = schedule(epochs=3, steps_per_epoch=7, type="cosine", per_step=True, min_lr=0.003)
    ours = [s.lr(k // 7, k) for k in range(21)]
    theirs = _torch_lrs(lambda L, opt: L.CosineAnnealingLR(opt, T_max=21, eta_min=0.003), 21)
    assert ours == pytest.approx(theirs, rel=1e-12)
    w = schedule(epochs=3, steps_per_epoch=7, type="cosine", per_step=True, warmup_epochs=1)
    ours = [w.lr(k // 7, k) for k in range(21)]
    theirs = _torch_lrs(lambda L, opt: L.ChainedScheduler([
        L.LinearLR(opt, start_factor=1 / 8, total_iters=7), L.CosineAnnealingLR(opt, T_max=21)]),
        21)
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("gamma, patience, threshold, min_lr", [
    (0.5, 2, 1e-4, 0.0), (0.1, 0, 1e-4, 0.0), (0.3, 1, 0.05, 0.004), (0.9, 3, 0.0, 0.05)])
def test_plateau_matches_torch_reduce_on_plateau(gamma, patience, threshold, min_lr):
    rng = np.random.default_rng(int(gamma * 100) + patience)
    # a loss that falls, flattens and wobbles: every branch of the rule is taken
    losses = list(np.maximum(1.0 / np.arange(1, 41) + rng.normal(0, 0.01, 40), 0.01))
    losses += [losses[-1]] * 10
    s = schedule(type="plateau", gamma=gamma, patience=patience, threshold=threshold,
                 min_lr=min_lr)
    ours = []
    for v in losses:
        ours.append(s.lr(0, 0))
        s.observe({"val_loss": float(v)})
    theirs = _torch_lrs(lambda L, opt: L.ReduceLROnPlateau(
        opt, mode="min", factor=gamma, patience=patience, threshold=threshold,
        threshold_mode="rel", min_lr=min_lr), len(losses), losses)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert min(ours) < 0.1  # it did reduce


# ---- in a training run ----------------------------------------------------------------------

def test_run_logs_the_scheduled_rates(tmp_path):
    cfg = load_config(MLP, SMALL + ["train.epochs=3", "schedule.type=cosine",
                                    "schedule.per_step=true", "schedule.warmup_epochs=1",
                                    "optimizer.lr=0.1"])
    train(cfg, out=tmp_path / "run")
    S = 3 * STEPS_PER_EPOCH
    s = Schedule(cfg.schedule, 0.1, STEPS_PER_EPOCH, S, 3)
    for rec in metrics(tmp_path / "run"):  # the rate of each epoch's last step
        step = rec["step"] - 1
        assert rec["lr"] == s.lr(step // STEPS_PER_EPOCH, step)
    assert metrics(tmp_path / "run")[0]["lr"] == pytest.approx(
        (23 / 24) * 0.1 * (1 + math.cos(math.pi * 22 / S)) / 2)


# Every evaluation after the first fails to improve train_loss by min_delta=100: the first
# epoch's weights are the best, and the run stops after `patience` more evaluations.
NEVER_BETTER = ["train.early_stopping.metric=train_loss", "train.early_stopping.min_delta=100"]


def test_early_stopping_stops_and_restores_the_best_weights_and_statistics(tmp_path):
    common = SMALL + ["model.normalization=batchnorm", "train.epochs=20"]
    ref = train(load_config(MLP, common + ["train.epochs=1"]), out=tmp_path / "one-epoch")
    res = train(load_config(MLP, common + NEVER_BETTER + ["train.early_stopping.patience=3"]),
                out=tmp_path / "stopped")
    stop = res.summary["early_stopping"]
    assert stop["stopped"] and stop["stopped_epoch"] == 4 and stop["restored_epoch"] == 1
    assert res.summary["epochs"] == 4 and res.summary["steps"] == 4 * STEPS_PER_EPOCH
    assert len(metrics(tmp_path / "stopped")) == 4
    kept, want = npz(tmp_path / "stopped" / "model.npz"), npz(tmp_path / "one-epoch" / "model.npz")
    assert "running_mean1" in kept and sorted(kept) == sorted(want)
    for k in want:
        assert kept[k].tobytes() == want[k].tobytes(), k
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["early_stopping"] \
        == stop
    del ref


def test_early_stopping_off_and_on_with_patience_not_reached(tmp_path):
    a = train(load_config(MLP, SMALL + ["train.epochs=3"]), out=tmp_path / "a")
    assert "early_stopping" not in a.summary
    b = train(load_config(MLP, SMALL + ["train.epochs=3", "train.early_stopping.patience=50"]),
              out=tmp_path / "b")
    assert b.summary["early_stopping"]["stopped"] is False
    for k, v in npz(tmp_path / "a" / "model.npz").items():  # ran to the end: the final weights
        assert npz(tmp_path / "b" / "model.npz")[k].tobytes() == v.tobytes()


def test_early_stopping_on_val_acc_and_its_messages(tmp_path):
    messages = []

    class Listen(SilentReporter):
        def message(self, text):
            messages.append(text)
    res = train(load_config(MLP, SMALL + ["train.epochs=30", "optimizer.lr=0.5",
                                          "train.early_stopping={metric: val_acc, patience: 2}"]),
                out=tmp_path / "run", reporter=Listen())
    stop = res.summary["early_stopping"]
    assert stop["stopped"], "val_acc of this run plateaus within 30 epochs"
    accs = [r["val_acc"] for r in res.history]
    assert max(accs) == stop["best_value"] == accs[stop["restored_epoch"] - 1]
    assert any("early stopping" in m and f"epoch {stop['restored_epoch']}" in m for m in messages)


RESUMABLE = SMALL + NEVER_BETTER + [
    "train.epochs=20", "train.early_stopping.patience=4", "model.dropout=0.1",
    "schedule.type=plateau", "schedule.patience=0", "schedule.threshold=0.3",
    "schedule.warmup_epochs=2", "optimizer.type=adam", "optimizer.lr=0.01"]


@pytest.fixture(scope="module")
def stopped_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(MLP, RESUMABLE), out=run)
    return run


@pytest.mark.parametrize("at", [30, 46, 47, 100])
def test_stop_part_way_and_resume_is_bit_identical(stopped_reference, tmp_path, at):
    run = tmp_path / "run"
    with pytest.raises(Boom):
        train(load_config(MLP, RESUMABLE), out=run, reporter=StopAtStep(at))
    train(None, resume=run)
    assert_same_files(run, stopped_reference)
    lrs = [r["lr"] for r in metrics(run)]
    assert len(set(lrs)) > 2  # warm-up and plateau both changed the rate


def test_resume_of_an_early_stopped_run_changes_nothing(stopped_reference, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(stopped_reference, run)
    res = train(None, resume=run)
    assert res.summary["early_stopping"]["stopped_epoch"] == 5
    assert_same_files(run, stopped_reference)


# ---- config --------------------------------------------------------------------------------

def test_config_keys_and_rejections(tmp_path):
    cfg = load_config(MLP, ["train.early_stopping={}"])
    assert (cfg.train.early_stopping.metric, cfg.train.early_stopping.patience,
            cfg.train.early_stopping.min_delta) == ("val_loss", 5, 0.0)
    assert load_config(MLP).train.early_stopping is None
    assert load_config(load_config(MLP, ["train.early_stopping.patience=2"])
                       ).train.early_stopping.patience == 2  # survives a round trip
    for bad, match in ((["schedule.type=step", "schedule.per_step=true"], "per_step"),
                       (["schedule.type=plateau", "schedule.gamma=1"], "less than 1"),
                       (["train.early_stopping.metric=val_los"], "val_loss"),
                       (["train.early_stopping.patience=-1"], "at least 0"),
                       (["schedule.warmup_epochs=1.5"], "integer")):
        with pytest.raises(ConfigError, match=match):
            load_config(MLP, bad)
    out = tmp_path / "none"
    with pytest.raises(ConfigError, match="validation split"):
        train(load_config(MLP, ["data.val_fraction=0", "train.early_stopping={}"]), out=out)
    assert not out.exists()  # refused before a run directory was made
    with pytest.raises(ConfigError, match="val_acc needs class labels"):
        train(load_config(ROOT / "configs" / "regression.yaml",
                          ["train.early_stopping.metric=val_acc", "data.val_fraction=0.2"]),
              out=out)


def test_learning_rate_is_lrs_alias_in_overrides():
    assert load_config(MLP, ["optimizer.learning_rate=0.05"]).optimizer.lr == 0.05  # file: lr
    assert load_config({"optimizer": {"learning_rate": 0.2}}, ["optimizer.lr=0.03"]
                       ).optimizer.lr == 0.03
    assert load_config({}, ["optimizer.learning_rate=0.07"]).optimizer.lr == 0.07
    with pytest.raises(ConfigError, match="both are set"):
        load_config({"optimizer": {"lr": 0.1, "learning_rate": 0.2}})


def test_cli_accepts_learning_rate_in_set(tmp_path):
    from typer.testing import CliRunner

    from bptrain.app.cli import app
    r = CliRunner().invoke(app, ["run", str(MLP), "--set", "optimizer.learning_rate=0.05",
                                 "--print-config"])
    assert r.exit_code == 0, r.output
    assert "lr: 0.05" in r.output
