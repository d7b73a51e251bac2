"""`bptrain trace`: parse a scalar expression (with `ast`, never evaluated), build it as a graph
of the trainer's own gates, and record forward values and each backward step:
upstream x local = downstream, with the lecture's name for each gate's pattern.
"""
from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bptrain.app.expression import ExpressionError, Step, Trace, domain_error_scalar
from bptrain.engine import gates as G
from bptrain.engine.gate import registry
from bptrain.engine.graph import Gate, Graph, Node
from bptrain.errors import BptrainError




def _functions() -> dict[str, tuple[type, int]]:
    """The functions an expression may call, read from the gate registry: every activation
    and function gate, by its config name, with its number of inputs."""
    out = {}
    for cls in registry.classes(("activation", "function")):
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            out[registry.key(cls)] = (cls, len(params))
    return out


FUNCTIONS = _functions()
OPERATORS = {ast.Add: G.Add, ast.Sub: G.Subtract, ast.Mult: G.Multiply, ast.Div: G.Divide}
OPERATORS[ast.MatMult] = G.MatMul  # vectors and matrices (bptrain.app.tensors)


def _number(value: Any) -> float | None:
    """A literal as a float, or None when it is beyond a float (a 400-digit integer)."""
    try:
        v = float(value)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _char_col(expr: str, byte_col: int) -> int:
    """ast's column offsets count UTF-8 bytes; the caret counts characters."""
    if expr.isascii():
        return byte_col
    return len(expr.encode("utf-8")[:byte_col].decode("utf-8", "ignore"))


class _Builder:
    """Walk the syntax tree and add one gate per operation to a Graph."""

    def __init__(self, expr: str, graph: Graph):
        self.expr, self.graph = expr, graph
        self.variables: dict[str, Node] = {}
        self.first_use: dict[str, ast.AST] = {}
        self.where: dict[str, tuple[int, int]] = {}  # node name -> columns in the text

    def span(self, node: ast.AST) -> tuple[int, int]:
        """Where `node` is in the expression, in characters."""
        start = _char_col(self.expr, node.col_offset)
        end = _char_col(self.expr, node.end_col_offset) if node.end_col_offset else start + 1
        return start, end

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        start, end = self.span(node)
        return ExpressionError(self.expr, start, end, message)

    def build(self, root: ast.AST) -> Node:
        """Add `root` and everything under it to the graph, children first, left to right:
        with an explicit stack, so a chain of 20,000 terms (a tree 20,000 deep) never hits
        Python's recursion limit. Each node is checked when it is reached (pre-order), so
        the first mistake from the left is the one reported."""
        built: dict[int, Node] = {}
        stack: list[tuple[ast.AST, list[ast.AST] | None]] = [(root, None)]
        while stack:
            node, children = stack[-1]
            if children is None:
                children = self._children(node)
                stack[-1] = (node, children)
                stack.extend((c, None) for c in reversed(children))
                continue
            stack.pop()
            out = self._make(node, [built.pop(id(c)) for c in children])
            self.where.setdefault(out.name, self.span(node))
            built[id(node)] = out
        return built[id(root)]

    def _apply(self, gate: Gate, node: ast.AST, *inputs: Node) -> Node:
        out = self.graph.apply(gate, *inputs)
        self.where[out.name] = self.span(node)
        return out

    def _children(self, node: ast.AST) -> list[ast.AST]:
        """Check `node` and return the nodes it is built from (in order)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            if _number(node.value) is None:
                raise self.fail(node, "this number is beyond what a float holds (about "
                                "1.8e308, 17 significant digits); write a smaller number")
            return []
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise self.fail(node, f"{node.id} is a function: call it, e.g. {node.id}(x)")
            return []
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                exponent = _constant(node.right)
                if exponent is None:
                    raise self.fail(node.right, "the power gate takes a constant exponent "
                                    "(x ** 2, x ** -0.5, a number a float holds); write "
                                    "exp(y * log(x)) for x ** y")
                return [node.left]
            if type(node.op) not in OPERATORS:
                raise self.fail(node, f"the operator {type(node.op).__name__} is not "
                                "supported; use + - * / ** and the functions "
                                + ", ".join(FUNCTIONS))
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return [node.operand]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):  # obj.method(...), f(x)(y), ...
                raise self.fail(node.func, "only the functions " + ", ".join(FUNCTIONS)
                                + " can be called, by name")
            if node.func.id not in FUNCTIONS:
                raise self.fail(node.func, f"unknown function {node.func.id!r}; known: "
                                + ", ".join(FUNCTIONS))
            _, arity = FUNCTIONS[node.func.id]
            if node.keywords or len(node.args) != arity:
                raise self.fail(node, f"{node.func.id} takes {arity} argument"
                                f"{'s' if arity > 1 else ''}")
            return list(node.args)
        raise self.fail(node, "not part of the expression language: use numbers, names, "
                        "+ - * / **, parentheses and " + ", ".join(FUNCTIONS))

    def _make(self, node: ast.AST, inputs: list[Node]) -> Node:
        """The graph node of a checked `node` whose inputs are built."""
        if isinstance(node, ast.Constant):
            value = float(node.value)
            return self.graph.const(value, name=self._const_name(value))
        if isinstance(node, ast.Name):
            if node.id not in self.variables:
                self.variables[node.id] = self.graph.input(node.id)
                self.first_use[node.id] = node
            return self.variables[node.id]
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                return self._apply(G.Power(_constant(node.right)), node, *inputs)
            return self._apply(OPERATORS[type(node.op)](), node, *inputs)
        if isinstance(node, ast.UnaryOp):
            (inner,) = inputs
            return self._apply(G.Negate(), node, inner) if isinstance(node.op, ast.USub) else inner
        gate_cls, _ = FUNCTIONS[node.func.id]
        return self._apply(gate_cls(), node, *inputs)

    def _const_name(self, value: float) -> str:
        base = f"{value:g}"
        counts = self.__dict__.setdefault("_const_counts", {})
        i = counts.get(base, 0)
        name = base if i == 0 else f"{base}#{i + 1}"
        while name in self.graph._names:  # a variable could be named like a number: never
            i += 1
            name = f"{base}#{i + 1}"
        counts[base] = i + 1
        return name


def _constant(node: ast.AST) -> float | None:
    """A numeric literal with any number of signs in front (-2, --0.5), as a finite float;
    None otherwise (names, expressions, numbers beyond a float)."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        v = _number(node.value)
        return None if v is None else sign * v
    return None


def parse_assignments(pairs: list[str]) -> dict[str, float]:
    """NAME=VALUE strings to numbers; a value that is not a finite number is an error."""
    import unicodedata
    values: dict[str, float] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        # Python's parser reads identifiers in NFKC form (ﬁ is fi, ｘ is x): so do the values,
        # or a name would never match its use in the expression.
        name = unicodedata.normalize("NFKC", name.strip())
        if not sep or not name.isidentifier():
            raise BptrainError(f"{pair!r}: give variable values as NAME=VALUE, e.g. x=-2.")
        if text.lstrip().startswith("["):  # a vector or matrix: nested lists of numbers
            from bptrain.app.tensors import parse_array
            values[name] = parse_array(pair, len(pair) - len(text))  # type: ignore[assignment]
            continue
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
    if np.ndim(node.value) or any(np.ndim(p.value) for p in node.inputs):
        from bptrain.app.tensors import domain_error  # names the entry out of range
        return domain_error(builder, node, expr)
    return domain_error_scalar(builder, node, expr)


def _syntax_error(expr: str, e: SyntaxError, shift: int = 0) -> ExpressionError:
    col = (e.offset or 1) - 1
    end = (e.end_offset or col + 2) - 1 if e.end_lineno in (None, 1) else col + 1
    col, end = col + shift, end + shift
    return ExpressionError(expr, min(col, len(expr)), min(max(end, col + 1), len(expr) + 1),
                           f"syntax error: {e.msg}")


def _parse(expr: str) -> ast.Expression:
    """`ast.parse` in eval mode. Python's parser gives up on a flat chain of a few thousand
    terms (x + x + ... + x: RecursionError, MemoryError); such a chain is split at its
    top-level + and - (then * and /), each term parsed alone and the chain rebuilt left to
    right, exactly the tree Python would have made."""
    try:
        return ast.parse(expr.strip() and expr, mode="eval")
    except SyntaxError as e:
        raise _syntax_error(expr, e) from None
    except (RecursionError, MemoryError, OverflowError):
        pass
    body = _parse_chain(expr, 0, len(expr), ("+-", "*/"))
    return ast.Expression(body=body)


_BINARY = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}


def _parse_chain(expr: str, lo: int, hi: int, levels: tuple[str, ...]) -> ast.AST:
    """expr[lo:hi] split at the top-level binary operators of levels[0] (a leading sign or
    one after an operator is unary, not a split), each part parsed by `_parse_part`."""
    import io
    import tokenize
    ops = levels[0]
    text = expr[lo:hi]
    cuts: list[tuple[int, str]] = []
    depth, prev_operand = 0, False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER,
                            tokenize.COMMENT):
                continue
            if tok.string in "([{" and tok.type == tokenize.OP:
                depth += 1
            elif tok.string in ")]}" and tok.type == tokenize.OP:
                depth -= 1
            if (depth == 0 and tok.type == tokenize.OP and tok.string in ops and len(tok.string)
                    == 1 and prev_operand):
                cuts.append((tok.start[1], tok.string))
            prev_operand = (tok.type in (tokenize.NAME, tokenize.NUMBER)
                            or tok.string in (")", "]", "}"))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        cuts = []
    if not cuts:
        if len(levels) > 1:
            return _parse_chain(expr, lo, hi, levels[1:])
        raise ExpressionError(expr, lo, hi, "the expression nests too deeply for Python's "
                              "parser here; write it flatter (long sums and products are "
                              "fine)")
    bounds = [lo] + [lo + c + 1 for c, _ in cuts]
    ends = [lo + c for c, _ in cuts] + [hi]
    parts = [_parse_part(expr, a, b, levels) for a, b in zip(bounds, ends)]
    tree = parts[0]
    for (_, op), right in zip(cuts, parts[1:]):
        tree = ast.BinOp(left=tree, op=_BINARY[op](), right=right, lineno=1,
                         col_offset=parts[0].col_offset, end_lineno=1,
                         end_col_offset=right.end_col_offset)
    return tree


def _parse_part(expr: str, lo: int, hi: int, levels: tuple[str, ...]) -> ast.AST:
    """One term of a split chain, parsed alone, its columns moved to where it stands."""
    lead = len(expr[lo:hi]) - len(expr[lo:hi].lstrip())   # "x + x": terms " x" and " x"
    lo += lead
    text = expr[lo:hi].rstrip()
    shift = len(expr[:lo].encode("utf-8"))
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise _syntax_error(expr, e, lo) from None
    except (RecursionError, MemoryError, OverflowError):
        if len(levels) > 1:
            return _parse_chain(expr, lo, hi, levels[1:])
        raise ExpressionError(expr, lo, hi, "the expression nests too deeply for Python's "
                              "parser here; write it flatter (long sums and products are "
                              "fine)") from None
    for n in ast.walk(node):  # iterative: a queue, no recursion
        if hasattr(n, "col_offset"):
            n.col_offset += shift
            if getattr(n, "end_col_offset", None) is not None:
                n.end_col_offset += shift
    return node


def trace(expr: str, values: dict[str, float], check: bool = False, h: float = 1e-5) -> Trace:
    """Build `expr` as a graph of gates, run forward and backward, and record every step."""
    tree = _parse(expr)
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
        try:
            graph.forward(out, **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()})
        except ValueError as e:  # shapes that do not fit (vectors and matrices)
            from bptrain.app.tensors import shape_error
            raise shape_error(builder, graph, out, expr, e) from None
    for node in order:
        if node.gate is not None and not np.all(np.isfinite(node.value)):
            raise _domain_error(builder, node, expr)
    graph.backward(out)
    return _record(expr, values, graph, out, builder, check, h)


def _record(expr: str, values: dict[str, float], graph: Graph, out: Node, builder: _Builder,
            check: bool, h: float) -> Trace:
    if any(np.ndim(n.value) for n in graph.plan(out)[0]):  # vectors or matrices
        from bptrain.app.tensors import record
        return record(expr, values, graph, out, builder, check, h)
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
        steps.append(Step(node.name, node.gate.label(),
                          node.gate.pattern, upstream, rows))
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
