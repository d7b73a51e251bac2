"""Optimizers against PyTorch's update rules written out here independently; schedules;
global-norm clipping; optimizer state round trips."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from bptrain.net.config import load_config
from bptrain.net.optim import Optimizer, clip_global_norm, learning_rate

TOL = 1e-12
LRS = [0.1, 0.05, 0.02]          # a different learning rate at each of the 3 steps


def opt_cfg(**kw):
    return load_config({"optimizer": kw}).optimizer


def sched_cfg(**kw):
    return load_config({"schedule": kw}).schedule


def start_params():
    rng = np.random.default_rng(7)
    return {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(4),
            "W2": rng.standard_normal((4, 2))}


def grad_sequence():
    """Three steps of gradients for each parameter, deliberately of mixed sign and scale."""
    rng = np.random.default_rng(11)
    shapes = {k: v.shape for k, v in start_params().items()}
    return [{k: rng.standard_normal(s) * (0.5 + i) for k, s in shapes.items()} for i in range(3)]


# ---- reference updates: PyTorch's torch.optim algorithms, one parameter, no in-place -------

def ref_run(kind, p, grads, lrs, *, mu=0.0, wd=0.0, alpha=0.99, b1=0.9, b2=0.999, eps=1e-8):
    """Run `kind` on a single array p over the gradients `grads` with learning rates `lrs`."""
    p = p.copy()
    buf = m = v = sq = None
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        if kind == "adamw":
            p = p * (1.0 - lr * wd)                       # decoupled decay first
        elif wd:
            g = g + wd * p                                # coupled weight_decay
        if kind == "sgd":
            p = p - lr * g
        elif kind in ("momentum", "nesterov"):
            buf = g.copy() if buf is None else mu * buf + g   # torch: buf = g on step 1
            step = g + mu * buf if kind == "nesterov" else buf
            p = p - lr * step
        elif kind == "rmsprop":
            sq = (1 - alpha) * g * g if sq is None else alpha * sq + (1 - alpha) * g * g
            p = p - lr * g / (np.sqrt(sq) + eps)
        elif kind in ("adam", "adamw"):
            m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
            v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            denom = np.sqrt(v) / math.sqrt(bc2) + eps     # torch's arrangement
            p = p - (lr / bc1) * m / denom
        else:
            raise AssertionError(kind)
    return p


CASES = [
    # id, optimizer config, reference kind, reference kwargs
    ("sgd", dict(type="sgd"), "sgd", {}),
    ("sgd+weight_decay", dict(type="sgd", weight_decay=0.1), "sgd", dict(wd=0.1)),
    ("sgd+momentum", dict(type="sgd", momentum=0.5), "momentum", dict(mu=0.5)),
    ("momentum", dict(type="momentum"), "momentum", dict(mu=0.9)),
    ("momentum+wd", dict(type="momentum", momentum=0.8, weight_decay=0.05), "momentum",
     dict(mu=0.8, wd=0.05)),
    ("nesterov", dict(type="nesterov", momentum=0.7), "nesterov", dict(mu=0.7)),
    ("rmsprop", dict(type="rmsprop", decay_rate=0.9, eps=1e-6), "rmsprop",
     dict(alpha=0.9, eps=1e-6)),
    ("rmsprop default", dict(type="rmsprop"), "rmsprop", {}),
    ("adam", dict(type="adam", beta1=0.8, beta2=0.95, eps=1e-7), "adam",
     dict(b1=0.8, b2=0.95, eps=1e-7)),
    ("adam+coupled_wd", dict(type="adam", weight_decay=0.1), "adam", dict(wd=0.1)),
    ("adamw", dict(type="adamw"), "adamw", dict(wd=0.01)),
    ("adamw wd=0.3", dict(type="adamw", weight_decay=0.3), "adamw", dict(wd=0.3)),
]


@pytest.mark.parametrize("cfg, kind, kw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_three_steps_match_pytorch_formula(cfg, kind, kw):
    params = start_params()
    live = {k: v.copy() for k, v in params.items()}
    opt = Optimizer(opt_cfg(lr=1.0, **cfg), live)
    grads = grad_sequence()
    ids = {k: id(v) for k, v in live.items()}
    for g, lr in zip(grads, LRS):
        opt.step({k: v.copy() for k, v in g.items()}, lr)
    assert opt.t == 3
    for name, p0 in params.items():
        assert id(live[name]) == ids[name]              # updated in place
        want = ref_run(kind, p0, [g[name] for g in grads], LRS, **kw)
        np.testing.assert_allclose(live[name], want, rtol=TOL, atol=TOL)
        assert not np.allclose(live[name], p0)           # the step did move it


def test_first_steps_by_hand():
    """Numbers worked out on paper for p = 1, g = 2 (then 4), lr 0.1."""
    p = {"w": np.array([1.0])}
    opt = Optimizer(opt_cfg(type="momentum", momentum=0.5), p)
    opt.step({"w": np.array([2.0])}, 0.1)     # v = 2,          p = 1 - 0.2 = 0.8
    opt.step({"w": np.array([4.0])}, 0.1)     # v = 1 + 4 = 5,  p = 0.8 - 0.5 = 0.3
    assert p["w"][0] == pytest.approx(0.3, abs=1e-15)
    p = {"w": np.array([1.0])}
    opt = Optimizer(opt_cfg(type="adam"), p)
    opt.step({"w": np.array([2.0])}, 0.1)     # bias-corrected m/sqrt(v) = 2/2: p = 0.9
    assert p["w"][0] == pytest.approx(0.9, abs=1e-9)
    p = {"w": np.array([1.0])}
    opt = Optimizer(opt_cfg(type="rmsprop", decay_rate=0.75, eps=1e-12), p)
    opt.step({"w": np.array([2.0])}, 0.1)     # s = 0.25 * 4 = 1: p = 1 - 0.1 * 2 = 0.8
    assert p["w"][0] == pytest.approx(0.8, abs=1e-11)


def test_missing_gradient_leaves_parameter_alone():
    params = {"a": np.ones(3), "b": np.ones(2)}
    opt = Optimizer(opt_cfg(type="adam"), params)
    opt.step({"a": np.full(3, 0.5), "b": None}, 0.1)
    np.testing.assert_array_equal(params["b"], np.ones(2))
    assert (params["a"] < 1).all()


def test_optimizer_state_slots():
    params = start_params()
    assert Optimizer(opt_cfg(type="sgd"), params).state == {}
    st = Optimizer(opt_cfg(type="adamw"), params).state
    assert sorted(st) == sorted(f"{s}/{k}" for s in ("m", "v") for k in params)
    assert all(st[f"m/{k}"].shape == params[k].shape for k in params)
    assert sorted(Optimizer(opt_cfg(type="rmsprop"), params).state) == \
        sorted(f"s/{k}" for k in params)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"])
def test_state_dict_round_trip_continues_identically(kind):
    grads = grad_sequence()
    a_params = start_params()
    a = Optimizer(opt_cfg(type=kind, lr=0.1), a_params)
    for g, lr in zip(grads[:2], LRS[:2]):
        a.step(g, lr)
    saved_state = copy.deepcopy(a.state_dict())      # what a checkpoint holds
    saved_params = copy.deepcopy(a_params)
    a.step(grads[2], LRS[2])

    b_params = saved_params
    b = Optimizer(opt_cfg(type=kind, lr=0.1), b_params)
    b.load_state_dict(saved_state)
    assert b.t == 2
    b.step(grads[2], LRS[2])
    for k in a_params:
        np.testing.assert_array_equal(a_params[k], b_params[k])
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k])


def test_load_state_dict_rejects_wrong_shapes():
    params = start_params()
    opt = Optimizer(opt_cfg(type="adam"), params)
    bad = copy.deepcopy(opt.state_dict())
    bad["m/W1"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="m/W1"):
        opt.load_state_dict(bad)
    missing = copy.deepcopy(opt.state_dict())
    del missing["v/b1"]
    with pytest.raises(ValueError, match="v/b1"):
        opt.load_state_dict(missing)


# ---- schedules -------------------------------------------------------------------------------

def test_constant_schedule():
    c = sched_cfg(type="constant")
    assert [learning_rate(c, 0.3, e, 10) for e in (0, 4, 9)] == [0.3, 0.3, 0.3]


def test_step_schedule():
    c = sched_cfg(type="step", every=3, gamma=0.5)
    got = [learning_rate(c, 0.8, e, 20) for e in (0, 2, 3, 5, 6, 9)]
    assert got == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.1], rel=1e-15)


def test_exponential_schedule():
    c = sched_cfg(type="exponential", gamma=0.9)
    got = [learning_rate(c, 1.0, e, 20) for e in (0, 1, 3)]
    assert got == pytest.approx([1.0, 0.9, 0.729], rel=1e-14)


def test_cosine_schedule():
    c = sched_cfg(type="cosine", min_lr=0.01)
    total = 10
    got = [learning_rate(c, 0.1, e, total) for e in (0, 5, 10, 12)]
    # min + (max - min)(1 + cos(pi e / T)) / 2: 0.1, the midpoint, the floor, stays at the floor
    assert got == pytest.approx([0.1, 0.055, 0.01, 0.01], rel=1e-14)
    quarter = learning_rate(c, 0.1, 2, 8)
    assert quarter == pytest.approx(0.01 + 0.09 * (1 + math.sqrt(0.5)) / 2, rel=1e-14)


# ---- clipping --------------------------------------------------------------------------------

def test_clip_global_norm_scales_all_together():
    g = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]]), "c": None}
    norm = clip_global_norm(g, 6.5)
    assert norm == pytest.approx(13.0, rel=1e-15)
    np.testing.assert_allclose(g["a"], [1.5, 2.0], rtol=1e-10)
    np.testing.assert_allclose(g["b"], [[6.0]], rtol=1e-10)
    after = math.sqrt(sum(float((v ** 2).sum()) for v in g.values() if v is not None))
    assert after == pytest.approx(6.5, rel=1e-10)


def test_clip_global_norm_leaves_small_gradients():
    g = {"a": np.array([0.3, 0.4])}
    assert clip_global_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g["a"], [0.3, 0.4])


# ---- optional cross-check against torch.optim -----------------------------------------------

TORCH_CASES = [
    ("sgd", dict(type="sgd", weight_decay=0.1), "SGD", dict(weight_decay=0.1)),
    ("momentum", dict(type="momentum", momentum=0.9), "SGD", dict(momentum=0.9)),
    ("nesterov", dict(type="nesterov", momentum=0.9), "SGD", dict(momentum=0.9, nesterov=True)),
    ("rmsprop", dict(type="rmsprop", decay_rate=0.9), "RMSprop", dict(alpha=0.9, eps=1e-8)),
    ("adam", dict(type="adam"), "Adam", dict(betas=(0.9, 0.999), eps=1e-8)),
    ("adamw", dict(type="adamw", weight_decay=0.05), "AdamW", dict(weight_decay=0.05)),
]


@pytest.mark.parametrize("cfg, torch_name, torch_kw", [c[1:] for c in TORCH_CASES],
                         ids=[c[0] for c in TORCH_CASES])
def test_against_torch_optim_if_available(cfg, torch_name, torch_kw):
    torch = pytest.importorskip("torch")
    params = start_params()
    live = {k: v.copy() for k, v in params.items()}
    opt = Optimizer(opt_cfg(lr=1.0, **cfg), live)
    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
               for k, v in params.items()}
    topt = getattr(torch.optim, torch_name)(list(tparams.values()), lr=LRS[0], **torch_kw)
    for g, lr in zip(grad_sequence(), LRS):
        opt.step(g, lr)
        for group in topt.param_groups:
            group["lr"] = lr
        for k, tp in tparams.items():
            tp.grad = torch.tensor(g[k], dtype=torch.float64)
        topt.step()
    for k in params:
        np.testing.assert_allclose(live[k], tparams[k].detach().numpy(), rtol=1e-10, atol=1e-12)
