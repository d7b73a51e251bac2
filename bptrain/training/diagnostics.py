"""Gradient-flow diagnostics: what each layer is doing, measured at every evaluation, and
warnings in plain words when one of the course's classic failure patterns shows up.

Per affine layer (named as in the network table: fc1, fc2, ..., scores), at each evaluation:

  grad_norm     ||dL/dW|| of the data loss, from the last training step before the evaluation,
                before gradient clipping. The regularizer's share is left out (strength W for
                L2, the L1 gate's own backward for L1), so the number is what backpropagation
                delivers to the layer.
  weight_norm   ||W|| (Frobenius norm) after that step.
  update_ratio  ||W_after - W_before|| / ||W_before|| of that same last step: the real update
                of the real optimizer (momentum, Adam, clipping and all), one step, not an
                average. About 1e-3 is healthy (CS231n's rule of thumb).
  dead          ReLU layers: the fraction of units whose output is 0 for every sample of the
                evaluated training sample (train.train_eval_samples rows).
  saturated     sigmoid / tanh layers: the fraction of units that are saturated on more than
                half of those samples; saturated means sigmoid < 0.01 or > 0.99, |tanh| > 0.99
                (the local gradient is then below about 0.01 resp. 0.02).
  identical     hidden layers: true when every unit has the same incoming weights and bias
                (every column of W equal): the units compute the same thing forever.

Cost: the activations come from the forward pass `Trainer.evaluate` already makes on the
training sample; the extra work is one copy of the weights at one step per evaluation and a
few norms and reductions: about 0.1 ms per evaluation, 1% of an epoch, for configs/mlp.yaml
(README, "Diagnostics").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bptrain.engine import gates as G

HEALTHY_RATIO = 1e-3      # CS231n: updates about a thousandth of the weights
RATIO_HIGH = 1e-1         # above: the learning rate is probably too high
RATIO_LOW = 1e-5          # below: probably too low
VANISHING = 1e-2          # early-layer / output-layer gradient norm below this: vanishing
EXPLODING = 1e2           # a norm grown by two orders of magnitude: exploding
MOSTLY = 0.5              # "most units" dead / saturated
SIGMOID_EDGE = 0.01       # sigmoid < 0.01 or > 0.99 is saturated
TANH_EDGE = 0.99          # |tanh| > 0.99 is saturated


@dataclass
class _Watched:
    """One affine layer and the activation that follows it (if any)."""
    name: str
    W: Any                     # parameter node
    b: Any | None
    activation: str | None     # "relu", "sigmoid", ... (gate name)
    act_node: Any | None
    hidden: bool


def _norm(a: np.ndarray) -> float:
    a = np.asarray(a)
    return float(math.sqrt(float(np.vdot(a, a).real)))


def _short(x: float | None) -> float | None:
    """4 significant digits: compact metrics.jsonl lines."""
    if x is None or not math.isfinite(x):
        return None if x is None else float(x)
    return float(f"{x:.4g}")


def layers_of(model: Any) -> list[_Watched]:
    """The affine layers of a built Model, each with the first activation after it."""
    out: list[_Watched] = []
    for layer in model.layers:
        if layer.type in ("affine", "conv"):
            node = layer.node
            W = node.inputs[1]
            b = node.inputs[2] if len(node.inputs) > 2 else None
            out.append(_Watched(layer.name, W, b, None, None, layer.name != "scores"))
        elif out and out[-1].activation is None and layer.node.gate.kind == "activation":
            gate = layer.node.gate
            out[-1].activation = gate.name or type(gate).__name__.lower()
            out[-1].act_node = layer.node
    return out


def evaluation_follows(trainer: Any) -> bool:
    """True while `trainer` makes the last training step before an evaluation."""
    if trainer.step + 1 >= trainer.total_steps:
        return True
    return (trainer.batch_index + 1 >= trainer.steps_per_epoch
            and (trainer.epoch + 1) % trainer.cfg.train.eval_every == 0)


class Diagnostics:
    """Collects per-layer numbers for a Trainer. The Trainer calls:

    before_step(trainer)  at every step, before clipping and the optimizer (cheap: returns
                          False at once unless an evaluation follows this step)
    after_step()          after the optimizer step, if before_step returned True
    collect()             in evaluate(), right after the forward pass on the training sample
    annotate(rec, hist)   adds `diagnostics` and `warnings` to the evaluation record
    """

    def __init__(self, model: Any):
        self.model = model
        self.layers = layers_of(model)
        # Norms at initialization (the Trainer builds the model from the seed before any
        # checkpoint is restored, so these are right after a resume too).
        self.init_norms = {l.name: _norm(l.W.value) for l in self.layers}
        self._before: dict[str, np.ndarray] = {}
        self.first_loss: float | None = None  # the loss of the run's first step (the Trainer's)
        self._grad: dict[str, float] = {}
        self._update: dict[str, float | None] = {}

    # -- the step hook --
    def before_step(self, trainer: Any) -> bool:
        if not evaluation_follows(trainer):
            return False
        reg = self.model.reg_loss
        l2 = reg.gate.strength if reg is not None and isinstance(reg.gate, G.L2) else None
        reg_grads: dict[int, np.ndarray] = {}
        if reg is not None and l2 is None:  # the regularizer gate's own local gradient
            for node, g in zip(reg.inputs, reg.gate.backward(1.0)):
                reg_grads[id(node)] = g
        regularized = {id(n) for n in reg.inputs} if reg is not None else set()
        self._grad, self._update = {}, {}
        for l in self.layers:
            g, W = l.W.grad, l.W.value
            if g is None:
                continue
            if id(l.W) not in regularized:
                self._grad[l.name] = _norm(g)
            elif l2 is not None and W.dtype == np.float64:
                # |g - sW|^2 = |g|^2 - 2s<g, W> + s^2 |W|^2 without a new array; exactly, by
                # subtraction, when the two nearly cancel (a data gradient far below sW)
                gg = float(np.vdot(g, g))
                sq = gg - 2 * l2 * float(np.vdot(g, W)) + l2 * l2 * float(np.vdot(W, W))
                self._grad[l.name] = (math.sqrt(sq) if sq > 1e-6 * gg else
                                      _norm(g - l2 * W))
            elif l2 is not None:
                self._grad[l.name] = _norm(g - l2 * W)
            else:
                self._grad[l.name] = _norm(g - reg_grads[id(l.W)])
        self._before = {l.name: l.W.value.copy() for l in self.layers}
        return True

    def after_step(self) -> None:
        for l in self.layers:
            before = self._before.get(l.name)
            if before is None:
                continue
            scale = _norm(before)
            with np.errstate(all="ignore"):
                np.subtract(l.W.value, before, out=before)  # the update, in the copy's place
                upd = _norm(before)
            self._update[l.name] = upd / scale if scale > 0 else None
        self._before = {}

    # -- at evaluation --
    def collect(self) -> dict[str, dict[str, Any]]:
        """Per-layer numbers; call right after the forward pass on the training sample, while
        the graph's nodes hold its activations."""
        out: dict[str, dict[str, Any]] = {}
        for l in self.layers:
            W = l.W.value
            d: dict[str, Any] = {"grad_norm": _short(self._grad.get(l.name)),
                                 "weight_norm": _short(_norm(W)),
                                 "update_ratio": _short(self._update.get(l.name))}
            if l.activation:
                d["activation"] = l.activation
                a = l.act_node.value
                if a is not None and np.ndim(a) in (2, 4) and len(a):
                    # a unit: a column of (N, H), or a filter of (N, F, H, W) over all positions
                    axes = (0,) if np.ndim(a) == 2 else (0, 2, 3)
                    if l.activation == "relu":
                        mask = getattr(l.act_node.gate, "mask", None)  # x > 0, kept by forward
                        alive = (mask if mask is not None and mask.shape == a.shape
                                 else a > 0).any(axis=axes)
                        d["dead"] = _short(float(1.0 - np.mean(alive)))
                    elif l.activation in ("sigmoid", "tanh"):
                        if l.activation == "sigmoid":
                            sat = (a < SIGMOID_EDGE) | (a > 1.0 - SIGMOID_EDGE)
                        else:
                            sat = np.abs(a) > TANH_EDGE
                        d["saturated"] = _short(float(np.mean(np.mean(sat, axis=axes) > 0.5)))
            if l.hidden and W.ndim == 2 and W.shape[1] > 1:
                d["identical"] = _identical(W, None if l.b is None else l.b.value)
            out[l.name] = d
        return out

    def annotate(self, rec: dict[str, Any], diag: dict[str, dict[str, Any]],
                 history: list[dict[str, Any]]) -> None:
        """Put `diagnostics` and this evaluation's `warnings` into the record."""
        rec["diagnostics"] = diag
        rec["warnings"] = find_warnings(diag, self.init_norms, history, rec.get("train_loss"),
                                        start_loss=self.first_loss)


def _identical(W: np.ndarray, b: np.ndarray | None) -> bool:
    """Every column of W (and every bias) equal, up to rounding. Usually settled by the first
    two columns, which is all it costs."""
    scale = float(np.max(np.abs(W[:, :2]))) if W.size else 0.0
    tol = 1e-9 * scale + 1e-12
    if np.any(np.abs(W[:, 1] - W[:, 0]) > tol):
        return False
    scale = float(np.max(np.abs(W)))
    tol = 1e-9 * scale + 1e-12
    same = bool(np.all(np.abs(W - W[:, :1]) <= tol))
    if same and b is not None:
        same = bool(np.all(np.abs(b - b[0]) <= 1e-9 * float(np.max(np.abs(b))) + 1e-12))
    return same


# ---- warnings -----------------------------------------------------------------------------
# Each warning is {"kind", "layer", "detail"} in metrics.jsonl (the layer's numbers); its title
# and likely fix come from the kind, so the full sentence is rebuilt wherever it is shown.
TITLES = {
    "identical": "identical hidden units",
    "dead_relu": "most ReLUs dead",
    "saturated": "most units saturated",
    "vanishing": "vanishing gradients",
    "exploding": "exploding norms",
    "update_high": "updates too large",
    "update_low": "updates too small",
}


def fix(kind: str, lr: float | None = None) -> str:
    """The likely fix for a kind of warning, in a sentence."""
    smaller = f" (e.g. optimizer.lr={lr / 10:g})" if lr else ""
    larger = f" (e.g. optimizer.lr={lr * 10:g})" if lr else ""
    return {
        "identical": "initialize randomly (model.init=he or xavier) instead of zeros or a "
                     "constant: identical units get identical gradients, so the symmetry is "
                     "never broken and the layer is as good as one unit.",
        "dead_relu": f"a smaller learning rate{smaller}, since a too-large step knocks units "
                     "into the zero side for good; He initialization with zero biases; or "
                     "model.activation=leaky_relu.",
        "saturated": "a smaller initialization (model.init=xavier), standardized inputs "
                     "(data.standardize=true), or model.activation=relu; a saturated unit's "
                     "local gradient is almost 0.",
        "vanishing": "model.activation=relu, xavier or he initialization instead of small "
                     "gaussian weights, or fewer layers; sigmoid (local gradient at most 0.25) "
                     "and tanh shrink the gradient at every layer.",
        "exploding": f"a smaller learning rate{smaller}, gradient clipping "
                     "(train.grad_clip=5), or stronger regularization.",
        "update_high": f"the learning rate is probably too high: lower it{smaller}.",
        "update_low": f"the learning rate is probably too low: raise it{larger}.",
    }[kind]


def warning_text(w: dict[str, Any], lr: float | None = None) -> str:
    """A warning as one paragraph: layer, what was seen, the likely fix."""
    return f"{w['layer']}: {TITLES[w['kind']]}: {w['detail']}. Likely fix: {fix(w['kind'], lr)}"


def _warn(kind: str, layer: str, detail: str) -> dict[str, str]:
    return {"kind": kind, "layer": layer, "detail": detail}


def _e(x: float) -> str:
    return f"{x:.2g}" if 1e-2 <= abs(x) < 1e3 else f"{x:.1e}"


def find_warnings(diag: dict[str, dict[str, Any]], init_norms: dict[str, float],
                  history: list[dict[str, Any]],
                  train_loss: float | None = None,
                  start_loss: float | None = None) -> list[dict[str, str]]:
    """The failure patterns visible in one evaluation's diagnostics, one entry per layer.
    `history` is the earlier evaluations (weights at the first one, progress of the loss);
    `train_loss` is this evaluation's; `start_loss` the loss of the run's first step (so the
    first evaluation knows how far the loss has already fallen)."""
    out: list[dict[str, str]] = []
    names = list(diag)
    explained: set[str] = set()   # layers whose small gradients have a known cause
    for name, d in diag.items():  # identical hidden units: zero or constant initialization
        if d.get("identical"):
            explained.add(name)
            out.append(_warn("identical", name, "every hidden unit has the same incoming "
                             "weights and bias (all columns of its W are equal), so every unit "
                             "computes the same value"))
    for name, d in diag.items():  # dead ReLUs
        dead = d.get("dead")
        if dead is not None and dead > MOSTLY and name not in explained:
            explained.add(name)
            out.append(_warn("dead_relu", name, f"{dead:.0%} of its ReLU units output 0 for "
                             "every training sample evaluated, so no gradient flows through "
                             "them and they stop learning"))
    for name, d in diag.items():  # saturated sigmoid / tanh units
        sat = d.get("saturated")
        if sat is not None and sat > MOSTLY and name not in explained:
            explained.add(name)
            edge = "0 or 1" if d.get("activation") == "sigmoid" else "-1 or 1"
            out.append(_warn("saturated", name, f"{sat:.0%} of its {d.get('activation')} units "
                             f"are pinned near {edge} on most training samples, so little "
                             "gradient passes back through them"))
    # Vanishing gradients: early layers' gradients far below the output layer's (only when no
    # dead, identical or saturated layer explains them already).
    last = diag[names[-1]].get("grad_norm") if names else None
    if len(names) >= 2 and last and not explained:
        low = [n for n in names[:-1] if diag[n].get("grad_norm") is not None
               and diag[n]["grad_norm"] / last < VANISHING]
        if low:
            name, g = low[0], diag[low[0]]["grad_norm"]
            explained.update(low)
            also = f" ({', '.join(low[1:])} as well)" if len(low) > 1 else ""
            out.append(_warn("vanishing", name, f"its weight gradient norm {_e(g)} is "
                             f"{_e(g / last)} times the output layer's ({_e(last)}){also}, so "
                             "the early layers barely learn"))
    # Exploding norms: weights 100x larger than at initialization or at the first evaluation
    # and still changing by more than a tenth of themselves per step (small-init layers grow
    # that much, healthily, but their updates settle near 1e-3), or no longer finite.
    first = next((r.get("diagnostics") for r in history if r.get("diagnostics")), None)
    exploding: set[str] = set()
    for name, d in diag.items():
        w, r, g = d.get("weight_norm"), d.get("update_ratio"), d.get("grad_norm")
        refs = [(init_norms.get(name, 0.0), "initialization"),
                ((first or {}).get(name, {}).get("weight_norm"), "the first evaluation")]
        what = None
        if w is not None and not math.isfinite(w):
            what = "its weights are no longer finite numbers"
        elif w is not None and r is not None and r > RATIO_HIGH:
            for ref, when in refs:
                if ref and w >= EXPLODING * ref:
                    what = (f"the norm of its weights grew from {_e(ref)} at {when} to {_e(w)} "
                            f"(x{_e(w / ref)}) and the last step still changed them by {_e(r)} "
                            "of their norm")
                    break
        if what:
            exploding.add(name)
            explained.add(name)
            out.append(_warn("exploding", name, what + (f"; gradient norm {_e(g)}"
                                                        if g is not None else "")))
    # Update-to-weight ratios far from 1e-3. A small ratio once the loss has fallen (to under
    # half of where it started: the first step's loss, or the first evaluation's if higher)
    # is convergence, not a too-low rate; also at the first evaluation (a loss that fell from
    # 2.9e7 to 2e-6 before anyone looked has converged).
    starts = [x for x in (start_loss, history[0].get("train_loss") if history else None)
              if isinstance(x, (int, float)) and math.isfinite(x) and x > 0]
    stalled = (train_loss is None or not starts or train_loss > 0.5 * max(starts))
    for name, d in diag.items():
        r = d.get("update_ratio")
        if r is None:
            continue
        if r > RATIO_HIGH and name not in exploding:
            out.append(_warn("update_high", name, f"the last step changed its weights by "
                             f"{_e(r)} of their norm (update/weight ratio; about "
                             f"{HEALTHY_RATIO:g} is healthy)"))
        elif r < RATIO_LOW and stalled and name not in explained and d.get("grad_norm"):
            out.append(_warn("update_low", name, f"the last step changed its weights by only "
                             f"{_e(r)} of their norm (update/weight ratio; about "
                             f"{HEALTHY_RATIO:g} is healthy) while the loss is not falling"))
    return out


def new_warnings(rec: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Warnings of `rec` not already given at an earlier evaluation in `history` (same kind,
    same layer): each pattern is announced once, when it first appears."""
    seen = {(w["kind"], w["layer"]) for r in history if r is not rec
            for w in r.get("warnings") or ()}
    return [w for w in rec.get("warnings") or () if (w["kind"], w["layer"]) not in seen]


def announcements(rec: dict[str, Any], history: list[dict[str, Any]],
                  lr: float | None = None) -> list[str]:
    """What to print for an evaluation: its new warnings, one paragraph per kind (layers of
    the same kind together), each with the likely fix."""
    by_kind: dict[str, list[dict[str, str]]] = {}
    for w in new_warnings(rec, history):
        by_kind.setdefault(w["kind"], []).append(w)
    out = []
    for kind, ws in by_kind.items():
        if len(ws) == 1:
            out.append(f"epoch {rec.get('epoch')}: " + warning_text(ws[0], lr))
        else:
            parts = "; ".join(f"{w['layer']}: {w['detail']}" for w in ws)
            out.append(f"epoch {rec.get('epoch')}: {TITLES[kind]} in "
                       f"{', '.join(w['layer'] for w in ws)}: {parts}. Likely fix: "
                       f"{fix(kind, lr)}")
    return out


def warnings_summary(history: list[dict[str, Any]], lr: float | None = None
                     ) -> list[dict[str, Any]]:
    """Every distinct warning of a run (kind, layer): its full text, the epoch it first
    appeared and how many evaluations showed it. What summary.json keeps."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in history:
        for w in r.get("warnings") or ():
            key = (w["kind"], w["layer"])
            if key in out:
                out[key]["evaluations"] += 1
            else:
                out[key] = dict(w, text=warning_text(w, lr), first_epoch=r.get("epoch"),
                                evaluations=1)
    return list(out.values())
