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

from bptrain.engine.graph import Gate, Graph, Node, unbroadcast

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


# ---- suites: the library's gates, a config's network, a user's gate ----------------------
def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...], gap: float = 0.2
                    ) -> np.ndarray:
    """Random normal values at least `gap` away from 0, where relu/abs/... have kinks."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + gap, x - gap)


def library_cases(seed: int = 0) -> list[tuple[str, Gate, list[np.ndarray]]]:
    """Each library gate on random float64 inputs away from its kinks, on several shapes:
    0-d scalars, arrays, and broadcasting (a row, a column, a scalar against a matrix)."""
    from bptrain.engine import gates as G
    rng = np.random.default_rng(seed)

    def a(*shape: int) -> np.ndarray:
        return _away_from_zero(rng, shape)

    def pos(*shape: int) -> np.ndarray:
        return np.abs(a(*shape)) + 0.5

    def apart(*shape: int) -> list[np.ndarray]:
        x = a(*shape)  # y differs from x by at least 0.2, so max/min never tie
        return [x, x + _away_from_zero(rng, shape)]

    labels = rng.integers(0, 4, size=6)
    cases = []
    for shapes, tag in (([(), ()], "scalars"), ([(4, 3), (4, 3)], "arrays"),
                        ([(4, 3), (3,)], "broadcast row"), ([(4, 3), (4, 1)], "broadcast col"),
                        ([(4, 3), ()], "broadcast scalar")):
        for gate in (G.Add(), G.Subtract(), G.Multiply()):
            cases.append((f"{gate.label()} {tag}", gate, [a(*s) for s in shapes]))
        cases.append((f"div {tag}", G.Divide(), [a(*shapes[0]), pos(*shapes[1])]))
    for shape, tag in (((), "scalar"), ((4, 3), "array")):
        cases += [(f"neg {tag}", G.Negate(), [a(*shape)]),
                  (f"pow(3) {tag}", G.Power(3), [a(*shape)]),
                  (f"pow(-0.5) {tag}", G.Power(-0.5), [pos(*shape)]),
                  (f"max {tag}", G.Maximum(), apart(*shape)),
                  (f"min {tag}", G.Minimum(), apart(*shape)),
                  (f"abs {tag}", G.Abs(), [a(*shape)]),
                  (f"exp {tag}", G.Exp(), [a(*shape)]),
                  (f"log {tag}", G.Log(), [pos(*shape)]),
                  (f"relu {tag}", G.ReLU(), [a(*shape)]),
                  (f"leaky_relu(0.1) {tag}", G.LeakyReLU(0.1), [a(*shape)]),
                  (f"sigmoid {tag}", G.Sigmoid(), [a(*shape)]),
                  (f"tanh {tag}", G.Tanh(), [a(*shape)]),
                  (f"elu(1) {tag}", G.ELU(1.0), [a(*shape)])]
    cases += [("max broadcast", G.Maximum(), [a(4, 3), a(3) + 3.0]),
              ("sum", G.Sum(), [a(4, 3)]), ("sum(axis=0)", G.Sum(axis=0), [a(4, 3)]),
              ("mean", G.Mean(), [a(4, 3)]), ("mean(axis=1)", G.Mean(axis=1), [a(4, 3)]),
              ("matmul", G.MatMul(), [a(5, 4), a(4, 3)]),
              ("bias_add", G.BiasAdd(), [a(5, 3), a(3)]),
              ("affine", G.Affine(), [a(5, 4), a(4, 3), a(3)]),
              ("dropout(0.3)", G.Dropout(0.3, seed=seed), [a(6, 5)]),
              ("softmax_ce", G.SoftmaxCrossEntropy(), [a(6, 4), labels]),
              ("svm_hinge(1)", G.SVMHinge(1.0), [_svm_scores(rng, labels, 4), labels]),
              ("mse(sum)", G.MSE("sum"), [a(6, 4), a(6, 4)]),
              ("mse(mean)", G.MSE("mean"), [a(6, 4), a(6, 4)]),
              ("l2(0.1)", G.L2(0.1), [a(4, 3), a(3, 2)]),
              ("l1(0.1)", G.L1(0.1), [a(4, 3), a(3, 2)])]
    return cases


def _svm_scores(rng: np.random.Generator, labels: np.ndarray, classes: int) -> np.ndarray:
    """Scores whose hinge margins s_j - s_y + 1 all stay at least 0.2 away from 0."""
    s = rng.standard_normal((len(labels), classes))
    rows = np.arange(len(labels))
    margins = s - s[rows, labels][:, None] + 1.0
    s += np.where(np.abs(margins) < 0.2, 0.4 * np.sign(margins + 1e-12), 0.0)
    s[rows, labels] = s[rows, labels]  # the true class scores themselves are unchanged
    return s


def check_library(seed: int = 0, h: float = H) -> list[CheckResult]:
    """Every gate of the library through `check_gate`."""
    results = []
    for name, gate, inputs in library_cases(seed):
        results += check_gate(gate, inputs, h=h, seed=seed, name=name)
    return results


def check_config(cfg: Any, *, samples: int | None = 100, h: float = H, seed: int = 0,
                 batch: int = 16) -> list[CheckResult]:
    """A config's whole network (data loss + regularization), per parameter, in float64 on a
    small batch of its training data, whatever the config's dtype."""
    from bptrain.net.config import load_config
    from bptrain.training.trainer import build_for_data, load_data
    cfg = load_config(cfg, ["train.dtype=float64"])
    data = load_data(cfg)
    model = build_for_data(cfg, data)
    X, y = data.X_train[:batch], data.y_train[:batch]
    model.graph.feed(X=X, y=model.targets(y))
    return check_graph(model.graph, model.loss, h=h, samples=samples, seed=seed)


def load_gate_class(spec: str) -> type:
    """`package.module:ClassName` or `path/to/file.py:ClassName` -> a Gate subclass."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path
    from bptrain.errors import ConfigError
    module_name, _, class_name = spec.rpartition(":")
    if not module_name or not class_name:
        raise ConfigError(f"--gate {spec!r}: write it as package.module:ClassName or "
                          "path/to/file.py:ClassName.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"--gate {spec!r}: file {path} not found.")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, ".")  # let a learner's module in the current folder be found
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.pop(0)
    except ConfigError:
        raise
    except ImportError as e:
        raise ConfigError(f"--gate {spec!r}: cannot import {module_name} ({e}). Run from the "
                          "folder that holds it, or give the path to the .py file.") from None
    except Exception as e:  # the user's module itself failed: say where
        raise ConfigError(f"--gate {spec!r}: importing {module_name} raised "
                          f"{type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Gate)):
        raise ConfigError(f"--gate {spec!r}: {module_name} has no Gate subclass named "
                          f"{class_name}; define `class {class_name}(bptrain.Gate)`.")
    return cls


def check_user_gate(cls: type, seed: int = 0, h: float = H) -> list[CheckResult]:
    """A user's gate on random inputs of the shapes its forward accepts: 0-d scalars,
    same-shape arrays, and matmul-like chains; a shape set it rejects is skipped."""
    import inspect
    from bptrain.errors import ConfigError
    try:
        gate = cls()
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}() needs arguments ({e}); give its settings "
                          "defaults so the checker can build it.") from None
    params = [p for p in inspect.signature(gate.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    n = max(len(params), 1)
    rng = np.random.default_rng(seed)
    shape_sets = {"scalars": [()] * n, "arrays": [(4, 3)] * n,
                  "chain": [(4, 3), (3, 5), (5, 2)][:n] if 2 <= n <= 3 else None}
    results, tried = [], []
    for tag, shapes in shape_sets.items():
        if shapes is None:
            continue
        inputs = [rng.standard_normal(s) for s in shapes]
        try:
            np.asarray(gate.forward(*inputs)) * 1.0
        except Exception:
            tried.append(tag)
            continue
        try:
            results += check_gate(gate, inputs, h=h, seed=seed, name=f"{cls.__name__} {tag}")
        except Exception as e:  # the learner's backward crashed: a failed check, not ours
            results.append(CheckResult(f"{cls.__name__} {tag}", tuple(np.shape(inputs[0])),
                                       0, float("inf"), 0, "fail",
                                       {"error": f"backward raised {type(e).__name__}: {e}"}))
    if not results:
        raise ConfigError(f"{cls.__name__}.forward failed on every input shape tried "
                          f"({', '.join(tried)}); check that it runs on NumPy arrays.")
    return results
