"""Numerical gradient checking: the course's way to tell a correct backward pass from a wrong one.

For each checked entry x_i:  numeric = (L(x_i + h) - L(x_i - h)) / 2h  (centered differences,
float64, h = 1e-5), compared with the analytic gradient by the relative error
|a - n| / max(|a|, |n|). Entries where both are tiny pass on an absolute floor instead, since a
relative error of two near-zero numbers means nothing. An entry whose +h and -h evaluations took
different branches of a kinked gate (relu, max, abs, hinge, L1, ...) is a kink crossing: the
numeric value straddles a jump in the derivative, so it is reported as such, not as a failure.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from bptrain.engine.gate import Gate, registry, unbroadcast
from bptrain.engine.graph import Graph, Node

H = 1e-5
ABS_FLOOR = 1e-10   # |a - n| below this passes whatever the relative error
GATE_TOL = 1e-7     # a smooth gate in float64 should do far better than this
NET_TOL = 1e-5      # a whole network: longer sums, more rounding; the course's "usual" bound


@dataclass
class CheckResult:
    """One checked array: a gate's input or a network parameter."""
    name: str
    shape: tuple[int, ...]
    checked: int                 # entries compared
    max_rel_error: float         # over entries that passed no kink and no floor test
    kinks: int                   # entries whose +-h evaluations crossed a kink (not counted)
    status: str                  # "pass" | "kink" (passed, kinks seen) | "fail"
    worst: dict[str, Any] = field(default_factory=dict)  # index, analytic, numeric

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; an infinite error (a crashed backward) becomes null."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        if not np.isfinite(d["max_rel_error"]):
            d["max_rel_error"] = None
        return d


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    """|a - n| / max(|a|, |n|), with 0/0 taken as 0, and inf where either is nan or the
    difference is undefined (inf - inf), so a non-finite gradient can never pass."""
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.abs(analytic - numeric)
        scale = np.maximum(np.abs(analytic), np.abs(numeric))
        rel = np.where(scale > 0, diff / scale, 0.0)
    return np.where(np.isnan(diff) | np.isnan(rel), np.inf, rel)


def sample_indices(size: int, samples: int | None, rng: np.random.Generator) -> np.ndarray:
    """Every flat index when the array is small, else `samples` distinct ones, seeded."""
    if samples is None or size <= samples:
        return np.arange(size)
    return np.sort(rng.choice(size, samples, replace=False))


def numerical_gradient(evaluate: Callable[[], float], x: np.ndarray, indices: np.ndarray,
                       h: float = H, branches: Callable[[], Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Centered differences of `evaluate()` with respect to x.flat[i] for each i in `indices`.

    `x` is changed in place and restored. Returns (numeric gradients, kink-crossed flags).
    `branches()`, if given, fingerprints the kinked gates' branches after an evaluation.
    """
    numeric = np.empty(len(indices))
    crossed = np.zeros(len(indices), dtype=bool)
    for k, i in enumerate(indices):
        # Index x itself (C-order flat index -> multi-index): x.reshape(-1) is a copy, not a
        # view, when x is not C-contiguous (a transposed or Fortran-ordered array).
        at = np.unravel_index(i, x.shape)
        old = x[at]
        x[at] = old + h
        plus = float(evaluate())
        above = branches() if branches else None
        x[at] = old - h
        minus = float(evaluate())
        below = branches() if branches else None
        x[at] = old
        numeric[k] = (plus - minus) / (2 * h)
        crossed[k] = branches is not None and not _same(above, below)
    return numeric, crossed


def _same(a: list, b: list) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def summarize(name: str, analytic: np.ndarray, numeric: np.ndarray, crossed: np.ndarray,
              indices: np.ndarray, shape: tuple[int, ...], tol: float,
              floor: float = ABS_FLOOR) -> CheckResult:
    """Fold per-entry comparisons into one CheckResult."""
    rel = relative_error(analytic, numeric)
    # Excused entries: a kink crossing is no evidence either way; two near-zero values whose
    # difference is below the absolute floor pass although their ratio may be large.
    floored = (np.abs(analytic - numeric) < floor) & (rel > tol)
    rel = np.where(crossed | floored, 0.0, rel)
    worst = int(np.argmax(rel)) if len(rel) else 0
    max_rel = float(rel[worst]) if len(rel) else 0.0
    kinks = int(crossed.sum())
    status = "fail" if max_rel > tol else ("kink" if kinks else "pass")
    where = {}
    if len(rel):
        where = {"index": [int(i) for i in np.unravel_index(indices[worst], shape)] if shape
                 else [], "analytic": float(analytic[worst]), "numeric": float(numeric[worst])}
    return CheckResult(name, tuple(shape), len(indices), max_rel, kinks, status, where)


class _RngFreeze:
    """Gates that draw random numbers (dropout) must draw the same ones at every evaluation
    of a check, or the numeric gradient measures noise: save their generators' states once
    and restore them before each evaluation."""

    def __init__(self, gates: Sequence[Gate]):
        self.saved = [(g.rng, g.rng.bit_generator.state) for g in gates
                      if isinstance(getattr(g, "rng", None), np.random.Generator)]

    def restore(self) -> None:
        for rng, state in self.saved:
            rng.bit_generator.state = state


def check_graph(graph: Graph, output: Node, wrt: Sequence[Node] | None = None, *,
                h: float = H, samples: int | None = None, seed: int = 0,
                tol: float = NET_TOL) -> list[CheckResult]:
    """Check d(output)/d(node) for each node in `wrt` (default: all parameters) of a float64
    graph whose inputs are already fed. Large arrays are sampled to `samples` entries each."""
    if graph.dtype != np.float64:
        raise ValueError("gradient checks need a float64 graph: float32 rounding swamps h")
    nodes = list(wrt) if wrt is not None else graph.params
    order, _ = graph.plan(output)
    kinked = [n.gate for n in order if n.gate is not None and n.gate.kinked]
    freeze = _RngFreeze([n.gate for n in order if n.gate is not None])

    def evaluate() -> float:
        freeze.restore()
        return graph.forward(output)

    def branches() -> list:
        return [g.branches() for g in kinked]

    base = float(evaluate())
    graph.backward(output)
    # Each evaluation of a loss of size |L| is rounded by about eps |L|, so a centered
    # difference carries noise of about eps |L| / h: a difference below a few times that
    # (small gradient entries of a loss in the hundreds) is rounding, not a wrong backward.
    floor = max(ABS_FLOOR, 10 * np.finfo(np.float64).eps * abs(base) / h)
    analytic = {n.name: np.zeros(np.shape(n.value)) if n.grad is None else np.array(n.grad)
                for n in nodes}
    rng = np.random.default_rng(seed)
    results = []
    for node in nodes:
        if not isinstance(node.value, np.ndarray) or node.value.dtype.kind != "f":
            continue
        idx = sample_indices(node.value.size, samples, rng)
        numeric, crossed = numerical_gradient(evaluate, node.value, idx, h,
                                              branches if kinked else None)
        a = analytic[node.name].reshape(-1)[idx]
        results.append(summarize(node.name, a, numeric, crossed, idx, node.value.shape, tol,
                                 floor))
    evaluate()  # leave the graph's values at the unperturbed point
    return results


def check_gate(gate: Gate, inputs: Sequence[Any], *, h: float = H, samples: int | None = None,
               seed: int = 0, tol: float = GATE_TOL, name: str | None = None
               ) -> list[CheckResult]:
    """Put one gate through the check: L = sum(forward(*inputs) * R) for a fixed random R,
    so the gate's backward(R) must match the numeric gradient of L for every float input.
    Integer inputs (labels) are not differentiated."""
    rng = np.random.default_rng(seed)
    inputs = [np.array(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
              for x in inputs]
    freeze = _RngFreeze([gate])
    out = np.array(gate.forward(*inputs), dtype=np.float64)  # a copy: x may be returned as is
    upstream = rng.standard_normal(out.shape)

    def evaluate() -> float:
        freeze.restore()
        # L minus its value at the unperturbed point, summed over the change of the output:
        # entries that a perturbation does not move cancel exactly, so the rounding of a long
        # sum (eps * sum|out * R| / 2h, about 1e-10 for 50 entries) cannot swamp small
        # gradient entries. The difference quotient is the same.
        return float(np.sum((np.asarray(gate.forward(*inputs)) - out) * upstream))

    label = name or gate.label()
    branches = (lambda: [gate.branches()]) if gate.kinked else None
    evaluate()
    if gate.takes_needs_input_grad:
        downstream = gate.backward(upstream, tuple(x.dtype.kind == "f" for x in inputs))
    else:
        downstream = gate.backward(upstream)
    if not isinstance(downstream, (tuple, list)):
        downstream = (downstream,)
    if len(downstream) != len(inputs):
        raise ValueError(f"{label}.backward returned {len(downstream)} gradients for "
                         f"{len(inputs)} inputs")
    results = []
    for k, (x, grad) in enumerate(zip(inputs, downstream)):
        if x.dtype.kind != "f":
            continue
        input_name = f"{label} d/d(input {k})" if len(inputs) > 1 else label
        try:
            fits = grad is not None and unbroadcast(np.asarray(grad), x.shape).shape == x.shape
        except ValueError:  # a gradient that no broadcasting explains, e.g. transposed
            fits = False
        if not fits:
            got = None if grad is None else np.shape(grad)
            results.append(CheckResult(input_name, x.shape, 0, float("inf"), 0, "fail",
                                       {"error": f"backward gave shape {got}, "
                                                 f"input has {x.shape}"}))
            continue
        analytic = unbroadcast(np.asarray(grad, dtype=np.float64), x.shape).reshape(-1)
        idx = sample_indices(x.size, samples, rng)
        numeric, crossed = numerical_gradient(evaluate, x, idx, h, branches)
        results.append(summarize(input_name, analytic[idx], numeric, crossed, idx, x.shape, tol))
    return results


# ---- the library sweep: every registered gate's own examples ------------------------------
def library_cases(seed: int = 0) -> list[tuple[str, Gate, list[np.ndarray]]]:
    """(label, gate, inputs) for every gate class of the library, from the registry: each
    class's `examples`, random float64 inputs away from its kinks, on several shapes."""
    from bptrain.engine import gates  # noqa: F401  (importing the library fills the registry)
    rng = np.random.default_rng(seed)
    cases = []
    for cls in registry.classes():
        if cls.__module__.startswith("bptrain."):
            cases += cls.examples(rng)
    return cases


def check_library(seed: int = 0, h: float = H) -> list[CheckResult]:
    """Every gate of the library through `check_gate`."""
    results = []
    for name, gate, inputs in library_cases(seed):
        results += check_gate(gate, inputs, h=h, seed=seed, name=name)
    return results
