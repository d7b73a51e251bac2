"""The optional PNG of the loss curves (needs matplotlib: the `plot` extra)."""
from pathlib import Path

import pytest

from bptrain.net.config import load_config
from bptrain.training.curves import save_loss_curves
from bptrain.training.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_run_writes_a_png_of_its_curves(tmp_path):
    pytest.importorskip("matplotlib")
    result = train(load_config(CONFIGS / "mlp.yaml", ["train.epochs=3"]), out=tmp_path / "r")
    png = result.run_dir / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000
    assert not list(result.run_dir.glob("*.tmp*"))


def test_no_png_for_a_single_evaluation(tmp_path):
    assert save_loss_curves(tmp_path / "c.png", [{"epoch": 1, "train_loss": 1.0}], "x") is False
    assert not (tmp_path / "c.png").exists()
