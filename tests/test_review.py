"""Regression tests for bugs found in review."""
import pytest

from bptrain.net.config import load_config
from bptrain.training.sanity import _no_reg


def test_sanity_drops_dropout_layers_of_an_explicit_layer_list():
    # README: the overfit check runs with "no regularization or dropout". The shorthand's
    # model.dropout was zeroed, but dropout layers in model.layers stayed in.
    cfg = load_config({"model": {"layers": [
        {"type": "affine", "units": 8}, {"type": "relu"}, {"type": "dropout", "p": 0.9},
        {"type": "affine"}]}})
    variant = load_config(cfg, _no_reg(cfg))
    # the dropout layer keeps its place (a graph may name it) with p = 0: the identity
    assert [(l["type"], l.get("p")) for l in variant.model.layers] == [
        ("affine", None), ("relu", None), ("dropout", 0.0), ("affine", None)]
    assert variant.model.layers[0]["units"] == 8
    assert variant.regularization.type == "none"


def test_an_activation_after_the_output_layer_is_a_config_error():
    from bptrain.net.config import load_config
    from bptrain.errors import ConfigError
    with pytest.raises(ConfigError, match=r"model.layers\[1\].*end with an affine"):
        load_config({"model": {"layers": [{"type": "affine"}, {"type": "relu"}]}})
    # a trailing dropout is odd but harmless, and a plain affine ending is fine
    load_config({"model": {"layers": [{"type": "affine", "units": 5}, {"type": "relu"},
                                      {"type": "affine"}]}})


def test_summary_epochs_count_a_partial_last_epoch(tmp_path):
    from pathlib import Path
    from bptrain.net.config import load_config
    from bptrain.training.trainer import train
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "mlp.yaml",
                      ["train.iterations=30"])  # 23 steps per epoch: 1 full + 7 of the next
    result = train(cfg, out=tmp_path / "r")
    assert result.summary["epochs"] == 2 == result.history[-1]["epoch"]


def test_sanity_runs_without_optimizer_weight_decay():
    cfg = load_config({"optimizer": {"type": "adamw", "lr": 1e-3}})
    assert cfg.optimizer.weight_decay == 0.01
    assert load_config(cfg, _no_reg(cfg)).optimizer.weight_decay == 0.0


def test_eval_hint_matches_what_the_run_saved(tmp_path):
    from pathlib import Path
    from bptrain.errors import DataError
    from bptrain.training.runs import _load_run_parts as load_run
    from bptrain.training.trainer import train
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "mlp.yaml",
                      ["train.epochs=1"])
    run = train(cfg, out=tmp_path / "r").run_dir
    (run / "model.npz").unlink()  # as if stopped before the end: best.npz exists
    with pytest.raises(DataError, match="--weights best"):
        load_run(run)
    (run / "best.npz").unlink()   # as if diverged before the first evaluation
    with pytest.raises(DataError, match="saved no weights") as e:
        load_run(run)
    assert "--weights best" not in str(e.value)
