"""`bptrain show`: the graph of gates a config builds, node by node, with shapes at the
configured batch size, parameter counts, fan-out, multiply-adds and cached bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bptrain.engine import gates as G
from bptrain.net.config import Config
from bptrain.net.model import Model
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data


@dataclass
class NodeRow:
    name: str
    gate: str             # gate label, or input / param
    inputs: list[str]
    shape: tuple[int, ...]
    params: int
    consumers: list[str]  # the gates a value fans out to (copy gate), if more than one
    cached_bytes: int     # arrays the gate keeps for its backward pass
    macs: int             # multiply-adds of its forward pass
    kind: str = ""        # the gate class's kind ("merge", "layer", ...), or input / param


@dataclass
class GraphSummary:
    rows: list[NodeRow]
    batch: int
    params: int
    macs: int
    cached_bytes: int


def _macs(gate: Any, inputs: list[np.ndarray]) -> int:
    """Multiply-adds of one forward, as the gate class counts them."""
    return int(gate.macs(*[np.shape(x) for x in inputs]))


def summarize_graph(model: Model, batch: int) -> GraphSummary:
    """Run one forward on zeros of the batch size, then read shapes and caches off the nodes."""
    g = model.graph
    X = np.zeros((batch, *model.input_shape), dtype=model.dtype)
    # Class labels for a classifier; a row of target values per sample for regression.
    y = (np.zeros(batch, dtype=np.int64) if model.num_classes is not None
         else np.zeros((batch, model.output_dim), dtype=model.dtype))
    g.forward(model.loss, X=X, y=model.targets(y))
    order, _ = g.plan(model.loss)
    fan_out = g.fan_out(model.loss)
    shared = {id(n.value) for n in order if n.kind in ("param", "input")}
    rows = []
    for n in order:
        cached = 0
        if n.gate is not None:  # arrays saved on the gate, not counting params or data
            for v in vars(n.gate).values():
                vs = v if isinstance(v, (list, tuple)) else [v]
                cached += sum(a.nbytes for a in vs if isinstance(a, np.ndarray)
                              and id(a) not in shared and a.base is None)
        rows.append(NodeRow(n.name, n.gate.label() if n.gate else n.kind,
                            [p.name for p in n.inputs], tuple(np.shape(n.value)),
                            int(np.size(n.value)) if n.kind == "param" else 0,
                            fan_out.get(n.name, []), cached,
                            _macs(n.gate, [p.value for p in n.inputs]) if n.gate else 0,
                            (n.gate.kind or "") if n.gate else n.kind))
    return GraphSummary(rows, batch, sum(r.params for r in rows), sum(r.macs for r in rows),
                        sum(r.cached_bytes for r in rows))


def show_config(cfg: Config) -> GraphSummary:
    data = load_data(cfg)
    model = build_for_data(cfg, data)
    return summarize_graph(model, min(cfg.train.batch_size, len(data.X_train)))


def to_dot(s: GraphSummary, title: str = "bptrain") -> str:
    """Graphviz DOT: inputs and parameters as boxes, gates as ellipses, edges labelled by
    shape; a value that fans out has one edge per consumer."""
    lines = [f'digraph "{title}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for r in s.rows:
        shape = "x".join(map(str, r.shape)) or "scalar"
        if r.gate in ("input", "param", "const"):
            style = {"input": "box", "param": "box, style=filled, fillcolor=lightyellow",
                     "const": "plaintext"}[r.gate]
            lines.append(f'  "{r.name}" [shape={style}, label="{r.name}\\n{shape}"];')
        elif r.kind == "merge":  # where branches join: the residual's +, a concat
            lines.append(f'  "{r.name}" [shape=doublecircle, style=filled, fillcolor=lightblue, '
                         f'label="{r.name}\\n{r.gate}\\n{shape}"];')
        else:
            lines.append(f'  "{r.name}" [shape=ellipse, label="{r.name}\\n{r.gate}\\n{shape}"];')
    fans_out = {r.name for r in s.rows if len(r.consumers) > 1}
    for r in s.rows:
        for p in r.inputs:
            # a value used by several gates (the copy gate): its gradients add up in backward
            style = ' [color=red, fontcolor=red, label="copy"]' if p in fans_out else ""
            lines.append(f'  "{p}" -> "{r.name}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"
