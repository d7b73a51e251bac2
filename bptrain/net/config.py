"""Config: YAML (or a dict) to a typed, validated `Config`, with `key.sub=value` overrides.

Every section is a dataclass; its fields are the keys a user may write, their defaults the
values used when a key is left out. Unknown keys, wrong types, values out of range and unknown
choices are ConfigErrors naming the key path and the fix. YAML is read with a safe loader (no
tags that build Python objects), extended so that `1e-4` is a number as in YAML 1.2.
"""
from __future__ import annotations

import copy
import difflib
import re
import reprlib
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bptrain.engine import gates as _library  # noqa: F401  (fills the gate registry)
from bptrain.engine.gate import LAYER_KINDS, REQUIRED, Setting, registry
from bptrain.errors import ConfigError


# Choices that come from the gate registry are read when a config is checked, so a gate class
# defined after this module (a user's, a test's) is a valid choice as soon as it exists.
def activations() -> tuple[str, ...]:
    return tuple(registry.names(("activation",)))


def layer_types() -> tuple[str, ...]:
    return tuple(registry.names(LAYER_KINDS)) + ("residual", "gate")


def losses() -> tuple[str, ...]:
    return tuple(registry.names(("loss",)))


SOURCES = ("digits", "spiral", "blobs", "xor", "regression", "npz", "csv", "cifar10", "mnist")


def _opt(default: Any = MISSING, *, choices: Any = None, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None,
         factory: Any = None, aliases: tuple[str, ...] = (), validator: Any = None) -> Any:
    """A config field with its allowed values, checked by `_check_value`. `choices` may be a
    function (read from the gate registry at check time); `aliases` are other spellings of
    the key that users type (learning_rate for lr); `validator(value, path, ctx)` checks a
    field whose shape is not a plain type (model.layers)."""
    meta = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "aliases": aliases,
            "validator": validator}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AugmentConfig:
    """Training images only: random crops after zero padding, random horizontal flips."""
    flip: bool = False
    crop_pad: int = _opt(0, ge=0, le=64)


@dataclass
class DataConfig:
    source: str = _opt("digits", choices=SOURCES)
    path: str | None = None            # npz, csv: a file; cifar10, mnist: a directory
    label: str | None = None           # csv: the label column (default: the last one)
    val_fraction: float = _opt(0.2, ge=0.0, lt=1.0)
    test_fraction: float = _opt(0.0, ge=0.0, lt=1.0)  # held out first, used for no choice
    standardize: bool = True
    n_samples: int | None = _opt(None, gt=0)   # synthetic sources
    n_features: int | None = _opt(None, gt=0)
    n_classes: int | None = _opt(None, ge=2)
    n_outputs: int | None = _opt(None, gt=0)
    noise: float | None = _opt(None, ge=0.0)
    encoding: str | None = _opt(None, choices=("onehot",))  # MSE on class labels
    shape: list[int] | None = _opt(None, gt=0)  # [C, H, W] of each flat row, for images
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    hidden: list[int] = _opt(factory=lambda: [100], gt=0)
    activation: str = _opt("relu", choices=activations)
    normalization: str = _opt("none", choices=("none", "batchnorm", "layernorm"))  # per hidden
    init: str = _opt("he", choices=("gaussian", "xavier", "he", "zeros"))
    std: float = _opt(0.01, ge=0.0)        # gaussian init
    bias: bool = True
    dropout: float = _opt(0.0, ge=0.0, lt=1.0)  # after each hidden activation
    slope: float = _opt(0.01, ge=0.0)      # leaky_relu
    alpha: float = _opt(1.0, gt=0.0)       # elu
    # explicit layers instead of hidden/activation: any graph, see _check_layers
    layers: list[dict] | None = _opt(None, validator=lambda v, path, ctx: _check_layers(v, path, ctx))


@dataclass
class LossConfig:
    """`loss.type` names a registered loss gate; its other keys are the settings of the
    registered losses (margin for svm, reduction for mse), each checked by its gate's Setting."""
    type: str = "softmax"
    settings: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        settings = self.__dict__.get("settings", {})
        if key in settings:
            return settings[key]
        raise AttributeError(f"loss has no setting {key!r}")


@dataclass
class RegularizationConfig:
    type: str = _opt("l2", choices=("l2", "l1", "none"))
    strength: float = _opt(1e-4, ge=0.0)


@dataclass
class OptimizerConfig:
    type: str = _opt("sgd", choices=("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"))
    lr: float = _opt(0.01, gt=0.0, aliases=("learning_rate",))
    momentum: float | None = _opt(None, ge=0.0, lt=1.0)  # sgd: 0; momentum, nesterov: 0.9
    decay_rate: float = _opt(0.99, ge=0.0, lt=1.0)       # rmsprop's alpha
    beta1: float = _opt(0.9, ge=0.0, lt=1.0)
    beta2: float = _opt(0.999, ge=0.0, lt=1.0)
    eps: float = _opt(1e-8, gt=0.0)
    weight_decay: float | None = _opt(None, ge=0.0)      # adamw: 0.01, others: 0


@dataclass
class ScheduleConfig:
    type: str = _opt("constant", choices=("constant", "step", "exponential", "cosine",
                                          "plateau"))
    every: int = _opt(10, gt=0)            # step: epochs between decays
    gamma: float = _opt(0.5, gt=0.0, le=1.0)  # step, exponential, plateau: factor per decay
    min_lr: float = _opt(0.0, ge=0.0)      # cosine, plateau: the floor
    warmup_epochs: int = _opt(0, ge=0)     # linear warm-up, multiplying any type
    per_step: bool = False                 # cosine and warm-up: per step, not per epoch
    patience: int = _opt(10, ge=0)         # plateau: evaluations without improvement
    threshold: float = _opt(1e-4, ge=0.0)  # plateau: relative improvement that counts


@dataclass
class EarlyStoppingConfig:
    metric: str = _opt("val_loss", choices=("val_loss", "val_acc", "train_loss"))
    patience: int = _opt(5, ge=0)          # evaluations without improvement before stopping
    min_delta: float = _opt(0.0, ge=0.0)   # the smallest change that counts as improvement


@dataclass
class TrainConfig:
    epochs: int = _opt(10, gt=0)
    iterations: int | None = _opt(None, gt=0)  # total steps; overrides epochs when set
    batch_size: int = _opt(64, gt=0)
    accumulate: int = _opt(1, gt=0)        # micro-batches whose gradients make one step
    shuffle: bool = True
    eval_every: int = _opt(1, gt=0)        # epochs
    checkpoint_every: int = _opt(1, gt=0)  # epochs
    grad_clip: float | None = _opt(None, gt=0.0)  # max global gradient norm
    dtype: str = _opt("float64", choices=("float64", "float32"))
    train_eval_samples: int = _opt(1000, gt=0)  # training accuracy on a fixed sample
    tensorboard: bool = False              # event files in runs/NAME/tensorboard/ (tensorboardX)
    early_stopping: EarlyStoppingConfig | None = None  # null: train to the end


@dataclass
class Config:
    name: str = "run"
    seed: int = _opt(0, ge=0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=lambda: _build_loss({}, "loss", None))
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source_path: str | None = field(default=None, repr=False, compare=False)  # not a key

    def takes_images(self) -> bool:
        """True when the network has a layer that reads images (C, H, W): a convolution, a
        pooling, a spatial normalization (their gate classes say so by `input_rank`)."""
        def walk(layers: list) -> bool:
            for layer in layers:
                cls = registry.find(layer["type"], LAYER_KINDS)
                if (cls is not None and cls.input_rank == 3) or walk(layer.get("layers", [])):
                    return True
            return False
        return self.model.layers is not None and walk(self.model.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source_path")
        if d["model"]["layers"] is None:
            d["model"].pop("layers")
        d["loss"] = {"type": self.loss.type, **self.loss.settings}
        return d


# ---- YAML ---------------------------------------------------------------------------------
MAX_YAML_BYTES = 256 * 1024    # a config or sweep file; bptrain's own are a few KB
MAX_YAML_VALUES = 100_000      # values after expanding aliases (a "billion laughs" has 10**9)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-4 (YAML 1.1 wants 1.0e-4), and
    refuses a key given twice in one mapping (YAML requires unique keys; PyYAML would keep the
    last silently, so a second `lr:` would quietly win)."""

    where = "config"

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor says so below
                    continue
                if first is not None:
                    m = key_node.start_mark
                    raise ConfigError(
                        f"{self.where}:{m.line + 1}:{m.column + 1}: the key {_show(key)} is "
                        f"given twice in one mapping (first at line {first.line + 1}, again "
                        f"at line {m.line + 1}); YAML keys must be unique, and one value "
                        "would silently replace the other. Keep one of them.")
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"""),
    list("-+0123456789"))


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: Any, where: str) -> None:
    """Refuse a node tree whose aliases refer to themselves or expand to more than
    MAX_YAML_VALUES values, before anything is built from it (each distinct node is counted
    once; its expanded size is 1 + its children's, so this is linear in the file's size)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = min(1 + sum(size[id(c)] for c in _children(node)), 2**62)
            continue
        if key in size:
            continue
        if key in on_path:
            m = node.start_mark
            raise ConfigError(f"{where}:{m.line + 1}:{m.column + 1}: this value contains "
                              "itself through an alias (&a ... *a), which no config can hold; "
                              "write the value out.")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                m = child.start_mark
                raise ConfigError(f"{where}:{m.line + 1}:{m.column + 1}: this value contains "
                                  "itself through an alias (&a ... *a), which no config can "
                                  "hold; write the value out.")
            if id(child) not in size:
                stack.append((child, False))
    total = size[id(root)]
    if total > MAX_YAML_VALUES:
        raise ConfigError(f"{where}: its aliases (&name ... *name) expand to "
                          f"{'more than 10**18' if total >= 2**62 else f'{total:,}'} values, "
                          f"more than the {MAX_YAML_VALUES:,} a config or sweep file may hold "
                          "(a \"billion laughs\" file); write the values out instead of "
                          "nesting aliases.")


def _yaml_marks(root: Any) -> dict[str, tuple[int, int, int, int]]:
    """Key path ("optimizer.lr", "model.layers[0].units") -> (key line, key column, value
    line, value column), 1-based, for every value of the node tree. A node reached again
    through an alias keeps the place where it was first written."""
    marks: dict[str, tuple[int, int, int, int]] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any, Any]] = [("", None, root)]
    while stack:
        path, key_node, node = stack.pop()
        if path:
            k = (key_node or node).start_mark
            v = node.start_mark
            marks.setdefault(path, (k.line + 1, k.column + 1, v.line + 1, v.column + 1))
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for kn, vn in node.value:
                if isinstance(kn, yaml.ScalarNode) and kn.tag != "tag:yaml.org,2002:merge":
                    stack.append((f"{path}.{kn.value}" if path else str(kn.value), kn, vn))
        elif isinstance(node, yaml.SequenceNode):
            for i, vn in enumerate(node.value):
                stack.append((f"{path}[{i}]", None, vn))
    return marks


_NOTHING = object()


def parse_yaml(text: str, where: str, marks: dict | None = None) -> Any:
    """Safe-load YAML; a syntax error or a Python tag is a ConfigError with file:line:column.

    The text is composed into YAML's node tree first, and checked there: no larger than
    MAX_YAML_BYTES, no alias that contains itself or expands beyond MAX_YAML_VALUES, no key
    given twice. With `marks` (a dict), it is filled with each key path's place in the text
    (see `_yaml_marks`), so that later errors can name file:line:column. An empty document is
    returned as None."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: is {len(text):,} characters long, more than the "
                          f"{MAX_YAML_BYTES:,} a config or sweep file may have; a config is a "
                          "few sections of keys and values (data goes in data.path files).")
    loader = None
    try:
        loader = _Loader(text)  # reading starts here: a NUL byte is refused at once
        loader.where = where
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        if marks is not None:
            marks.update(_yaml_marks(node))
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        pos = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = e.problem or "invalid YAML"
        fix = "Fix the YAML syntax there."
        if "could not determine a constructor" in str(e):
            fix = ("Tags that build Python objects are never run: write plain values "
                   "(numbers, strings, lists, mappings).")
        raise ConfigError(f"{pos}: {problem}. {fix}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML ({e}).") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError,
            MemoryError) as e:
        # A well-formed scalar that a safe constructor still cannot build: !!int foo,
        # 2001-13-45, !!timestamp x, an integer of more than 4300 digits, ...
        raise ConfigError(f"{where}: a value cannot be read ({type(e).__name__}: "
                          f"{str(e)[:200]}). Write plain numbers, strings and lists.") from None
    finally:
        if loader is not None:
            loader.dispose()


_KEY_PATH = re.compile(r"^([A-Za-z_][\w-]*(?:\[\d+\])*(?:\.[\w-]+(?:\[\d+\])*)*): ")


def _parent_path(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def locate(message: str, marks: dict | None, where: str | None,
           overridden: typing.Iterable[str] = ()) -> str:
    """A message that starts with a key path ("optimizer.lr: ...") prefixed with the place in
    the config file that path was written ("configs/x.yaml:12:7: optimizer.lr: ..."), or with
    the file alone when the key is not in it (a default). Paths set by an override are the
    command line's, not the file's, and are left as they are."""
    m = _KEY_PATH.match(message)
    if not m or not where or marks is None or message.startswith(f"{where}:"):
        return message
    path = m.group(1)
    for o in overridden:
        if path == o or path.startswith((o + ".", o + "[")):
            return message
    unknown = message[m.end():].startswith("unknown key")
    p = path
    while p:
        if p in marks:
            kl, kc, vl, vc = marks[p]
            line, col = (kl, kc) if unknown or p != path else (vl, vc)
            return f"{where}:{line}:{col}: {message}"
        p = _parent_path(p)
    return f"{where}: {message}"


class located:
    """`with located(cfg): ...` re-raises a ConfigError about a key of `cfg` (say from
    building its network) with the place in its config file, as load_config does."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def __enter__(self) -> "located":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, ConfigError) and self.cfg is not None:
            info = getattr(self.cfg, "_yaml_marks", None)
            if info is not None:
                marks, overridden = info
                text = locate(str(exc), marks, self.cfg.source_path, overridden)
                if text != str(exc):
                    raise ConfigError(text) from None
        return False


# ---- validation ---------------------------------------------------------------------------
def _suggest(word: str, options: typing.Iterable[str]) -> str:
    word = word if isinstance(word, str) else _show(word)
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _show(value: Any) -> str:
    """repr for messages, bounded: nested, shared (YAML aliases) or huge values stay short."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # an int too long to print
        return "a value too large to print"


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(args[0], _type_name(args[0]))}"
    if args and len(typing.get_args(tp)) == 2:
        return _type_name(args[0]) + " or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"
            }.get(tp, getattr(tp, "__name__", str(tp)))


def _check_value(value: Any, tp: Any, meta: dict, path: str, ctx: dict | None = None) -> Any:
    """Return `value` converted to `tp` (an int where a float is wanted), or raise."""
    if meta.get("validator"):
        return None if value is None else meta["validator"](value, path, ctx or {})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        return _check_value(value, tp, meta, path, ctx)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_show(value)}.")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, meta, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    if tp is LossConfig:
        return _build_loss(value, path, ctx)
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, path, ctx)
    ok = (isinstance(value, bool) if tp is bool else
          isinstance(value, int) and not isinstance(value, bool) if tp is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
          isinstance(value, str))
    if not ok:
        hint = " (quote nothing, and write numbers like 0.001 or 1e-3)" if tp is float else ""
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_show(value)}{hint}.")
    if tp is int and not -2**63 <= value < 2**63:
        raise ConfigError(f"{path}: {_show(value)} is too large; give a 64-bit integer.")
    if tp is float:
        try:
            value = float(value)
        except OverflowError:
            value = float("inf")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {value}.")
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    if choices and value not in choices:
        raise ConfigError(f"{path}: unknown value {_show(value)}; choose one of "
                          f"{', '.join(choices)}.{_suggest(value, choices)}")
    for op, bound, words in (("ge", meta.get("ge"), "at least"), ("gt", meta.get("gt"),
                             "greater than"), ("le", meta.get("le"), "at most"),
                             ("lt", meta.get("lt"), "less than")):
        if bound is None or isinstance(value, str):
            continue
        bad = (value < bound if op == "ge" else value <= bound if op == "gt" else
               value > bound if op == "le" else value >= bound)
        if bad:
            raise ConfigError(f"{path}: must be {words} {bound:g}, got {value:g}.")
    return value


def _build(cls: type, data: Any, path: str, ctx: dict | None = None) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    label = path or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of keys to values, got {_show(data)}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.name != "source_path"]
    written = {f.name: alias for f in fields(cls) for alias in f.metadata.get("aliases", ())
               if alias in data and f.name not in data}  # named as the user wrote them
    data = _resolve_aliases(cls, data, path)
    _reject_unknown(data, known, path)
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{path}: the key '{f.name}' is required.")
            continue
        name = written.get(f.name, f.name)
        where = f"{path}.{name}" if path else name
        values[f.name] = _check_value(data[f.name], hints[f.name], dict(f.metadata), where, ctx)
    return cls(**values)


def _resolve_aliases(cls: type, data: dict, path: str) -> dict:
    """`learning_rate: 0.1` means `lr: 0.1`; giving both is an error (which one wins?)."""
    out = dict(data)
    for f in fields(cls):
        for alias in f.metadata.get("aliases", ()):
            if alias in out:
                if f.name in out:
                    raise ConfigError(f"{path}.{alias}: '{alias}' is another name for "
                                      f"'{f.name}', and both are set; keep one.")
                out[f.name] = out.pop(alias)
    return out


def _reject_unknown(data: dict, known: typing.Sequence[str], path: str, what: str = "") -> None:
    for key in data:
        if key not in known:
            shown = key if isinstance(key, str) else _show(key)
            where = f"{path}.{shown}" if path else shown
            raise ConfigError(f"{where}: unknown key{what}.{_suggest(key, known)} Valid keys"
                              f"{' in ' + path if path else ''}: {', '.join(known)}.")


def _setting_value(value: Any, s: Setting, where: str) -> Any:
    """Check one value against a gate's Setting, with the same rules as every config key."""
    tp = s.type | None if s.nullable else s.type
    meta = {"choices": s.choices, "ge": s.ge, "gt": s.gt, "le": s.le, "lt": s.lt}
    return _check_value(value, tp, meta, where)


def _build_loss(data: Any, path: str, ctx: dict | None) -> LossConfig:
    """loss: {type, ...settings}: the settings of every registered loss are accepted (so a
    sweep may switch loss.type), each checked by the Setting of the loss that declares it."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {_show(data)}.")
    kind = _check_value(data.get("type", "softmax"), str, {"choices": losses}, f"{path}.type")
    owners: dict[str, Setting] = {}
    for cls in registry.classes(("loss",)):
        for key, s in cls.settings.items():
            owners.setdefault(key, s)
    own = registry.find(kind, ("loss",)).settings
    owners.update(own)  # the chosen loss's own Setting wins for a shared name
    _reject_unknown(data, ["type", *owners], path)
    settings = {}
    for key, s in owners.items():
        if key in data:
            settings[key] = _setting_value(data[key], s, f"{path}.{key}")
        elif s.default is not REQUIRED:
            settings[key] = s.default
        elif key in own:
            raise ConfigError(f"{path}.{key}: the '{kind}' loss needs '{key}'.")
    return LossConfig(kind, settings)


# ---- layers: any directed acyclic graph, from the gate registry ---------------------------
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_WIRING = ("type", "name", "input", "inputs")


def _check_layers(value: Any, path: str, ctx: dict, names: dict | None = None) -> list[dict]:
    """model.layers: a list of layer mappings, each `{type: ..., settings...}`, optionally
    `name` and `input` (one earlier layer) or `inputs` (several, for merges). Types come from
    the gate registry, plus `residual` (output = input + f(input)) and `gate` (a user's class).
    Returns plain dicts with every setting filled in."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: expected a non-empty list of layers, e.g. [{{type: affine, "
                          f"units: 100}}, {{type: relu}}, {{type: affine}}], got {_show(value)}.")
    names = {} if names is None else names
    return [_check_layer(raw, f"{path}[{i}]", ctx, names) for i, raw in enumerate(value)]


def _check_layer(raw: Any, where: str, ctx: dict, names: dict) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a layer mapping like {{type: relu}}, got "
                          f"{_show(raw)}.")
    if "type" not in raw:
        raise ConfigError(f"{where}: the key 'type' is required (one of "
                          f"{', '.join(layer_types())}).")
    kind = _check_value(raw["type"], str, {"choices": layer_types}, f"{where}.type")
    out: dict[str, Any] = {"type": kind}
    if "name" in raw:
        name = _check_value(raw["name"], str, {}, f"{where}.name")
        if not _NAME.match(name):
            raise ConfigError(f"{where}.name: {_show(name)} is not a layer name; use letters, "
                              "digits and _ . - (starting with a letter), e.g. block1.")
        if name in names:
            raise ConfigError(f"{where}.name: the name '{name}' is used twice, at {names[name]} "
                              f"and {where}; give each layer its own name.")
        names[name] = where
        out["name"] = name
    if "input" in raw and "inputs" in raw:
        raise ConfigError(f"{where}: give either input (one layer) or inputs (a list), not both.")
    if "input" in raw:
        out["input"] = _check_value(raw["input"], str, {}, f"{where}.input")
    if "inputs" in raw:
        out["inputs"] = _check_value(raw["inputs"], list[str], {}, f"{where}.inputs")
        if not out["inputs"]:
            raise ConfigError(f"{where}.inputs: name at least one earlier layer.")
    if kind == "residual":
        _reject_unknown(raw, [*_WIRING, "layers"], where, " for a residual block")
        if "layers" not in raw:
            raise ConfigError(f"{where}.layers: a residual block needs its layers, e.g. "
                              "{type: residual, layers: [{type: affine, units: 64}, {type: relu}, "
                              "{type: affine, units: 64}]}.")
        out["layers"] = _check_layers(raw["layers"], f"{where}.layers", ctx, names)
        return out
    if kind == "gate":
        from bptrain.net.usercode import load_gate_class
        if "class" not in raw:
            raise ConfigError(f"{where}.class: a gate layer names its class, e.g. "
                              "{type: gate, class: my_gates.py:Swish}.")
        cls = load_gate_class(raw["class"], f"{where}.class", ctx.get("base_dir"))
        out["class"] = raw["class"]
        extra = ["class"]
    else:
        cls = registry.find(kind, LAYER_KINDS)
        extra = []
    if cls.kind == "merge" and len(out.get("inputs", [])) < 2:
        raise ConfigError(f"{where}: '{kind}' merges layers: give inputs: [a, b] naming two or "
                          "more earlier layers (each with a name).")
    _reject_unknown(raw, [*_WIRING, *extra, *cls.settings], where, f" for a {kind} layer")
    for key, s in cls.settings.items():
        if key in raw:
            out[key] = _setting_value(raw[key], s, f"{where}.{key}")
        elif s.default is REQUIRED:
            raise ConfigError(f"{where}.{key}: a {kind} layer needs '{key}'"
                              f"{' (' + s.help + ')' if s.help else ''}.")
        else:
            out[key] = s.default
    return out


def _check_units(layers: list[dict], path: str, output: int | None) -> None:
    """Every affine layer needs `units`, except the output layer (index `output`), whose
    units are the data's classes or target columns."""
    for i, layer in enumerate(layers):
        if layer["type"] == "affine" and layer.get("units") is None and i != output:
            raise ConfigError(f"{path}[{i}].units: hidden affine layers need 'units'; only "
                              "the last one's is inferred from the data.")
        if "layers" in layer:
            _check_units(layer["layers"], f"{path}[{i}].layers", None)


def _check_combinations(cfg: Config) -> None:
    """What each key allows alone can still be impossible together."""
    name = cfg.name
    if (not name.strip() or "\0" in name or name.startswith(("/", "\\", "~"))
            or ".." in re.split(r"[/\\]", name) or name.strip() == "."):
        raise ConfigError(f"name: {_show(name)} cannot name a run folder (runs go to "
                          "runs/<name>/); use letters, digits, '-' and '_', e.g. name: mlp.")
    longest = max((len(part.encode("utf-8")) for part in re.split(r"[/\\]", name)), default=0)
    if longest > 200:
        raise ConfigError(f"name: {longest} bytes is too long for a folder name (file systems "
                          "allow 255, and a taken name gets -2, -3, ...); keep it under 200, "
                          "e.g. name: mlp.")
    if cfg.data.source in ("npz", "csv", "cifar10", "mnist") and not cfg.data.path:
        raise ConfigError(f"data.path: the '{cfg.data.source}' source reads a file or folder; "
                          f"set data.path (e.g. --set data.path=my_data.{cfg.data.source}).")
    if cfg.model.layers is not None:
        layers = cfg.model.layers
        affines = [i for i, l in enumerate(layers) if l["type"] == "affine"]
        if not affines:
            raise ConfigError("model.layers: needs at least one affine layer at the top level: "
                              "the last one gives the scores the loss reads.")
        last = len(layers) - 1
        _check_units(layers, "model.layers", affines[-1])
        if any(l["type"] != "dropout" for l in layers[affines[-1] + 1:]):
            raise ConfigError(f"model.layers[{last}]: the network must end with an affine "
                              "layer, whose outputs are the scores the loss reads; remove the "
                              f"'{layers[last]['type']}' after it.")
    if cfg.loss.type == "svm" and cfg.data.source == "regression":
        raise ConfigError("loss.type: the SVM loss needs class labels, and the 'regression' "
                          "source has real-valued targets; use loss.type=mse.")
    sched = cfg.schedule
    if sched.per_step and sched.type in ("step", "exponential", "plateau"):
        raise ConfigError(f"schedule.per_step: applies to cosine and the warm-up; the "
                          f"'{sched.type}' schedule changes the rate per "
                          f"{'evaluation' if sched.type == 'plateau' else 'epoch'}. Drop "
                          "per_step or use schedule.type=cosine.")
    if sched.type == "plateau" and sched.gamma >= 1.0:
        raise ConfigError("schedule.gamma: the plateau schedule multiplies the rate by gamma "
                          "when the loss stops improving, so it must be less than 1 (e.g. 0.5).")


# ---- keys ---------------------------------------------------------------------------------
# Other trainers' words for bptrain's keys: only hints in a "did you mean".
OTHER_WORDS = {"learning_rate": "lr", "hidden_size": "hidden", "hidden_sizes": "hidden",
               "hidden_units": "hidden", "reg": "strength", "lambda": "strength"}


def _section_keys(cls: type) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """(keys, alias -> key, key -> sub-section class or None) of one config section."""
    if cls is LossConfig:
        keys = ["type"] + sorted({k for c in registry.classes(("loss",)) for k in c.settings})
        return keys, {}, {}
    hints = typing.get_type_hints(cls)
    keys = [f.name for f in fields(cls) if f.name != "source_path"]
    aliases = {a: f.name for f in fields(cls) for a in f.metadata.get("aliases", ())}
    subs = {}
    for name in keys:
        tp = hints[name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
        subs[name] = tp if (tp is LossConfig or hasattr(tp, "__dataclass_fields__")) else None
    return keys, aliases, subs


def all_keys(cls: type = None, prefix: str = "") -> list[str]:
    """Every dotted key a config has: sections and their keys."""
    cls = cls or Config
    keys, _, subs = _section_keys(cls)
    out = []
    for key in keys:
        out.append(prefix + key)
        if subs.get(key) is not None:
            out += all_keys(subs[key], prefix + key + ".")
    return out


def check_key(key: Any) -> str:
    """`key`, a dotted config key (aliases resolved: optimizer.learning_rate is
    optimizer.lr), or a ConfigError naming the closest key: what an override or a sweep axis
    may set. Values below a key (model.layers[0]...) are the key's own business."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{_show(key)}: not a dotted config key like optimizer.lr.")
    cls: Any = Config
    parts = key.split(".")
    resolved = []
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if cls is None:
            raise ConfigError(f"{key}: '{prefix}' is a value, not a section; set '{prefix}' "
                              "itself.")
        known, aliases, subs = _section_keys(cls)
        part = aliases.get(part, part)
        if part not in known:
            word = OTHER_WORDS.get(part)
            hint = f" Did you mean '{word}'?" if word in known else _suggest(part, known)
            if hint:  # the whole key with the one part fixed
                fixed = parts[:i] + [hint.split("'")[1]] + parts[i + 1:]
                hint = f" Did you mean '{'.'.join(fixed)}'?"
            else:
                hint = _suggest(key, all_keys())
            raise ConfigError(f"{key}: unknown config key.{hint} Valid keys in "
                              f"{prefix or 'a config'}: {', '.join(known)}.")
        resolved.append(part)
        cls = subs.get(part)
    return ".".join(resolved)


# ---- public -------------------------------------------------------------------------------
def apply_override(data: dict, override: str) -> None:
    """Apply one `dotted.key=value` override to a raw config mapping, in place.
    The value is read as a YAML scalar (or flow list): `1e-4` is a number, `[64, 32]` a list."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: write it as key=value, for example "
                          "optimizer.lr=0.05.")
    key, text = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {override!r}: the key must be a dotted path like "
                          "optimizer.lr.")
    value = parse_yaml(text, f"override {key}") if text.strip() else None
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join(parts[:depth + 1])}' is a value, "
                              "not a section.")
        node = child
    for other in _other_spellings(parts):  # --set optimizer.learning_rate=... replaces lr
        node.pop(other, None)
    node[parts[-1]] = value


def _other_spellings(parts: typing.Sequence[str]) -> tuple[str, ...]:
    """The other names of the key that the dotted `parts` name (lr for learning_rate and the
    reverse), found by walking the Config dataclasses; () for keys that have none."""
    cls: Any = Config
    for depth, part in enumerate(parts):
        f = next((f for f in fields(cls)
                  if part in (f.name, *f.metadata.get("aliases", ()))), None)
        if f is None:
            return ()
        if depth == len(parts) - 1:
            return tuple(n for n in (f.name, *f.metadata.get("aliases", ())) if n != part)
        tp = typing.get_type_hints(cls)[f.name]
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if not hasattr(tp, "__dataclass_fields__"):
            return ()
        cls = tp
    return ()


def config_from_dict(data: Any, overrides: typing.Sequence[str] = (),
                     source: str | None = None, marks: dict | None = None) -> Config:
    """Validate a raw mapping (after overrides) into a Config. `marks` (from `parse_yaml`)
    places each key in the file `source`: an error about a key written there starts with
    file:line:column."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'config'}: the top level must be a mapping of sections "
                          f"(name, data, model, ...), got {type(data).__name__}.")
    data = _deep_copy(data)
    for o in overrides:
        apply_override(data, o)
    overridden = [o.split("=", 1)[0].strip() for o in overrides]
    try:
        cfg = _build(Config, data, "", {"base_dir": Path(source).parent if source else None})
        cfg.source_path = source
        _check_combinations(cfg)
    except ConfigError as e:
        text = locate(str(e), marks, source, overridden)
        if text == str(e):
            raise
        raise ConfigError(text) from None
    if marks is not None:
        cfg.__dict__["_yaml_marks"] = (marks, overridden)  # for `located` (not a config key)
    # Resolve per-type defaults so the saved config says exactly what ran.
    opt = cfg.optimizer
    if opt.momentum is None:
        opt.momentum = 0.9 if opt.type in ("momentum", "nesterov") else 0.0
    if opt.weight_decay is None:
        opt.weight_decay = 0.01 if opt.type == "adamw" else 0.0
    return cfg


def load_config(path: str | Path | dict | Config,
                overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML file (or take a dict) into a validated Config, overrides applied in order."""
    if isinstance(path, Config):
        return config_from_dict(path.to_dict(), overrides, path.source_path)
    if isinstance(path, dict):
        return config_from_dict(path, overrides)
    p = Path(path)
    marks: dict = {}
    data = read_yaml_file(p, "config", "configs/mlp.yaml", marks)
    return config_from_dict(data, overrides, str(p), marks)


def read_yaml_file(path: str | Path, what: str, example: str, marks: dict | None = None) -> Any:
    """Safe-load a YAML file; a missing, unreadable, oversized or empty one is a ConfigError
    saying which. `marks`, if given, is filled as by `parse_yaml`."""
    p = Path(path)
    if not p.is_file():
        hint = " (it is a directory)" if p.is_dir() else ""
        raise ConfigError(f"{p}: {what} file not found{hint}. Give the path to a {what} YAML "
                          f"file, e.g. {example}.")
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:  # refused before a byte of it is read or parsed
            raise ConfigError(f"{p}: the {what} file is {size:,} bytes, more than the "
                              f"{MAX_YAML_BYTES:,} a {what} file may have; a {what} is a few "
                              "keys and values (data belongs in data.path files).")
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the {what} file ({e}); save it as UTF-8 "
                          "text.") from None
    data = parse_yaml(text, str(p), marks)
    if data is None:
        raise ConfigError(f"{p}: the {what} file is empty (or only comments, or null); write "
                          f"its keys, or `{{}}` to mean \"all defaults\".")
    return data


def dump_config(cfg: Config) -> str:
    """The fully resolved config as YAML, loadable by `load_config`."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def _deep_copy(data: Any) -> Any:
    # deepcopy's memo keeps YAML aliases shared (a "billion laughs" file stays small) and
    # copies self-referencing structures (&a [*a]) without endless recursion.
    try:
        return copy.deepcopy(data)
    except RecursionError:
        raise ConfigError("the config is nested too deeply to read; write plain sections of "
                          "keys and values.") from None
