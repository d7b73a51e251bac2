"""`bptrain gradcheck` from the command line: the default run (library gates and the default
config's network), JSON for scripts, configs and overrides, float64 whatever the config says,
sampling, a learner's own gates (by path and by module), bad --gate specs, and the library's
kink labelling.

Expected numbers are worked out here by hand (shapes from layer sizes, sigmoid's derivative,
which hinge margins sit within h of their kink), never read off the program's output.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bptrain.net.checks as gc
from bptrain.engine import gates as G
from bptrain.app.cli import app
from bptrain.engine.gradcheck import check_gate

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
LEARNER = FIXTURES / "learner_gates.py"
MLP = ROOT / "configs" / "mlp.yaml"

# Wide, plain output: names and numbers are never wrapped or wrapped in color codes.
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None,
       "TTY_INTERACTIVE": None}
CHECK_KEYS = {"name", "shape", "checked", "max_rel_error", "status", "kinks"}

# The default config: 64 pixels (8x8 digits) -> 100 hidden -> 10 classes, with biases.
D, H_UNITS, C = 8 * 8, 100, 10
DEFAULT_SHAPES = {"W1": [D, H_UNITS], "b1": [H_UNITS], "W2": [H_UNITS, C], "b2": [C]}


def run(*args: str, **kw):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV, **kw)
    # Only typer's own exit may end a command: any other exception is a crash.
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.output
    assert "Traceback" not in result.output
    return result


def run_json(*args: str, code: int = 0) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def network_checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"] if c["section"].startswith("network")}


# ---- the default run --------------------------------------------------------------------------

def test_no_arguments_checks_library_and_default_network_and_passes_fast():
    start = time.perf_counter()
    result = run("gradcheck")
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert elapsed < 10.0
    out = result.output
    # Library gates of every family, by their labels.
    for gate in ("add", "mul", "div", "matmul", "bias_add", "affine", "relu", "sigmoid",
                 "tanh", "max", "exp", "log", "softmax_ce", "svm_hinge(1)", "mse(sum)",
                 "l2(0.1)", "dropout(0.3)"):
        assert gate in out, gate
    # The default config's parameters, each with its shape as a table row.
    lines = out.splitlines()
    for name, shape in DEFAULT_SHAPES.items():
        want = "x".join(map(str, shape))
        assert any(line.split()[:1] == [name] and want in line for line in lines), name
    verdict = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert len(verdict) == 1 and verdict[0].startswith("PASS"), verdict
    assert "FAIL" not in out and " fail" not in out


def test_json_lists_every_check_with_its_fields_and_a_summary():
    report = run_json("gradcheck")
    checks = report["checks"]
    assert len(checks) > 50  # ~50 library cases, two or three inputs each, plus 4 params
    for c in checks:
        assert CHECK_KEYS <= set(c), c
        assert c["status"] in ("pass", "kink")
        assert c["checked"] >= 1
        assert isinstance(c["kinks"], int) and c["kinks"] >= 0
        assert np.prod(c["shape"], dtype=int) >= c["checked"]
        assert c["max_rel_error"] < 1e-5
    library = [c for c in checks if c["section"] == "library gates"]
    assert library and all(c["max_rel_error"] < 1e-7 for c in library)
    # matmul on (5, 4) @ (4, 3): one check per input, every entry of each.
    assert by_name(report)["matmul d/d(input 0)"]["shape"] == [5, 4]
    assert by_name(report)["matmul d/d(input 0)"]["checked"] == 5 * 4
    assert by_name(report)["matmul d/d(input 1)"]["shape"] == [4, 3]
    net = network_checks(report)
    assert {k: v["shape"] for k, v in net.items()} == DEFAULT_SHAPES
    # Default --samples 100: big arrays are sampled, small ones checked whole.
    for name, shape in DEFAULT_SHAPES.items():
        assert net[name]["checked"] == min(int(np.prod(shape)), 100)
    summary = report["summary"]
    assert summary["failed"] == 0 and summary["passed"] is True
    assert summary["checks"] == len(checks)
    assert summary["kinks"] == sum(c["kinks"] for c in checks)


# ---- configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [["loss.type=svm"],
                                       ["loss.type=mse", "data.encoding=onehot"]],
                         ids=["svm", "mse-onehot"])
def test_config_with_other_losses_passes(overrides):
    args = ["gradcheck", MLP]
    for o in overrides:
        args += ["--set", o]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    report = run_json(*args)
    net = network_checks(report)
    assert {k: v["shape"] for k, v in net.items()} == DEFAULT_SHAPES
    assert all(c["status"] != "fail" and c["max_rel_error"] < 1e-5 for c in net.values())
    assert report["summary"]["failed"] == 0
    assert all(c["section"] == f"network of {MLP} (float64)" for c in report["checks"])


def test_float32_config_is_checked_in_float64(tmp_path, monkeypatch):
    text = MLP.read_text()
    assert "dtype: float64" in text
    cfg = tmp_path / "mlp32.yaml"
    cfg.write_text(text.replace("dtype: float64", "dtype: float32"))
    from bptrain.net.config import load_config
    assert load_config(cfg).train.dtype == "float32"  # the config really asks for float32

    seen = []
    real = gc.check_graph

    def spy(graph, output, *a, **kw):
        seen.append((graph.dtype, {n.name: n.value.dtype for n in graph.params}))
        return real(graph, output, *a, **kw)

    monkeypatch.setattr(gc, "check_graph", spy)
    report = run_json("gradcheck", cfg)
    assert len(seen) == 1
    graph_dtype, param_dtypes = seen[0]
    assert graph_dtype == np.float64
    assert set(param_dtypes.values()) == {np.dtype(np.float64)}
    # In float32, eps/h ~ 1e-2 would swamp the differences; float64 stays far below 1e-5.
    assert all(c["max_rel_error"] < 1e-5 for c in report["checks"])
    assert report["summary"]["failed"] == 0
    assert "(float64)" in report["checks"][0]["section"]


def test_samples_checks_exactly_that_many_entries():
    report = run_json("gradcheck", MLP, "--samples", "5")
    net = network_checks(report)
    assert net["W1"]["checked"] == 5
    for name, shape in DEFAULT_SHAPES.items():
        assert net[name]["checked"] == min(int(np.prod(shape)), 5)
    worst = net["W1"]["worst"]["index"]
    assert 0 <= worst[0] < D and 0 <= worst[1] < H_UNITS


# ---- a learner's gates --------------------------------------------------------------------------

def test_wrong_sigmoid_fails_and_is_named():
    result = run("gradcheck", "--gate", f"{LEARNER}:BadSigmoid")
    assert result.exit_code == 1, result.output
    assert "BadSigmoid" in result.output and "FAIL" in result.output
    report = run_json("gradcheck", "--gate", f"{LEARNER}:BadSigmoid", code=1)
    assert report["summary"]["failed"] == len(report["checks"]) >= 1
    for c in report["checks"]:
        assert c["name"].startswith("BadSigmoid") and c["status"] == "fail"
        # analytic = s R, numeric = s (1 - s) R: the relative error is s and the ratio
        # numeric / analytic is 1 - s, so the two add up to 1.
        a, n = c["worst"]["analytic"], c["worst"]["numeric"]
        rel = abs(a - n) / max(abs(a), abs(n))
        assert rel == pytest.approx(c["max_rel_error"], rel=1e-12)
        assert n / a + rel == pytest.approx(1.0, abs=1e-6)
        assert c["max_rel_error"] > 1e-3


def test_correct_sigmoid_passes():
    result = run("gradcheck", "--gate", f"{LEARNER}:GoodSigmoid")
    assert result.exit_code == 0, result.output
    assert "GoodSigmoid" in result.output and "PASS" in result.output
    report = run_json("gradcheck", "--gate", f"{LEARNER}:GoodSigmoid")
    assert report["checks"] and all(c["status"] == "pass" and c["max_rel_error"] < 1e-7
                                    for c in report["checks"])


def test_correct_matmul_passes():
    report = run_json("gradcheck", "--gate", f"{LEARNER}:GoodMatMul")
    assert len(report["checks"]) == 2  # dX and dW
    assert all(c["status"] == "pass" for c in report["checks"])


@pytest.mark.parametrize("cls, what", [("MatMulNoTransposeW", "backward raised"),
                                       ("MatMulSwappedDW", "backward gave shape (5, 3)")])
def test_matmul_missing_a_transpose_fails_with_a_reason(cls, what):
    result = run("gradcheck", "--gate", f"{LEARNER}:{cls}")
    assert result.exit_code == 1, result.output
    assert cls in result.output and "FAIL" in result.output
    assert what in result.output  # a crash or a wrong shape is explained, not a traceback
    report = run_json("gradcheck", "--gate", f"{LEARNER}:{cls}", code=1)
    assert report["summary"]["failed"] >= 1


def test_matmul_missing_transpose_on_square_w_fails_numerically(rng):
    """On a square W, dY W has the right shape: only the numbers can tell it from dY W^T."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import learner_gates as lg
    finally:
        sys.path.remove(str(FIXTURES))
    X, W = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    assert not np.allclose(W, W.T)  # symmetric W would hide the bug
    dx, dw = check_gate(lg.MatMulNoTransposeW(), [X, W])
    assert dx.status == "fail" and dx.max_rel_error > 1e-3
    assert dw.status == "pass" and dw.max_rel_error < 1e-7
    dx, dw = check_gate(lg.GoodMatMul(), [X, W])
    assert dx.status == dw.status == "pass"


@pytest.fixture
def forget_learner_module():
    sys.modules.pop("learner_gates", None)
    yield
    sys.modules.pop("learner_gates", None)


@pytest.mark.parametrize("how", ["chdir", "syspath"])
def test_module_form(how, monkeypatch, tmp_path, forget_learner_module):
    if how == "chdir":  # run from the folder that holds the learner's module
        monkeypatch.chdir(FIXTURES)
    else:              # the module is importable, run from elsewhere
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(FIXTURES))
    bad = run("gradcheck", "--gate", "learner_gates:BadSigmoid")
    assert bad.exit_code == 1, bad.output
    assert "BadSigmoid" in bad.output
    good = run("gradcheck", "--gate", "learner_gates:GoodSigmoid")
    assert good.exit_code == 0, good.output


@pytest.mark.parametrize("spec, says", [
    ("nomodule:X", "cannot import nomodule"),
    ("no/such/file.py:Missing", "not found"),
    (f"{LEARNER}:Missing", "no Gate subclass named Missing"),
    (f"{LEARNER}:NotAGate", "no Gate subclass named NotAGate"),
    ("learner_gates", "package.module:ClassName"),
    (f"{LEARNER}:NeedsArgs", "needs arguments"),
])
def test_bad_gate_specs_exit_2_with_a_message(spec, says, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = run("gradcheck", "--gate", spec)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:")
    assert says in " ".join(result.output.split())


def test_bad_gate_spec_as_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "bptrain", "gradcheck", "--gate", "nomodule:X"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**_plain_env(), "COLUMNS": "200"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "nomodule" in proc.stderr


def _plain_env() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items()
            if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}


# ---- kinks, through the library ----------------------------------------------------------------

@pytest.mark.parametrize("gate", [G.ReLU, G.Abs], ids=["relu", "abs"])
def test_entry_within_h_of_a_kink_is_labelled_not_failed(gate):
    h = 1e-5
    x = np.array([3e-6, -0.5, 1.0])
    (r,) = check_gate(gate(), [x], h=h)
    # Only x[0] is within h of 0: x[0] +- h lie on both sides of the kink.
    assert int(np.sum(np.abs(x) < h)) == 1
    assert r.kinks == 1 and r.status == "kink" and r.passed
    assert r.checked == 3 and r.max_rel_error < 1e-7
    # Without the label, x[0] would fail: for relu the centered difference is
    # (relu(x + h) - relu(x - h)) / 2h = (x + h) / 2h = 0.65 against the analytic 1.
    if gate is G.ReLU:
        numeric = (max(x[0] + h, 0) - max(x[0] - h, 0)) / (2 * h)
        assert numeric == pytest.approx(0.65) and abs(1 - numeric) / 1 > 1e-3


def test_svm_margin_within_h_of_zero_is_labelled_not_failed():
    h, margin = 1e-5, 1.0
    y = np.array([0, 2, 1])
    s = np.array([[1.0, 0.0, -2.0],
                  [0.3, -1.5, 1.2],
                  [2.5, 0.4, -0.9]])
    s[0, 1] = s[0, 0] - margin + 3e-6   # row 0: margin of class 1 is 3e-6, within h of 0
    m = s - s[np.arange(3), y][:, None] + margin
    m[np.arange(3), y] = np.inf         # the true class has no margin
    near = np.abs(m) < h
    assert near.sum() == 1
    # Entry (i, k) crosses when a margin it moves is near 0: margin (i, k) itself, or, for
    # the true class k = y_i, any margin of row i.
    crossing = near | (near.any(axis=1)[:, None] & (np.arange(3)[None, :] == y[:, None]))
    expected = int(crossing.sum())
    assert expected == 2  # s[0, 1] and the true score s[0, 0]
    results = check_gate(G.SVMHinge(margin), [s, y], h=h)
    assert len(results) == 1  # integer labels are not differentiated
    (r,) = results
    assert r.kinks == expected and r.status == "kink" and r.passed
    assert r.checked == s.size and r.max_rel_error < 1e-7
