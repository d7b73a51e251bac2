"""`bptrain trace`: the lecture notes' worked examples, text and JSON, the gate patterns, the
copy gate, numerical checks, the backward bookkeeping, and errors shown with a caret under the
offending part of the expression (which is parsed, never executed).

Every expected number is computed here by hand or in flat NumPy-free Python, as note 001's flat
code does, never read off the program's output.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app

ROOT = Path(__file__).resolve().parents[2]
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None,
       "TTY_INTERACTIVE": None}

NEURON = dict(w0=2.0, x0=-1.0, w1=-3.0, x1=-2.0, w2=-3.0)
NEURON_ARGS = [f"{k}={v:g}" for k, v in NEURON.items()]


def run(*args: str):
    result = CliRunner().invoke(app, ["trace", *args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.output
    assert "Traceback" not in result.output
    return result


def trace_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def table_row(out: str, *cells: str) -> bool:
    """True if some line of a rich table holds exactly these cells, in order."""
    pattern = r"^\s*" + r"\s*│\s*".join(map(re.escape, cells)) + r"\s*$"
    return re.search(pattern, out, re.MULTILINE) is not None


def neuron_by_hand(w0, x0, w1, x1, w2):
    """Note 001's flat code: forward, then backward line by line."""
    s0 = w0 * x0
    s1 = w1 * x1
    s2 = s0 + s1
    s3 = s2 + w2
    L = 1.0 / (1.0 + math.exp(-s3))
    grad_L = 1.0
    grad_s3 = grad_L * (1 - L) * L
    grad_w2 = grad_s3
    grad_s2 = grad_s3
    grad_s0 = grad_s2
    grad_s1 = grad_s2
    grad_w1 = grad_s1 * x1
    grad_x1 = grad_s1 * w1
    grad_w0 = grad_s0 * x0
    grad_x0 = grad_s0 * w0
    return L, dict(w0=grad_w0, x0=grad_x0, w1=grad_w1, x1=grad_x1, w2=grad_w2)


def check_backward_bookkeeping(t: dict) -> None:
    """Every step: downstream = local x upstream; every node's upstream is the sum of what its
    consumers sent it (1 for the output); every variable's gradient the sum it received."""
    received: dict[str, float] = {}
    first = True
    for step in t["backward"]:
        if first:
            assert step["upstream"] == 1.0  # df/df seeds the pass
            first = False
        else:
            assert step["upstream"] == pytest.approx(received[step["node"]], rel=1e-15, abs=0)
        for row in step["inputs"]:
            if row["local"] is None:  # a constant: no gradient
                assert row["downstream"] is None
                continue
            assert row["downstream"] == row["local"] * step["upstream"]
            received[row["name"]] = received.get(row["name"], 0.0) + row["downstream"]
    for name, grad in t["gradients"].items():
        assert grad == pytest.approx(received[name], rel=1e-15, abs=0)


# ---- note 002: f = (x + y) z --------------------------------------------------------------------

def test_add_then_multiply_json_is_exact():
    x, y, z = -2.0, 5.0, -4.0
    t = trace_json("(x + y) * z", "x=-2", "y=5", "z=-4")
    q = x + y
    assert t["output"] == q * z == -12.0
    # df/dx = df/dq dq/dx = z * 1; df/dz = q.
    assert t["gradients"] == {"x": z, "y": z, "z": q} == {"x": -4.0, "y": -4.0, "z": 3.0}
    assert t["values"] == {"x": x, "y": y, "z": z}
    assert t["copies"] == []
    gates = {s["gate"]: s for s in t["backward"]}
    assert gates["add"]["pattern"] == "distributor"
    assert gates["mul"]["pattern"] == "swap multiplier"
    # The multiply gate swaps: each input's local gradient is the other input's value.
    mul = {r["name"]: r for r in gates["mul"]["inputs"]}
    add_node = gates["add"]["node"]
    assert mul[add_node]["local"] == z and mul["z"]["local"] == q
    # The add gate distributes its upstream (z) unchanged to both inputs.
    assert [r["downstream"] for r in gates["add"]["inputs"]] == [z, z]
    check_backward_bookkeeping(t)


def test_add_then_multiply_text():
    result = run("(x + y) * z", "x=-2", "y=5", "z=-4")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "f = (x + y) * z" in out
    assert "distributor" in out and "swap multiplier" in out
    assert "(c) gradients of f = -12" in out
    for name, grad in (("x", "-4"), ("y", "-4"), ("z", "3")):
        assert table_row(out, name, grad), name


# ---- notes 001-003: the sigmoid neuron ----------------------------------------------------------

@pytest.mark.parametrize("expr", ["sigmoid(w0*x0 + w1*x1 + w2)",
                                  "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"],
                         ids=["sigmoid-gate", "primitive-gates"])
def test_sigmoid_neuron_matches_flat_code(expr):
    L, grads = neuron_by_hand(**NEURON)
    # The course's rounded numbers, as a sanity check of the hand formulas themselves.
    assert round(L, 2) == 0.73
    assert [round(grads[k], 2) for k in ("w0", "x0", "w1", "x1", "w2")] == \
        [-0.2, 0.39, -0.39, -0.59, 0.2]
    t = trace_json(expr, *NEURON_ARGS)
    assert t["output"] == pytest.approx(L, abs=1e-12)
    assert set(t["gradients"]) == set(grads)
    for name, g in grads.items():
        assert t["gradients"][name] == pytest.approx(g, abs=1e-12), name
    check_backward_bookkeeping(t)

    result = run(expr, *NEURON_ARGS)
    assert result.exit_code == 0, result.output
    for name, g in grads.items():
        assert table_row(result.output, name, f"{g:.6g}"), name


def test_sigmoid_neuron_check_puts_numbers_side_by_side():
    L, grads = neuron_by_hand(**NEURON)
    t = trace_json("sigmoid(w0*x0 + w1*x1 + w2)", *NEURON_ARGS, "--check")
    h = 1e-5
    for name, g in grads.items():
        num = t["numerical"][name]
        # Our own centered difference of the flat function.
        plus = neuron_by_hand(**{**NEURON, name: NEURON[name] + h})[0]
        minus = neuron_by_hand(**{**NEURON, name: NEURON[name] - h})[0]
        assert num["numeric"] == pytest.approx((plus - minus) / (2 * h), rel=1e-8)
        assert num["numeric"] == pytest.approx(g, rel=1e-8)
        assert num["rel_error"] == pytest.approx(abs(g - num["numeric"]) /
                                                 max(abs(g), abs(num["numeric"])),
                                                 rel=1e-6, abs=1e-15)
        assert num["rel_error"] < 1e-8 and num["kink"] is False

    result = run("sigmoid(w0*x0 + w1*x1 + w2)", *NEURON_ARGS, "--check")
    assert result.exit_code == 0, result.output
    assert "numerical" in result.output and "rel error" in result.output
    for name, g in grads.items():
        assert re.search(rf"^{name}\s*│\s*{re.escape(f'{g:.6g}')}\s*│\s*"
                         rf"{re.escape(f'{g:.6g}')}\s*│\s*\d\.\de-\d\d\s*$",
                         result.output, re.MULTILINE), name


# ---- note 000/003: max routes, copy adds --------------------------------------------------------

@pytest.mark.parametrize("x, y", [(3.0, 1.0), (-1.0, 4.0)])
def test_max_routes_the_gradient_to_the_larger_input_only(x, y):
    t = trace_json("max(x, y) * 2", f"x={x:g}", f"y={y:g}")
    assert t["output"] == 2 * max(x, y)
    assert t["gradients"] == {"x": 2.0 if x > y else 0.0, "y": 2.0 if y > x else 0.0}
    (mx,) = [s for s in t["backward"] if s["gate"] == "max"]
    assert mx["pattern"] == "router"
    assert mx["upstream"] == 2.0
    locals_ = {r["name"]: r["local"] for r in mx["inputs"]}
    assert locals_ == {"x": float(x > y), "y": float(y > x)}
    check_backward_bookkeeping(t)
    result = run("max(x, y) * 2", f"x={x:g}", f"y={y:g}")
    assert "router" in result.output


def test_copy_gate_adds_the_contributions():
    x, y = 3.0, 5.0
    # f = x y + x: x feeds the multiply gate (local y) and the add gate (local 1).
    want = {"x": y + 1.0, "y": x}
    t = trace_json("x * y + x", "x=3", "y=5")
    assert t["output"] == x * y + x
    assert t["gradients"] == want
    (copy,) = t["copies"]
    assert copy["variable"] == "x"
    parts = sorted(c["gradient"] for c in copy["contributions"])
    assert parts == [1.0, y]
    assert sum(parts) == copy["total"] == want["x"]
    gates = {s["node"]: s["gate"] for s in t["backward"]}
    assert sorted(gates[c["from"]] for c in copy["contributions"]) == ["add", "mul"]
    check_backward_bookkeeping(t)

    result = run("x * y + x", "x=3", "y=5")
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.output.splitlines() if "copy (adder)" in ln]
    assert "x is used 2 times" in line
    assert line.rstrip().endswith("1 + 5 = 6")


def test_variable_used_once_is_no_copy():
    result = run("x * y", "x=3", "y=5")
    assert "copy (adder)" not in result.output
    assert trace_json("x * y", "x=3", "y=5")["copies"] == []


def test_check_flags_a_kink_crossing():
    # relu at 0: x +- h take different branches, so the numeric value (1/2) is no evidence.
    t = trace_json("relu(x)", "x=0", "--check")
    assert t["gradients"] == {"x": 0.0}
    assert t["numerical"]["x"]["kink"] is True
    assert t["numerical"]["x"]["numeric"] == pytest.approx(0.5)


# ---- errors: one paragraph, a caret under the right columns, exit 2 -------------------------------

def caret_columns(out: str, text: str) -> tuple[int, int]:
    """(start, end) columns of the ^ line printed under `text` (both indented by two)."""
    lines = out.splitlines()
    (i,) = [k for k, ln in enumerate(lines) if ln.rstrip() == "  " + text.rstrip()]
    caret = lines[i + 1]
    assert set(caret.strip()) == {"^"}, caret
    start = caret.index("^") - 2
    return start, start + caret.strip().count("^")


@pytest.mark.parametrize("args, shown, span, says", [
    (["(x + "], "(x + ", (0, 1), "'(' was never closed"),
    (["sinh(x)", "x=1"], "sinh(x)", (0, 4), "unknown function 'sinh'"),
    (["x + q", "x=1"], "x + q", (4, 5), "q has no value"),
    (["x", "x=abc"], "x=abc", (2, 5), "not a number"),
    (["y + log(x)", "y=1", "x=-1"], "y + log(x)", (4, 10), "log of -1"),
    (["y + 1 / (x - 2)", "y=1", "x=2"], "y + 1 / (x - 2)", (4, 15), "division by zero"),
    (["x ** y", "x=2", "y=3"], "x ** y", (5, 6), "constant exponent"),
    (["__import__('os').system('ls')"], "__import__('os').system('ls')", (0, 23),
     "can be called"),
    (["x.real", "x=1"], "x.real", (0, 6), "not part of the expression language"),
], ids=["syntax", "unknown-function", "no-value", "bad-value", "log-negative",
        "division-by-zero", "power-variable", "import-call", "attribute"])
def test_errors_point_at_the_problem(args, shown, span, says):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # nothing half-printed
    out = result.output
    assert out.startswith("error:")
    assert says in " ".join(out.split())
    assert caret_columns(out, shown) == span


@pytest.mark.parametrize("expr", ["__import__('os').mkdir('pwned')", "open('pwned', 'w')",
                                  "exec('open(\"pwned\", \"w\")')",
                                  "(lambda: __import__('os').mkdir('pwned'))()"])
def test_code_is_never_executed(expr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(expr)
    assert result.exit_code == 2, result.output
    assert "^" in result.output
    assert list(tmp_path.iterdir()) == []


def test_error_exit_code_and_no_traceback_as_a_real_process():
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    proc = subprocess.run([sys.executable, "-m", "bptrain", "trace", "x + q", "x=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**env, "COLUMNS": "200"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    assert caret_columns(proc.stderr, "x + q") == (4, 5)
