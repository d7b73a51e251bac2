"""`bptrain trace`: parse a scalar expression (with `ast`, never evaluated), build it as a graph
of the trainer's own gates, and record forward values and each backward step:
upstream x local = downstream, with the lecture's name for each gate's pattern.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bptrain.engine import gates as G
from bptrain.errors import BptrainError
from bptrain.engine.graph import Gate, Graph, Node

FUNCTIONS = {"exp": (G.Exp, 1), "log": (G.Log, 1), "sigmoid": (G.Sigmoid, 1),
             "tanh": (G.Tanh, 1), "relu": (G.ReLU, 1), "abs": (G.Abs, 1),
             "max": (G.Maximum, 2), "min": (G.Minimum, 2)}
OPERATORS = {ast.Add: G.Add, ast.Sub: G.Subtract, ast.Mult: G.Multiply, ast.Div: G.Divide}


class ExpressionError(BptrainError):
    """A problem at a place in the expression: the message shows it with a caret."""

    def __init__(self, expr: str, start: int, end: int, message: str):
        end = max(end, start + 1)
        caret = " " * start + "^" * (end - start)
        super().__init__(f"{message}\n  {expr}\n  {caret}")
        self.start, self.end = start, end


@dataclass
class Step:
    """One gate of the backward pass."""
    node: str
    gate: str
    pattern: str | None
    upstream: float
    inputs: list[dict[str, Any]]  # name, local, downstream (None for constants)


@dataclass
class Trace:
    expression: str
    values: dict[str, float]
    output: float
    nodes: list[dict[str, Any]]          # forward, in topological order
    steps: list[Step]                    # backward, in reverse topological order
    copies: list[dict[str, Any]]         # variables used more than once: contributions added
    gradients: dict[str, float]
    numerical: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"expression": self.expression, "values": self.values, "output": self.output,
                "nodes": self.nodes, "backward": [s.__dict__ for s in self.steps],
                "copies": self.copies, "gradients": self.gradients,
                **({"numerical": self.numerical} if self.numerical else {})}


class _Builder:
    """Walk the syntax tree and add one gate per operation to a Graph."""

    def __init__(self, expr: str, graph: Graph):
        self.expr, self.graph = expr, graph
        self.variables: dict[str, Node] = {}
        self.first_use: dict[str, ast.AST] = {}
        self.where: dict[str, tuple[int, int]] = {}  # node name -> columns in the text

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(self.expr, node.col_offset, node.end_col_offset or
                               node.col_offset + 1, message)

    def build(self, node: ast.AST) -> Node:
        out = self._build(node)
        self.where.setdefault(out.name, (node.col_offset, node.end_col_offset or 0))
        return out

    def _apply(self, gate: Gate, node: ast.AST, *inputs: Node) -> Node:
        out = self.graph.apply(gate, *inputs)
        self.where[out.name] = (node.col_offset, node.end_col_offset or 0)
        return out

    def _build(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return self.graph.const(float(node.value), name=self._const_name(node.value))
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise self.fail(node, f"{node.id} is a function: call it, e.g. {node.id}(x)")
            if node.id not in self.variables:
                self.variables[node.id] = self.graph.input(node.id)
                self.first_use[node.id] = node
            return self.variables[node.id]
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                exponent = _constant(node.right)
                if exponent is None:
                    raise self.fail(node.right, "the power gate takes a constant exponent "
                                    "(x ** 2, x ** -0.5); write exp(y * log(x)) for x ** y")
                return self._apply(G.Power(exponent), node, self.build(node.left))
            gate = OPERATORS.get(type(node.op))
            if gate is None:
                raise self.fail(node, f"the operator {type(node.op).__name__} is not "
                                "supported; use + - * / ** and the functions "
                                + ", ".join(FUNCTIONS))
            return self._apply(gate(), node, self.build(node.left), self.build(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.build(node.operand)
            return self._apply(G.Negate(), node, inner) if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):  # obj.method(...), f(x)(y), ...
                raise self.fail(node.func, "only the functions " + ", ".join(FUNCTIONS)
                                + " can be called, by name")
            if node.func.id not in FUNCTIONS:
                raise self.fail(node.func, f"unknown function {node.func.id!r}; known: "
                                + ", ".join(FUNCTIONS))
            gate_cls, arity = FUNCTIONS[node.func.id]
            if node.keywords or len(node.args) != arity:
                raise self.fail(node, f"{node.func.id} takes {arity} argument"
                                f"{'s' if arity > 1 else ''}")
            return self._apply(gate_cls(), node, *[self.build(a) for a in node.args])
        raise self.fail(node, "not part of the expression language: use numbers, names, "
                        "+ - * / **, parentheses and " + ", ".join(FUNCTIONS))

    def _const_name(self, value: float) -> str:
        base, i = f"{value:g}", 1
        name = base
        while name in self.graph._names:
            i += 1
            name = f"{base}#{i}"
        return name


def _constant(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _constant(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def parse_assignments(pairs: list[str]) -> dict[str, float]:
    """NAME=VALUE strings to numbers; a value that is not a finite number is an error."""
    values: dict[str, float] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise BptrainError(f"{pair!r}: give variable values as NAME=VALUE, e.g. x=-2.")
        try:
            value = float(text)
        except ValueError:  # the caret goes under the value, as under an expression's part
            raise ExpressionError(pair, len(pair) - len(text), len(pair),
                                  f"{name}={text!r}: the value is not a number; write e.g. "
                                  f"{name}=-2.5") from None
        if not math.isfinite(value):
            raise ExpressionError(pair, len(pair) - len(text), len(pair),
                                  f"{name}={text}: give a finite number.")
        values[name] = value
    return values


def _domain_error(builder: _Builder, node: Node, expr: str) -> ExpressionError | None:
    """Say which gate left its domain (log of a non-positive number, division by zero, ...)."""
    start, end = builder.where.get(node.name, (0, len(expr)))
    args = [float(p.value) for p in node.inputs]
    gate = node.gate
    if isinstance(gate, G.Log) and args[0] <= 0:
        msg = f"log of {args[0]:g} is undefined: log needs a positive argument"
    elif isinstance(gate, G.Divide) and args[1] == 0:
        msg = "division by zero: the denominator is 0 here"
    elif isinstance(gate, G.Power) and args[0] == 0 and gate.exponent < 0:
        msg = f"0 to the power {gate.exponent:g} is undefined"
    elif isinstance(gate, G.Power) and args[0] < 0:
        msg = f"{args[0]:g} ** {gate.exponent:g} is not a real number"
    else:
        msg = f"{gate.label()} gives {float(node.value)} here: the value is out of range"
    return ExpressionError(expr, start, end, msg)


def trace(expr: str, values: dict[str, float], check: bool = False, h: float = 1e-5) -> Trace:
    """Build `expr` as a graph of gates, run forward and backward, and record every step."""
    try:
        tree = ast.parse(expr.strip() and expr, mode="eval")
    except SyntaxError as e:
        col = (e.offset or 1) - 1
        end = (e.end_offset or col + 2) - 1 if e.end_lineno in (None, 1) else col + 1
        raise ExpressionError(expr, min(col, len(expr)), min(max(end, col + 1), len(expr) + 1),
                              f"syntax error: {e.msg}") from None
    graph = Graph()
    builder = _Builder(expr, graph)
    out = builder.build(tree.body)
    for name, node in builder.variables.items():
        if name not in values:
            raise builder.fail(builder.first_use[name], f"{name} has no value: add {name}=... "
                               "after the expression")
    unused = [n for n in values if n not in builder.variables]
    if unused:
        raise BptrainError(f"{', '.join(unused)} given but not used in {expr!r}; drop "
                           "it or check the spelling.")
    order, _ = graph.plan(out)
    with np.errstate(all="ignore"):
        graph.forward(out, **{k: np.float64(v) for k, v in values.items()})
    for node in order:
        if node.gate is not None and not np.isfinite(node.value):
            raise _domain_error(builder, node, expr)
    graph.backward(out)
    return _record(expr, values, graph, out, builder, check, h)


def _record(expr: str, values: dict[str, float], graph: Graph, out: Node, builder: _Builder,
            check: bool, h: float) -> Trace:
    order, backward = graph.plan(out)
    nodes = [{"name": n.name, "gate": n.gate.label() if n.gate else n.kind,
              "inputs": [p.name for p in n.inputs], "value": float(n.value)} for n in order]
    steps: list[Step] = []
    contributions: dict[str, list[dict[str, Any]]] = {}
    for node in backward:
        upstream = float(node.grad)
        # Backward is linear in the upstream, so backward(1) is the local gradient itself.
        local = node.gate.backward(np.float64(1.0))
        local = local if isinstance(local, (tuple, list)) else (local,)
        rows = []
        for parent, loc in zip(node.inputs, local):
            if not parent.requires_grad:
                rows.append({"name": parent.name, "local": None, "downstream": None})
                continue
            loc = float(loc)
            rows.append({"name": parent.name, "local": loc, "downstream": loc * upstream})
            contributions.setdefault(parent.name, []).append(
                {"from": node.name, "gradient": loc * upstream})
        steps.append(Step(node.name, node.gate.label(), node.gate.pattern, upstream, rows))
    copies = [{"variable": name, "contributions": contributions[name],
               "total": float(var.grad)}
              for name, var in builder.variables.items() if len(contributions.get(name, [])) > 1]
    grads = {name: float(var.grad) if var.grad is not None else 0.0
             for name, var in builder.variables.items()}
    result = Trace(expr, values, float(out.value), nodes, steps, copies, grads)
    if check:
        from bptrain.engine.gradcheck import numerical_gradient, relative_error
        kinked = [n.gate for n in order if n.gate is not None and n.gate.kinked]
        for name, var in builder.variables.items():
            holder = np.array(var.value, dtype=np.float64)
            var.value = holder
            with np.errstate(all="ignore"):
                numeric, crossed = numerical_gradient(
                    lambda: graph.forward(out), holder, np.array([0]), h,
                    (lambda: [g.branches() for g in kinked]) if kinked else None)
            rel = float(relative_error(np.array([grads[name]]), numeric)[0])
            result.numerical[name] = {"numeric": float(numeric[0]), "rel_error": rel,
                                      "kink": bool(crossed[0])}
        graph.forward(out)
    return result
