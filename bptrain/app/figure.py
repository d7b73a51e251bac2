"""The lecture's figure of a traced expression (notes 000 and 002): one box per gate with its name
and pattern, inputs on the left and the output on the right (a layered layout by depth), every
edge labelled with its forward value (green, above) and its gradient (red, below). A variable
used by several gates fans out, and its gradient contributions add up ("a + b = total").

Three renderings of one `Trace` (bptrain.app.trace):
  to_svg   a self-contained SVG: no fonts, scripts, links or images from anywhere
  to_html  a page embedding that SVG, with a stepper through the backward pass, one gate a
           step (Prev/Next buttons, the left/right arrow keys): plain inline CSS and JS
  to_dot   Graphviz text with the same labels

Vectors and matrices are shown compactly ([[1, 2], [3, 4]]), their gradients with their shape
and rule (dX = dY W^T, dW = X^T dY, local × upstream, broadcast).
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bptrain.app.tensors import compact, shape_text
from bptrain.errors import BptrainError

MAX_GATES = 300  # beyond this a picture is no help; text and JSON have no limit

GREEN, RED, GREY, INK = "#1a7f37", "#c62828", "#666666", "#222222"
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "neg": "neg", "matmul": "@"}
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"   # generic families: nothing is fetched
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"


def _width(text: str, size: float, mono: bool = True) -> float:
    """An estimate of a text's width in pixels (no font metrics without a renderer)."""
    return len(text) * size * (0.61 if mono else 0.6)


def gate_symbol(label: str) -> str:
    """The gate's name as the lecture draws it: +, *, @, **2, exp, sigmoid, ..."""
    if label.startswith("pow("):
        return "**" + label[4:-1]
    return SYMBOLS.get(label, label)


def _pattern(label: str) -> str | None:
    from bptrain.engine.gate import KINDS, registry
    cls = registry.find(label.split("(")[0], KINDS)
    return cls.pattern if cls is not None else None


# ---- the model: nodes and edges with their labels ---------------------------------------------

@dataclass
class Box:
    name: str
    kind: str                   # "gate" | "input" | "const"
    label: str                  # gate label (mul, pow(2)) or the leaf's name / value
    pattern: str | None = None
    col: int = 0
    slot: float = 0.0
    x: float = 0.0              # left
    y: float = 0.0              # centre
    w: float = 0.0
    h: float = 0.0
    inputs: list[str] = field(default_factory=list)
    note: str | None = None     # a fanned-out variable: "a + b = total"


@dataclass
class Edge:
    src: str
    dst: str | None             # None: the output edge
    port: int
    value: Any
    grad: Any                   # None: no gradient (a constant)
    step: int                   # index of the backward step that sends this gradient (-1: seed)
    rule: str | None = None     # matrix traces: "2×2 · dX = dY W^T"
    fwd_text: str = ""
    grad_text: str = ""
    path: str = ""
    lx: float = 0.0
    ly: float = 0.0


class Figure:
    """The layout of a trace: boxes placed by depth (columns) and by order of use (rows)."""

    def __init__(self, t: Any):
        d = t.to_dict() if hasattr(t, "to_dict") else t
        self.d = d
        self.matrix = "shapes" in d
        nodes = d["nodes"]
        gates = sum(1 for n in nodes if n["inputs"])
        if gates > MAX_GATES:
            raise BptrainError(f"the expression has {gates} gates, too many to draw (at most "
                               f"{MAX_GATES}); --format text or json shows every step.")
        self.order = [n["name"] for n in nodes]
        self.output = self.order[-1]
        self.steps = {s["node"]: (k, s) for k, s in enumerate(d["backward"])}
        self.boxes: dict[str, Box] = {}
        for n in nodes:
            if n["inputs"]:
                step = self.steps.get(n["name"])
                pattern = step[1]["pattern"] if step else _pattern(n["gate"])
                self.boxes[n["name"]] = Box(n["name"], "gate", n["gate"], pattern,
                                            inputs=list(n["inputs"]))
            else:
                kind = "const" if n["gate"] == "const" else "input"
                self.boxes[n["name"]] = Box(n["name"], kind, n["name"] if kind == "input"
                                            else compact(n["value"]))
        values = {n["name"]: n["value"] for n in nodes}
        self.edges: list[Edge] = []
        for n in nodes:
            step = self.steps.get(n["name"])
            for i, p in enumerate(n["inputs"]):
                row = step[1]["inputs"][i] if step else None
                grad = row["downstream"] if row else None
                rule = None
                if self.matrix and row and row.get("rule"):
                    rule = f"{shape_text(row['shape'])} · {row['rule']}"
                self.edges.append(Edge(p, n["name"], i, values[p], grad,
                                       step[0] if step else -1, rule))
        seed = 1.0 if d.get("seed", "1") == "1" else _ones_like(d["output"])
        self.edges.append(Edge(self.output, None, 0, d["output"], seed, -1,
                               f"{shape_text(d['shapes'][self.output])} · dY = ones"
                               if self.matrix and d.get("seed") == "ones" else None))
        for c in d["copies"]:
            parts = " + ".join(compact(p["gradient"]) for p in c["contributions"])
            self.boxes[c["variable"]].note = f"{parts} = {compact(c['total'])}"
        for e in self.edges:
            e.fwd_text = compact(e.value)
            e.grad_text = compact(e.grad) if e.grad is not None else ""
        self._place()

    # ---- layout ---------------------------------------------------------------------------
    def _place(self) -> None:
        boxes, order = self.boxes, self.order
        consumers: dict[str, list[str]] = defaultdict(list)
        for name in order:
            for p in boxes[name].inputs:
                consumers[p].append(name)
        depth: dict[str, int] = {}
        for name in order:
            b = boxes[name]
            depth[name] = 1 + max(depth[p] for p in b.inputs) if b.inputs else 0
        for name in order:  # a constant sits just before the gate that uses it
            if boxes[name].kind == "const" and consumers[name]:
                depth[name] = min(depth[c] for c in consumers[name]) - 1
        for name, b in boxes.items():
            b.col = depth[name]
        # Rows: each use of a leaf takes the next row (so a fanned-out variable's consumers do
        # not line up behind one another); a gate sits at the mean row of its inputs' uses,
        # a leaf at the mean of its uses. Iterative post-order: long expressions are fine.
        uses: dict[str, list[float]] = defaultdict(list)
        row: dict[str, float] = {}
        counter = 0
        stack: list[tuple[str, bool]] = [(self.output, False)]
        pending: list[list[float]] = [[]]
        while stack:
            name, done = stack.pop()
            b = boxes[name]
            if not b.inputs:
                uses[name].append(float(counter))
                pending[-1].append(float(counter))
                counter += 1
                continue
            if name in row and not done:
                pending[-1].append(row[name])
                continue
            if not done:
                stack.append((name, True))
                pending.append([])
                for p in reversed(b.inputs):
                    stack.append((p, False))
                continue
            ys = pending.pop()
            row[name] = sum(ys) / len(ys)
            pending[-1].append(row[name])
        for name, ys in uses.items():
            row[name] = sum(ys) / len(ys)
        for name, b in boxes.items():
            b.slot = row.get(name, 0.0)

        self.port_gap = 54.0 if self.matrix else 40.0
        slot_h = 86.0 if self.matrix else 66.0
        for b in boxes.values():
            if b.kind == "gate":
                n = len(b.inputs)
                b.h = max(48.0, self.port_gap * (n - 1) + 38.0)
                b.w = max(58.0, _width(gate_symbol(b.label), 16, False) + 24,
                          _width(b.pattern or "", 11, False) + 20)
            elif b.kind == "input":
                b.h = 22.0 + (18.0 if b.note else 0.0)
                b.w = max(_width(b.label, 16, False), _width(b.note or "", 12))
            else:
                b.h, b.w = 18.0, _width(b.label, 13)
        self.top = 76.0
        for b in boxes.values():
            b.y = self.top + b.slot * slot_h + slot_h / 2
        columns: dict[int, list[Box]] = defaultdict(list)
        for b in boxes.values():
            columns[b.col].append(b)
        for col in columns.values():  # no two boxes of a column overlap: push down
            col.sort(key=lambda b: b.y)
            for a, b in zip(col, col[1:]):
                low = a.y + (a.h + b.h) / 2 + 18
                if b.y < low:
                    b.y = low

        def label_w(e: Edge) -> float:
            return max(_width(e.fwd_text, 12), _width(e.grad_text, 12),
                       _width(e.rule or "", 10))
        ncols = max(columns) + 1
        col_w = [max((b.w for b in columns.get(c, [])), default=0.0) for c in range(ncols)]
        gap = [0.0] * ncols
        for e in self.edges:
            if e.dst is not None:
                c = boxes[e.dst].col
                gap[c] = max(gap[c], label_w(e) + 64)
        left = [0.0] * ncols
        x = 24.0
        for c in range(ncols):
            x += max(gap[c], 60.0) if c else 0.0
            left[c] = x
            x += col_w[c]
        for b in boxes.values():
            if b.kind == "gate":
                b.x = left[b.col] + (col_w[b.col] - b.w) / 2
            else:  # leaves: right-aligned, so their edges start where their name ends
                b.x = left[b.col] + col_w[b.col] - b.w
        out_edge = self.edges[-1]
        out_box = boxes[self.output]
        self.out_x = out_box.x + out_box.w + label_w(out_edge) + 64
        self.out_y = out_box.y
        for e in self.edges:
            src = boxes[e.src]
            sx, sy = src.x + src.w + (4 if src.kind != "gate" else 0), src.y
            if e.dst is None:
                tx, ty = self.out_x - 6, self.out_y
            else:
                dst = boxes[e.dst]
                n = len(dst.inputs)
                tx, ty = dst.x, dst.y + (e.port - (n - 1) / 2) * self.port_gap
            hx = max(sx + 8, tx - label_w(e) - 26)
            mx = (sx + hx) / 2
            e.path = (f"M{sx:.1f},{sy:.1f} C{mx:.1f},{sy:.1f} {mx:.1f},{ty:.1f} {hx:.1f},{ty:.1f}"
                      f" L{tx:.1f},{ty:.1f}")
            e.lx, e.ly = tx - 16 - label_w(e) / 2, ty  # clear of the arrowhead
        self.width = max(self.out_x + _width(self.output_name, 16, False) + 40,
                         _width(self.title, 17, False) + 56, 640.0 if self.matrix else 520.0)
        bottom = max([b.y + b.h / 2 for b in boxes.values()] + [self.out_y])
        self.height = bottom + (56 if self.matrix else 44) + 52

    output_name = "f"

    @property
    def title(self) -> str:
        at = ", ".join(f"{k} = {compact(v)}" for k, v in self.d["values"].items())
        return f"f = {self.d['expression']}" + (f"   at {at}" if at else "")

    # ---- SVG ------------------------------------------------------------------------------
    def svg(self, standalone: bool = True) -> str:
        d = self.d
        esc = html.escape
        title = self.title
        ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
        out = [f'<svg{ns} class="trace-figure" width="{self.width:.0f}" '
               f'height="{self.height:.0f}" viewBox="0 0 {self.width:.0f} {self.height:.0f}" '
               f'font-family="{FONT}" role="img" aria-label="{esc(title)}">',
               f"<title>{esc(title)}</title>",
               '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
               'markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" '
               'orient="auto-start-reverse">'
               f'<path d="M0,0 L10,5 L0,10 z" fill="{GREY}"/></marker></defs>',
               f'<rect width="100%" height="100%" fill="#ffffff"/>',
               f'<text x="24" y="30" font-size="17" font-weight="bold" fill="{INK}">'
               f"{esc(title)}</text>",
               f'<text x="24" y="52" font-size="12" fill="{GREY}">'
               f'<tspan fill="{GREEN}">green: forward value</tspan> above each edge, '
               f'<tspan fill="{RED}">red: gradient of f</tspan> below it'
               + (" (then its shape and rule)" if self.matrix else "") + "</text>"]
        for e in self.edges:
            out.append(self._edge_svg(e))
        for b in self.boxes.values():
            out.append(self._box_svg(b))
        out.append(f'<text class="output" x="{self.out_x:.1f}" y="{self.out_y + 6:.1f}" '
                   f'font-size="16" font-weight="bold" fill="{INK}">{self.output_name}</text>')
        foot = self.height - 32
        out.append(f'<text x="24" y="{foot:.1f}" font-size="11" fill="{GREY}">backward: each '
                   "gate sends downstream = local × upstream to its inputs;</text>")
        out.append(f'<text x="24" y="{foot + 15:.1f}" font-size="11" fill="{GREY}">a value '
                   "used twice adds the gradients it gets back (copy gate).</text>")
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def _edge_svg(self, e: Edge) -> str:
        esc = html.escape
        attrs = (f'class="edge{" output" if e.dst is None else ""}" data-src="{esc(e.src)}" '
                 f'data-dst="{esc(e.dst or "")}" data-dst-gate="'
                 f'{esc(self.boxes[e.dst].label if e.dst else "")}" data-port="{e.port}" '
                 f'data-step="{e.step}"')
        parts = [f"<g {attrs}>",
                 f'<path d="{e.path}" fill="none" stroke="{GREY}" stroke-width="1.4" '
                 'marker-end="url(#arrow)"/>',
                 f'<text class="fwd" x="{e.lx:.1f}" y="{e.ly - 6:.1f}" text-anchor="middle" '
                 f'font-family="{MONO}" font-size="12" fill="{GREEN}">{esc(e.fwd_text)}</text>']
        if e.grad is not None:
            parts.append(f'<text class="grad" x="{e.lx:.1f}" y="{e.ly + 15:.1f}" '
                         f'text-anchor="middle" font-family="{MONO}" font-size="12" '
                         f'fill="{RED}">{esc(e.grad_text)}</text>')
        if e.rule:
            parts.append(f'<text class="rule" x="{e.lx:.1f}" y="{e.ly + 28:.1f}" '
                         f'text-anchor="middle" font-family="{MONO}" font-size="10" '
                         f'fill="{GREY}">{esc(e.rule)}</text>')
        parts.append("</g>")
        return "".join(parts)

    def _box_svg(self, b: Box) -> str:
        esc = html.escape
        if b.kind == "gate":
            sym = gate_symbol(b.label)
            tip = f"{b.name}: {b.label}" + (f" ({b.pattern})" if b.pattern else "")
            cx = b.x + b.w / 2
            top = b.y - b.h / 2
            lines = [f'<g class="gate" id="gate-{esc(b.name)}" data-node="{esc(b.name)}" '
                     f'data-gate="{esc(b.label)}"><title>{esc(tip)}</title>',
                     f'<rect x="{b.x:.1f}" y="{top:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" '
                     f'rx="7" fill="#f7f7f2" stroke="{INK}" stroke-width="1.3"/>',
                     f'<text x="{cx:.1f}" y="{b.y + (0 if b.pattern else 6):.1f}" '
                     f'text-anchor="middle" fill="{INK}">'
                     f'<tspan class="symbol" font-size="16" font-weight="bold">{esc(sym)}</tspan>']
            if b.pattern:
                lines.append(f'<tspan class="pattern" x="{cx:.1f}" dy="15" font-size="11" '
                             f'font-style="italic" fill="{GREY}"> {esc(b.pattern)}</tspan>')
            lines.append("</text></g>")
            return "".join(lines)
        right = b.x + b.w
        if b.kind == "const":
            return (f'<g class="leaf const" data-node="{esc(b.name)}"><text x="{right:.1f}" '
                    f'y="{b.y + 4:.1f}" text-anchor="end" font-family="{MONO}" font-size="13" '
                    f'fill="{GREY}">{esc(b.label)}</text></g>')
        note = ""
        if b.note:
            note = (f'<text class="copies grad" x="{right:.1f}" y="{b.y + 24:.1f}" '
                    f'text-anchor="end" font-family="{MONO}" font-size="12" fill="{RED}">'
                    f"{esc(b.note)}</text>")
        return (f'<g class="leaf var" data-node="{esc(b.name)}"><text x="{right:.1f}" '
                f'y="{b.y + 6:.1f}" text-anchor="end" font-size="16" font-weight="bold" '
                f'fill="{INK}">{esc(b.label)}</text>{note}</g>')

    # ---- the stepper's steps ----------------------------------------------------------------
    def stepper(self) -> list[dict[str, Any]]:
        """One entry per gate of the backward pass: what it receives, what it sends."""
        d = self.d
        steps = []
        remaining = {c["variable"]: len(c["contributions"]) for c in d["copies"]}
        copies = {c["variable"]: c for c in d["copies"]}
        n = len(d["backward"])
        for k, s in enumerate(d["backward"]):
            sym = gate_symbol(s["gate"])
            head = (f"step {k + 1} of {n}: gate {s['node']}, {sym}"
                    + (f" ({s['pattern']})" if s["pattern"] else ""))
            up = compact(s["upstream"])
            if k == 0:
                src = "df/df = 1" if d.get("seed", "1") == "1" else "dY = ones, the gradient of sum(f)"
                lines = [f"upstream {up}  ({src})"]
            else:
                lines = [f"upstream {up}  (what its output received)"]
            if s["gate"] == "matmul" and any(len(r["shape"]) < 2 for r in s["inputs"]):
                lines.append("Y = X @ W; a 1-D operand is a row on the left of @, a column on "
                             "the right (as NumPy's matmul reads it); so is dY")
            for row in s["inputs"]:
                if row["downstream"] is None:
                    box = self.boxes[row["name"]]
                    lines.append(f"constant {box.label}: no gradient" if box.kind == "const"
                                 else f"{row['name']}: no gradient")
                    continue
                down, loc = compact(row["downstream"]), compact(row["local"])
                rule = row.get("rule") or "local × upstream"
                if row.get("here"):  # matmul: the rule with this gate's operands
                    first, second = (up, loc) if row["rule"].startswith("dX") else (loc, up)
                    lines.append(f"{row['name']}: {row['here']}  ({rule}): {first} · {second} "
                                 f"= {down}   shape {shape_text(row['shape'])}")
                elif self.matrix:
                    lines.append(f"{row['name']}: upstream × local = downstream: {up} × {loc} "
                                 f"= {down}   ({rule}; shape {shape_text(row['shape'])})")
                else:
                    lines.append(f"{row['name']}: upstream × local = downstream: {up} × {loc} "
                                 f"= {down}")
                if row["name"] in remaining:
                    remaining[row["name"]] -= 1
                    if remaining[row["name"]] == 0:
                        c = copies[row["name"]]
                        parts = " + ".join(compact(p["gradient"]) for p in c["contributions"])
                        lines.append(f"{row['name']} is used {len(c['contributions'])} times: "
                                     f"its gradients add (copy gate): {parts} = "
                                     f"{compact(c['total'])}")
            steps.append({"node": s["node"], "title": head, "lines": lines, "index": k})
        return steps


def _ones_like(value: Any) -> Any:
    if isinstance(value, list):
        return [_ones_like(v) for v in value]
    return 1.0


# ---- the three formats --------------------------------------------------------------------------

def to_svg(t: Any) -> str:
    """The figure as a standalone SVG document."""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + Figure(t).svg(standalone=True)


HTML_STYLE = """
body { font-family: DejaVu Sans, Verdana, Arial, sans-serif; margin: 24px; color: #222;
       background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
p.sub { color: #666; margin: 0 0 12px 0; }
#figure { overflow-x: auto; border: 1px solid #ddd; border-radius: 6px; }
#figure svg { display: block; max-width: 100%; height: auto; }
#stepper { margin-top: 14px; padding: 12px 14px; border: 1px solid #ddd; border-radius: 6px;
           background: #fafaf7; max-width: 1100px; }
#stepper button { font-size: 15px; padding: 4px 14px; margin-right: 8px; cursor: pointer; }
#counter { color: #666; margin-left: 4px; }
#step-title { font-weight: bold; margin: 10px 0 6px 0; }
#step-lines { font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; font-size: 13px;
              margin: 0; padding-left: 18px; }
#step-lines li { margin: 3px 0; }
.gate.active rect { stroke: #e69500; stroke-width: 3.5; fill: #fff3d0; }
.edge.active path { stroke: #e69500; stroke-width: 2.6; }
.edge.active text.grad { font-weight: bold; }
text.grad.pending { opacity: 0.15; }
.hint { color: #666; font-size: 12px; margin-top: 8px; }
"""

HTML_SCRIPT = """
(function () {
  var steps = JSON.parse(document.getElementById("steps-data").textContent);
  var current = 0;
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function show(k) {
    if (!steps.length) { prev.disabled = next.disabled = true; return; }
    current = Math.max(0, Math.min(steps.length - 1, k));
    var s = steps[current];
    all(".active").forEach(function (e) { e.classList.remove("active"); });
    all(".gate").forEach(function (g) {
      if (g.getAttribute("data-node") === s.node) { g.classList.add("active"); }
    });
    all(".edge").forEach(function (e) {
      var step = parseInt(e.getAttribute("data-step"), 10);
      if (e.getAttribute("data-dst") === s.node) { e.classList.add("active"); }
      var grad = e.querySelector("text.grad");
      if (grad) {
        if (step > current) { grad.classList.add("pending"); }
        else { grad.classList.remove("pending"); }
      }
    });
    document.getElementById("step-title").textContent = s.title;
    var list = document.getElementById("step-lines");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    s.lines.forEach(function (line) {
      var li = document.createElement("li");
      li.textContent = line;
      list.appendChild(li);
    });
    document.getElementById("counter").textContent = (current + 1) + " / " + steps.length;
    prev.disabled = current === 0;
    next.disabled = current === steps.length - 1;
  }
  prev.addEventListener("click", function () { show(current - 1); });
  next.addEventListener("click", function () { show(current + 1); });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "ArrowRight") { show(current + 1); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft") { show(current - 1); ev.preventDefault(); }
  });
  show(0);
})();
"""


def to_html(t: Any) -> str:
    """A self-contained page: the figure and a stepper through the backward pass."""
    fig = Figure(t)
    d = fig.d
    esc = html.escape
    at = ", ".join(f"{k} = {compact(v)}" for k, v in d["values"].items())
    steps = fig.stepper()
    data = json.dumps(steps, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")
    grads = ", ".join(f"df/d{k} = {compact(v)}" for k, v in d["gradients"].items())
    empty = "" if steps else ("<p>No gate needs a gradient here: nothing to step "
                              "through.</p>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bptrain trace: {esc(d['expression'])}</title>
<style>{HTML_STYLE}</style>
</head>
<body>
<h1>f = {esc(d['expression'])}</h1>
<p class="sub">{esc(('at ' + at) if at else '')}{esc('; f = ' + compact(d['output']))}{esc(('; ' + grads) if grads else '')}</p>
<div id="figure">
{fig.svg(standalone=False)}</div>
<div id="stepper">
<button id="prev" type="button" aria-label="previous gate">&#9664; Prev</button><button id="next" type="button" aria-label="next gate">Next &#9654;</button><span id="counter"></span>
<div id="step-title"></div>
<ul id="step-lines"></ul>
{empty}<div class="hint">Backward pass, one gate a step, from the output to the inputs: Prev/Next or the left/right arrow keys. Gradients not yet computed are faded.</div>
</div>
<script type="application/json" id="steps-data">{data}</script>
<script>{HTML_SCRIPT}</script>
</body>
</html>
"""


def to_dot(t: Any) -> str:
    """Graphviz text: the same boxes and labels (forward green above, gradient red below)."""
    fig = Figure(t)

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def h(s: str) -> str:
        return html.escape(s, quote=True)

    lines = ["digraph trace {", "  rankdir=LR;",
             f"  label={q('f = ' + fig.d['expression'])}; labelloc=t;",
             '  node [fontname="Helvetica"]; edge [fontname="Courier", fontsize=11];']
    for b in fig.boxes.values():
        if b.kind == "gate":
            label = f"<b>{h(gate_symbol(b.label))}</b>"
            if b.pattern:
                label += f'<br/><font point-size="10"><i>{h(b.pattern)}</i></font>'
            lines.append(f"  {q(b.name)} [shape=box, style=rounded, label=<{label}>];")
        elif b.kind == "const":
            lines.append(f"  {q(b.name)} [shape=plaintext, fontcolor=\"{GREY}\", "
                         f"label={q(b.label)}];")
        else:
            label = f"<b>{h(b.label)}</b>"
            if b.note:
                label += f'<br/><font color="{RED}">{h(b.note)}</font>'
            lines.append(f"  {q(b.name)} [shape=plaintext, label=<{label}>];")
    lines.append(f"  {q('__output__')} [shape=plaintext, label=<<b>f</b>>];")
    for e in fig.edges:
        label = f'<font color="{GREEN}">{h(e.fwd_text)}</font>'
        if e.grad is not None:
            label += f'<br/><font color="{RED}">{h(e.grad_text)}</font>'
        if e.rule:
            label += f'<br/><font color="{GREY}" point-size="9">{h(e.rule)}</font>'
        dst = e.dst if e.dst is not None else "(output)"
        lines.append(f"  {q(e.src)} -> {q(dst)} [label=<{label}>];")
    lines.append("}")
    return "\n".join(lines) + "\n"
