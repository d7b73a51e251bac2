"""Issue 8, fuzzing: malformed configs and overrides never give a traceback, a hang, or a
changed run directory.

Every generated input must either build a valid Config or raise ConfigError (never another
exception), within a few seconds (an interval timer interrupts a hang). Through the command
line (typer's CliRunner, in-process), a failing input exits 2 with a one-paragraph message and
leaves an existing run directory byte-for-byte as it was; a valid one is only printed
(--print-config), never trained.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, strategies as st

import bptrain.app.cli
from bptrain.net import config as config_module
from bptrain.net.config import (Config, ConfigError, activations, apply_override,
                                config_from_dict, dump_config, layer_types, load_config, losses,
                                parse_yaml)
from conftest import hsettings

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
EXAMPLES = 60


# ---- no hangs -----------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the interval timer; a BaseException so no `except Exception` swallows it."""


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def config_or_config_error(fn, *args) -> Config | ConfigError:
    """fn(*args) must return a Config or raise ConfigError with a short message."""
    with no_hang():
        try:
            cfg = fn(*args)
        except ConfigError as e:
            msg = str(e)
            assert msg.strip() and len(msg) < 3000, msg[:3000]
            return e
    assert isinstance(cfg, Config)
    return cfg


def assert_round_trips(cfg: Config) -> None:
    """A valid config survives its own dump: what --print-config shows is what ran."""
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


# ---- strategies ---------------------------------------------------------------------------
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source_path"}
FIELDS = sorted({f.name for cls in (Config, config_module.DataConfig, config_module.ModelConfig,
                                    config_module.LossConfig,
                                    config_module.RegularizationConfig,
                                    config_module.OptimizerConfig, config_module.ScheduleConfig,
                                    config_module.TrainConfig)
                 for f in dataclasses.fields(cls)} - {"source_path"})
CHOICES = sorted(set(activations() + losses() + config_module.SOURCES + layer_types())
                 | {"sgd", "adam", "adamw", "rmsprop", "nesterov", "momentum", "l1", "l2",
                    "none", "step", "cosine", "float32", "float64", "onehot", "he", "xavier"})
DOTTED = sorted(f"{s}.{f.name}" for s in SECTIONS
                for cls in [getattr(config_module, f"{s.capitalize()}Config", None)] if cls
                for f in dataclasses.fields(cls))
SCALAR_TEXT = ["0", "-1", "1", "3", "64", "0.5", "1e-4", "1e400", "-1e400", "1" + "0" * 400,
               ".nan", ".inf", "-.inf", "0x1F", "0o17", "0b101", "1_000", "1:20", "2001-02-03",
               "2001-13-45", "null", "~", "yes", "no", "on", "true", "False", "''", '""',
               "[]", "{}", "[64, 32]", "[0]", "[-5]", "[[1]]", "{a: 1}", "relu", "softmax",
               "sgd", "svm", "mse", "digits", "npz", "é", "!!int x", "!!float y",
               "!!timestamp z", "!!binary ===", "!!set {a}", "!!str", "!!python/name:os.system",
               "!!python/object/apply:os.system ['echo PWNED']", "&a [*a]", "*a", "|\n x",
               ">\n y", "'unterminated", '"bad \\q escape"', "[1, 2", "{a: 1", "a: b: c",
               "- 1\n- 2", "\t", "\x00", "\x07", "\ufeff", "\u2028", "---\n---"]
FRAGMENTS = ["\n", "\n  ", "\n    ", ": ", ":", "- ", "[", "]", "{", "}", ", ", "# c\n", "---\n",
             "...\n", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "'", '"', "\\", "%YAML 1.1\n",
             "%TAG ! tag:x,2000:\n", "!foo ", *SECTIONS, *FIELDS, *SCALAR_TEXT]

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**80, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(CHOICES))
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(list(SECTIONS)), st.text(max_size=8),
                 st.integers(-3, 3))
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=8)
sections = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=5)
raw_configs = st.dictionaries(
    st.sampled_from(list(SECTIONS)) | keys,
    st.one_of(sections, values), max_size=6)
yamlish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)),
                   max_size=30).map("".join)


@st.composite
def mutated_yaml(draw) -> str:
    """A dumped random config with a few random insertions and deletions."""
    text = yaml.safe_dump(draw(raw_configs), sort_keys=False)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:i] + draw(st.sampled_from(FRAGMENTS) | st.text(max_size=3)) + text[i:]
        else:
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
    return text


dotted_keys = st.one_of(
    st.sampled_from(DOTTED),
    st.lists(st.one_of(st.sampled_from(FIELDS), st.sampled_from(list(SECTIONS)),
                       st.text(max_size=5), st.just("")), max_size=4).map(".".join))
override_values = st.one_of(
    st.sampled_from(SCALAR_TEXT), st.text(max_size=10), yamlish,
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
overrides = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", dotted_keys, override_values),   # key=value
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(DOTTED), st.sampled_from(SCALAR_TEXT)),
    dotted_keys,                                                      # no '='
    st.builds(lambda k, v: f"{k}=={v}", dotted_keys, override_values),
    st.builds(lambda v: f"={v}", override_values),                    # no key
    st.text(max_size=15))
override_lists = st.lists(overrides, min_size=1, max_size=3)

# The inputs this suite's fuzzing found (and config.py now handles); kept as explicit examples.
BILLION_LAUGHS = "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else ', '.join(['1'] * 9)}]\n"
    for i in range(9)) + "name: *a8\n"
NASTY_YAML = [
    BILLION_LAUGHS,
    "name: &a [*a]\n",                          # a self-referencing list
    "model: &m {hidden: *m}\n",                 # a self-referencing mapping
    "[" * 1000,                                 # deeper than the parser's recursion
    "name: 1" + "0" * 5000 + "\n",              # more digits than int() converts
    "name: 0x" + "f" * 5000 + "\n",             # an int too long to print
    "name: 2001-13-45\n", "name: !!timestamp x\n", "seed: !!int x\n", "seed: !!bool x\n",
    "optimizer: {lr: 1" + "0" * 400 + "}\n",    # an int beyond float
    "train: {epochs: -1" + "0" * 40 + "}\n",     # beyond 64 bits
    "model: {hidden: [0]}\n", "model: {hidden: [-5]}\n",
    'name: "a\\0b"\n', "name: ''\n", "name: ../../elsewhere\n", "name: /abs\n",
    "? [a, b]\n: 1\n", "{1: 2, null: 3, .nan: 4}\n",
]


# ---- in-process properties ----------------------------------------------------------------
@pytest.mark.parametrize("text", NASTY_YAML, ids=lambda t: repr(t[:24]))
def test_known_nasty_yaml_is_a_config_error(text):
    result = config_or_config_error(lambda: config_from_dict(parse_yaml(text, "nasty.yaml")))
    assert isinstance(result, ConfigError), result


@hsettings(EXAMPLES)
@given(raw=raw_configs)
@example(raw={"optimizer": {"lr": 10**400}})
@example(raw={"model": {"hidden": [0]}, "name": ""})
def test_random_mappings_give_a_config_or_a_config_error(raw):
    result = config_or_config_error(config_from_dict, raw)
    if isinstance(result, Config):
        assert_round_trips(result)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="bptrain-fuzz-") as d:
        yield Path(d)


@hsettings(EXAMPLES)
@given(text=st.one_of(yamlish, mutated_yaml()))
@example(text=BILLION_LAUGHS)
@example(text="train: {epochs: 3\nseed: 1\n")
def test_random_yaml_files_give_a_config_or_a_config_error(scratch, text):
    path = scratch / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    result = config_or_config_error(load_config, path)
    if isinstance(result, Config):
        assert_round_trips(result)


@hsettings(EXAMPLES)
@given(sets=override_lists)
@example(sets=["optimizer.lr"])
@example(sets=["=1"])
@example(sets=["optimizer..lr=1"])
@example(sets=["name.x=1"])
@example(sets=["seed=1" + "0" * 5000])
def test_random_overrides_give_a_config_or_a_config_error(sets):
    result = config_or_config_error(load_config, MLP, sets)
    if isinstance(result, Config):
        assert_round_trips(result)
    # apply_override alone, on a fresh mapping, fails the same way or not at all
    raw = yaml.safe_load(MLP.read_text())
    with no_hang():
        for o in sets:
            try:
                apply_override(raw, o)
            except ConfigError:
                break


# ---- through the command line: an existing run is never touched -----------------------------
def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under the run's parent folder (the run and any sibling a run might create),
    by path, with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished run from a short real training, and the fingerprint of its folder."""
    from bptrain.training.trainer import train
    parent = tmp_path_factory.mktemp("fuzz-runs")
    run = parent / "mlp"
    train(load_config(MLP, ["train.epochs=1"]), out=run)
    return run, _fingerprint(parent)


RUNNER = None


def cli(args: list[str]):
    global RUNNER
    from typer.testing import CliRunner
    RUNNER = RUNNER or CliRunner()
    with no_hang(20):
        result = RUNNER.invoke(bptrain.app.cli.app, args, env={"BPTRAIN_DEBUG": None,
                                                           "COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    return result


def check_run_attempt(run: Path, config: Path, sets: list[str]) -> None:
    flags = [f"--set={o}" for o in sets]
    expected = config_or_config_error(load_config, config, sets)
    if isinstance(expected, Config):
        # valid: only print it (the print-config path), never train
        result = cli(["run", str(config), *flags, "--out", str(run), "--print-config"])
        assert result.exit_code == 0, result.output
        assert config_from_dict(yaml.safe_load(result.stdout)) == expected
    else:
        result = cli(["run", str(config), *flags, "--out", str(run)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: "), result.output
        if flags:  # a resume of the existing run refuses --set before reading anything
            result = cli(["run", "--resume", str(run), *flags])
            assert result.exit_code == 2, result.output
            assert "--resume" in result.output


@hsettings(EXAMPLES)
@given(sets=override_lists)
@example(sets=["train.epochs=0"])
@example(sets=["name=!!python/object/apply:os.system ['touch PWNED']"])
def test_fuzzed_overrides_on_the_command_line_leave_a_run_untouched(existing_run, sets):
    run, before = existing_run
    check_run_attempt(run, MLP, sets)
    assert _fingerprint(run.parent) == before
    assert not Path("PWNED").exists()


@hsettings(EXAMPLES // 2)
@given(text=st.one_of(yamlish, mutated_yaml()))
def test_fuzzed_config_files_on_the_command_line_leave_a_run_untouched(existing_run, scratch,
                                                                      text):
    run, before = existing_run
    path = scratch / "cli.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_run_attempt(run, path, [])
    assert _fingerprint(run.parent) == before
