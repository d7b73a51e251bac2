"""Issue 13: networks beyond a chain, from YAML. Residual blocks and named-layer graphs with
add and concat, batch and layer normalization, gradient accumulation, and the shipped deep
configs; checked against NumPy written here, numerical gradients and float64 PyTorch autograd.

The reference networks below never call the builder: `interpret` walks a config's layer list
itself and takes the parameters by their documented names (the k-th layer that makes a weight
owns W{k}, b{k}; the k-th normalization layer gamma{k}, beta{k}, and a batchnorm's running
statistics are running_mean{k}, running_var{k}), in config order.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bptrain.engine.gates.merge  # noqa: F401  (registers concat)
from bptrain.engine.gradcheck import check_gate, check_graph
from bptrain.engine.gates.merge import Concat
from bptrain.errors import ConfigError
from bptrain.net.config import load_config
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data, build_model
from bptrain.net.optim import Optimizer
from bptrain.training.trainer import train
from conftest import Boom, StopAtStep  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
EPS = 1e-5
D, C, N = 6, 4, 16   # input features, classes, batch rows of the small problems


# ---- an independent reference: the config's layers, interpreted ---------------------------
class NumpyOps:
    """The layer math of the issue (CS231n's definitions), written out in NumPy."""

    def __init__(self, training=True, buffers=None):
        self.training, self.buffers = training, buffers

    relu = staticmethod(lambda x: np.maximum(x, 0.0))
    tanh = staticmethod(np.tanh)
    sigmoid = staticmethod(lambda x: 1.0 / (1.0 + np.exp(-x)))
    concat = staticmethod(lambda xs: np.concatenate(xs, axis=1))

    def batchnorm(self, x, gamma, beta, k):
        if self.training:
            mean, var = x.mean(axis=0), x.var(axis=0)            # biased variance
        else:
            mean, var = self.buffers[f"running_mean{k}"], self.buffers[f"running_var{k}"]
        return gamma * (x - mean) / np.sqrt(var + EPS) + beta

    def layernorm(self, x, gamma, beta):
        mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
        return gamma * (x - mean) / np.sqrt(var + EPS) + beta


def interpret(layers, P, X, ops):
    """The scores of the network `layers` declares, with parameters P by name."""
    count = {"W": 0, "gamma": 0}
    named = {}

    def chain(layers, h):
        for layer in layers:
            kind = layer["type"]
            if "inputs" in layer:
                ins = [named[n] for n in layer["inputs"]]
            elif "input" in layer:
                ins = [named[layer["input"]]]
            else:
                ins = [h]
            x = ins[0]
            if kind == "residual":
                h = x + chain(layer["layers"], x)
            elif kind == "affine":
                count["W"] += 1
                k = count["W"]
                h = x @ P[f"W{k}"]
                if layer.get("bias", True):
                    h = h + P[f"b{k}"]
            elif kind in ("batchnorm", "layernorm"):
                count["gamma"] += 1
                k = count["gamma"]
                if kind == "batchnorm":
                    h = ops.batchnorm(x, P[f"gamma{k}"], P[f"beta{k}"], k)
                else:
                    h = ops.layernorm(x, P[f"gamma{k}"], P[f"beta{k}"])
            elif kind == "add":
                h = ins[0]
                for other in ins[1:]:
                    h = h + other
            elif kind == "concat":
                h = ops.concat(ins)
            else:
                h = getattr(ops, kind)(x)
            if "name" in layer:
                named[layer["name"]] = h
        return h

    return chain(layers, X)


def fully_connected(hidden, norm):
    """CS231n's FullyConnectedNet as a layer list: affine - norm - relu per hidden layer."""
    layers = []
    for units in hidden:
        layers += [{"type": "affine", "units": units}, {"type": norm}, {"type": "relu"}]
    return layers + [{"type": "affine"}]


def softmax_loss(scores, y):
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


def problem(seed=0, n=N):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)) * 1.5 + 0.3
    y = rng.integers(0, C, n)
    y[:C] = np.arange(C)
    return rng, X, y


def randomize(model, rng):
    """Biases, gammas and betas away from their initial 0 / 1, so that every term matters."""
    for name, value in model.params.items():
        if name.startswith(("b", "beta")):
            model.params[name] = rng.uniform(-0.5, 0.5, value.shape)
        elif name.startswith("gamma"):
            model.params[name] = rng.uniform(0.5, 1.5, value.shape)


def net(layers, normalization=None, strength=1e-3, dtype="float64", seed=1, **model):
    raw = {"seed": seed, "model": {"layers": layers, "init": "xavier", **model},
           "regularization": {"type": "l2", "strength": strength},
           "train": {"dtype": dtype}}
    if normalization:
        raw["model"] = {"hidden": layers, "normalization": normalization, "init": "xavier"}
    return build_model(load_config(raw), D, C)


def assert_gradients_check(model, X, y, tol=1e-5):
    model.graph.feed(X=X, y=y)
    results = check_graph(model.graph, model.loss)
    assert [r.name for r in results] == list(model.params)
    for r in results:
        assert r.checked == model.params[r.name].size, r.name
        assert r.status != "fail" and r.max_rel_error < tol, r


# Two graphs the issue names, written in YAML's terms.
RESIDUAL = [
    {"type": "affine", "units": 8}, {"type": "relu"},
    {"type": "residual", "layers": [{"type": "affine", "units": 8}, {"type": "relu"},
                                    {"type": "affine", "units": 8}]},
    {"type": "residual", "name": "block2",
     "layers": [{"type": "affine", "units": 8}, {"type": "batchnorm"}, {"type": "tanh"},
                {"type": "affine", "units": 8}]},
    {"type": "relu"}, {"type": "affine"},
]

DAG = [
    {"type": "affine", "units": 16, "name": "stem"}, {"type": "relu", "name": "a"},
    {"type": "affine", "units": 16, "name": "left"}, {"type": "tanh", "name": "lt"},
    {"type": "affine", "units": 16, "input": "a"}, {"type": "layernorm"},
    {"type": "sigmoid", "name": "rt"},
    {"type": "add", "inputs": ["a", "lt", "rt"], "name": "sum"},
    {"type": "concat", "inputs": ["sum", "a"], "name": "cat"},
    {"type": "affine", "units": 16}, {"type": "relu"}, {"type": "affine", "name": "out"},
]


def residual_by_hand(P, X):
    relu = NumpyOps.relu
    h = relu(X @ P["W1"] + P["b1"])
    h = h + (relu(h @ P["W2"] + P["b2"]) @ P["W3"] + P["b3"])
    z = h @ P["W4"] + P["b4"]
    bn = P["gamma1"] * (z - z.mean(0)) / np.sqrt(z.var(0) + EPS) + P["beta1"]
    h = h + (np.tanh(bn) @ P["W5"] + P["b5"])
    return relu(h) @ P["W6"] + P["b6"]


def dag_by_hand(P, X):
    a = np.maximum(X @ P["W1"] + P["b1"], 0)
    lt = np.tanh(a @ P["W2"] + P["b2"])
    z = a @ P["W3"] + P["b3"]
    ln = P["gamma1"] * (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + EPS)
    rt = 1 / (1 + np.exp(-(ln + P["beta1"])))
    cat = np.hstack([a + lt + rt, a])
    return np.maximum(cat @ P["W4"] + P["b4"], 0) @ P["W5"] + P["b5"]


# ---- concat: the new merge gate -----------------------------------------------------------
def test_concat_gate_forward_backward_and_shapes():
    rng = np.random.default_rng(0)
    for label, gate, inputs in Concat.examples(rng):
        out = gate.forward(*inputs)
        np.testing.assert_array_equal(out, np.concatenate(inputs, axis=1))
        for r in check_gate(gate, inputs, name=label):
            assert r.status == "pass" and r.max_rel_error < 1e-7, r
    g = Concat()
    g.forward(np.zeros((2, 3)), np.zeros((2, 1)))
    up = np.arange(8.0).reshape(2, 4)
    d1, d2 = g.backward(up)
    np.testing.assert_array_equal(d1, up[:, :3])
    np.testing.assert_array_equal(d2, up[:, 3:])
    assert Concat.build([(3,), (4,), (1,)], {}, None).out_shape == (8,)
    assert Concat.build([(3, 5, 5), (2, 5, 5)], {}, None).out_shape == (5, 5, 5)
    for shapes, words in ([(3,), (2, 5, 5)], "(3,) and (2, 5, 5)"), \
                         ([(3, 5, 5), (2, 4, 5)], "(3, 5, 5) and (2, 4, 5)"), ([(3,)], "two"):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            Concat.build(shapes, {}, None)


# ---- residual blocks and named-layer graphs -----------------------------------------------
@pytest.mark.parametrize("layers, by_hand", [(RESIDUAL, residual_by_hand), (DAG, dag_by_hand)],
                         ids=["residual", "dag"])
def test_graph_scores_match_numpy_and_gradients_check(layers, by_hand):
    rng, X, y = problem(2)
    model = net(layers)
    randomize(model, rng)
    P = dict(model.params)
    model.graph.forward(model.scores_node, X=X)   # training mode: batch statistics
    train_scores = model.scores_node.value.copy()
    np.testing.assert_allclose(train_scores, by_hand(P, X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(train_scores, interpret(layers, P, X, NumpyOps()),
                               rtol=1e-12, atol=1e-12)
    loss, _ = model.loss_and_grads(X, y)
    W = [v for k, v in P.items() if k.startswith("W")]
    want = softmax_loss(by_hand(P, X), y) + 0.5e-3 * sum((w * w).sum() for w in W)
    assert loss == pytest.approx(want, rel=1e-12)
    assert_gradients_check(model, X, y)   # batchnorm (in RESIDUAL) in training mode


def test_graph_layers_show_their_inputs_and_names():
    model = net(DAG)
    by_name = {l.name: l for l in model.layers}
    assert [n.name for n in by_name["sum"].node.inputs] == ["a", "lt", "rt"]
    assert [n.name for n in by_name["cat"].node.inputs] == ["sum", "a"]
    assert by_name["cat"].out_shape == (32,) and by_name["cat"].kind == "concat"
    assert by_name["out"].out_shape == (C,)
    # config order: stem W1, left W2, the unnamed branch W3 and its layernorm gamma1, ...
    assert list(model.params) == ["W1", "b1", "W2", "b2", "W3", "b3", "gamma1", "beta1",
                                  "W4", "b4", "W5", "b5"]
    assert model.params["W4"].shape == (32, 16)
    res = net(RESIDUAL)
    assert [l.kind for l in res.layers if l.type == "residual"] == ["residual add"] * 2
    assert "block2" in {l.name for l in res.layers}
    assert list(res.buffers) == ["running_mean1", "running_var1"]


@pytest.mark.parametrize("layers", [RESIDUAL, DAG], ids=["residual", "dag"])
def test_graph_configs_train_on_digits(tmp_path, layers):
    cfg = load_config({"name": "g", "model": {"layers": layers},
                       "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
                       "train": {"epochs": 4}})
    result = train(cfg, out=tmp_path / "run")
    h = result.history
    assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"] or h[-1]["train_loss"] < 0.2
    assert result.metrics["val_acc"] >= 0.85, result.metrics   # measured: 0.91 (residual), 0.94 (dag)


def test_batchnorm_network_gradients_check_in_training_mode():
    rng, X, y = problem(3)
    model = net([7, 5], normalization="batchnorm")
    randomize(model, rng)
    assert model.graph.training
    assert_gradients_check(model, X, y)
    ln = net([7, 5], normalization="layernorm")
    randomize(ln, rng)
    assert_gradients_check(ln, X, y)


# ---- against float64 PyTorch autograd -----------------------------------------------------
def random_layers(rng, width=8):
    """A random network of residual blocks, batchnorm and layernorm layers and a concat-add
    branch, every one of them at least once."""
    acts = ["relu", "tanh", "sigmoid"]
    act = lambda: {"type": str(rng.choice(acts))}  # noqa: E731
    layers = [{"type": "affine", "units": width}, act() | {"name": "blk0"}]
    kinds = ["residual", "batchnorm", "layernorm", "branch"]
    kinds += list(rng.choice(kinds, 2))
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds, 1):
        prev = f"blk{i - 1}"
        if kind == "residual":
            inner = [{"type": "affine", "units": width}]
            if rng.random() < 0.7:
                inner.append({"type": str(rng.choice(["batchnorm", "layernorm"]))})
            inner += [act(), {"type": "affine", "units": width}]
            layers.append({"type": "residual", "layers": inner, "name": f"blk{i}"})
        elif kind in ("batchnorm", "layernorm"):
            layers += [{"type": "affine", "units": width}, {"type": kind},
                       act() | {"name": f"blk{i}"}]
        else:  # two branches side by side, concatenated, added back to their input
            half = width // 2
            layers += [{"type": "affine", "units": half, "input": prev},
                       act() | {"name": f"l{i}"},
                       {"type": "affine", "units": width - half, "input": prev},
                       {"type": "batchnorm", "name": f"r{i}"},
                       {"type": "concat", "inputs": [f"l{i}", f"r{i}"], "name": f"c{i}"},
                       {"type": "add", "inputs": [f"c{i}", prev], "name": f"blk{i}"}]
    return layers + [{"type": "affine"}]


class TorchOps:
    """The same layers with torch.nn.functional; batchnorm keeps torch's own running
    statistics (momentum 0.1 in torch's convention = our 0.9) and records its inputs."""

    def __init__(self, torch, running=None, training=True):
        self.torch, self.F = torch, torch.nn.functional
        self.running = running if running is not None else {}
        self.training = training
        self.bn_inputs = {}
        self.relu, self.tanh, self.sigmoid = torch.relu, torch.tanh, torch.sigmoid

    def concat(self, xs):
        return self.torch.cat(xs, dim=1)

    def batchnorm(self, x, gamma, beta, k):
        if k not in self.running:
            D = x.shape[1]
            self.running[k] = (self.torch.zeros(D, dtype=x.dtype),
                               self.torch.ones(D, dtype=x.dtype))
        self.bn_inputs[k] = x.detach().numpy().copy()
        mean, var = self.running[k]
        return self.F.batch_norm(x, mean, var, gamma, beta, training=self.training,
                                 momentum=0.1, eps=EPS)

    def layernorm(self, x, gamma, beta):
        return self.F.layer_norm(x, (x.shape[1],), gamma, beta, eps=EPS)


def torch_loss_and_grads(torch, layers, params, X, y, strength, ops):
    P = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in params.items()}
    scores = interpret(layers, P, torch.from_numpy(X), ops)
    loss = torch.nn.functional.cross_entropy(scores, torch.from_numpy(y)) + 0.5 * strength * sum(
        (W * W).sum() for k, W in P.items() if k.startswith("W"))
    loss.backward()
    return float(loss.detach()), {k: t.grad.numpy() for k, t in P.items()}


def assert_close_arrays(got, want, tol, what):
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= tol, (what, err)


@pytest.mark.parametrize("seed", range(6))
def test_random_residual_normalized_networks_match_torch(seed):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    rng = np.random.default_rng(100 + seed)
    layers = random_layers(rng)
    strength = 1e-2
    cfg = load_config({"seed": seed, "model": {"layers": layers, "init": "xavier"},
                       "regularization": {"type": "l2", "strength": strength}})
    model = build_model(cfg, D, C)
    randomize(model, rng)
    bn = [k[len("running_mean"):] for k in model.buffers if k.startswith("running_mean")]
    running = {}
    start = model.buffer_arrays()
    expected = {k: (start[f"running_mean{k}"], start[f"running_var{k}"]) for k in bn}
    lr = 0.05
    for step in range(4):   # a few SGD steps, each on a new batch
        _, X, y = problem(1000 * seed + step)
        loss, grads = model.loss_and_grads(X, y)
        ops = TorchOps(torch, running)
        t_loss, t_grads = torch_loss_and_grads(torch, layers, model.params, X, y, strength, ops)
        assert loss == pytest.approx(t_loss, rel=1e-10, abs=1e-12), step
        assert list(t_grads) == list(grads)
        for k in grads:
            assert_close_arrays(grads[k], t_grads[k], 1e-10, (step, k))
        buffers = model.buffer_arrays()
        for k in bn:
            x = ops.bn_inputs[int(k)]
            m_old, v_old = expected[k]
            expected[k] = (0.9 * m_old + 0.1 * x.mean(axis=0), 0.9 * v_old + 0.1 * x.var(axis=0))
            t_mean, t_var = (t.numpy() for t in running[int(k)])
            # running_mean: the same as torch's; running_var: ours averages the BIASED batch
            # variance (CS231n), torch's the unbiased one
            np.testing.assert_allclose(buffers[f"running_mean{k}"], t_mean, rtol=1e-12,
                                       atol=1e-14)
            np.testing.assert_allclose(buffers[f"running_mean{k}"], expected[k][0],
                                       rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(buffers[f"running_var{k}"], expected[k][1], rtol=1e-12)
            assert not np.allclose(buffers[f"running_var{k}"], t_var, rtol=1e-6)
        for k, g in grads.items():
            model.params[k] = model.params[k] - lr * g
    # evaluation mode: torch with our running statistics gives our eval scores
    _, X, y = problem(7)
    eval_running = {int(k): (torch.from_numpy(np.array(v[0])), torch.from_numpy(np.array(v[1])))
                    for k, v in expected.items()}
    with torch.no_grad():
        P = {k: torch.from_numpy(np.array(v)) for k, v in model.params.items()}
        t_scores = interpret(layers, P, torch.from_numpy(X),
                             TorchOps(torch, eval_running, training=False)).numpy()
    assert_close_arrays(model.scores(X), t_scores, 1e-10, "eval scores")


def test_batchnorm1d_module_running_stats_after_training_steps():
    """The same with torch.nn.BatchNorm1d(momentum=0.1) modules inside a torch.nn network."""
    torch = pytest.importorskip("torch")
    model = net([7, 5], normalization="batchnorm")
    rng = np.random.default_rng(4)
    randomize(model, rng)
    P = model.params
    tnet = torch.nn.Sequential(
        torch.nn.Linear(D, 7), torch.nn.BatchNorm1d(7, momentum=0.1, eps=EPS), torch.nn.ReLU(),
        torch.nn.Linear(7, 5), torch.nn.BatchNorm1d(5, momentum=0.1, eps=EPS), torch.nn.ReLU(),
        torch.nn.Linear(5, C)).double()
    opt = Optimizer(load_config({"optimizer": {"type": "sgd", "lr": 0.1}}).optimizer, dict(P))
    expected_var = {1: np.ones(7), 2: np.ones(5)}
    for step in range(5):
        _, X, y = problem(50 + step)
        with torch.no_grad():   # torch's parameters follow ours
            for i, lin in ((1, 0), (2, 3), (3, 6)):
                tnet[lin].weight.copy_(torch.from_numpy(P[f"W{i}"].T))
                tnet[lin].bias.copy_(torch.from_numpy(P[f"b{i}"]))
            for i, bn in ((1, 1), (2, 4)):
                tnet[bn].weight.copy_(torch.from_numpy(P[f"gamma{i}"]))
                tnet[bn].bias.copy_(torch.from_numpy(P[f"beta{i}"]))
        inputs = {}
        hooks = [tnet[bn].register_forward_hook(
            lambda m, inp, out, i=i: inputs.__setitem__(i, inp[0].detach().numpy().copy()))
            for i, bn in ((1, 1), (2, 4))]
        tnet.train()
        t_loss = torch.nn.functional.cross_entropy(tnet(torch.from_numpy(X)),
                                                   torch.from_numpy(y))
        for h in hooks:
            h.remove()
        loss, grads = model.loss_and_grads(X, y)
        reg = 0.5e-3 * sum((P[f"W{i}"] ** 2).sum() for i in (1, 2, 3))
        assert loss == pytest.approx(float(t_loss.detach()) + reg, rel=1e-10)
        for i, bn in ((1, 1), (2, 4)):
            np.testing.assert_allclose(model.buffer_arrays()[f"running_mean{i}"],
                                       tnet[bn].running_mean.numpy(), rtol=1e-12, atol=1e-14)
            x = inputs[i]
            expected_var[i] = 0.9 * expected_var[i] + 0.1 * x.var(axis=0)
            np.testing.assert_allclose(model.buffer_arrays()[f"running_var{i}"],
                                       expected_var[i], rtol=1e-12)
        opt.step(grads, 0.1)


# ---- config errors ------------------------------------------------------------------------
def config_error(layers) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(load_config({"model": {"layers": layers}}), D, C)
    assert info.value.exit_code == 2
    return str(info.value)


def test_a_forward_reference_is_a_cycle_error():
    msg = config_error([{"type": "affine", "units": 8, "name": "a", "input": "b"},
                        {"type": "relu", "name": "b"}, {"type": "affine"}])
    assert "model.layers[0].input" in msg and "'b'" in msg and "model.layers[1]" in msg
    assert "later" in msg and "cycle" in msg
    msg = config_error([{"type": "affine", "units": 8, "name": "a"},
                        {"type": "residual", "name": "r",
                         "layers": [{"type": "affine", "units": 8, "input": "r"}]},
                        {"type": "affine"}])
    assert "model.layers[1].layers[0].input" in msg and "'r'" in msg


def test_a_name_used_twice():
    msg = config_error([{"type": "affine", "units": 8, "name": "h"},
                        {"type": "relu", "name": "h"}, {"type": "affine"}])
    assert "'h'" in msg and "used twice" in msg
    assert "model.layers[0]" in msg and "model.layers[1]" in msg


def test_an_input_that_names_no_layer():
    msg = config_error([{"type": "affine", "units": 8, "name": "h"},
                        {"type": "relu", "input": "hh"}, {"type": "affine"}])
    assert "model.layers[1].input" in msg and "'hh'" in msg and "h" in msg


def test_an_add_of_100_and_64_features_names_both_shapes():
    msg = config_error([{"type": "affine", "units": 100, "name": "wide"},
                        {"type": "affine", "units": 64, "name": "narrow"},
                        {"type": "add", "inputs": ["wide", "narrow"], "name": "sum"},
                        {"type": "affine"}])
    assert "model.layers[2]" in msg and "add" in msg
    assert "(100,)" in msg and "(64,)" in msg


def test_a_merge_of_one_input():
    msg = config_error([{"type": "affine", "units": 8, "name": "a"},
                        {"type": "concat", "inputs": ["a"]}, {"type": "affine"}])
    assert "model.layers[1]" in msg and "inputs: [a, b]" in msg


def test_a_residual_block_that_changes_the_width():
    msg = config_error([{"type": "affine", "units": 8},
                        {"type": "residual", "layers": [{"type": "affine", "units": 5}]},
                        {"type": "affine"}])
    assert "model.layers[1]" in msg and "(8,)" in msg and "(5,)" in msg
    assert "units: 8" in msg


def test_a_config_error_exits_2_from_the_command_line(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  layers:\n    - {type: affine, units: 8, input: later}\n"
                   "    - {type: relu, name: later}\n    - {type: affine}\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "bptrain", "run", str(bad), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "model.layers[0].input" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


# ---- the shorthand: CS231n's FullyConnectedNet ----------------------------------------------
def test_batchnorm_shorthand_names_parameters_in_config_order():
    model = net([7, 6], normalization="batchnorm")
    assert list(model.params) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2",
                                  "W3", "b3"]
    assert [(l.type, l.in_shape, l.out_shape) for l in model.layers] == [
        ("affine", (D,), (7,)), ("batchnorm", (7,), (7,)), ("relu", (7,), (7,)),
        ("affine", (7,), (6,)), ("batchnorm", (6,), (6,)), ("relu", (6,), (6,)),
        ("affine", (6,), (C,))]
    assert list(model.buffers) == ["running_mean1", "running_var1", "running_mean2",
                                   "running_var2"]
    for k, n in ((1, 7), (2, 6)):
        np.testing.assert_array_equal(model.params[f"gamma{k}"], np.ones(n))
        np.testing.assert_array_equal(model.params[f"beta{k}"], np.zeros(n))
        np.testing.assert_array_equal(model.buffer_arrays()[f"running_mean{k}"], np.zeros(n))
        np.testing.assert_array_equal(model.buffer_arrays()[f"running_var{k}"], np.ones(n))
    # the shorthand builds exactly the explicit affine - batchnorm - relu list
    rng, X, y = problem(5)
    randomize(model, rng)
    model.graph.forward(model.scores_node, X=X)
    np.testing.assert_allclose(
        model.scores_node.value,
        interpret(fully_connected([7, 6], "batchnorm"), model.params, X, NumpyOps()),
        rtol=1e-12, atol=1e-12)
    assert [k for k in net([7, 6], normalization="layernorm").params] == list(model.params)


def test_eval_mode_uses_the_running_statistics():
    model = net([7, 6], normalization="batchnorm")
    rng, X, y = problem(6)
    randomize(model, rng)
    for step in range(5):   # warm the running statistics up
        _, Xs, ys = problem(60 + step)
        model.loss_and_grads(Xs, ys)
    buffers = model.buffer_arrays()
    assert not np.allclose(buffers["running_mean1"], 0)
    scores = model.scores(X)
    layers = fully_connected([7, 6], "batchnorm")
    want = interpret(layers, model.params, X, NumpyOps(training=False, buffers=buffers))
    np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12)
    assert not np.allclose(scores, interpret(layers, model.params, X, NumpyOps()), atol=1e-3)
    # evaluation does not move the statistics; a single row can be scored
    np.testing.assert_array_equal(model.buffer_arrays()["running_var2"], buffers["running_var2"])
    np.testing.assert_allclose(model.scores(X[:1]), want[:1], rtol=1e-12, atol=1e-12)
    loss, _ = model.evaluate_loss(X, y)
    assert loss == pytest.approx(softmax_loss(want, y) + 0.5e-3 * sum(
        (model.params[f"W{i}"] ** 2).sum() for i in (1, 2, 3)), rel=1e-12)


def test_float32_batchnorm_networks_train_and_stay_float32(tmp_path):
    model = net([7, 6], normalization="batchnorm", dtype="float32")
    _, X, y = problem(8)
    X32 = X.astype(np.float32)
    opt = Optimizer(load_config({}).optimizer, dict(model.params))
    for _ in range(3):
        loss, grads = model.loss_and_grads(X32, y)
        assert np.isfinite(loss)
        assert all(g.dtype == np.float32 for g in grads.values())
        opt.step(grads, 0.01)
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert all(v.dtype == np.float32 for v in model.buffer_arrays().values())
    assert model.scores(X32).dtype == np.float32
    model64 = net([7, 6], normalization="batchnorm")
    for k in model64.params:
        model64.params[k] = model.params[k]
    model64.load_buffers(model.buffer_arrays())
    np.testing.assert_allclose(model.scores(X32), model64.scores(X), rtol=1e-4, atol=1e-4)
    cfg = load_config({"name": "f32", "model": {"layers": RESIDUAL},
                       "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
                       "train": {"epochs": 3, "dtype": "float32"}})
    result = train(cfg, out=tmp_path / "run")
    assert result.metrics["val_acc"] >= 0.85
    for name in ("model.npz", "best.npz"):
        with np.load(tmp_path / "run" / name) as f:
            assert {"running_mean1", "running_var1", "gamma1", "beta1"} <= set(f.files)
            for k in f.files:
                if not k.startswith("_"):
                    assert f[k].dtype == np.float32, (name, k)


# ---- gradient accumulation ------------------------------------------------------------------
def final_params(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "model.npz") as f:
        return {k: f[k] for k in f.files if not k.startswith("_")}


@pytest.mark.parametrize("shuffle", [False, True])
def test_accumulate_4_of_16_is_one_step_of_64(tmp_path, shuffle):
    base = {"name": "acc", "model": {"hidden": [32, 16], "init": "he"},
            "regularization": {"type": "l2", "strength": 1e-3},
            "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
            "schedule": {"type": "step", "every": 1, "gamma": 0.5},
            # 30 steps: the whole first epoch (its last batch has 29 rows), into the second
            "train": {"iterations": 30, "shuffle": shuffle, "eval_every": 1}}
    big = load_config(base, ["train.batch_size=64", "train.accumulate=1"])
    small = load_config(base, ["train.batch_size=16", "train.accumulate=4"])
    a = train(big, out=tmp_path / "big")
    b = train(small, out=tmp_path / "small")
    assert a.summary["steps"] == b.summary["steps"] == 30
    pa, pb = final_params(a.run_dir), final_params(b.run_dir)
    assert list(pa) == list(pb) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    start = build_for_data(big, load_data(big)).params
    for k in pa:
        assert pa[k].dtype == np.float64
        assert not np.allclose(pa[k], start[k])   # it trained
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-12, atol=1e-12, err_msg=k)
    for ra, rb in zip(a.history, b.history):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-11)


def test_accumulate_with_batchnorm_is_per_micro_batch(tmp_path):
    """With batchnorm the micro-batches normalize on their own statistics: not the same
    step as one big batch (README), and the running statistics move once per micro-batch."""
    base = {"name": "accbn", "model": {"hidden": [16], "normalization": "batchnorm"},
            "train": {"iterations": 3, "shuffle": False}}
    a = final_params(train(load_config(base, ["train.batch_size=64"]), out=tmp_path / "a").run_dir)
    b = final_params(train(load_config(base, ["train.batch_size=16", "train.accumulate=4"]),
                           out=tmp_path / "b").run_dir)
    assert not np.allclose(a["W1"], b["W1"], rtol=1e-9, atol=0)
    assert not np.allclose(a["running_mean1"], b["running_mean1"], rtol=1e-6, atol=0)


# ---- resume -------------------------------------------------------------------------------
def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_resume_is_bit_identical_with_running_statistics_and_accumulation(tmp_path):
    cfg = {"name": "resume-bn", "model": {"hidden": [24, 16], "normalization": "batchnorm",
                                          "dropout": 0.1},
           "optimizer": {"type": "adam", "lr": 0.005},
           "schedule": {"type": "exponential", "gamma": 0.8},
           # 1437 rows in batches of 2 x 32 = 64: 23 steps an epoch
           "train": {"epochs": 4, "batch_size": 32, "accumulate": 2}}
    a = train(load_config(cfg), out=tmp_path / "a")
    b_dir = tmp_path / "b"
    with pytest.raises(Boom):    # checkpoints after epochs 1 and 2; crash in epoch 3
        train(load_config(cfg), out=b_dir, reporter=StopAtStep(60))
    ckpt = npz(b_dir / "checkpoint.npz")
    assert {"buffer/running_mean1", "buffer/running_var2"} <= set(ckpt)
    assert int(json.loads(str(ckpt["meta"]))["step"]) == 46
    b = train(None, resume=b_dir)
    assert b.summary["steps"] == a.summary["steps"] == 4 * 23
    for name in ("model.npz", "best.npz"):
        ma, mb = npz(a.run_dir / name), npz(b_dir / name)
        assert sorted(ma) == sorted(mb)
        assert {"running_mean1", "running_var1", "running_mean2", "running_var2"} <= set(ma)
        for k in ma:
            assert ma[k].dtype == mb[k].dtype and np.array_equal(ma[k], mb[k]), (name, k)
    ca, cb = npz(a.run_dir / "checkpoint.npz"), npz(b_dir / "checkpoint.npz")
    for k in ca:
        if k != "meta":
            assert np.array_equal(ca[k], cb[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


# ---- the shipped deep configs -------------------------------------------------------------
def affine_layers(model):
    return [l for l in model.layers if l.type == "affine"]


@pytest.mark.parametrize("name", ["deep-plain", "deep-residual", "deep-batchnorm"])
def test_shipped_deep_configs_validate_and_build(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.data.source == "digits"
    model = build_for_data(cfg, load_data(cfg))
    affines = affine_layers(model)
    assert len(affines) == 21                      # 20 hidden layers and the scores
    assert {l.out_shape for l in affines[:-1]} == {(32,)}
    assert affines[-1].out_shape == (10,)
    kinds = [l.type for l in model.layers]
    assert kinds.count("sigmoid") == 20
    if name == "deep-residual":
        assert kinds.count("residual") == 19
    else:
        assert "residual" not in kinds
    if name == "deep-batchnorm":
        assert cfg.model.normalization == "batchnorm"
        assert kinds.count("batchnorm") == 20 and len(model.buffers) == 40
    else:
        assert "batchnorm" not in kinds
