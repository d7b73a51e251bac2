"""What `bptrain trace` records of an expression: the error that points into it, one backward
Step per gate, the whole Trace. Shared by trace.py (scalars) and tensors.py (matrices)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bptrain.engine import gates as G
from bptrain.errors import BptrainError


class ExpressionError(BptrainError):
    """A problem at a place in the expression: the message shows it with a caret (around the
    place only, for a long expression)."""

    WINDOW = 100  # characters of a long expression shown around the place

    def __init__(self, expr: str, start: int, end: int, message: str):
        end = max(end, start + 1)
        shown, lo = expr, 0
        if len(expr) > self.WINDOW:  # 20,000 terms: show the neighbourhood, not the whole
            lo = max(0, min(start - self.WINDOW // 2, len(expr) - self.WINDOW))
            hi = min(len(expr), max(lo + self.WINDOW, min(end, lo + 2 * self.WINDOW)))
            shown = ("..." if lo else "") + expr[lo:hi] + ("..." if hi < len(expr) else "")
            lo -= 3 if lo else 0
            end = min(end, hi)
        caret = " " * (start - lo) + "^" * (end - start)
        super().__init__(f"{message}\n  {shown}\n  {caret}")
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


def domain_error_scalar(builder: Any, node: Any, expr: str) -> ExpressionError:
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


