"""`bptrain show`: the graph of gates each config builds, with shapes at the batch size,
parameter counts, fan-out (copy) notes, totals, and Graphviz DOT.

Parameter counts and multiply-adds are worked out here from the layer sizes, never read off the
program's output.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bptrain.app.cli import app

ROOT = Path(__file__).resolve().parents[2]
# Training configs; sweep files (sweep-*.yaml) describe searches, not networks.
ALL_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sweep"))
# configs with layers other than a dense chain have tests of their own (tests/net/)
OTHER = {"convnet.yaml", "cifar10-convnet.yaml", "deep-plain.yaml", "deep-residual.yaml",
         "deep-batchnorm.yaml"}
CONFIGS = [p for p in ALL_CONFIGS if p.name not in OTHER]
MLP = ROOT / "configs" / "mlp.yaml"
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None,
       "TTY_INTERACTIVE": None}


def run(*args: str):
    result = CliRunner().invoke(app, ["show", *map(str, args)], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.output
    assert "Traceback" not in result.output
    return result


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by node name: the cells of each line that has them."""
    table = {}
    for line in out.splitlines():
        if "│" in line:
            cells = [c.strip() for c in line.split("│")]
            if cells[0]:
                table[cells[0]] = cells
    return table


def dense_counts(sizes: list[int], bias: bool) -> tuple[int, int]:
    """(parameters, multiply-adds per sample) of a chain of affine/matmul layers."""
    params = sum(a * b + (b if bias else 0) for a, b in zip(sizes, sizes[1:]))
    macs = sum(a * b for a, b in zip(sizes, sizes[1:]))
    return params, macs


# Layer sizes from the data and the config: digits are 8x8 = 64 pixels, 10 classes; the
# spiral is 2-D with 3 arms; note 004's regression data is 1000 features, 10 outputs.
# Batch: the config's batch_size (64 everywhere), at most the training set.
EXPECTED = {
    "mlp.yaml": ([64, 100, 10], True, 64),
    "svm.yaml": ([64, 100, 10], True, 64),
    "spiral.yaml": ([2, 100, 3], True, 64),
    "regression.yaml": ([1000, 100, 10], False, 64),
    "sigmoid.yaml": ([1000, 100, 10], False, 64),
}


def test_every_shipped_config_is_covered():
    assert {p.name for p in ALL_CONFIGS} == set(EXPECTED) | OTHER


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_show_every_config(config):
    result = run(config)
    assert result.exit_code == 0, result.output
    sizes, bias, batch = EXPECTED[config.name]
    params, macs = dense_counts(sizes, bias)
    out = " ".join(result.output.split())
    assert f"parameters {params:,} " in out
    assert f"forward multiply-adds per batch of {batch}: {batch * macs:,} " in out
    table = rows(result.output)
    for k, (a, b) in enumerate(zip(sizes, sizes[1:]), start=1):
        assert table[f"W{k}"][3] == f"{a}x{b}" and table[f"W{k}"][4] == f"{a * b:,}"
        if bias:
            assert table[f"b{k}"][3] == f"{b}" and table[f"b{k}"][4] == f"{b:,}"
        else:
            assert f"b{k}" not in table
    assert table["X"][3] == f"{batch}x{sizes[0]}"


def test_mlp_rows_fan_out_and_totals():
    result = run(MLP)
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    # W1: 64 pixels x 100 hidden units.
    assert table["W1"][1] == "param"
    assert table["W1"][3] == "64x100"
    assert table["W1"][4] == f"{64 * 100:,}" == "6,400"
    # W1 feeds the first affine gate and the L2 regularizer: it fans out (a copy gate).
    note = table["W1"][6]
    assert "copy" in note and "fc1" in note and "reg_loss" in note
    assert table["fc1"][5] == f"{64 * 64 * 100:,}"  # the layer's multiply-adds per batch
    assert table["fc1"][2] == "X, W1, b1"
    assert "W1" in table["reg_loss"][2]
    # Biases are not regularized: no fan-out.
    assert table["b1"][6] == ""
    assert table["relu1"][3] == "64x100" and table["scores"][3] == "64x10"
    assert table["loss"][3] == "scalar"
    params = 64 * 100 + 100 + 100 * 10 + 10
    macs = 64 * 64 * 100 + 64 * 100 * 10
    out = " ".join(result.output.split())
    assert f"parameters {params:,} " in out and params == 7510
    assert f"multiply-adds per batch of 64: {macs:,} " in out


def test_dot_output():
    result = run(MLP, "--format", "dot")
    assert result.exit_code == 0, result.output
    dot = result.stdout
    assert dot.startswith("digraph")
    assert dot.rstrip().endswith("}")
    edges = re.findall(r'^\s*"([^"]+)" -> "([^"]+)"( \[[^\]]*\])?;', dot, re.MULTILINE)
    copies = {(a, b) for a, b, style in edges if 'label="copy"' in style}
    edges = [(a, b) for a, b, _ in edges]
    assert ("W1", "fc1") in edges and ("W1", "reg_loss") in edges  # one edge per consumer
    assert ("X", "fc1") in edges and ("b1", "fc1") in edges
    # the fan-out of W1 (its affine gate and L2) is drawn as the copy gate, b1's is not
    assert {("W1", "fc1"), ("W1", "reg_loss")} <= copies and ("b1", "fc1") not in copies
    declared = set(re.findall(r'^\s*"([^"]+)" \[', dot, re.MULTILINE))
    assert {a for a, _ in edges} | {b for _, b in edges} <= declared
    assert re.search(r'"W1" \[[^\]]*label="W1\\n64x100"', dot)


def test_regression_has_matmul_gates_and_no_biases():  # bias: false makes an affine a matmul
    result = run(ROOT / "configs" / "regression.yaml")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    gates = {cells[1] for cells in table.values()}
    assert "matmul" in gates and "affine" not in gates
    assert not [name for name in table if re.fullmatch(r"b\d+", name)]
    assert table["W1"][3] == "1000x100" and table["W2"][3] == "100x10"
    assert table["y"][3] == "64x10"  # regression targets: 10 outputs per sample


def test_set_changes_the_shapes():
    result = run(MLP, "--set", "model.hidden=[32,16]")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    sizes = [64, 32, 16, 10]
    for k, (a, b) in enumerate(zip(sizes, sizes[1:]), start=1):
        assert table[f"W{k}"][3] == f"{a}x{b}"
    assert "W4" not in table
    params, macs = dense_counts(sizes, True)
    out = " ".join(result.output.split())
    assert f"parameters {params:,} " in out
    assert f"per batch of 64: {64 * macs:,} " in out


@pytest.mark.parametrize("fmt", ["svg", "DOT", ""])
def test_bad_format_exits_2(fmt):
    result = run(MLP, "--format", fmt)
    assert result.exit_code == 2, result.output
    assert "'table', 'dot'" in result.output  # typer's choice message
    assert result.stdout == ""
