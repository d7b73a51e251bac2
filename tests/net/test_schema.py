"""Issue 16 item 8: `bptrain schema`, a JSON Schema of the config from the dataclasses and the
gate registry. Every shipped config validates; what it rejects bptrain rejects; random configs
it accepts bptrain accepts."""
from __future__ import annotations

import json
import random
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

from bptrain.errors import ConfigError  # noqa: E402
from bptrain.net import config as C  # noqa: E402
from bptrain.net.config import load_config, parse_yaml  # noqa: E402
from bptrain.net.schema import config_schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sweep"))


@pytest.fixture(scope="module")
def schema():
    s = config_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return s


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def errors(validator, data):
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(data)]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(validator, path):
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if "base" in data and "axes" in data:
        pytest.skip("a sweep file")
    assert errors(validator, data) == []
    # and the resolved config.yaml a run directory gets (every key written out)
    from bptrain.net.config import dump_config
    resolved = parse_yaml(dump_config(load_config(path, ["train.early_stopping={}"])), "dump")
    assert errors(validator, resolved) == []


def test_schema_covers_every_key_and_the_registry(schema):
    def walk(cls, node, path):
        props = node["properties"]
        assert node["additionalProperties"] is False, path
        want = {f.name for f in fields(cls) if f.name != "source_path"}
        want |= {a for f in fields(cls) for a in f.metadata.get("aliases", ())}
        assert set(props) == want, path
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            tp = hints.get(f.name)
            inner = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
            if is_dataclass(inner) and inner is not C.LossConfig:
                sub = props[f.name]
                sub = next((s for s in sub.get("anyOf", [sub]) if s.get("type") == "object"))
                walk(inner, sub, f"{path}.{f.name}")
    walk(C.Config, schema, "config")
    p = schema["properties"]
    assert p["model"]["properties"]["activation"]["enum"] == list(C.activations())
    assert p["loss"]["properties"]["type"]["enum"] == list(C.losses())
    assert schema["$defs"]["layer"]["properties"]["type"]["enum"] == list(C.layer_types())
    assert {"relu", "affine", "conv", "batchnorm", "residual", "gate"} <= set(C.layer_types())
    assert p["optimizer"]["properties"]["learning_rate"]["exclusiveMinimum"] == 0
    assert p["train"]["properties"]["batch_size"] == {"type": "integer", "exclusiveMinimum": 0,
                                                      "default": 64}
    conv = next(r["then"] for r in schema["$defs"]["layer"]["allOf"]
                if r["if"]["properties"]["type"]["const"] == "conv")
    assert conv["required"] == ["filters"] and conv["additionalProperties"] is False
    assert conv["properties"]["stride"]["exclusiveMinimum"] == 0


def test_a_gate_class_defined_later_is_a_layer_type():
    from bptrain.engine.gate import Gate, Setting, registry

    class Swish(Gate):
        name, kind = "swish_for_schema_test", "activation"
        settings = {"beta": Setting(1.0, float, gt=0.0)}
    try:
        layer = config_schema()["$defs"]["layer"]
        assert "swish_for_schema_test" in layer["properties"]["type"]["enum"]
        v = jsonschema.Draft202012Validator(config_schema())
        ok = {"model": {"layers": [{"type": "swish_for_schema_test", "beta": 2},
                                   {"type": "affine"}]}}
        assert errors(v, ok) == []
        assert errors(v, {"model": {"layers": [{"type": "swish_for_schema_test", "beta": 0},
                                               {"type": "affine"}]}})
    finally:
        registry._classes.pop(("activation", "swish_for_schema_test"))


REJECTED = {
    "unknown top key": {"nmae": "x"},
    "unknown section key": {"optimizer": {"momentun": 0.5}},
    "wrong type": {"train": {"epochs": "ten"}},
    "float for an integer": {"train": {"batch_size": 6.5}},
    "bool for a number": {"optimizer": {"lr": True}},
    "out of range": {"data": {"val_fraction": 1.0}},
    "zero lr": {"optimizer": {"learning_rate": 0}},
    "lr twice": {"optimizer": {"lr": 0.1, "learning_rate": 0.2}},
    "unknown choice": {"optimizer": {"type": "adamm"}},
    "unknown activation": {"model": {"activation": "relu6"}},
    "unknown loss": {"loss": {"type": "softmx"}},
    "negative margin": {"loss": {"type": "svm", "margin": -1}},
    "unknown loss key": {"loss": {"type": "svm", "marginn": 1}},
    "hidden list of strings": {"model": {"hidden": ["a"]}},
    "zero hidden units": {"model": {"hidden": [0]}},
    "empty layers": {"model": {"layers": []}},
    "unknown layer type": {"model": {"layers": [{"type": "dense"}]}},
    "layer without type": {"model": {"layers": [{"units": 3}]}},
    "setting of another layer": {"model": {"layers": [{"type": "relu", "units": 3},
                                                      {"type": "affine"}]}},
    "conv without filters": {"model": {"layers": [{"type": "conv"}, {"type": "affine"}]}},
    "bad stride": {"model": {"layers": [{"type": "conv", "filters": 2, "stride": 0},
                                        {"type": "affine"}]}},
    "dropout p 1": {"model": {"layers": [{"type": "dropout", "p": 1.0}, {"type": "affine"}]}},
    "merge of one": {"model": {"layers": [{"type": "affine", "units": 3, "name": "a"},
                                          {"type": "add", "inputs": ["a"]},
                                          {"type": "affine"}]}},
    "input and inputs": {"model": {"layers": [{"type": "affine", "units": 3, "name": "a"},
                                              {"type": "relu", "input": "a", "inputs": ["a"]},
                                              {"type": "affine"}]}},
    "bad layer name": {"model": {"layers": [{"type": "affine", "units": 3, "name": "1st"},
                                            {"type": "affine"}]}},
    "residual without layers": {"model": {"layers": [{"type": "residual"},
                                                     {"type": "affine"}]}},
    "residual with a bad inner layer": {"model": {"layers": [
        {"type": "affine", "units": 4},
        {"type": "residual", "layers": [{"type": "relu", "slope": 1}]}, {"type": "affine"}]}},
    "gate without class": {"model": {"layers": [{"type": "gate"}, {"type": "affine"}]}},
    "npz without path": {"data": {"source": "npz"}},
    "svm on regression": {"data": {"source": "regression"}, "loss": {"type": "svm"}},
    "per_step with step decay": {"schedule": {"type": "step", "per_step": True}},
    "plateau that never reduces": {"schedule": {"type": "plateau", "gamma": 1.0}},
    "unknown early stopping metric": {"train": {"early_stopping": {"metric": "acc"}}},
    "early stopping patience -1": {"train": {"early_stopping": {"patience": -1}}},
    "name escaping runs/": {"name": "../elsewhere"},
    "blank name": {"name": "  "},
    "section as a value": {"train": 5},
}


@pytest.mark.parametrize("label", REJECTED)
def test_what_the_schema_rejects_bptrain_rejects(validator, label):
    data = REJECTED[label]
    assert errors(validator, data), f"the schema accepts {data}"
    with pytest.raises(ConfigError):
        load_config(data)


# ---- random configs from the schema ---------------------------------------------------------
def _number(sch, rng, integer):
    lo = sch.get("minimum", sch.get("exclusiveMinimum", -5 if not integer else 0))
    hi = sch.get("maximum", sch.get("exclusiveMaximum", lo + (100 if integer else 5)))
    if integer:
        lo = int(lo) + ("exclusiveMinimum" in sch)
        hi = int(hi) - ("exclusiveMaximum" in sch)
        return rng.randint(lo, max(lo, hi))
    for _ in range(100):
        v = rng.choice([lo, hi, rng.uniform(lo, hi), round(rng.uniform(lo, hi), 2)])
        if (v >= sch.get("minimum", -1e9) and v > sch.get("exclusiveMinimum", -1e9)
                and v <= sch.get("maximum", 1e9) and v < sch.get("exclusiveMaximum", 1e9)):
            return v
    return (lo + hi) / 2


def generate(sch, rng, root, depth=0):
    """A random value of the schema `sch` (properties, enums, ranges); it may still break an
    if/then or not rule, which the test checks with jsonschema first."""
    if "$ref" in sch:
        return generate(root["$defs"][sch["$ref"].split("/")[-1]], rng, root, depth)
    if "anyOf" in sch:
        return generate(rng.choice(sch["anyOf"]), rng, root, depth)
    if "enum" in sch:
        return rng.choice(sch["enum"])
    if "const" in sch:
        return sch["const"]
    kind = sch.get("type")
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in ("integer", "number"):
        return _number(sch, rng, kind == "integer")
    if kind == "string":
        return rng.choice(["a", "run_1", "my-run", "x.y"])
    if kind == "array":
        n = rng.randint(sch.get("minItems", 0), sch.get("minItems", 0) + 3)
        return [generate(sch["items"], rng, root, depth + 1) for _ in range(n)]
    if kind == "object":
        out = {}
        for key, sub in sch.get("properties", {}).items():
            if key == "layers" and depth > 0:
                continue  # model.layers: made by random_layers, whose graphs are whole
            if rng.random() < 0.5:
                out[key] = generate(sub, rng, root, depth + 1)
        return out
    return None


def random_layers(schema, rng):
    """A valid graph: flat layers of random types and settings, ending in an affine layer."""
    layer = schema["$defs"]["layer"]
    rules = {r["if"]["properties"]["type"]["const"]: r["then"] for r in layer["allOf"]}
    simple = [t for t, then in rules.items()
              if t not in ("residual", "gate") and "inputs" not in then.get("required", [])]
    out = []
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(simple)
        entry = {"type": kind}
        for key, sub in rules[kind]["properties"].items():
            if key in ("type", "name", "input", "inputs"):
                continue
            if key in rules[kind].get("required", []) or rng.random() < 0.5:
                entry[key] = generate(sub, rng, schema, 1)
        if kind == "affine" and entry.get("units") is None:
            entry["units"] = rng.randint(1, 50)  # hidden affine layers need units (bptrain)
        out.append(entry)
    if rng.random() < 0.3:  # a residual block around an activation and an affine layer
        out += [{"type": "affine", "units": 8},
                {"type": "residual", "layers": [{"type": "tanh"},
                                                {"type": "affine", "units": 8}]}]
    return out + [{"type": "affine"}]


def test_random_configs_the_schema_accepts_bptrain_accepts(schema, validator):
    rng = random.Random(16)
    accepted = 0
    for i in range(300):
        data = generate(schema, rng, schema)
        if rng.random() < 0.4:
            data.setdefault("model", {})["layers"] = random_layers(schema, rng)
        if errors(validator, data):
            continue
        accepted += 1
        try:
            load_config(data)
        except ConfigError as e:
            pytest.fail(f"the schema accepts {json.dumps(data)} but bptrain says: {e}")
    assert accepted > 100


def test_cli_prints_and_writes_the_schema(tmp_path):
    from typer.testing import CliRunner

    from bptrain.app.cli import app
    r = CliRunner().invoke(app, ["schema"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    assert printed == config_schema()
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    out = tmp_path / "bptrain.schema.json"
    r = CliRunner().invoke(app, ["schema", "-o", str(out)])
    assert r.exit_code == 0 and json.loads(out.read_text()) == printed


def test_the_committed_schema_file_is_current_and_the_configs_point_at_it():
    import json as _json
    import subprocess
    import sys
    from pathlib import Path as _Path

    root = _Path(__file__).resolve().parents[2]
    committed = _json.loads((root / "bptrain.schema.json").read_text())
    # a fresh interpreter: only the library's gates are registered (no test's own gates)
    fresh = subprocess.run([sys.executable, "-m", "bptrain", "schema"], capture_output=True,
                           text=True, check=True, cwd=root).stdout
    assert committed == _json.loads(fresh), \
        "bptrain.schema.json is stale: run `bptrain schema -o bptrain.schema.json`"
    for path in (root / "configs").glob("*.yaml"):
        if not path.name.startswith("sweep"):  # a sweep file is not a config
            first = path.read_text().splitlines()[0]
            assert first == "# yaml-language-server: $schema=../bptrain.schema.json", path
