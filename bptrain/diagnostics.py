"""Gradient-flow diagnostics: what each layer is doing, measured at every evaluation, and
warnings in plain words when one of the course's classic failure patterns shows up.

Per affine layer (named as in the network table: fc1, fc2, ..., scores), at each evaluation:

  grad_norm     ||dL/dW|| of the data loss, from the last training step before the evaluation,
                before gradient clipping. The regularizer's share (strength W for L2) is left out
                (computed by the model's own regularizer gate), so the number is what
                backpropagation delivers to the layer.
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
training sample; the extra work is one copy of the parameters at one step per evaluation and a
few norms, far below 1% of an epoch (README, "Diagnostics").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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
        if layer.kind == "affine":
            node = layer.node
            W = node.inputs[1]
            b = node.inputs[2] if len(node.inputs) > 2 else None
            out.append(_Watched(layer.name, W, b, None, None, layer.name != "scores"))
        elif out and out[-1].activation is None and not layer.kind.startswith("dropout"):
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
        self._grad: dict[str, float] = {}
        self._update: dict[str, float | None] = {}

    # -- the step hook --
    def before_step(self, trainer: Any) -> bool:
        if not evaluation_follows(trainer):
            return False
        reg = self.model.reg_loss
        reg_grads: dict[int, np.ndarray] = {}
        if reg is not None:  # the regularizer gate's own local gradient, per weight node
            for node, g in zip(reg.inputs, reg.gate.backward(1.0)):
                reg_grads[id(node)] = g
        self._grad, self._update = {}, {}
        for l in self.layers:
            g = l.W.grad
            if g is None:
                continue
            r = reg_grads.get(id(l.W))
            self._grad[l.name] = _norm(g - r if r is not None else g)
        self._before = {l.name: l.W.value.copy() for l in self.layers}
        return True

    def after_step(self) -> None:
        for l in self.layers:
            before = self._before.get(l.name)
            if before is None:
                continue
            scale = _norm(before)
            with np.errstate(all="ignore"):
                upd = _norm(l.W.value - before)
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
                if a is not None and np.ndim(a) == 2 and len(a):
                    if l.activation == "relu":
                        mask = getattr(l.act_node.gate, "mask", None)  # x > 0, kept by forward
                        alive = (mask if mask is not None and mask.shape == a.shape
                                 else a > 0).any(axis=0)
                        d["dead"] = _short(float(1.0 - np.mean(alive)))
                    elif l.activation in ("sigmoid", "tanh"):
                        if l.activation == "sigmoid":
                            sat = (a < SIGMOID_EDGE) | (a > 1.0 - SIGMOID_EDGE)
                        else:
                            sat = np.abs(a) > TANH_EDGE
                        d["saturated"] = _short(float(np.mean(np.mean(sat, axis=0) > 0.5)))
            if l.hidden and W.shape[1] > 1:
                d["identical"] = _identical(W, None if l.b is None else l.b.value)
            out[l.name] = d
        return out

    def annotate(self, rec: dict[str, Any], diag: dict[str, dict[str, Any]],
                 history: list[dict[str, Any]]) -> None:
        """Put `diagnostics` and this evaluation's `warnings` into the record."""
        rec["diagnostics"] = diag
        rec["warnings"] = find_warnings(diag, self.init_norms, history,
                                        self.model.cfg.optimizer.lr, rec.get("train_loss"))


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
def _warn(kind: str, layer: str, text: str) -> dict[str, str]:
    return {"kind": kind, "layer": layer, "text": text}


def _e(x: float) -> str:
    return f"{x:.2g}" if 1e-2 <= abs(x) < 1e3 else f"{x:.1e}"


def find_warnings(diag: dict[str, dict[str, Any]], init_norms: dict[str, float],
                  history: list[dict[str, Any]], lr: float,
                  train_loss: float | None = None) -> list[dict[str, str]]:
    """The failure patterns visible in one evaluation's diagnostics, each naming the layer and
    a likely fix. `history` is the earlier evaluations (growth of gradient norms, progress of
    the loss); `train_loss` is this evaluation's; `lr` the configured learning rate."""
    out: list[dict[str, str]] = []
    names = list(diag)
    structural: set[str] = set()   # layers whose small gradients have a known cause
    # Identical hidden units: symmetry never broken.
    for name, d in diag.items():
        if d.get("identical"):
            structural.add(name)
            out.append(_warn("identical", name, (
                f"{name}: every hidden unit has the same weights (all columns of its W are "
                "equal), so every unit computes the same value and gets the same gradient: the "
                "symmetry is never broken and the layer is as good as one unit. Likely fix: a "
                "random initialization (model.init=he, or xavier) instead of zeros or a "
                "constant.")))
    # Dead ReLUs.
    for name, d in diag.items():
        dead = d.get("dead")
        if dead is not None and dead > MOSTLY and name not in structural:
            structural.add(name)
            out.append(_warn("dead_relu", name, (
                f"{name} (relu): {dead:.0%} of its units are dead: they output 0 for every "
                "training sample evaluated, so no gradient flows through them and they stop "
                "learning. Likely fix: a smaller learning rate (a too-large step knocks units "
                "into the dead zone), He initialization with zero biases, or "
                "model.activation=leaky_relu.")))
    # Saturated sigmoid / tanh units.
    for name, d in diag.items():
        sat = d.get("saturated")
        if sat is not None and sat > MOSTLY and name not in structural:
            structural.add(name)
            act = d.get("activation")
            out.append(_warn("saturated", name, (
                f"{name} ({act}): {sat:.0%} of its units are saturated (output pinned near "
                f"{'0 or 1' if act == 'sigmoid' else '-1 or 1'} on most samples), where the "
                "local gradient is almost 0, so little gradient passes back. Likely fix: a "
                "smaller initialization (model.init=xavier), standardized inputs "
                "(data.standardize=true), or model.activation=relu.")))
    # Vanishing gradients: early layers' gradients far below the output layer's.
    last = diag[names[-1]].get("grad_norm") if names else None
    if len(names) >= 2 and last and not (structural - {names[-1]}):
        low = [n for n in names[:-1] if diag[n].get("grad_norm") is not None
               and diag[n]["grad_norm"] / last < VANISHING]
        if low:
            name, g = low[0], diag[low[0]]["grad_norm"]
            structural.update(low)
            others = f" ({', '.join(low[1:])} too)" if len(low) > 1 else ""
            acts = {diag[n].get("activation") for n in names[:-1]}
            cause = (" Sigmoid and tanh scale the gradient down at every layer (the sigmoid's "
                     "local gradient is at most 0.25)." if acts & {"sigmoid", "tanh"} else "")
            out.append(_warn("vanishing", name, (
                f"{name}: vanishing gradient: its gradient norm {_e(g)} is {_e(g / last)} "
                f"times the output layer's ({_e(last)}){others}, so the early layers barely "
                f"learn.{cause} Likely fix: model.activation=relu, xavier or he "
                "initialization instead of small gaussian weights, or fewer layers.")))
    # Exploding norms: weights 100x larger than at initialization or at the first evaluation
    # and still changing by more than a tenth of themselves per step (small-init layers grow
    # that much, healthily, but their updates settle near 1e-3), or no longer finite.
    first = next((r.get("diagnostics") for r in history if r.get("diagnostics")), None)
    for name, d in diag.items():
        w, r = d.get("weight_norm"), d.get("update_ratio")
        refs = [(init_norms.get(name, 0.0), "initialization"),
                ((first or {}).get(name, {}).get("weight_norm"), "the first evaluation")]
        what = None
        if w is not None and not math.isfinite(w):
            what = "its weights are no longer finite numbers"
        elif w is not None and r is not None and r > RATIO_HIGH:
            for ref, when in refs:
                if ref and w >= EXPLODING * ref:
                    what = (f"the norm of its weights grew from {_e(ref)} at {when} to {_e(w)} "
                            f"(x{_e(w / ref)}) and still changes by {_e(r)} of itself per step")
                    break
        if what:
            g = d.get("grad_norm")
            grad = f"; its gradient norm is {_e(g)}" if g is not None else ""
            structural.add(name)
            out.append(_warn("exploding", name, (
                f"{name}: exploding norms: {what}{grad}. Likely fix: a smaller learning rate "
                f"(optimizer.lr={lr / 10:g}), gradient clipping (train.grad_clip=5), or "
                "stronger regularization.")))
    # Update-to-weight ratios far from 1e-3. A small ratio late in training, once the loss has
    # fallen (to under half of the first evaluation's), is convergence, not a too-low rate.
    stalled = not history or train_loss is None or not history[0].get("train_loss") or \
        train_loss > 0.5 * history[0]["train_loss"]
    for name, d in diag.items():
        r = d.get("update_ratio")
        if r is None:
            continue
        if r > RATIO_HIGH:
            out.append(_warn("update_high", name, (
                f"{name}: the last step changed its weights by {_e(r)} of their norm "
                f"(update/weight ratio; about {HEALTHY_RATIO:g} is healthy): the learning "
                f"rate is probably too high. Likely fix: optimizer.lr={lr / 10:g} or lower.")))
        elif r < RATIO_LOW and stalled and name not in structural and d.get("grad_norm"):
            out.append(_warn("update_low", name, (
                f"{name}: the last step changed its weights by only {_e(r)} of their norm "
                f"(update/weight ratio; about {HEALTHY_RATIO:g} is healthy): the learning "
                f"rate is probably too low. Likely fix: optimizer.lr={lr * 10:g} or higher.")))
    return out


def new_warnings(rec: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Warnings of `rec` not already given at an earlier evaluation in `history` (same kind,
    same layer): each pattern is announced once, when it first appears."""
    seen = {(w["kind"], w["layer"]) for r in history if r is not rec
            for w in r.get("warnings") or ()}
    return [w for w in rec.get("warnings") or () if (w["kind"], w["layer"]) not in seen]


def warnings_summary(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every distinct warning of a run (kind, layer), with the epoch it first appeared and the
    number of evaluations that showed it: what summary.json keeps."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in history:
        for w in r.get("warnings") or ():
            key = (w["kind"], w["layer"])
            if key in out:
                out[key]["evaluations"] += 1
            else:
                out[key] = dict(w, first_epoch=r.get("epoch"), evaluations=1)
    return list(out.values())
