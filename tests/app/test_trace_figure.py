"""`bptrain trace --format svg|html|dot` (the lecture's figure, a backward stepper) and vectors and
matrices in `trace` (the @ gate, gradients with their shapes and rules, --check per entry).

Every expected number is computed here, by hand (note 001's flat code) or with NumPy, never
read off the program's output. The browser test drives headless Chromium over the DevTools
protocol (tests/app/cdp.py) and is skipped when no chromium binary is on PATH.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import cdp  # noqa: E402

ENV = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None,
       "TTY_INTERACTIVE": None}
SVG_NS = "http://www.w3.org/2000/svg"
NEURON = dict(w0=2.0, x0=-1.0, w1=-3.0, x1=-2.0, w2=-3.0)
NEURON_ARGS = [f"{k}={v:g}" for k, v in NEURON.items()]
NEURON_EXPR = "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"
W, X = [[1.0, 2.0], [3.0, 4.0]], [1.0, -1.0]
MATRIX_ARGS = ["W=[[1,2],[3,4]]", "x=[1,-1]"]


def run(*args: str):
    result = CliRunner().invoke(app, ["trace", *args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def out_of(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def svg_of(*args: str) -> ET.Element:
    return ET.fromstring(out_of(*args, "--format", "svg").encode())  # parses as XML


def q(tag: str) -> str:
    return f"{{{SVG_NS}}}{tag}"


def number(text: str):
    """A label as a number or nested lists of numbers (labels are JSON-like: 3, [1, -1])."""
    return json.loads(text)


def close(a, b, rel=1e-3) -> bool:
    """Labels carry 4 significant digits."""
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rel,
                       atol=1e-9)


def gates(root: ET.Element) -> dict[str, str]:
    """Gate boxes: node name -> gate label."""
    return {g.get("data-node"): g.get("data-gate") for g in root.iter(q("g"))
            if g.get("class") == "gate"}


def edges(root: ET.Element) -> list[tuple]:
    """(source, destination gate label, input port, forward label, gradient label or None),
    a source being a variable's name, "const" or the label of the gate it leaves."""
    kinds = gates(root)
    found = []
    for g in root.iter(q("g")):
        if not (g.get("class") or "").startswith("edge"):
            continue
        texts = {t.get("class"): t.text for t in g.iter(q("text"))}
        src = g.get("data-src")
        if src in kinds:
            src = kinds[src]
        elif re.fullmatch(r"-?[\d.e+-]+(#\d+)?", src):
            src = "const"
        found.append((src, g.get("data-dst-gate") or "f", int(g.get("data-port")),
                      number(texts["fwd"]),
                      number(texts["grad"]) if texts.get("grad") is not None else None))
    return found


def assert_edges(root: ET.Element, want: list[tuple]) -> None:
    """The figure's edges are exactly `want`, each label matching within 4 digits."""
    got = edges(root)
    assert len(got) == len(want), (got, want)
    left = list(got)
    for w in want:
        match = [g for g in left if g[:3] == w[:3] and close(g[3], w[3]) and
                 (g[4] is None if w[4] is None else g[4] is not None and close(g[4], w[4]))]
        assert match, f"no edge {w} in {left}"
        left.remove(match[0])


# ---- the figure: numbers against hand-computed values -----------------------------------------

def test_add_then_multiply_figure():
    x, y, z = -2.0, 5.0, -4.0
    q_ = x + y
    root = svg_of("(x + y) * z", "x=-2", "y=5", "z=-4")
    assert sorted(gates(root).values()) == ["add", "mul"]  # one box per gate
    text = " ".join("".join(t.itertext()) for t in root.iter(q("text")))
    assert "distributor" in text and "swap multiplier" in text and "*" in text
    # df/dq = z, df/dz = q, and the add gate hands z to x and y.
    assert_edges(root, [("x", "add", 0, x, z), ("y", "add", 1, y, z), ("add", "mul", 0, q_, z),
                        ("z", "mul", 1, z, q_), ("mul", "f", 0, q_ * z, 1.0)])
    # Forward labels green above the edge, gradients red below it.
    for g in root.iter(q("g")):
        ts = {t.get("class"): t for t in g.iter(q("text"))}
        if "fwd" in ts and "grad" in ts:
            assert ts["fwd"].get("fill") == "#1a7f37" and ts["grad"].get("fill") == "#c62828"
            assert float(ts["fwd"].get("y")) < float(ts["grad"].get("y"))


def test_sigmoid_neuron_figure_matches_flat_code():
    w0, x0, w1, x1, w2 = NEURON.values()
    s0, s1 = w0 * x0, w1 * x1
    s2 = s0 + s1
    s3 = s2 + w2
    e = math.exp(-s3)
    d = 1.0 + e
    L = 1.0 / d
    dd = -1.0 / d ** 2          # d(1/d)/dd
    de = dd                     # the add gate distributes
    dneg = de * e               # d exp(u)/du = exp(u)
    ds3 = -dneg                 # the negation flips the sign
    assert round(L, 2) == 0.73 and round(ds3, 2) == 0.2  # the course's rounded numbers
    root = svg_of(NEURON_EXPR, *NEURON_ARGS)
    assert Counter(gates(root).values()) == Counter(
        {"mul": 2, "add": 3, "neg": 1, "exp": 1, "div": 1})
    assert_edges(root, [
        ("w0", "mul", 0, w0, ds3 * x0), ("x0", "mul", 1, x0, ds3 * w0),
        ("w1", "mul", 0, w1, ds3 * x1), ("x1", "mul", 1, x1, ds3 * w1),
        ("mul", "add", 0, s0, ds3), ("mul", "add", 1, s1, ds3),
        ("add", "add", 0, s2, ds3), ("w2", "add", 1, w2, ds3),
        ("add", "neg", 0, s3, ds3), ("neg", "exp", 0, -s3, dneg),
        ("const", "add", 0, 1.0, None), ("exp", "add", 1, e, de),
        ("const", "div", 0, 1.0, None), ("add", "div", 1, d, dd),
        ("div", "f", 0, L, 1.0)])


def test_fan_out_shows_the_contributions_and_their_sum():
    x = -1.5
    root = svg_of("x*x + x", "x=-1.5")
    # f = x x + x: the multiply gate sends x to each of its inputs, the add gate sends 1.
    assert_edges(root, [("x", "mul", 0, x, x), ("x", "mul", 1, x, x),
                        ("mul", "add", 0, x * x, 1.0), ("x", "add", 1, x, 1.0),
                        ("add", "f", 0, x * x + x, 1.0)])
    (note,) = [t.text for t in root.iter(q("text")) if "copies" in (t.get("class") or "")]
    parts, total = note.split("=")
    assert sorted(float(p) for p in parts.split("+")) == sorted([x, x, 1.0])
    assert float(total) == 2 * x + 1 == sum([x, x, 1.0])
    # The variable is drawn once, its three edges fan out from it.
    assert sum(1 for g in root.iter(q("g")) if g.get("data-node") == "x") == 1
    assert sum(1 for g in root.iter(q("g")) if g.get("data-src") == "x") == 3


@pytest.mark.parametrize("expr, values, a, b", [
    ("W @ x", MATRIX_ARGS, np.array(W), np.array(X)),
    ("x @ W", ["x=[1,-1]", "W=[[1,2],[3,4]]"], np.array(X), np.array(W)),
    ("A @ B", ["A=[[1,2,3],[4,5,6]]", "B=[[1,0],[0,-1],[2,1]]"],
     np.array([[1.0, 2, 3], [4, 5, 6]]), np.array([[1.0, 0], [0, -1], [2, 1]])),
], ids=["matrix-vector", "vector-matrix", "matrix-matrix"])
def test_matmul_figure_and_json(expr, values, a, b):
    left, right = (v.split("=")[0] for v in values) if expr != "x @ W" else ("x", "W")
    Y = a @ b
    dY = np.ones_like(Y)  # a non-scalar output: backward starts from ones (d sum(f))
    # Note 001 with 1-D operands as NumPy reads them: a row on the left, a column on the right.
    A2 = a[None, :] if a.ndim == 1 else a
    B2 = b[:, None] if b.ndim == 1 else b
    dY2 = dY.reshape(A2.shape[0], B2.shape[1])
    dA = (dY2 @ B2.T).reshape(a.shape)   # dX = dY W^T
    dB = (A2.T @ dY2).reshape(b.shape)   # dW = X^T dY
    t = json.loads(out_of(expr, *values, "--json"))
    assert np.array_equal(t["output"], Y)
    assert np.allclose(t["gradients"][left], dA) and np.allclose(t["gradients"][right], dB)
    assert np.shape(t["gradients"][left]) == a.shape and np.shape(t["gradients"][right]) == b.shape
    (step,) = t["backward"]
    rules = {r["name"]: r["rule"] for r in step["inputs"]}
    assert rules == {left: "dX = dY W^T", right: "dW = X^T dY"}
    assert {r["name"]: r["shape"] for r in step["inputs"]} == {left: list(a.shape),
                                                              right: list(b.shape)}
    root = svg_of(expr, *values)
    assert list(gates(root).values()) == ["matmul"]
    assert_edges(root, [(left, "matmul", 0, a, dA), (right, "matmul", 1, b, dB),
                        ("matmul", "f", 0, Y, dY)])
    rule_text = [t.text for t in root.iter(q("text")) if t.get("class") == "rule"]
    assert any("dX = dY W^T" in r for r in rule_text) and any("dW = X^T dY" in r
                                                              for r in rule_text)
    text = out_of(expr, *values)
    assert "dX = dY W^T" in text and "dW = X^T dY" in text


def test_broadcast_and_sum_rules_and_shapes():
    # f = sum(W x * s + x): s is a number broadcast over a vector, so its gradient is summed.
    Wm, x, s = np.array(W), np.array(X), 2.0
    y = Wm @ x
    df_dx = Wm.T @ (s * np.ones(2)) + np.ones(2)   # through the matmul, plus the copy
    df_dW = np.outer(s * np.ones(2), x)
    df_ds = float(np.sum(y))
    t = json.loads(out_of("sum(W @ x * s + x)", *MATRIX_ARGS, "s=2", "--json"))
    assert t["output"] == float(np.sum(y * s + x))
    assert np.allclose(t["gradients"]["x"], df_dx) and np.allclose(t["gradients"]["W"], df_dW)
    assert t["gradients"]["s"] == df_ds
    rules = {(st["gate"], r["name"]): r["rule"] for st in t["backward"] for r in st["inputs"]}
    assert rules[("sum", next(n for (g, n) in rules if g == "sum"))] == "broadcast"
    assert rules[("mul", "s")].startswith("local × upstream") and "broadcast" in rules[("mul", "s")]
    (copy,) = t["copies"]
    assert np.allclose(np.sum([c["gradient"] for c in copy["contributions"]], axis=0), df_dx)
    assert t["shapes"]["s"] == [] and t["shapes"]["W"] == [2, 2]


def test_matrix_check_passes_entry_by_entry():
    Wm, x, h = np.array(W), np.array(X), 1e-5
    t = json.loads(out_of("sum(tanh(W @ x))", *MATRIX_ARGS, "--check", "--json"))

    def f(Wv, xv):
        return float(np.sum(np.tanh(Wv @ xv)))
    numeric_W = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            E = np.zeros((2, 2))
            E[i, j] = h
            numeric_W[i, j] = (f(Wm + E, x) - f(Wm - E, x)) / (2 * h)
    numeric_x = np.array([(f(Wm, x + h * e) - f(Wm, x - h * e)) / (2 * h) for e in np.eye(2)])
    assert np.allclose(t["numerical"]["W"]["numeric"], numeric_W, rtol=1e-8)
    assert np.allclose(t["numerical"]["x"]["numeric"], numeric_x, rtol=1e-8)
    dy = 1 - np.tanh(Wm @ x) ** 2
    assert np.allclose(t["gradients"]["W"], np.outer(dy, x)) and \
        np.allclose(t["gradients"]["x"], Wm.T @ dy)
    for name in ("W", "x"):
        assert t["numerical"][name]["rel_error"] < 1e-7 and t["numerical"][name]["kink"] is False
    text = out_of("sum(tanh(W @ x))", *MATRIX_ARGS, "--check")
    assert "max rel error" in text
    assert re.search(r"^W\s*│\s*2×2\s*│.*│\s*\d\.\de-\d\d\s*$", text, re.MULTILINE), text


# ---- self-contained output, DOT, files, formats ------------------------------------------------

@pytest.mark.parametrize("fmt", ["svg", "html"])
@pytest.mark.parametrize("args", [("(x + y) * z", "x=-2", "y=5", "z=-4"),
                                  ("W @ x", *MATRIX_ARGS)], ids=["scalar", "matrix"])
def test_nothing_is_fetched(fmt, args):
    text = out_of(*args, "--format", fmt)
    # The SVG file names its XML namespace (a name, never fetched); nothing else may point out.
    stripped = text.replace(f'xmlns="{SVG_NS}"', "") if fmt == "svg" else text
    assert "http" not in stripped
    assert "<script src" not in text and "href" not in text and "@import" not in text
    assert "<image" not in text and "<link" not in text
    assert set(re.findall(r"url\(([^)]*)\)", text)) <= {"#arrow"}
    if fmt == "html":
        assert "<svg" in text and 'id="next"' in text and 'id="prev"' in text
        assert "ArrowRight" in text and "ArrowLeft" in text


def test_html_steps_show_upstream_times_local():
    text = out_of("(x + y) * z", "x=-2", "y=5", "z=-4", "--format", "html")
    data = re.search(r'<script type="application/json" id="steps-data">(.*?)</script>', text,
                     re.S).group(1)
    steps = json.loads(data)
    assert [s["title"].split(": gate ")[1].split(",")[0][:3] for s in steps] == ["mul", "add"]
    mul, add = ("\n".join(s["lines"]) for s in steps)
    # mul: upstream 1 times the swapped input; add: upstream -4 times 1 for both inputs.
    assert "upstream × local = downstream: 1 × -4 = -4" in mul
    assert "upstream × local = downstream: 1 × 3 = 3" in mul
    assert add.count("upstream × local = downstream: -4 × 1 = -4") == 2


def test_dot_has_the_labels():
    text = out_of("(x + y) * z", "x=-2", "y=5", "z=-4", "--format", "dot")
    assert text.startswith("digraph")
    edges_ = re.findall(r'"([^"]+)" -> "([^"]+)" \[label=<<font color="#1a7f37">([^<]*)</font>'
                        r'<br/><font color="#c62828">([^<]*)</font>', text)
    got = {(src, fwd, grad) for src, _, fwd, grad in edges_ if src in "xyz"}
    assert got == {("x", "-2", "-4"), ("y", "5", "-4"), ("z", "-4", "3")}
    assert len(edges_) == 5 and "swap multiplier" in text and "distributor" in text
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=text, text=True, check=True,
                       capture_output=True, timeout=30)
    fan = out_of("x*x + x", "x=3", "--format", "dot")
    assert "1 + 3 + 3 = 7" in fan


def test_output_file_and_formats(tmp_path):
    target = tmp_path / "trace.html"
    result = run("(x + y) * z", "x=-2", "y=5", "z=-4", "--format", "html", "-o", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert target.read_text().startswith("<!DOCTYPE html>")
    text_file = tmp_path / "trace.txt"
    run("(x + y) * z", "x=-2", "y=5", "z=-4", "-o", str(text_file))
    assert "(c) gradients of f = -12" in text_file.read_text()
    assert json.loads(out_of("x * y", "x=3", "y=5", "--json")) == \
        json.loads(out_of("x * y", "x=3", "y=5", "--format", "json"))
    both = run("x * y", "x=3", "y=5", "--json", "--format", "svg")
    assert both.exit_code == 2 and "two formats" in both.output
    missing = run("x * y", "x=3", "y=5", "--format", "svg", "-o", str(tmp_path / "no" / "f.svg"))
    assert missing.exit_code == 2 and missing.output.startswith("error: ")
    assert "cannot write the trace" in " ".join(missing.output.split())


# ---- bad values and shapes: one paragraph, exit 2 ------------------------------------------------

@pytest.mark.parametrize("value, says", [
    ("W=[[1,2],[3]]", "ragged"),
    ("W=[[1,2],3]", "ragged"),
    ("W=['a', 1]", "numbers only"),
    ("W=[[abs(1)]]", "numbers only"),
    ("W=[__import__('os').system('touch pwned')]", "numbers only"),
    ("W=[x]", "numbers only"),
    ("W=[]", "empty"),
    ("W=[[[1]]]", "two levels"),
    ("W=[1, 2", "not a vector or matrix"),
    ("W=[1e999]", "finite"),
    ("W=[True, 1]", "numbers only"),
], ids=["ragged", "row-and-number", "string", "nested-call", "import", "name", "empty", "3-d",
        "unclosed", "infinite", "bool"])
def test_bad_matrix_literals_are_one_paragraph(value, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("sum(W)", value)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    out = result.output
    assert out.startswith("error:") and "\n\n" not in out.strip()
    assert says in " ".join(out.split())
    assert "^" in out  # under the value
    assert list(tmp_path.iterdir()) == []  # parsed, never run


@pytest.mark.parametrize("args, says", [
    (["W @ x", "W=[[1,2],[3,4]]", "x=[1,2,3]"], "inner sizes 2 and 3 differ"),
    (["x @ y", "x=1", "y=2"], "not numbers"),
    (["x + y", "x=[1,2]", "y=[1,2,3]"], "cannot combine shapes"),
    (["sum(log(x))", "x=[1,-1]"], "log of -1"),
])
def test_shape_and_domain_errors(args, says):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and says in " ".join(result.output.split())
    assert "^" in result.output


def test_too_many_gates_to_draw():
    expr = " + ".join(["x"] * 400)
    result = run(expr, "x=1", "--format", "svg")
    assert result.exit_code == 2 and "too many to draw" in result.output


# ---- in a real browser ------------------------------------------------------------------------

@pytest.mark.skipif(cdp.find_chromium() is None, reason="no chromium or chromium-browser on PATH")
def test_trace_html_in_headless_chromium(tmp_path):
    t = json.loads(out_of(NEURON_EXPR, *NEURON_ARGS, "--json"))
    order = [s["node"] for s in t["backward"]]
    n_gates = sum(1 for n in t["nodes"] if n["inputs"])
    assert n_gates == 8 == len(order)
    page_file = tmp_path / "trace.html"
    run(NEURON_EXPR, *NEURON_ARGS, "--format", "html", "-o", str(page_file))
    matrix_file = tmp_path / "matrix.html"
    run("sum(W @ x * s + x)", *MATRIX_ARGS, "s=2", "--format", "html", "-o", str(matrix_file))
    title = "document.getElementById('step-title').textContent"
    active = "Array.from(document.querySelectorAll('.gate.active')).map(g => g.dataset.node)"
    with cdp.Browser(width=1200, height=800) as browser:
        with browser.page(page_file) as page:
            assert page.console_errors == [] and page.requests == []
            # The SVG is rendered: one visible box per gate.
            boxes = page.evaluate("Array.from(document.querySelectorAll('svg .gate rect'))"
                                  ".map(r => { const b = r.getBoundingClientRect(); "
                                  "return [b.width, b.height]; })")
            assert len(boxes) == n_gates and all(w > 20 and h > 20 for w, h in boxes)
            assert page.evaluate("document.querySelector('svg').getBoundingClientRect()"
                                 ".width") > 500
            assert f"gate {order[0]}," in page.evaluate(title)
            assert page.evaluate(active) == [order[0]]
            page.evaluate("document.getElementById('next').click()")   # the button
            assert f"gate {order[1]}," in page.evaluate(title)
            assert page.evaluate(active) == [order[1]]
            page.press("ArrowRight")                                    # the keyboard
            assert f"gate {order[2]}," in page.evaluate(title)
            page.press("ArrowLeft")
            assert f"gate {order[1]}," in page.evaluate(title)
            for _ in range(2):
                page.press("ArrowRight")
            assert "upstream × local = downstream" in page.evaluate(
                "document.getElementById('step-lines').textContent")
            shot = page.screenshot(tmp_path / "trace.png")
            assert page.console_errors == []
        with browser.page(matrix_file) as page:
            assert page.console_errors == [] and page.requests == []
            assert page.evaluate("document.querySelectorAll('svg .gate').length") == 4
            page.evaluate("document.getElementById('next').click()")
            assert "step 2 of 4" in page.evaluate(title)
            assert page.console_errors == []
    assert shot.startswith(b"\x89PNG") and len(shot) < 150_000
    if os.environ.get("BPTRAIN_UPDATE_SCREENSHOTS"):  # refresh README's picture
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "trace.png").write_bytes(shot)
