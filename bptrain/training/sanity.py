"""`bptrain sanity CONFIG`: the course's sanity checks before a long run (CS231n, "Babysitting
the learning process"), each on the config's own network, data and optimizer:

  1. initial loss, small weights   with weights N(0, 1e-4^2), zero biases and no regularization
                                   the scores are about 0, so the loss must be chance: log C for
                                   softmax, (C - 1) * margin for the SVM, and for MSE the loss of
                                   all-zero outputs (sum of squared targets, summed or averaged
                                   over the batch as the config says).
  2. initial loss, your init       the config's own initialization (no regularization) should
                                   start near that value; more than 3x it means large initial
                                   scores (an init that is too large).
  3. regularization raises loss    the same weights with the real regularizer gate at strength
                                   1e3 versus 0: the loss must rise by exactly the penalty, and
                                   the gradient of each weight by exactly the penalty's gradient.
  4. overfit a tiny subset         50 training samples, no regularization, the config's
                                   optimizer and learning rate, full-batch steps: 100% training
                                   accuracy (MSE: loss under 1% of that of zero outputs) within
                                   1000 steps (most networks need tens).

Every check returns a `SanityCheck` with pass/fail and one sentence on what it means.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bptrain.net.config import Config, load_config
from bptrain.net.data import Dataset
from bptrain.net.model import Model
from bptrain.net.optim import Optimizer, clip_global_norm
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data
from bptrain.training.trainer import accuracy

SMALL_STD = 1e-4        # "small weights" of check 1
INIT_FACTOR = 3.0       # check 2 fails above this many times the expected initial loss
REG_STRENGTH = 1e3      # check 3
SUBSET = 50             # check 4
MAX_STEPS = 1000
EVAL_SAMPLES = 1000     # checks 1-3 use at most this many training rows


@dataclass
class SanityCheck:
    name: str
    status: str              # "pass" | "fail" | "skip"
    measured: str            # the numbers, in a few words
    meaning: str             # one sentence: what the result means
    value: float | None = None
    expected: float | None = None

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _variant(cfg: Config, overrides: list[str]) -> Config:
    return load_config(cfg, overrides)


def _no_reg(cfg: Config) -> list[str]:
    out = ["regularization.type=none", "optimizer.weight_decay=0"]  # adamw decays by default
    if cfg.model.layers is None:
        out.append("model.dropout=0")
    else:  # explicit layers: dropout layers keep their place (others may name them), p = 0
        out.append(f"model.layers={json.dumps(_without_dropout(cfg.model.layers))}")
    return out


def _without_dropout(layers: list[dict]) -> list[dict]:
    """The layers with every dropout's p set to 0 (inside residual blocks too); JSON is YAML
    flow syntax, so the list goes through an override."""
    out = []
    for layer in layers:
        layer = dict(layer)
        if layer["type"] == "dropout":
            layer["p"] = 0.0
        if "layers" in layer:
            layer["layers"] = _without_dropout(layer["layers"])
        out.append(layer)
    return out


def expected_initial_loss(cfg: Config, model: Model, y: np.ndarray) -> tuple[float, str]:
    """(value, formula) of the loss when every score is 0."""
    if cfg.loss.type == "softmax":
        c = model.num_classes
        return math.log(c), f"log C = log {c}"
    if cfg.loss.type == "svm":
        c, m = model.num_classes, cfg.loss.margin
        return (c - 1) * m, f"(C - 1) x margin = {c - 1} x {m:g}"
    t = np.asarray(model.targets(y), dtype=np.float64)
    per_sample = (t * t).reshape(len(t), -1).sum(axis=1)
    if cfg.loss.reduction == "sum":
        return float(per_sample.sum()), "sum of squared targets (outputs all 0)"
    return float(per_sample.mean()), "mean over samples of the sum of squared targets (outputs 0)"


def _rows(data: Dataset, n: int, seed: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    N = len(data.X_train)
    idx = np.arange(N) if N <= n else np.sort(np.random.default_rng([seed, 7]).choice(N, n, replace=False))
    X = np.ascontiguousarray(data.X_train[idx], dtype=dtype)
    y = data.y_train[idx]
    if not data.is_classification:
        y = np.ascontiguousarray(y, dtype=dtype)
    return X, y


def _fmt(x: float) -> str:
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.3e}"


# ---- the checks ---------------------------------------------------------------------------
def check_initial_loss(cfg: Config, data: Dataset) -> tuple[SanityCheck, float]:
    small = _variant(cfg, _no_reg(cfg) + ["model.init=gaussian", f"model.std={SMALL_STD}"])
    model = build_for_data(small, data)
    X, y = _rows(data, EVAL_SAMPLES, cfg.seed, model.dtype)
    expected, formula = expected_initial_loss(cfg, model, y)
    loss, _ = model.evaluate_loss(X, y)
    tol = 1e-2 * max(abs(expected), 1e-12)
    ok = math.isfinite(loss) and abs(loss - expected) <= tol
    measured = f"loss {_fmt(loss)}, expected {formula} = {_fmt(expected)}"
    mse = cfg.loss.type == "mse"
    if ok and mse:
        meaning = ("With tiny weights every output is about 0, and the loss is exactly that of "
                   "all-zero outputs: the loss function and the targets agree.")
    elif ok:
        meaning = ("With tiny weights every class scores about 0, and the loss is exactly chance: "
                   "the loss function and the labels agree.")
    else:
        meaning = ("With tiny weights the outputs are about 0, so the loss should be exactly "
                   f"{'that of all-zero outputs' if mse else 'chance'}; it is not: the loss "
                   "computation or the labels are wrong (labels outside 0..C-1, or targets of "
                   "another scale).")
    return SanityCheck("initial loss, small weights", "pass" if ok else "fail", measured,
                       meaning, loss, expected), expected


def check_init_loss(cfg: Config, data: Dataset, expected: float) -> SanityCheck:
    model = build_for_data(_variant(cfg, _no_reg(cfg)), data)
    X, y = _rows(data, EVAL_SAMPLES, cfg.seed, model.dtype)
    with np.errstate(all="ignore"):
        loss, _ = model.evaluate_loss(X, y)
    what = f"init {cfg.model.init}" + (f" (std {cfg.model.std:g})"
                                        if cfg.model.init == "gaussian" else "")
    name = "initial loss, your init"
    if expected <= 0:
        return SanityCheck(name, "skip", f"loss {_fmt(loss)}",
                           "The targets are all zero, so there is no scale to compare with.",
                           loss, expected)
    ratio = loss / expected if math.isfinite(loss) else math.inf
    ok = ratio <= INIT_FACTOR
    measured = (f"loss {_fmt(loss)} with {what}: {ratio:.3g}x the expected "
                f"{_fmt(expected)}")
    ref, outputs = (("the loss of all-zero outputs", "outputs") if cfg.loss.type == "mse"
                    else ("chance", "scores"))
    if ok:
        meaning = (f"Your initialization starts close to {ref}, so the first steps go to "
                   f"learning, not to undoing large random {outputs}.")
    else:
        meaning = (f"Your initialization starts {ratio:.3g} times above {ref}: its random "
                   f"{outputs} are large, and early training spends itself shrinking them (or "
                   "diverges). Try a smaller init: model.init=xavier or he, or a smaller "
                   "model.std.")
    return SanityCheck(name, "pass" if ok else "fail", measured, meaning, loss, expected)


def check_regularization(cfg: Config, data: Dataset) -> SanityCheck:
    kind = cfg.regularization.type if cfg.regularization.type != "none" else "l2"
    base = _no_reg(cfg)
    m0 = build_for_data(_variant(cfg, base), data)
    m1 = build_for_data(_variant(cfg, base + [f"regularization.type={kind}",
                                              f"regularization.strength={REG_STRENGTH:g}"]),
                        data)
    for k in m0.params:  # the very same weights
        m1.params[k] = m0.params[k]
    X, y = _rows(data, EVAL_SAMPLES, cfg.seed, m0.dtype)
    loss0, _ = m0.evaluate_loss(X, y)
    loss1, _ = m1.evaluate_loss(X, y)
    penalty = float(m1.reg_loss.value)
    # The penalty by hand, and its gradient: the shared convention (README).
    Ws = [w.value.astype(np.float64) for w in m1.weights]
    if kind == "l2":
        by_hand = 0.5 * REG_STRENGTH * sum(float(np.vdot(W, W)) for W in Ws)
        grads_by_hand = [REG_STRENGTH * W for W in Ws]
    else:
        by_hand = REG_STRENGTH * sum(float(np.abs(W).sum()) for W in Ws)
        grads_by_hand = [REG_STRENGTH * np.sign(W) for W in Ws]
    m0.forward_backward(X, y)
    g0 = [w.grad.astype(np.float64) for w in m0.weights]
    m1.forward_backward(X, y)
    g1 = [w.grad.astype(np.float64) for w in m1.weights]
    grad_err = max((float(np.max(np.abs((b - a) - h))) / max(float(np.max(np.abs(h))), 1e-12)
                    for a, b, h in zip(g0, g1, grads_by_hand)), default=0.0)
    rtol = 1e-6 if m0.dtype == np.float64 else 1e-3
    rise = loss1 - loss0
    name = "regularization raises the loss"
    measured = (f"{kind.upper()} strength {REG_STRENGTH:g}: loss {_fmt(loss0)} -> {_fmt(loss1)} "
                f"(+{_fmt(rise)}, penalty {_fmt(by_hand)})")
    if by_hand <= 0:
        return SanityCheck(name, "fail", measured,
                           "Every weight is zero (model.init=zeros?), so the penalty is 0 and "
                           "regularization cannot act; a zero init also never breaks symmetry.",
                           rise, by_hand)
    ok = (rise > 0 and abs(rise - by_hand) <= rtol * by_hand + 1e-9
          and abs(penalty - by_hand) <= rtol * by_hand and grad_err <= rtol * 10)
    if ok:
        meaning = ("Switching the regularizer on raises the loss by exactly its penalty and adds "
                   "its gradient to each weight's: the regularization is wired in.")
    else:
        meaning = (f"The regularizer does not act as it should (loss rise {_fmt(rise)} vs "
                   f"penalty {_fmt(by_hand)}, gradient error {grad_err:.1e}): it is not in the "
                   "total loss, or its gradient is wrong.")
    return SanityCheck(name, "pass" if ok else "fail", measured, meaning, rise, by_hand)


def check_overfit(cfg: Config, data: Dataset, samples: int = SUBSET,
                  max_steps: int = MAX_STEPS) -> SanityCheck:
    fit_cfg = _variant(cfg, _no_reg(cfg))
    model = build_for_data(fit_cfg, data)
    n = min(samples, len(data.X_train))
    rng = np.random.default_rng([cfg.seed, 8])
    idx = np.sort(rng.choice(len(data.X_train), n, replace=False))
    X = np.ascontiguousarray(data.X_train[idx], dtype=model.dtype)
    y = data.y_train[idx]
    if not data.is_classification:
        y = np.ascontiguousarray(y, dtype=model.dtype)
    classify = bool(model.num_classes) and data.is_classification
    zero_loss, _ = expected_initial_loss(cfg, model, y)  # of this subset (MSE sum scales with N)
    opt = Optimizer(fit_cfg.optimizer, dict(model.params))
    lr = fit_cfg.optimizer.lr
    nodes = model.params.nodes()
    target = 1.0 if classify else 0.01 * zero_loss
    name = f"overfit {n} samples"
    how = f"{fit_cfg.optimizer.type} lr {lr:g}, no regularization, full-batch steps"
    reached, score, loss = None, None, float("nan")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(1, max_steps + 1):
            loss = model.forward_backward(X, y)
            if not math.isfinite(loss):
                return SanityCheck(name, "fail", f"{how}: the loss became {loss} at step {step}",
                                   f"Training diverged on {n} samples: the learning rate is far "
                                   "too high for this network (try optimizer.lr 10x smaller).",
                                   None, target)
            grads = {p.name: p.grad for p in nodes}
            if fit_cfg.train.grad_clip:
                clip_global_norm(grads, fit_cfg.train.grad_clip)
            opt.step(grads, lr)
            if step % 10 == 0 or step == max_steps:
                eval_loss, scores = model.evaluate_loss(X, y)
                score = accuracy(scores, y) if classify else eval_loss
                if (classify and score >= target) or (not classify and score <= target):
                    reached = step
                    break
    if classify:
        measured = (f"{how}: 100% training accuracy at step {reached}" if reached else
                    f"{how}: {100 * score:.1f}% training accuracy after {max_steps} steps "
                    f"(loss {_fmt(loss)})")
    else:
        measured = (f"{how}: loss {_fmt(score)} <= 1% of {_fmt(zero_loss)} at step {reached}"
                    if reached else f"{how}: loss {_fmt(score)} after {max_steps} steps, "
                    f"above 1% of {_fmt(zero_loss)}")
    if reached:
        meaning = ("The network can memorize a tiny subset, so backprop, the optimizer and the "
                   "learning rate work together; a long run can now be worth it.")
    elif classify and score is not None and score >= 0.9:
        wrong = round((1 - score) * n)
        meaning = (f"Almost: {wrong} of {n} samples are still misclassified. Samples of different "
                   "classes lying very close together (like the spiral's centre) take many steps "
                   "to separate; if more steps (--steps) do not get there, lower the learning "
                   "rate or widen the network before a long run.")
    else:
        meaning = (f"The network cannot even memorize {n} samples: the learning rate is probably "
                   "too low (or too high), the initialization does not break symmetry, or the "
                   "gradients are wrong. Fix this before a long run.")
    return SanityCheck(name, "pass" if reached else "fail", measured, meaning,
                       score, target)


def run_sanity(cfg: Config | dict | str, samples: int = SUBSET,
               max_steps: int = MAX_STEPS) -> list[SanityCheck]:
    """All four checks on a config (ConfigError / DataError for a bad config or data)."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    data = load_data(cfg)
    build_for_data(cfg, data)  # impossible combinations (and sizes) fail here, as in bptrain run
    first, expected = check_initial_loss(cfg, data)
    return [first, check_init_loss(cfg, data, expected), check_regularization(cfg, data),
            check_overfit(cfg, data, samples, max_steps)]
