"""Vectors and matrices in `bptrain trace`: values such as W=[[1,2],[3,4]] x=[1,-1], the @
operator, and a backward record that shows each gradient with its shape and the rule that made
it, as note 001 derives them (Y = X W: dX = dY W^T, dW = X^T dY; elementwise gates: local x
upstream; a value broadcast in the forward pass sums its gradient back to its own shape).

A value is parsed from its syntax tree (nested lists of numbers only, never evaluated).
The expression's output may be a vector or a matrix: backward then starts from dY = ones, the
gradient of sum(f).
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from bptrain.app.expression import ExpressionError, Step, Trace, domain_error_scalar
from bptrain.engine import gates as G
from bptrain.engine.gate import unbroadcast
from bptrain.engine.gates.linalg import promote_vectors
from bptrain.errors import BptrainError
from bptrain.formatting import fmt

MAX_ENTRIES = 400     # a trace is for looking at: "small" vectors and matrices
MAX_TEXT = 20_000     # characters of one value, checked before parsing
MATMUL_RULES = ("dX = dY W^T", "dW = X^T dY")
ELEMENTWISE_RULE = "local × upstream"
BROADCAST_RULE = "broadcast"


# ---- values: nested lists of numbers -----------------------------------------------------------

def parse_array(pair: str, start: int) -> list:
    """The value of NAME=VALUE from column `start` of `pair`: a vector [1, -1] or a matrix
    [[1, 2], [3, 4]] of finite numbers, as nested lists of floats. Anything else (strings,
    calls, names, ragged rows, empty lists, more than two levels) is an ExpressionError with a
    caret under the offending part."""
    text = pair[start:]
    lead = len(text) - len(text.lstrip())
    text, start = text.strip(), start + lead
    name = pair.partition("=")[0].strip()
    example = f"write e.g. {name}=[1, -1] or {name}=[[1, 2], [3, 4]]"

    def fail(col: int, end: int, message: str) -> ExpressionError:
        return ExpressionError(pair, start + col, start + max(end, col + 1), message)

    if len(text) > MAX_TEXT:
        raise fail(0, len(text), f"{name}: the value is too long for a trace (at most "
                   f"{MAX_ENTRIES} entries); {example}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        col = _chars(text, (e.offset or 1) - 1) if e.lineno in (None, 1) else 0
        raise fail(min(col, len(text)), len(text), f"{name}: not a vector or matrix "
                   f"literal ({e.msg}); {example}") from None
    except (RecursionError, MemoryError, ValueError):
        raise fail(0, len(text), f"{name}: not a vector or matrix literal; {example}") from None

    def span(node: ast.AST) -> tuple[int, int]:
        return (_chars(text, node.col_offset),
                _chars(text, node.end_col_offset or node.col_offset + 1))

    def number(node: ast.AST) -> float | None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = number(node.operand)
            if inner is None:
                return None
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            try:
                value = float(node.value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise fail(*span(node), f"{name}: give finite numbers.")
            return value
        return None

    def walk(node: ast.AST, depth: int) -> Any:
        value = number(node)
        if value is not None:
            return value
        if not isinstance(node, ast.List):
            raise fail(*span(node), f"{name}: a vector or matrix holds numbers only, in "
                       f"square brackets (no names, strings, calls or tuples); {example}")
        if depth >= 2:
            raise fail(*span(node), f"{name}: trace takes vectors and matrices (two levels of "
                       "brackets at most)")
        if not node.elts:
            raise fail(*span(node), f"{name}: an empty list has no entries; {example}")
        items = [walk(e, depth + 1) for e in node.elts]
        rows = [isinstance(i, list) for i in items]
        if any(rows) and not all(rows):
            bad = node.elts[rows.index(not rows[0])]
            raise fail(*span(bad), f"{name}: ragged: mix of numbers and rows; every row of a "
                       "matrix is a list of the same length")
        if all(rows):
            for e, item in zip(node.elts, items):
                if len(item) != len(items[0]):
                    raise fail(*span(e), f"{name}: ragged: this row has {len(item)} entr"
                               f"{'y' if len(item) == 1 else 'ies'}, the first has "
                               f"{len(items[0])}; every row needs the same length")
        return items

    value = walk(tree.body, 0)
    if not isinstance(value, list):  # [..] was checked for; a bare number goes through float()
        raise fail(0, len(text), f"{name}: {example}")
    size = len(value) * (len(value[0]) if isinstance(value[0], list) else 1)
    if size > MAX_ENTRIES:
        raise fail(0, len(text), f"{name} has {size} entries; a trace shows at most "
                   f"{MAX_ENTRIES}")
    return value


def _chars(text: str, byte_offset: int) -> int:
    """ast's columns count UTF-8 bytes; the caret counts characters."""
    return len(text.encode("utf-8")[:max(byte_offset, 0)].decode("utf-8", errors="ignore"))


def to_plain(value: Any) -> Any:
    """A NumPy value as JSON: a float for a scalar, nested lists of floats otherwise."""
    arr = np.asarray(value, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr.tolist()


def shape_text(shape: Any) -> str:
    """(2, 2) -> '2×2', (3,) -> '3', () -> 'scalar'."""
    shape = tuple(shape)
    return "×".join(map(str, shape)) if shape else "scalar"


def compact(value: Any, digits: int = 4, max_entries: int = 36) -> str:
    """A value as the notes write it: 3, [1, -1], [[1, 2], [3, 4]]; a large one summarized."""
    if value is None:
        return "-"
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return fmt(float(arr), digits)
    if arr.size > max_entries:
        return (f"{shape_text(arr.shape)} array in [{fmt(float(arr.min()), digits)}, "
                f"{fmt(float(arr.max()), digits)}]")

    def rec(x: Any) -> str:
        if isinstance(x, list):
            return "[" + ", ".join(rec(y) for y in x) + "]"
        return fmt(float(x), digits)
    return rec(arr.tolist())


# ---- the record -----------------------------------------------------------------------------

@dataclass
class TensorStep(Step):
    """A backward step on vectors or matrices: `shape` is the upstream's (the output's)."""
    shape: list[int] = field(default_factory=list)


@dataclass
class TensorTrace(Trace):
    """A trace whose values are vectors or matrices (nested lists in `values`, `nodes`,
    `gradients`...), with every node's shape and, for a non-scalar output, the seed ones."""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    seed: str = "1"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "shapes": self.shapes, "seed": self.seed}


def _local(node: Any, i: int, upstream: np.ndarray) -> tuple[Any, str, str | None]:
    """(local gradient, rule, the rule with this gate's operand names) for input i."""
    gate = node.gate
    if isinstance(gate, G.MatMul):
        X, W = promote_vectors(gate.X, gate.W)
        left, right = (p.name for p in node.inputs)
        if i == 0:
            return W.T, MATMUL_RULES[0], f"d{left} = dY {right}^T"
        return X.T, MATMUL_RULES[1], f"d{right} = {left}^T dY"
    ones = np.ones_like(np.asarray(upstream, dtype=np.float64))
    local = gate.backward(ones)
    local = local if isinstance(local, (tuple, list)) else (local,)
    value = np.asarray(local[i], dtype=np.float64)
    if isinstance(gate, G.Sum):  # Mean too: the upstream copied back over the summed axes
        return value, BROADCAST_RULE, None
    return value, ELEMENTWISE_RULE, None


def record(expr: str, values: dict[str, Any], graph: Any, out: Any, builder: Any,
           check: bool, h: float) -> TensorTrace:
    """Like trace._record, for vectors and matrices: each row keeps its downstream as the
    engine computed it (summed back to the input's shape where the forward broadcast)."""
    order, backward = graph.plan(out)
    nodes = [{"name": n.name, "gate": n.gate.label() if n.gate else n.kind,
              "inputs": [p.name for p in n.inputs], "value": to_plain(n.value),
              "shape": list(np.shape(n.value))} for n in order]
    steps: list[Step] = []
    contributions: dict[str, list[dict[str, Any]]] = {}
    for node in backward:
        upstream = node.grad
        if upstream is None:
            continue
        raw = node.gate.backward(upstream)
        raw = raw if isinstance(raw, (tuple, list)) else (raw,)
        rows = []
        for i, (parent, grad) in enumerate(zip(node.inputs, raw)):
            shape = list(np.shape(parent.value))
            if not parent.requires_grad or grad is None:
                rows.append({"name": parent.name, "local": None, "downstream": None,
                             "shape": shape, "rule": None})
                continue
            grad = np.asarray(grad, dtype=np.float64)
            local, rule, here = _local(node, i, upstream)
            row = {"name": parent.name, "local": to_plain(local), "downstream": None,
                   "shape": shape, "rule": rule}
            if here:
                row["here"] = here
            if grad.shape != tuple(shape):
                grad = unbroadcast(grad, tuple(shape))
                row["rule"] = f"{rule}, summed (broadcast)"
            row["downstream"] = to_plain(grad)
            rows.append(row)
            contributions.setdefault(parent.name, []).append(
                {"from": node.name, "gradient": to_plain(grad)})
        steps.append(TensorStep(node.name, node.gate.label(), node.gate.pattern,
                                to_plain(upstream), rows, list(np.shape(upstream))))
    copies = [{"variable": name, "contributions": contributions[name],
               "total": to_plain(var.grad)}
              for name, var in builder.variables.items() if len(contributions.get(name, [])) > 1]
    grads = {name: to_plain(var.grad if var.grad is not None else np.zeros(np.shape(var.value)))
             for name, var in builder.variables.items()}
    result = TensorTrace(expr, values, to_plain(out.value), nodes, steps, copies, grads,
                         shapes={n.name: list(np.shape(n.value)) for n in order},
                         seed="1" if np.ndim(out.value) == 0 else "ones")
    if check:
        result.numerical = numerical_check(graph, out, builder, grads, h)
    return result


def numerical_check(graph: Any, out: Any, builder: Any, grads: dict[str, Any],
                    h: float) -> dict[str, dict[str, Any]]:
    """Centered differences of sum(f) for every entry of every variable (float64)."""
    from bptrain.engine.gradcheck import numerical_gradient, relative_error
    order, _ = graph.plan(out)
    kinked = [n.gate for n in order if n.gate is not None and n.gate.kinked]
    found: dict[str, dict[str, Any]] = {}
    for name, var in builder.variables.items():
        holder = np.array(var.value, dtype=np.float64)
        var.value = holder
        with np.errstate(all="ignore"):
            numeric, crossed = numerical_gradient(
                lambda: np.sum(graph.forward(out)), holder, np.arange(holder.size), h,
                (lambda: [g.branches() for g in kinked]) if kinked else None)
        analytic = np.asarray(grads[name], dtype=np.float64).reshape(-1)
        rel = relative_error(analytic, numeric)
        counted = np.where(crossed, 0.0, rel)
        found[name] = {"numeric": to_plain(numeric.reshape(holder.shape)),
                       "rel_error": float(counted.max()) if counted.size else 0.0,
                       "rel_errors": to_plain(rel.reshape(holder.shape)),
                       "kink": bool(crossed.any())}
    graph.forward(out)
    return found


# ---- errors ---------------------------------------------------------------------------------

def shape_error(builder: Any, graph: Any, out: Any, expr: str, exc: Exception) -> BptrainError:
    """The first gate whose inputs' shapes do not fit, with a caret under it."""
    order, _ = graph.plan(out)
    for node in order:
        if node.gate is None:
            continue
        args = [p.value for p in node.inputs]
        try:
            with np.errstate(all="ignore"):
                node.value = node.gate.forward(*args)
            continue
        except ValueError:
            pass
        shapes = [shape_text(np.shape(a)) for a in args]
        start, end = builder.where.get(node.name, (0, len(expr)))
        if isinstance(node.gate, G.MatMul):
            if any(np.ndim(a) == 0 for a in args):
                msg = (f"@ multiplies vectors and matrices, not numbers (shapes {shapes[0]} @ "
                       f"{shapes[1]}); use * for numbers")
            else:
                X, W = promote_vectors(*args)
                msg = (f"@ cannot multiply {shapes[0]} by {shapes[1]}: the inner sizes "
                       f"{X.shape[-1]} and {W.shape[0]} differ (X @ W needs X's columns = "
                       "W's rows)")
        else:
            msg = (f"{node.gate.label()} cannot combine shapes {' and '.join(shapes)}: "
                   "elementwise gates need equal shapes, or one that broadcasts (a number, "
                   "a row)")
        return ExpressionError(expr, start, end, msg)
    return BptrainError(f"the expression cannot be computed with these values: {exc}")


def domain_error(builder: Any, node: Any, expr: str) -> ExpressionError:
    """trace's domain message for the first entry out of range, naming the entry."""
    value = np.asarray(node.value)
    elementwise = all(np.ndim(p.value) == 0 or np.broadcast_shapes(np.shape(p.value),
                                                                   value.shape) == value.shape
                      for p in node.inputs) and not isinstance(node.gate, (G.MatMul, G.Sum))
    if value.ndim and elementwise:
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        fake = SimpleNamespace(name=node.name, gate=node.gate, value=value[idx], inputs=[
            SimpleNamespace(value=np.broadcast_to(p.value, value.shape)[idx])
            for p in node.inputs])
        err = domain_error_scalar(builder, fake, expr)
        where = f" (entry {list(idx)} of {shape_text(value.shape)})"
    else:
        start, end = builder.where.get(node.name, (0, len(expr)))
        err = ExpressionError(expr, start, end, f"{node.gate.label()} gives a value out of "
                              "range here (inf or nan)")
        where = ""
    return ExpressionError(expr, err.start, err.end, str(err).split("\n")[0] + where)


# ---- text -----------------------------------------------------------------------------------

def tensor_report(t: TensorTrace) -> list[Any]:
    """`bptrain trace` on vectors and matrices: the scalar report's three parts, with shapes
    and the rule behind each gradient."""
    from rich.table import Table
    from rich.text import Text
    values = ", ".join(f"{k} = {compact(v)}" for k, v in t.values.items())
    out: list[Any] = [Text(f"f = {t.expression}   at {values}", style="bold")]
    out.append(Text("(a) forward, in topological order", style="italic"))
    fwd = Table(show_edge=False, pad_edge=False)
    for col in ("node", "gate", "inputs", "shape", "value"):
        fwd.add_column(col, justify="right" if col == "value" else "left")
    for n in t.nodes:
        fwd.add_row(n["name"], n["gate"], ", ".join(n["inputs"]), shape_text(n["shape"]),
                    compact(n["value"]))
    out.append(fwd)
    seed = ("" if t.seed == "1" else f"; f is {shape_text(t.shapes[t.nodes[-1]['name']])}, "
            "so backward starts from dY = ones (the gradient of sum(f))")
    out.append(Text("(b) backward, in reverse order: each gradient has its input's shape"
                    + seed, style="italic"))
    back = Table(show_edge=False, pad_edge=False)
    for col in ("gate", "pattern", "upstream", "to input", "rule", "local", "downstream",
                "shape"):
        back.add_column(col, justify="right" if col in ("upstream", "local", "downstream")
                        else "left", no_wrap=col in ("rule", "upstream", "local", "downstream"))
    for s in t.steps:
        for i, row in enumerate(s.inputs):
            first = i == 0
            rule = row["rule"] or ""
            back.add_row(f"{s.node} ({s.gate})" if first else "", (s.pattern or "") if first
                         else "", compact(s.upstream) if first else "", row["name"], rule,
                         compact(row["local"]), compact(row["downstream"]),
                         shape_text(row["shape"]))
    out.append(back)
    for s in t.steps:
        here = [r["here"] for r in s.inputs if r.get("here")]
        if here:
            left, right = (r["name"] for r in s.inputs)
            out.append(Text(f"{s.node} = {left} @ {right} is Y = X W with X = {left}, W = "
                            f"{right}: {', '.join(here)}" + (
                                " (a 1-D operand is a row on the left, a column on the right)"
                                if any(len(r["shape"]) == 1 for r in s.inputs) else "")))
    for c in t.copies:
        parts = " + ".join(compact(p["gradient"]) for p in c["contributions"])
        out.append(Text(f"copy (adder): {c['variable']} is used {len(c['contributions'])} "
                        f"times, so its gradients add: {parts} = {compact(c['total'])}"))
    out.append(Text(f"(c) gradients of f = {compact(t.output)}", style="italic"))
    grads = Table(show_edge=False, pad_edge=False)
    grads.add_column("variable")
    grads.add_column("shape")
    grads.add_column("df/dvariable", justify="right")
    if t.numerical:
        grads.add_column("numerical", justify="right")
        grads.add_column("max rel error", justify="right")
    for name, g in t.gradients.items():
        row = [name, shape_text(t.shapes.get(name, np.shape(g))), compact(g)]
        if t.numerical:
            n = t.numerical[name]
            note = " (kink)" if n["kink"] else ""
            row += [compact(n["numeric"]), Text(f"{n['rel_error']:.1e}{note}",
                                                style="green" if n["rel_error"] < 1e-6
                                                or n["kink"] else "red")]
        grads.add_row(*row)
    out.append(grads)
    return out
