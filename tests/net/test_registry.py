"""The gate registry is the seam: a gate class defined here, in the test module alone, is a
layer type in a YAML dict; a user's gate file is a `{type: gate, class: ...}` layer."""
from __future__ import annotations

import re

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bptrain.engine.gate import Gate, Setting, away_from_zero, registry
from bptrain.engine.gradcheck import check_graph, library_cases
from bptrain.errors import ConfigError
from bptrain.net.config import load_config
from bptrain.net.model import build_model
from bptrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


class Swish(Gate):
    """z = x * sigmoid(beta x). Local gradient s + beta x s (1 - s), s = sigmoid(beta x)."""
    name, kind = "swish_test", "activation"
    settings = {"beta": Setting(1.0, float, gt=0.0)}

    def __init__(self, beta: float = 1.0):
        self.beta = beta

    def forward(self, x):
        self.x = x
        self.s = 0.5 * (1.0 + np.tanh(0.5 * self.beta * x))
        return x * self.s

    def backward(self, upstream):
        s = self.s
        return (upstream * (s + self.beta * self.x * s * (1.0 - s)),)


def swish_net(beta=1.5, **model):
    return {"seed": 3, "data": {"source": "spiral", "n_samples": 150},
            "model": {"layers": [{"type": "affine", "units": 16},
                                 {"type": "swish_test", "beta": beta},
                                 {"type": "affine"}], **model},
            "optimizer": {"type": "adam", "learning_rate": 0.02},
            "train": {"epochs": 30, "batch_size": 32}}


def test_a_gate_defined_here_is_a_layer_type_with_checked_settings():
    assert registry.find("swish_test", ("activation",)) is Swish
    cfg = load_config(swish_net())
    assert cfg.model.layers[1] == {"type": "swish_test", "beta": 1.5}
    assert cfg.optimizer.lr == 0.02  # learning_rate is lr's alias
    with pytest.raises(ConfigError, match=r"model.layers\[1\].beta: must be greater than 0"):
        load_config(swish_net(beta=-1.0))
    with pytest.raises(ConfigError, match=r"model.layers\[1\].slope: unknown key"):
        load_config({"model": {"layers": [{"type": "affine", "units": 4},
                                          {"type": "swish_test", "slope": 0.1},
                                          {"type": "affine"}]}})
    # the shorthand's activation choices come from the registry too
    assert load_config({"model": {"activation": "swish_test"}}).model.activation == "swish_test"


def test_a_gate_defined_here_trains_from_a_yaml_dict(tmp_path):
    cfg = load_config(swish_net())
    model = build_model(cfg, 2, 3)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 2))
    model.graph.feed(X=X, y=rng.integers(0, 3, 8))
    assert all(r.status == "pass" for r in check_graph(model.graph, model.loss, tol=1e-7))
    # forward equals the same network written with NumPy
    P = model.params
    h = X @ P["W1"] + P["b1"]
    h = h / (1 + np.exp(-1.5 * h))
    np.testing.assert_allclose(model.scores(X), h @ P["W2"] + P["b2"], rtol=1e-12)
    result = train(cfg, out=tmp_path / "swish")
    history = result.history
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert result.summary["best"]["val_acc"] > 0.8


def test_library_gates_only_in_the_gradcheck_sweep():
    names = {type(gate).__name__ for _, gate, _ in library_cases()}
    assert "Swish" not in names  # a test's gate is not a library gate
    assert {"Affine", "Conv2D", "BatchNorm", "MaxPool2D", "Add"} <= names


USER_GATE = '''
import numpy as np
from bptrain import Gate


class Swish(Gate):
    def forward(self, x):
        self.x, self.s = x, 1 / (1 + np.exp(-x))
        return x * self.s

    def backward(self, upstream):
        s = self.s
        return (upstream * (s + self.x * s * (1 - s)),)


class NotAGate:
    pass

raise_here = False
'''


def write_user_config(tmp_path, spec):
    (tmp_path / "my_gates.py").write_text(USER_GATE)
    (tmp_path / "broken.py").write_text("import numpy as np\nraise RuntimeError('oops')\n")
    (tmp_path / "net.yaml").write_text(
        "name: user\ndata: {source: spiral, n_samples: 90}\n"
        "model:\n  layers:\n    - {type: affine, units: 8}\n"
        f"    - {{type: gate, class: '{spec}'}}\n    - {{type: affine}}\n"
        "train: {epochs: 2}\n")
    return tmp_path / "net.yaml"


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bptrain", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_user_gate_file_in_a_yaml_network_trains_and_is_announced(tmp_path):
    cfg_path = write_user_config(tmp_path, "my_gates.py:Swish")
    cfg = load_config(cfg_path)
    model = build_model(cfg, 2, 3)
    assert type(model.layers[1].node.gate).__name__ == "Swish"
    assert model.user_code and "my_gates.py" in model.user_code[0]
    rng = np.random.default_rng(1)
    model.graph.feed(X=rng.standard_normal((6, 2)), y=rng.integers(0, 3, 6))
    assert all(r.status == "pass" for r in check_graph(model.graph, model.loss, tol=1e-7))
    out = run_cli("run", "net.yaml", "--out", "runs/u", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "user code: gate class Swish from" in text and "my_gates.py" in text
    assert (tmp_path / "runs" / "u" / "model.npz").is_file()


@pytest.mark.parametrize("spec, words", [
    ("missing.py:Swish", "file missing.py not found"),
    ("my_gates.py:NotAGate", "no Gate subclass named NotAGate"),
    ("my_gates.py:Nothing", "no Gate subclass named Nothing"),
    ("broken.py:Swish", "RuntimeError: oops"),
    ("no_such_module:Swish", "cannot import no_such_module"),
])
def test_bad_user_gate_is_a_one_paragraph_error(tmp_path, spec, words):
    write_user_config(tmp_path, spec)
    out = run_cli("run", "net.yaml", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    message = " ".join(out.stderr.split())
    # the place in the file first (issue 17: file:line:column), then the key path
    assert re.match(r"error: net\.yaml:\d+:\d+: model\.layers\[1\]\.class", message), message
    assert words in message
    assert not (tmp_path / "runs").exists()  # nothing was written
