"""Config: defaults, YAML files, --set overrides, validation messages, safety, round trips."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bptrain.net.config import Config, apply_override, dump_config, load_config
from bptrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

ISSUE_EXAMPLE = """\
name: mlp
seed: 0
data: {source: digits, val_fraction: 0.2, standardize: true}
model: {hidden: [100], activation: relu, init: he}
loss: {type: softmax}
regularization: {type: l2, strength: 1.0e-4}
optimizer: {type: sgd, lr: 0.1, momentum: 0.9}
schedule: {type: step, every: 10, gamma: 0.5}
train: {epochs: 30, batch_size: 64, eval_every: 1, checkpoint_every: 1, dtype: float64}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def config_error(source, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return str(info.value)


# ---- defaults ------------------------------------------------------------------------------

def test_defaults_of_an_empty_config():
    cfg = load_config({})
    assert cfg.name == "run" and cfg.seed == 0
    assert (cfg.data.source, cfg.data.val_fraction, cfg.data.standardize) == ("digits", 0.2, True)
    assert cfg.data.path is None and cfg.data.encoding is None
    m = cfg.model
    assert (m.hidden, m.activation, m.init, m.std, m.bias, m.dropout) == \
        ([100], "relu", "he", 0.01, True, 0.0)
    assert m.layers is None
    assert (cfg.loss.type, cfg.loss.margin, cfg.loss.reduction) == ("softmax", 1.0, "sum")
    assert (cfg.regularization.type, cfg.regularization.strength) == ("l2", 1e-4)
    o = cfg.optimizer
    assert (o.type, o.lr, o.decay_rate, o.beta1, o.beta2, o.eps) == \
        ("sgd", 0.01, 0.99, 0.9, 0.999, 1e-8)
    # per-type defaults are resolved, never left as None
    assert o.momentum == 0.0 and o.weight_decay == 0.0
    s = cfg.schedule
    assert (s.type, s.every, s.gamma, s.min_lr) == ("constant", 10, 0.5, 0.0)
    t = cfg.train
    assert (t.epochs, t.iterations, t.batch_size, t.shuffle, t.eval_every, t.checkpoint_every,
            t.grad_clip, t.dtype) == (10, None, 64, True, 1, 1, None, "float64")


def test_none_and_dict_sources_agree():
    assert load_config({}).to_dict() == load_config({"train": None}).to_dict()
    assert load_config({}).source_path is None


# ---- files ---------------------------------------------------------------------------------

def test_issue_example_parses_to_its_values(tmp_path):
    cfg = load_config(write(tmp_path, ISSUE_EXAMPLE))
    assert cfg.source_path == str(tmp_path / "c.yaml")
    assert cfg.name == "mlp" and cfg.seed == 0
    assert (cfg.data.source, cfg.data.val_fraction, cfg.data.standardize) == ("digits", 0.2, True)
    assert (cfg.model.hidden, cfg.model.activation, cfg.model.init) == ([100], "relu", "he")
    assert cfg.loss.type == "softmax"
    assert cfg.regularization.type == "l2"
    assert cfg.regularization.strength == 1e-4 and isinstance(cfg.regularization.strength, float)
    assert (cfg.optimizer.type, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.1, 0.9)
    assert (cfg.schedule.type, cfg.schedule.every, cfg.schedule.gamma) == ("step", 10, 0.5)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.eval_every, t.checkpoint_every, t.dtype) == \
        (30, 64, 1, 1, "float64")
    # the shipped main config is the same job
    shipped = load_config(CONFIGS / "mlp.yaml").to_dict()
    assert shipped == cfg.to_dict()


@pytest.mark.parametrize("name", ["mlp", "svm", "spiral", "regression", "sigmoid"])
def test_every_shipped_config_loads(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name


def test_regression_config_is_note_004():
    cfg = load_config(CONFIGS / "regression.yaml")
    assert (cfg.data.source, cfg.data.n_samples, cfg.data.n_features, cfg.data.n_outputs) == \
        ("regression", 64, 1000, 10)
    assert cfg.model.hidden == [100] and cfg.model.bias is False
    assert (cfg.loss.type, cfg.loss.reduction, cfg.regularization.type) == ("mse", "sum", "none")
    assert (cfg.optimizer.type, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 1e-6, 0.0)


def test_yaml_12_exponent_numbers_are_floats(tmp_path):
    cfg = load_config(write(tmp_path, "optimizer: {lr: 1e-3, eps: 1E-7}\n"
                                      "regularization: {strength: 5e-4}\n"))
    assert cfg.optimizer.lr == 0.001 and type(cfg.optimizer.lr) is float
    assert cfg.optimizer.eps == 1e-7
    assert cfg.regularization.strength == 0.0005


def test_missing_file_and_directory(tmp_path):
    msg = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg
    msg = config_error(tmp_path)
    assert "directory" in msg


def test_top_level_must_be_a_mapping(tmp_path):
    msg = config_error(write(tmp_path, "- 1\n- 2\n"))
    assert "mapping" in msg


# ---- overrides -----------------------------------------------------------------------------

def test_overrides_are_yaml_scalars_and_lists():
    cfg = load_config(CONFIGS / "mlp.yaml", ["loss.type=svm", "optimizer.lr=1e-4",
                                               "model.hidden=[64, 32]", "train.shuffle=false",
                                               "data.standardize=False", "train.epochs=3",
                                               "name=mine"])
    assert cfg.loss.type == "svm"
    assert cfg.optimizer.lr == 0.0001 and type(cfg.optimizer.lr) is float
    assert cfg.model.hidden == [64, 32]
    assert cfg.train.shuffle is False and cfg.data.standardize is False
    assert cfg.train.epochs == 3 and cfg.name == "mine"
    # untouched keys keep the file's values
    assert cfg.optimizer.momentum == 0.9 and cfg.schedule.type == "step"


def test_overrides_apply_in_order_and_create_sections():
    cfg = load_config({}, ["optimizer.lr=0.5", "optimizer.lr=0.25", "schedule.type=cosine"])
    assert cfg.optimizer.lr == 0.25 and cfg.schedule.type == "cosine"


def test_override_integer_where_float_wanted_becomes_float():
    cfg = load_config({}, ["optimizer.lr=1"])
    assert cfg.optimizer.lr == 1.0 and type(cfg.optimizer.lr) is float


def test_override_to_null_restores_per_type_default():
    cfg = load_config({"optimizer": {"type": "nesterov", "momentum": 0.5}},
                      ["optimizer.momentum="])
    assert cfg.optimizer.momentum == 0.9


def test_overrides_do_not_mutate_the_callers_dict():
    raw = {"optimizer": {"lr": 0.1}}
    load_config(raw, ["optimizer.lr=0.2", "model.hidden=[3]"])
    assert raw == {"optimizer": {"lr": 0.1}}


@pytest.mark.parametrize("override, fragment", [
    ("optimizer.lr", "key=value"),
    ("=3", "dotted path"),
    ("optimizer..lr=3", "dotted path"),
    ("data.source.x=1", "'data.source' is a value, not a section"),
])
def test_malformed_overrides(override, fragment):
    assert fragment in config_error({"data": {"source": "digits"}}, [override])


def test_apply_override_in_place():
    data = {"a": {"b": 1}}
    apply_override(data, "a.c.d=[1, 2]")
    assert data == {"a": {"b": 1, "c": {"d": [1, 2]}}}


# ---- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("override, path, suggestion", [
    ("optimzer.lr=0.1", "optimzer", "optimizer"),
    ("optimizer.momentun=0.9", "optimizer.momentun", "momentum"),
    ("train.epoch=3", "train.epoch", "epochs"),
    ("model.hiden=[3]", "model.hiden", "hidden"),
])
def test_unknown_key_did_you_mean(override, path, suggestion):
    msg = config_error({}, [override])
    assert msg.startswith(f"{path}: unknown key.")
    assert f"Did you mean '{suggestion}'?" in msg
    assert "Valid keys" in msg


def test_unknown_key_in_file(tmp_path):
    msg = config_error(write(tmp_path, "name: x\ntrain: {epochs: 2, batchsize: 8}\n"))
    assert "train.batchsize: unknown key. Did you mean 'batch_size'?" in msg


@pytest.mark.parametrize("override, path, expected", [
    ("train.epochs=2.5", "train.epochs", "an integer"),
    ("optimizer.lr=abc", "optimizer.lr", "a number"),
    ("optimizer.lr=true", "optimizer.lr", "a number"),
    ("train.shuffle=1", "train.shuffle", "true or false"),
    ("model.hidden=100", "model.hidden", "a list"),
    ("model.hidden=[64, x]", "model.hidden[1]", "an integer"),
    ("seed=true", "seed", "an integer"),
    ("loss.type=3", "loss.type", "a string"),
    ("optimizer.lr=.inf", "optimizer.lr", "finite"),
])
def test_wrong_types(override, path, expected):
    msg = config_error({}, [override])
    assert msg.startswith(f"{path}: expected")
    assert expected in msg


def test_section_given_as_scalar():
    msg = config_error({"optimizer": 5})
    assert msg.startswith("optimizer: expected a mapping")


@pytest.mark.parametrize("override, path, words", [
    ("optimizer.lr=-0.1", "optimizer.lr", "greater than 0"),
    ("optimizer.lr=0", "optimizer.lr", "greater than 0"),
    ("train.batch_size=0", "train.batch_size", "greater than 0"),
    ("data.val_fraction=1.0", "data.val_fraction", "less than 1"),
    ("data.val_fraction=-0.1", "data.val_fraction", "at least 0"),
    ("optimizer.momentum=1.0", "optimizer.momentum", "less than 1"),
    ("schedule.gamma=1.5", "schedule.gamma", "at most 1"),
    ("model.dropout=1", "model.dropout", "less than 1"),
    ("seed=-1", "seed", "at least 0"),
])
def test_out_of_range(override, path, words):
    msg = config_error({}, [override])
    assert msg.startswith(f"{path}: must be {words}")


def test_boundary_values_are_accepted():
    cfg = load_config({}, ["data.val_fraction=0", "schedule.gamma=1", "optimizer.momentum=0"])
    assert cfg.data.val_fraction == 0.0 and cfg.schedule.gamma == 1.0


def test_unknown_loss_lists_choices():
    msg = config_error({}, ["loss.type=hinge"])
    assert msg.startswith("loss.type: unknown value 'hinge'")
    assert "softmax, svm, mse" in msg


def test_unknown_activation_lists_choices_and_suggests():
    msg = config_error({}, ["model.activation=rellu"])
    assert "relu, leaky_relu, sigmoid, tanh, elu" in msg
    assert "Did you mean 'relu'?" in msg


def test_unknown_layer_type_lists_choices():
    msg = config_error({"model": {"layers": [{"type": "affine", "units": 3},
                                             {"type": "softplus"}, {"type": "affine"}]}})
    assert msg.startswith("model.layers[1].type: unknown value 'softplus'")
    assert all(t in msg for t in ("affine", "relu", "dropout", "residual", "add"))


def test_layers_need_type_and_hidden_units():
    assert "model.layers[0]: the key 'type' is required" in \
        config_error({"model": {"layers": [{"units": 3}]}})
    assert "model.layers[0].units" in \
        config_error({"model": {"layers": [{"type": "affine"}, {"type": "relu"},
                                           {"type": "affine"}]}})
    assert "at least one affine" in config_error({"model": {"layers": [{"type": "relu"}]}})


def test_impossible_combinations():
    assert "data.path" in config_error({"data": {"source": "npz"}})
    assert "use loss.type=mse" in config_error({"data": {"source": "regression"},
                                                 "loss": {"type": "svm"}})


# ---- YAML safety and syntax ------------------------------------------------------------------

def test_malformed_yaml_reports_file_line_column(tmp_path):
    p = write(tmp_path, "name: x\nmodel:\n  hidden: a: b\n")
    msg = config_error(p)
    # line 3, the second ':' at column 12
    assert msg.startswith(f"{p}:3:12: mapping values are not allowed here")
    p = write(tmp_path, "name: x\ntrain: {epochs: 3\nseed: 1\n", "d.yaml")
    msg = config_error(p)
    assert msg.startswith(f"{p}:3:5:")


def test_python_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    p = write(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    msg = config_error(p)
    assert f"{p}:1:7:" in msg and "never run" in msg
    assert not marker.exists()
    msg = config_error({}, [f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert "never run" in msg
    assert not marker.exists()


def test_python_name_tag_is_refused(tmp_path):
    msg = config_error(write(tmp_path, "name: !!python/name:os.system\n"))
    assert "never run" in msg


# ---- round trip and per-type defaults -------------------------------------------------------

@pytest.mark.parametrize("source, overrides", [
    (CONFIGS / "mlp.yaml", ["optimizer.lr=1e-4", "model.hidden=[64, 32]", "loss.type=svm"]),
    (CONFIGS / "regression.yaml", []),
    ({"optimizer": {"type": "adamw", "eps": 1e-10}, "train": {"grad_clip": 5, "iterations": 7},
      "model": {"layers": [{"type": "affine", "units": 8, "bias": False},
                           {"type": "leaky_relu", "slope": 0.2}, {"type": "dropout", "p": 0.3},
                           {"type": "affine"}]}}, []),
])
def test_dump_config_round_trips(tmp_path, source, overrides):
    cfg = load_config(source, overrides)
    text = dump_config(cfg)
    again = load_config(write(tmp_path, text))
    assert again.to_dict() == cfg.to_dict()
    assert dump_config(again) == text
    # the dump is plain YAML: every section and key is there
    raw = yaml.safe_load(text)
    assert list(raw) == ["name", "seed", "data", "model", "loss", "regularization", "optimizer",
                         "schedule", "train"]


def test_dump_of_config_object_through_load_config():
    cfg = load_config({}, ["optimizer.type=adam"])
    again = load_config(cfg, ["optimizer.lr=0.5"])
    assert isinstance(again, Config) and again.optimizer.lr == 0.5
    assert again.optimizer.type == "adam" and cfg.optimizer.lr == 0.01


@pytest.mark.parametrize("kind, momentum, weight_decay", [
    ("sgd", 0.0, 0.0), ("momentum", 0.9, 0.0), ("nesterov", 0.9, 0.0),
    ("rmsprop", 0.0, 0.0), ("adam", 0.0, 0.0), ("adamw", 0.0, 0.01),
])
def test_per_type_resolved_defaults(kind, momentum, weight_decay):
    o = load_config({}, [f"optimizer.type={kind}"]).optimizer
    assert o.momentum == momentum and o.weight_decay == weight_decay


def test_explicit_values_beat_per_type_defaults():
    o = load_config({"optimizer": {"type": "momentum", "momentum": 0.5}}).optimizer
    assert o.momentum == 0.5
    o = load_config({"optimizer": {"type": "adamw", "weight_decay": 0}}).optimizer
    assert o.weight_decay == 0.0
    o = load_config({"optimizer": {"type": "sgd", "weight_decay": 0.1}}).optimizer
    assert o.weight_decay == 0.1


def test_an_activation_after_the_output_layer_is_a_config_error():
    from bptrain.net.config import load_config
    from bptrain.errors import ConfigError
    with pytest.raises(ConfigError, match=r"model.layers\[1\].*end with an affine"):
        load_config({"model": {"layers": [{"type": "affine"}, {"type": "relu"}]}})
    # a trailing dropout is odd but harmless, and a plain affine ending is fine
    load_config({"model": {"layers": [{"type": "affine", "units": 5}, {"type": "relu"},
                                      {"type": "affine"}]}})


def test_check_key_knows_every_key_alias_and_section():
    from bptrain.net.config import all_keys, check_key
    assert check_key("optimizer.learning_rate") == "optimizer.lr"   # the alias
    assert check_key("loss.margin") == "loss.margin"                 # a registered loss's setting
    assert check_key("data.augment.crop_pad") == "data.augment.crop_pad"
    assert "model.layers" in all_keys() and "train.early_stopping.patience" in all_keys()
    with pytest.raises(ConfigError, match=r"model.hidden_size: unknown config key. Did you mean "
                                          r"'model.hidden'\?"):
        check_key("model.hidden_size")
    with pytest.raises(ConfigError, match=r"optimizer.lr.x: 'optimizer.lr' is a value"):
        check_key("optimizer.lr.x")
