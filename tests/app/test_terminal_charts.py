"""Terminal charts that fit: loss and accuracy side by side when the terminal is wide, stacked
when it is narrow, never a line longer than the terminal; lines told apart by markers and a
legend when there is no colour (NO_COLOR, pipes). `bptrain run` and `bptrain compare` at 60,
80 and 200 columns."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from bptrain.app.chart import (MARKERS, SIDE_BY_SIDE_MIN, Chart, Series, chart_grid,
                               chart_layout, chart_lines)
from bptrain.app.cli import app
from bptrain.app.report import training_charts, use_markers
from bptrain.net.config import load_config
from bptrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")
BRAILLE = re.compile("[\u2801-\u28ff]")
WIDTHS = (60, 80, 200)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    a = train(load_config(MLP, ["train.epochs=5", "model.hidden=[32]"]), out=root / "small")
    b = train(load_config(MLP, ["train.epochs=4", "optimizer.lr=0.02"]), out=root / "slow")
    return a, b


def _fits(text: str, width: int) -> list[str]:
    lines = text.splitlines()
    too_long = [line for line in lines if cell_len(line) > width]
    assert not too_long, (width, too_long[:3])
    return lines


@pytest.mark.parametrize("width", WIDTHS)
def test_run_charts_fit_the_terminal(width, tmp_path):
    result = CliRunner().invoke(app, ["run", MLP, "--out", str(tmp_path / "run"),
                                      "--set", "train.epochs=4"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = _fits(result.output, width)
    legends = [line for line in lines if "─*─ train" in line]
    # not a terminal: markers, and a legend that names them, under both charts
    assert sum(line.count("─*─ train  ─o─ val") for line in legends) == 2
    assert any("accuracy %" in line for line in lines)
    plot = [line for line in lines if BRAILLE.search(line)]
    assert any("*" in line for line in plot) and any("o" in line for line in plot)
    if width >= 2 * SIDE_BY_SIDE_MIN + 3:        # side by side: both legends on one line
        assert len(legends) == 1
        assert any("loss" in line and "accuracy" in line for line in lines)
    else:                                        # stacked
        assert len(legends) == 2


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_fits_the_terminal(width, two_runs):
    a, b = two_runs
    result = CliRunner().invoke(app, ["compare", str(a.run_dir), str(b.run_dir)],
                                env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = _fits(result.output, width)
    text = result.output
    assert "val loss per run" in text and "val accuracy per run" in text
    assert "─*─ small (val)" in text and "─o─ slow (val)" in text     # loss legend
    assert "─*─ small" in text and "─o─ slow" in text
    assert len(BRAILLE.findall(text)) > 40
    side = any("val loss per run" in line and "val accuracy per run" in line for line in lines)
    assert side == (width >= 2 * SIDE_BY_SIDE_MIN + 3)


def test_colour_terminals_keep_plain_lines_and_no_color_gets_markers(two_runs, monkeypatch):
    a, _ = two_runs
    colour = Console(force_terminal=True, color_system="truecolor", width=120)
    assert not use_markers(colour)
    with colour.capture() as cap:
        colour.print(training_charts(a.history, colour.width, use_markers(colour)))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", cap.get())
    assert "━━ train  ━━ val" in plain and "─*─" not in plain
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_markers(Console(force_terminal=True, width=120))
    monkeypatch.delenv("NO_COLOR")
    assert use_markers(Console(force_terminal=False, width=120))      # a pipe, a file


def test_chart_grid_layout_and_widths():
    assert chart_layout(2, 200) == (2, 98)
    assert chart_layout(2, 2 * SIDE_BY_SIDE_MIN + 3) == (2, SIDE_BY_SIDE_MIN)
    assert chart_layout(2, 2 * SIDE_BY_SIDE_MIN + 2) == (1, 100)
    assert chart_layout(2, 60) == (1, 60)
    assert chart_layout(3, 200) == (3, 64)
    x = list(range(1, 21))
    charts = [Chart([Series("a", x, [1 / i for i in x]), Series("b", x, [2 / i for i in x])],
                    title="loss"),
              Chart([Series("a", x, [90 + i / 4 for i in x])], title="accuracy",
                    y_label="accuracy %")]
    for width in range(60, 201, 7):
        text = chart_grid(charts, width=width, markers=True).plain
        _fits(text, width)
        assert "─*─ a  ─o─ b" in text


def test_markers_are_distinct_per_series():
    x = list(range(1, 9))
    series = [Series(name, x, [k + i * (k + 1) for i in x]) for k, name in enumerate("abcd")]
    lines = chart_lines(series, width=70, height=16, markers=True)
    legend = lines[-1]
    for k, name in enumerate("abcd"):
        assert f"─{MARKERS[k]}─ {name}" in legend
    body = "\n".join(lines[1:17])
    assert all(body.count(MARKERS[k]) >= 4 for k in range(4))
    assert len(set(MARKERS)) == len(MARKERS)
    # without markers the chart is unchanged: braille only, the legend's ━━ keys
    assert chart_lines(series, width=70)[-1].startswith("━━ a")
