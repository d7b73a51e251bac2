"""TensorBoard event files (train.tensorboard / bptrain run --tensorboard), read back.

tensorboardX writes but ships no reader, and the tensorboard package may not be installed, so
the events are read here from the file format itself: TFRecords (uint64 length, masked CRC32C
of the length, the data, masked CRC32C of the data), each an Event protobuf, parsed with the
classes tensorboardX bundles (tensorboardX.proto.event_pb2)."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tensorboardX")

from tensorboardX.crc32c import crc32c  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

from bptrain.app.cli import app  # noqa: E402
from bptrain.errors import ConfigError  # noqa: E402
from bptrain.net.config import load_config  # noqa: E402
from bptrain.net.data import load_npz_safely  # noqa: E402
from bptrain.training import rundir  # noqa: E402
from bptrain.training.tensorboard import scalars  # noqa: E402
from bptrain.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")


def _masked(data: bytes) -> int:
    x = crc32c(data) & 0xFFFFFFFF
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir: Path) -> list:
    """Every Event of every event file under `logdir`, checksums verified."""
    events = []
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        raw = path.read_bytes()
        i = 0
        while i < len(raw):
            header = raw[i:i + 8]
            (n,) = struct.unpack("<Q", header)
            (crc_len,) = struct.unpack("<I", raw[i + 8:i + 12])
            assert crc_len == _masked(header), "length checksum"
            data = raw[i + 12:i + 12 + n]
            (crc_data,) = struct.unpack("<I", raw[i + 12 + n:i + 16 + n])
            assert crc_data == _masked(data), "data checksum"
            ev = event_pb2.Event()
            ev.ParseFromString(data)
            events.append(ev)
            i += 16 + n
    return events


def by_tag(events) -> tuple[dict, dict]:
    """({tag: {step: value}} of scalars, {tag: {step: HistogramProto}})."""
    sc: dict = {}
    hist: dict = {}
    for ev in events:
        if not ev.HasField("summary"):
            continue
        for v in ev.summary.value:
            if v.HasField("histo"):
                hist.setdefault(v.tag, {})[ev.step] = v.histo
            else:
                sc.setdefault(v.tag, {})[ev.step] = v.simple_value
    return sc, hist


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    cfg = load_config(MLP, ["train.epochs=3", "train.tensorboard=true"])
    result = train(cfg, out=out)
    return out, result


def test_scalars_equal_the_metrics_log(tb_run):
    out, result = tb_run
    history = rundir.RunDir(out).read_metrics()
    assert len(history) == 3
    sc, _ = by_tag(read_events(out / rundir.TENSORBOARD))
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning_rate",
                "loss/batch_mean", "grad_norm/fc1", "grad_norm/scores", "update_ratio/fc1",
                "update_ratio/scores", "weight_norm/fc1", "dead/fc1"):
        assert tag in sc, (tag, sorted(sc))
        assert sorted(sc[tag]) == [r["step"] for r in history], tag
    for rec in history:
        expected = scalars(rec)
        assert expected["loss/val"] == rec["val_loss"]
        assert expected["grad_norm/fc1"] == rec["diagnostics"]["fc1"]["grad_norm"]
        for tag, value in expected.items():
            # TensorBoard stores scalars as float32
            assert sc[tag][rec["step"]] == pytest.approx(np.float32(value), rel=1e-6, abs=1e-12), tag


def test_histograms_of_weights_and_gradients(tb_run):
    out, result = tb_run
    history = rundir.RunDir(out).read_metrics()
    _, hist = by_tag(read_events(out / rundir.TENSORBOARD))
    final = load_npz_safely(out / rundir.MODEL)
    for name in ("W1", "b1", "W2", "b2"):
        assert sorted(hist[f"weights/{name}"]) == [r["step"] for r in history]
        assert sorted(hist[f"gradients/{name}"]) == [r["step"] for r in history]
        last = hist[f"weights/{name}"][history[-1]["step"]]
        # the last evaluation is after the last step: its weights are model.npz's
        assert last.num == final[name].size
        assert last.min == pytest.approx(final[name].min())
        assert last.max == pytest.approx(final[name].max())
        assert last.sum == pytest.approx(final[name].sum(), rel=1e-6, abs=1e-9)
        g = hist[f"gradients/{name}"][history[-1]["step"]]
        assert g.num == final[name].size and np.isfinite([g.min, g.max, g.sum]).all()
        assert g.max > g.min


def test_cli_flag_and_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", MLP, "--tensorboard", "-q", "--out", str(out),
                                      "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert load_config(out / "config.yaml").train.tensorboard is True
    sc, _ = by_tag(read_events(out / "tensorboard"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(sc["loss/val"]) == steps
    plain = tmp_path / "plain"
    train(load_config(MLP, ["train.epochs=1"]), out=plain)
    assert not (plain / "tensorboard").exists()   # off by default


def test_missing_tensorboardx_is_one_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import tensorboardX fails
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r'pip install "bptrain\[tensorboard\]"'):
        train(load_config(MLP, ["train.epochs=1", "train.tensorboard=true"]), out=out)
    assert not out.exists()                                   # fails before the run starts
    monkeypatch.setenv("COLUMNS", "300")
    result = CliRunner().invoke(app, ["run", MLP, "--tensorboard", "--out", str(out)])
    assert result.exit_code == 2
    text = result.output
    assert text.startswith("error: ") and "Traceback" not in text
    assert "\n\n" not in text.strip() and 'pip install "bptrain[tensorboard]"' in text
