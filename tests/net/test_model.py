"""build_model: shapes, parameter order and assignment; every loss x activation x regularizer
against numerical gradients and a flat NumPy forward; explicit layers; init schemes; zero-init
symmetry; float32 end to end."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bptrain.net.config import load_config
from bptrain.errors import ConfigError
from bptrain.engine.gradcheck import check_graph
from bptrain.net.model import build_model
from bptrain.net.optim import Optimizer

D, HIDDEN, C, N = 5, [7, 6], 3, 8
ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "elu"]
REGS = ["l2", "l1", "none"]
LOSSES = ["softmax", "svm", "mse_onehot", "mse_real"]
STRENGTH = 0.05

# The numerical gradients below come from the flat forward evaluated in extended precision
# (x87 long double, eps 1e-19, where the platform has it) with h = 1e-6: rounding in the
# difference quotient is ~1e-13 and truncation ~1e-12, so a relative error under 1e-6 is a real
# statement about the float64 backward pass. Where long double is just double, the course's
# float64 recipe (h = 1e-5) and its usual bound 1e-5 apply.
EXTENDED = np.finfo(np.longdouble).eps < 1e-18
GRAD_TOL = 1e-6 if EXTENDED else 1e-5
H = 1e-6 if EXTENDED else 1e-5


# ---- a flat, hand-written forward of the same network -------------------------------------

def act(kind, z, slope=0.01, alpha=1.0):
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if kind == "tanh":
        return np.tanh(z)
    if kind == "elu":
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
    raise AssertionError(kind)


def flat_loss(params, X, y, activation, loss, reg, strength, reduction="sum", margin=1.0):
    """Total loss of X -> [affine -> act] * len(hidden) -> affine, written without the graph.
    Returns (loss, branch fingerprint) where the fingerprint records every kinked choice."""
    n_layers = len([k for k in params if k.startswith("W")])
    h, branches = X, []
    for i in range(1, n_layers + 1):
        z = h @ params[f"W{i}"] + params[f"b{i}"]
        if i < n_layers:
            if activation in ("relu", "leaky_relu", "elu"):
                branches.append(z > 0)
            h = act(activation, z)
        else:
            h = z
    s, n = h, len(X)
    if loss == "softmax":
        shifted = s - s.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        data = -log_probs[np.arange(n), y].sum() / n
    elif loss == "svm":
        correct = s[np.arange(n), y][:, None]
        margins = s - correct + margin
        margins[np.arange(n), y] = 0
        branches.append(margins > 0)
        data = np.maximum(margins, 0).sum() / n
    else:  # mse: y is the target matrix
        data = ((s - y) ** 2).sum()
        if reduction == "mean":
            data = data / n
    Ws = [params[f"W{i}"] for i in range(1, n_layers + 1)]
    if reg == "l2":
        penalty = 0.5 * strength * sum((W * W).sum() for W in Ws)
    elif reg == "l1":
        penalty = strength * sum(np.abs(W).sum() for W in Ws)
        branches.extend(np.sign(W) for W in Ws)
    else:
        penalty = 0.0
    return data + penalty, branches


def flat_numeric_grads(params, X, y, **kw):
    """Centered differences of flat_loss in long double. Returns name -> (grad, kink mask)."""
    P = {k: v.astype(np.longdouble) for k, v in params.items()}
    Xl = X.astype(np.longdouble)
    yl = y if y.dtype.kind == "i" else y.astype(np.longdouble)
    out = {}
    for name, p in P.items():
        g = np.zeros(p.shape)
        kink = np.zeros(p.shape, dtype=bool)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + H
            plus, bp = flat_loss(P, Xl, yl, **kw)
            p[idx] = old - H
            minus, bm = flat_loss(P, Xl, yl, **kw)
            p[idx] = old
            g[idx] = float((plus - minus) / (2 * H))
            kink[idx] = not all(np.array_equal(a, b) for a, b in zip(bp, bm))
        out[name] = (g, kink)
    return out


def rel_error(a, n):
    scale = np.maximum(np.abs(a), np.abs(n))
    return np.where(scale > 0, np.abs(a - n) / np.where(scale > 0, scale, 1), 0.0)


# ---- fixtures --------------------------------------------------------------------------------

def small_problem(seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    labels = rng.integers(0, C, N)
    labels[:C] = np.arange(C)          # every class present
    targets = rng.standard_normal((N, C))
    return rng, X, labels, targets


def make(loss, activation="relu", reg="l2", strength=STRENGTH, reduction="sum", **extra):
    loss_type = "mse" if loss.startswith("mse") else loss
    raw = {"seed": 5, "model": {"hidden": HIDDEN, "activation": activation, **extra},
           "loss": {"type": loss_type, "reduction": reduction},
           "regularization": {"type": reg, "strength": strength}}
    cfg = load_config(raw)
    num_classes = None if loss == "mse_real" else C
    return build_model(cfg, D, C, num_classes=num_classes)


def randomize_biases(model, rng):
    for name in model.params:
        if name.startswith("b"):
            model.params[name] = rng.uniform(-0.5, 0.5, model.params[name].shape)


# ---- structure -------------------------------------------------------------------------------

def test_param_order_and_shapes():
    model = make("softmax")
    assert list(model.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {"W1": (5, 7), "b1": (7,), "W2": (7, 6), "b2": (6,), "W3": (6, 3),
                      "b3": (3,)}
    assert model.num_params == 5 * 7 + 7 + 7 * 6 + 6 + 6 * 3 + 3
    assert [(l.name, l.kind, l.in_dim, l.out_dim, l.params) for l in model.layers] == [
        ("fc1", "affine", 5, 7, 42), ("relu1", "relu", 7, 7, 0),
        ("fc2", "affine", 7, 6, 48), ("relu2", "relu", 6, 6, 0),
        ("scores", "affine", 6, 3, 21)]
    for name in ("b1", "b2", "b3"):
        np.testing.assert_array_equal(model.params[name], 0.0)


def test_readme_example_shapes():
    cfg = load_config({"model": {"hidden": [100]}})
    model = build_model(cfg, input_dim=64, output_dim=10)
    assert model.params["W1"].shape == (64, 100)
    assert model.params["W2"].shape == (100, 10)
    assert model.num_classes == 10


def test_assigning_params_sets_the_weights_used():
    rng, X, y, _ = small_problem()
    model = make("softmax", reg="none")
    W1 = model.params["W1"]
    new = rng.standard_normal((5, 7))
    model.params["W1"] = new
    assert model.params["W1"] is W1                      # the same live array, new values
    np.testing.assert_array_equal(model.params["W1"], new)
    new[0, 0] = 123.0                                     # a copy was taken
    assert model.params["W1"][0, 0] != 123.0
    params = {k: v.copy() for k, v in model.params.items()}
    loss, _ = model.loss_and_grads(X, y)
    want, _ = flat_loss(params, X, y, "relu", "softmax", "none", 0.0)
    assert loss == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match=r"\(5, 7\)"):
        model.params["W1"] = np.zeros((7, 5))
    with pytest.raises(KeyError, match="W9"):
        model.params["W9"] = np.zeros(3)
    with pytest.raises(TypeError):
        del model.params["W1"]


def test_predict_and_scores():
    rng, X, y, _ = small_problem()
    model = make("softmax")
    randomize_biases(model, rng)
    params = {k: v.copy() for k, v in model.params.items()}
    h = X
    for i in (1, 2):
        h = np.maximum(h @ params[f"W{i}"] + params[f"b{i}"], 0)
    scores = h @ params["W3"] + params["b3"]
    np.testing.assert_allclose(model.scores(X), scores, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(model.predict(X), scores.argmax(axis=1))
    reg = make("mse_real")
    assert reg.predict(X).shape == (N, C)


# ---- gradients and loss values: every combination -----------------------------------------

COMBOS = list(itertools.product(LOSSES, ACTIVATIONS, REGS))


@pytest.mark.parametrize("loss, activation, reg", COMBOS,
                         ids=["-".join(c) for c in COMBOS])
def test_loss_and_grads_every_combination(loss, activation, reg):
    rng, X, labels, targets = small_problem()
    model = make(loss, activation, reg)
    randomize_biases(model, rng)
    params = {k: v.copy() for k, v in model.params.items()}
    y_model = targets if loss == "mse_real" else labels
    y_flat = targets if loss == "mse_real" else \
        (np.eye(C)[labels] if loss == "mse_onehot" else labels)
    flat_kw = dict(activation=activation, loss="mse" if loss.startswith("mse") else loss,
                   reg=reg, strength=STRENGTH)

    loss_value, grads = model.loss_and_grads(X, y_model)
    want, _ = flat_loss(params, X, y_flat, **flat_kw)
    assert loss_value == pytest.approx(float(want), rel=1e-12)
    assert list(grads) == list(params)

    numeric = flat_numeric_grads(params, X, y_flat, **flat_kw)
    checked = kinks = 0
    for name, (num, kink) in numeric.items():
        a = grads[name]
        assert a.shape == params[name].shape and a.dtype == np.float64
        err = rel_error(a, num)
        # both essentially zero (e.g. a dead ReLU unit's weights): nothing to compare
        err = np.where(np.abs(a - num) < 1e-13, 0.0, err)
        bad = (err > GRAD_TOL) & ~kink
        assert not bad.any(), (name, np.argwhere(bad)[:3].tolist(), a[bad][:3], num[bad][:3])
        checked += int((~kink).sum())
        kinks += int(kink.sum())
    total = sum(p.size for p in params.values())
    assert checked >= 0.95 * total, (checked, kinks)      # the check covered the network
    # the model's parameters were left as they were
    for k, v in params.items():
        np.testing.assert_array_equal(model.params[k], v)


@pytest.mark.parametrize("loss", LOSSES)
def test_check_graph_agrees(loss):
    """The library's own checker passes on the same networks (relu and tanh, L2)."""
    for activation in ("relu", "tanh"):
        rng, X, labels, targets = small_problem(4)
        model = make(loss, activation, "l2")
        randomize_biases(model, rng)
        model.graph.feed(X=X, y=model.targets(targets if loss == "mse_real" else labels))
        results = check_graph(model.graph, model.loss)
        assert [r.name for r in results] == list(model.params)
        for r in results:
            assert r.checked == model.params[r.name].size
            assert r.status != "fail", r


def test_mse_reduction_mean_is_sum_over_n():
    rng, X, _, targets = small_problem()
    s_model = make("mse_real", reg="none", reduction="sum")
    m_model = make("mse_real", reg="none", reduction="mean")
    loss_sum, g_sum = s_model.loss_and_grads(X, targets)
    loss_mean, g_mean = m_model.loss_and_grads(X, targets)
    assert loss_mean == pytest.approx(loss_sum / N, rel=1e-12)
    for k in g_sum:
        np.testing.assert_allclose(g_mean[k], g_sum[k] / N, rtol=1e-12, atol=1e-15)


def test_onehot_targets():
    model = make("mse_onehot")
    np.testing.assert_array_equal(model.targets(np.array([2, 0])), [[0, 0, 1], [1, 0, 0]])
    assert model.onehot
    assert not make("mse_real").onehot


# ---- hand-computed loss values (CS231n's cat/car/frog scores) ------------------------------

def linear_model(loss, reg="none", strength=0.0, num_classes=3):
    cfg = load_config({"model": {"hidden": []}, "loss": {"type": loss},
                       "regularization": {"type": reg, "strength": strength}})
    return build_model(cfg, 3, 3, num_classes=num_classes)


def test_hand_computed_svm_and_softmax_losses():
    # one sample whose scores are b = (3.2, 5.1, -1.7), true class 0 (the notes' cat)
    X, y = np.zeros((1, 3)), np.array([0])
    svm = linear_model("svm")
    svm.params["b1"] = [3.2, 5.1, -1.7]
    # max(0, 5.1 - 3.2 + 1) + max(0, -1.7 - 3.2 + 1) = 2.9 + 0
    assert svm.loss_and_grads(X, y)[0] == pytest.approx(2.9, abs=1e-12)
    soft = linear_model("softmax")
    soft.params["b1"] = [3.2, 5.1, -1.7]
    # -log(e^3.2 / (e^3.2 + e^5.1 + e^-1.7)) = 2.0403551528
    assert soft.loss_and_grads(X, y)[0] == pytest.approx(2.0403551528, abs=1e-9)
    # two samples: the loss is the batch mean
    X2, y2 = np.zeros((2, 3)), np.array([0, 1])
    # sample 2 (true class 1): max(0, 3.2-5.1+1) + max(0, -1.7-5.1+1) = 0
    assert svm.loss_and_grads(X2, y2)[0] == pytest.approx(2.9 / 2, abs=1e-12)


def test_hand_computed_mse_and_regularization():
    X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    W = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 2.0, 2.0]])
    T = np.array([[0.0, -1.0, 0.5], [1.0, 1.0, 1.0]])
    # scores are W's first two rows; squared errors: (1 + 1 + 0) + (1 + 4 + 4) = 11
    m = linear_model("mse", num_classes=None)
    m.params["W1"] = W
    assert m.loss_and_grads(X, T)[0] == pytest.approx(11.0, abs=1e-12)
    # + 0.5 * 0.1 * sum(W^2) = 0.05 * (5.25 + 10 + 12) = 1.3625 (biases not penalized)
    m = linear_model("mse", "l2", 0.1, num_classes=None)
    m.params["W1"] = W
    m.params["b1"] = [10.0, 10.0, 10.0]
    T2 = T + 10.0
    loss, grads = m.loss_and_grads(X, T2)
    assert loss == pytest.approx(11.0 + 1.3625, abs=1e-12)
    # d/dW of the penalty is strength * W; rows of X pick out W's rows for the data part
    np.testing.assert_allclose(grads["W1"][2], 0.1 * W[2], atol=1e-14)
    m = linear_model("mse", "l1", 0.1, num_classes=None)
    m.params["W1"] = W
    # + 0.1 * sum(|W|) = 0.1 * (3.5 + 4 + 6)
    assert m.loss_and_grads(X, T)[0] == pytest.approx(11.0 + 1.35, abs=1e-12)


def test_zero_strength_regularization_adds_nothing():
    _, X, y, _ = small_problem()
    a = make("softmax", reg="l2", strength=0.0)
    b = make("softmax", reg="none")
    assert a.reg_loss is None
    assert a.loss_and_grads(X, y)[0] == b.loss_and_grads(X, y)[0]


# ---- explicit layers -------------------------------------------------------------------------

def layers_model(p=0.5, seed=0):
    cfg = load_config({"seed": seed, "model": {"layers": [
        {"type": "affine", "units": 6, "bias": False}, {"type": "tanh"},
        {"type": "dropout", "p": p}, {"type": "affine", "units": 4}, {"type": "elu"},
        {"type": "affine"}]}, "regularization": {"type": "l2", "strength": 0.01}})
    return build_model(cfg, D, C)


def test_explicit_layers_with_bias_false_and_dropout():
    model = layers_model()
    assert list(model.params) == ["W1", "W2", "b2", "W3", "b3"]
    assert [(l.kind, l.in_dim, l.out_dim) for l in model.layers] == [
        ("matmul", 5, 6), ("tanh", 6, 6), ("dropout(0.5)", 6, 6), ("affine", 6, 4),
        ("elu(1)", 4, 4), ("affine", 4, 3)]
    assert model.layers[0].params == 30 and model.layers[3].params == 28
    rng, X, y, _ = small_problem()
    X = np.repeat(X, 50, axis=0)
    y = np.repeat(y, 50)
    P = {k: v.copy() for k, v in model.params.items()}

    def flat(mask_scale):
        h = np.tanh(X @ P["W1"]) * mask_scale
        h = act("elu", h @ P["W2"] + P["b2"])
        return h @ P["W3"] + P["b3"]

    # evaluation mode: dropout is the identity
    np.testing.assert_allclose(model.scores(X), flat(1.0), rtol=1e-12, atol=1e-13)
    # training mode: each unit is dropped with probability p, survivors scaled by 1 / (1 - p)
    model.loss_and_grads(X, y)
    pre, post = model.graph["tanh1"].value, model.graph["dropout1"].value
    kept = post != 0
    np.testing.assert_allclose(post[kept], pre[kept] / 0.5, rtol=1e-15)
    assert 0.45 < 1 - kept.mean() < 0.55
    np.testing.assert_allclose(model.graph["scores"].value, flat(kept / 0.5), rtol=1e-12,
                               atol=1e-13)
    # two training passes draw different masks
    model.loss_and_grads(X, y)
    assert not np.array_equal(model.graph["dropout1"].value != 0, kept)


def test_explicit_layers_gradients_with_dropout():
    model = layers_model(p=0.3)
    rng, X, y, _ = small_problem()
    randomize_biases(model, rng)
    model.graph.feed(X=X, y=y)
    results = check_graph(model.graph, model.loss, tol=1e-6)
    assert [r.name for r in results] == ["W1", "W2", "b2", "W3", "b3"]
    for r in results:
        assert r.status == "pass", r


def test_output_units_must_match_classes():
    cfg = load_config({"model": {"layers": [{"type": "affine", "units": 6}, {"type": "relu"},
                                            {"type": "affine", "units": 4}]}})
    with pytest.raises(ConfigError, match=r"model.layers\[2\].units.*4 units.*3 classes"):
        build_model(cfg, D, C)
    with pytest.raises(ConfigError, match="3 target columns"):
        build_model(load_config({"model": {"layers": [{"type": "affine", "units": 4}]},
                                 "loss": {"type": "mse"}}), D, 3)
    ok = load_config({"model": {"layers": [{"type": "affine", "units": 3}]}})
    assert build_model(ok, D, C).params["W1"].shape == (D, C)


def test_dropout_shorthand_inserts_dropout_after_each_hidden_activation():
    model = make("softmax", dropout=0.25)
    assert [l.kind for l in model.layers] == ["affine", "relu", "dropout(0.25)", "affine",
                                              "relu", "dropout(0.25)", "affine"]


def test_leaky_slope_and_elu_alpha_reach_the_gates():
    rng, X, y, _ = small_problem()
    for activation, extra, flat_kw in (("leaky_relu", {"slope": 0.2}, {"slope": 0.2}),
                                       ("elu", {"alpha": 0.5}, {"alpha": 0.5})):
        model = make("softmax", activation, "none", **extra)
        P = {k: v.copy() for k, v in model.params.items()}
        h = X
        for i in (1, 2):
            h = act(activation, h @ P[f"W{i}"] + P[f"b{i}"], **flat_kw)
        np.testing.assert_allclose(model.scores(X), h @ P["W3"] + P["b3"], rtol=1e-12)


# ---- initialization ------------------------------------------------------------------------

@pytest.mark.parametrize("init, std_of", [
    ("he", lambda fi, fo: np.sqrt(2.0 / fi)),
    ("xavier", lambda fi, fo: np.sqrt(2.0 / (fi + fo))),
    ("gaussian", lambda fi, fo: 0.05),
])
def test_init_scheme_empirical_std(init, std_of):
    cfg = load_config({"model": {"hidden": [300], "init": init, "std": 0.05}})
    model = build_model(cfg, 400, 10)
    for name, (fi, fo) in (("W1", (400, 300)), ("W2", (300, 10))):
        W = model.params[name]
        want = std_of(fi, fo)
        tol = 0.02 if W.size > 10000 else 0.1            # sample std: about 1/sqrt(2n)
        assert W.std() == pytest.approx(want, rel=tol), name
        assert abs(W.mean()) < 4 * want / np.sqrt(W.size)
    np.testing.assert_array_equal(model.params["b1"], 0.0)


def test_init_is_seeded():
    a = build_model(load_config({"seed": 1}), 6, 3).params["W1"]
    b = build_model(load_config({"seed": 1}), 6, 3).params["W1"]
    c = build_model(load_config({"seed": 2}), 6, 3).params["W1"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_zeros_init_never_breaks_symmetry():
    cfg = load_config({"model": {"hidden": [6], "activation": "sigmoid", "init": "zeros"},
                       "regularization": {"type": "l2", "strength": 0.01},
                       "optimizer": {"type": "sgd", "lr": 0.5}})
    model = build_model(cfg, D, C)
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], 0.0)
    opt = Optimizer(cfg.optimizer, dict(model.params))
    _, X, y, _ = small_problem()
    for _ in range(5):
        _, grads = model.loss_and_grads(X, y)
        opt.step(grads, cfg.optimizer.lr)
    W1, b1, W2 = model.params["W1"], model.params["b1"], model.params["W2"]
    # the weights did move ...
    assert np.abs(W1).max() > 1e-4 and np.abs(W2).max() > 1e-3
    # ... but every hidden unit is the same unit: equal columns of W1, equal b1, equal rows of W2
    np.testing.assert_allclose(W1, np.repeat(W1[:, :1], 6, axis=1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b1, np.full(6, b1[0]), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(W2, np.repeat(W2[:1], 6, axis=0), rtol=1e-12, atol=1e-15)
    h = model.graph["sigmoid1"].value
    np.testing.assert_allclose(h, np.repeat(h[:, :1], 6, axis=1), rtol=1e-12)


# ---- float32 -------------------------------------------------------------------------------

@pytest.mark.parametrize("loss, reg", [("softmax", "l2"), ("svm", "l1"), ("mse_onehot", "l2"),
                                       ("mse_real", "none")])
def test_float32_end_to_end(loss, reg):
    rng, X, labels, targets = small_problem()
    raw_loss = "mse" if loss.startswith("mse") else loss
    cfg = load_config({"train": {"dtype": "float32"}, "loss": {"type": raw_loss},
                       "regularization": {"type": reg},
                       "model": {"hidden": HIDDEN, "activation": "elu", "dropout": 0.2},
                       "optimizer": {"type": "adam"}})
    model = build_model(cfg, D, C, num_classes=None if loss == "mse_real" else C)
    assert all(p.dtype == np.float32 for p in model.params.values())
    X32 = X.astype(np.float32)
    y = targets.astype(np.float32) if loss == "mse_real" else labels
    opt = Optimizer(cfg.optimizer, dict(model.params))
    for _ in range(2):
        value, grads = model.loss_and_grads(X32, y)
        assert isinstance(value, float) and np.isfinite(value)
        for name, g in grads.items():
            assert g.dtype == np.float32, name
        opt.step(grads, 0.01)
        for name, p in model.params.items():
            assert p.dtype == np.float32, name
    assert all(s.dtype == np.float32 for s in opt.state.values())
    assert model.scores(X32).dtype == np.float32
    # assigning float64 values keeps the float32 array
    model.params["W1"] = np.ones((D, 7))
    assert model.params["W1"].dtype == np.float32
    # and float32 agrees with float64 to float32 precision
    cfg64 = load_config(cfg, ["train.dtype=float64"])
    model64 = build_model(cfg64, D, C, num_classes=None if loss == "mse_real" else C)
    for k in model64.params:
        model64.params[k] = model.params[k].astype(np.float64)
    np.testing.assert_allclose(model.scores(X32), model64.scores(X32.astype(np.float64)),
                               rtol=1e-4, atol=1e-4)
