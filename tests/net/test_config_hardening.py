"""Issue 17 (hardening), config and data side: each class of bad input is refused by the one
mechanism that lets it through, with a message naming the place and the fix.

Config files: duplicate keys, empty files, oversized files, aliases that expand or contain
themselves, and file:line:column on key and value errors. Sizes: networks, classes, features
and data that cannot fit are refused from an estimate, before anything is allocated; labels
and features beyond what float64 arithmetic can handle are DataErrors naming the column.
"""
from __future__ import annotations

import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bptrain.errors import ConfigError, DataError
from bptrain.net import budget
from bptrain.net.config import MAX_YAML_BYTES, load_config, parse_yaml
from bptrain.net.data import MAX_CLASSES, feature_stats, load_dataset, load_npz_safely

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def config_error(*args) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args)
    return str(info.value)


# ---- config files -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, first, second", [
    ("name: x\noptimizer:\n  type: sgd\n  lr: 0.1\n  lr: 0.5\n", 4, 5),         # a section
    ("name: x\nseed: 1\nseed: 2\n", 2, 3),                                     # the top level
    ("model:\n  layers:\n  - {type: affine, units: 4, units: 8}\n", 3, 3),     # a flow mapping
])
def test_duplicate_keys_name_both_lines(tmp_path, text, first, second):
    p = write(tmp_path, text)
    msg = config_error(p)
    assert msg.startswith(f"{p}:{second}:")
    assert f"first at line {first}, again at line {second}" in msg and "Keep one" in msg


def test_duplicate_keys_in_a_sweep_file_too(tmp_path):
    from bptrain.training.sweep import load_sweep
    p = write(tmp_path, "name: s\nbase: {}\naxes: {optimizer.lr: [0.1]}\naxes: {seed: [1]}\n",
              "s.yaml")
    with pytest.raises(ConfigError, match=r"s\.yaml:4:1: the key 'axes' is given twice"):
        load_sweep(p)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n", "~\n"])
def test_an_empty_config_file_is_an_error_and_braces_mean_defaults(tmp_path, text):
    msg = config_error(write(tmp_path, text))
    assert "empty" in msg and "{}" in msg
    assert load_config(write(tmp_path, "{}\n", "d.yaml")).to_dict() == load_config({}).to_dict()


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "huge.yaml"
    p.write_text("name: x\nbogus: " + "a" * (3 * 2**20) + "\n")   # 3 MB under an unknown key
    t = time.perf_counter()
    msg = config_error(p)
    assert time.perf_counter() - t < 0.5
    assert f"more than the {MAX_YAML_BYTES:,}" in msg
    with pytest.raises(ConfigError, match="more than"):   # an override's text: the same bound
        load_config({}, ["name=" + "b" * (MAX_YAML_BYTES + 1)])


LAUGHS = "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else ', '.join(['1'] * 9)}]\n"
                 for i in range(9))


@pytest.mark.parametrize("text, words", [
    (LAUGHS + "name: *a8\n", "expand to"),                 # 9**9 values from 90 written
    ("name: &a [*a]\n", "contains itself"),                # a list that holds itself
    ("model: &m {hidden: *m}\n", "contains itself"),       # a mapping that holds itself
])
def test_aliases_that_explode_or_loop_are_refused_at_once(tmp_path, text, words):
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=words):
        parse_yaml(text, "c.yaml")
    assert time.perf_counter() - t < 0.5


def test_small_aliases_still_work():
    data = parse_yaml("a: &h [32, 16]\nmodel: {hidden: *h}\n", "c.yaml")
    assert data["model"]["hidden"] == [32, 16]


@pytest.mark.parametrize("text, where, words", [
    ("name: x\ntrain:\n  epochs: 2\n  batchsize: 8\n", ":4:3: train.batchsize", "unknown key"),
    ("name: x\noptimizer: {type: sgd, lr: -0.1}\n", ":2:28: optimizer.lr", "greater than 0"),
    ("name: x\noptimizer:\n  learning_rate: -1\n", ":3:18: optimizer.learning_rate",
     "greater than 0"),                                    # named as written: the alias
    ("name: x\nmodel:\n  hidden: [64, x]\n", ":3:16: model.hidden[1]", "an integer"),
    ("name: x\ndata: {source: npz}\n", ":2:1: data.path", "reads a file"),   # a missing key:
])                                                          # its section's place
def test_key_and_value_errors_name_file_line_column(tmp_path, text, where, words):
    p = write(tmp_path, text)
    msg = config_error(p)
    assert msg.startswith(f"{p}{where}:"), msg
    assert words in msg


def test_errors_from_building_the_network_name_the_place_too(tmp_path):
    from bptrain.training.trainer import train
    p = write(tmp_path, "name: x\nmodel:\n  layers:\n    - {type: affine, units: 32}\n"
                        "    - {type: relu}\n    - {type: affine, units: 7}\n")
    with pytest.raises(ConfigError) as info:
        train(load_config(p), out=tmp_path / "out")
    assert str(info.value).startswith(f"{p}:6:29: model.layers[2].units:")
    assert not (tmp_path / "out").exists()


def test_a_key_set_by_an_override_is_not_placed_in_the_file(tmp_path):
    p = write(tmp_path, "name: x\noptimizer: {type: sgd, lr: 0.1}\n")
    msg = config_error(p, ["optimizer.lr=-1"])
    assert msg.startswith("optimizer.lr: must be greater than 0"), msg


def test_learning_rate_is_lr_in_files_overrides_and_sweeps(tmp_path):
    from bptrain.training.sweep import plan, sweep_from_dict
    assert load_config(MLP, ["optimizer.learning_rate=0.05"]).optimizer.lr == 0.05
    assert load_config({"optimizer": {"learning_rate": 0.2}}).optimizer.lr == 0.2
    sw = sweep_from_dict({"name": "s", "base": str(MLP),
                          "axes": {"optimizer.learning_rate": [0.03, 0.3]}}, tmp_path / "s.yaml")
    assert [t.config.optimizer.lr for t in plan(sw)] == [0.03, 0.3]


def test_names_too_long_for_a_folder_are_config_errors(tmp_path):
    msg = config_error(write(tmp_path, "name: " + "n" * 240 + "\n"))
    assert ":1:7: name: 240 bytes is too long" in msg


# ---- sizes: estimated before anything is allocated -----------------------------------------------
@pytest.mark.parametrize("override, where", [
    ("model.hidden=[10000000000]", "model.hidden[0]"),
    ("model.hidden=[64, 4611686018427387904]", "model.hidden[1]"),
    ("model.hidden=[100000, 100000]", "model.hidden[1]"),
])
def test_networks_that_cannot_fit_are_refused_with_the_number(tmp_path, override, where):
    from bptrain.training.trainer import train
    t = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        train(load_config(MLP, [override]), out=tmp_path / "out")
    msg = str(info.value)
    assert msg.startswith(f"{where}: the network (") and "would need about" in msg
    assert "reduce model.hidden" in msg and "available here" in msg
    assert time.perf_counter() - t < 5 and not (tmp_path / "out").exists()


def test_the_budget_reads_a_limit_and_never_overflows(monkeypatch):
    monkeypatch.setenv(budget.ENV, "2G")
    assert budget.available_bytes() == 2 * 2**30
    assert budget.parse_size("512M") == 512 * 2**20 and budget.parse_size("x") is None
    with pytest.raises(ConfigError, match="more than the 2.0 GiB"):
        budget.check(3 * 2**30, "three gigabytes", "ask for less")
    budget.check(2**20, "a megabyte", "-")
    assert "PiB" in budget.human(10**40) and budget.human(2**2000).startswith("more than")


@pytest.mark.parametrize("source, option", [
    ("blobs", {"n_features": 10**12}), ("blobs", {"n_samples": 10**13}),
    ("regression", {"n_samples": 10**10}), ("spiral", {"n_classes": 10**7}),
    ("xor", {"n_samples": 10**14}),
])
def test_synthetic_data_that_cannot_fit_is_refused_before_it_is_made(source, option):
    t = time.perf_counter()
    with pytest.raises(DataError, match="data.n_|would need about"):
        load_dataset(source, **option)
    assert time.perf_counter() - t < 2


def test_class_counts_beyond_reason_are_data_errors():
    with pytest.raises(DataError, match=f"at most {MAX_CLASSES:,} classes"):
        load_dataset("digits", n_classes=10**15)


@pytest.mark.parametrize("y", [
    np.array([0, 1] * 9 + [1, 2**64 - 1], dtype=np.uint64),
    np.array([0.0, 1.0] * 9 + [1.0, 1e300]),
    np.array([0, 1] * 9 + [1, 2**62], dtype=np.int64),
], ids=["2**64-1", "1e300", "2**62"])
def test_labels_beyond_reason_are_data_errors_before_any_cast(tmp_path, y):
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(20, 3)), y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value in cast" on the way
        with pytest.raises(DataError) as info:
            load_dataset("npz", path=str(tmp_path / "d.npz"))
    msg = str(info.value)
    assert "d.npz: y has class label" in msg and "row 19" in msg and "Remap" in msg
    if y.dtype == np.uint64:
        assert "18446744073709551615" in msg


@pytest.mark.parametrize("value", [1e200, 1e308, -1e308], ids=["1e200", "1e308", "-1e308"])
@pytest.mark.parametrize("standardize", [True, False])
def test_features_that_overflow_float64_are_data_errors_naming_the_column(
        tmp_path, value, standardize):
    X = np.random.default_rng(0).normal(size=(30, 4))
    X[7, 2] = value
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(30) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy RuntimeWarning either
        with pytest.raises(DataError) as info:
            load_dataset("npz", path=str(tmp_path / "d.npz"), standardize=standardize)
    assert "X column 2" in str(info.value) and "row 7" in str(info.value)
    assert "Rescale" in str(info.value)


def test_standardization_statistics_that_overflow_name_the_column():
    X = np.zeros((4, 3))
    X[:, 1] = [1e300, -1e300, 1e300, -1e300]  # its variance overflows float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="feature column 1 .* too large to standardize"):
            feature_stats(X, "d.npz")
    mean, std = feature_stats(np.array([[1e100, 1.0], [-1e100, 2.0]]))  # large but fine
    assert np.isfinite(mean).all() and np.isfinite(std).all()


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose member's header declares `shape` (float64) with no data behind it: a
    tiny file that would make np.load allocate it all."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = shape
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", buf.getvalue())
        z.writestr("y.npy", buf.getvalue())


def test_an_npz_declaring_huge_arrays_is_refused_from_its_headers(tmp_path):
    _npz_declaring(tmp_path / "bomb.npz", (10**7, 10**6))
    t = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb\.npz: its arrays .* would need about"):
        load_npz_safely(tmp_path / "bomb.npz")
    assert time.perf_counter() - t < 1
