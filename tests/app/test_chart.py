"""Tests of bptrain.app.chart, the braille terminal line chart.

Layout of `chart_lines(...)` (and of the plain text of `line_chart(...)`), top to bottom:

    title                   only if title=...
    y label                 only if y_label (or a log axis): "loss" / "loss (log scale)"
    height plot rows        "<label> ┤<braille cells>" (tick row) / "<blanks> │<cells>"
    x axis                  "<blanks> └──┬────┬──"
    x tick labels           centered under the ┬
    x label                 only if x_label
    legend                  "━━ train  ━━ val"

The helpers below cut a chart into those parts; the plot area of a row is everything after
the axis character, padded with blanks to the plot width.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bptrain.app.chart import Series, chart_lines, format_number, line_chart

ROOT = Path(__file__).resolve().parents[2]
BLANK = (" ", "\u2800")
# braille dot bits: [row in cell 0..3][column in cell 0..1]
DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def parts(lines: list[str], height: int, title: bool = False, y_label: bool = True,
          x_label: bool = True) -> dict:
    """Split a chart into its documented rows; checks the fixed structure on the way."""
    i = 0
    out: dict = {}
    if title:
        out["title"] = lines[i]
        i += 1
    if y_label:
        out["y_label"] = lines[i]
        i += 1
    rows = lines[i:i + height]
    i += height
    axis_col = lines[i].index("└")
    for r in rows:
        assert r[axis_col] in "┤│", (r, axis_col)
    out["axis_col"] = axis_col
    out["axis"] = lines[i]
    out["ticks"] = lines[i + 1]
    i += 2
    if x_label:
        out["x_label"] = lines[i]
        i += 1
    out["legend"] = lines[i]
    assert len(lines) == i + 1, lines
    plot_w = len(out["axis"]) - axis_col - 1
    out["plot_w"] = plot_w
    out["gutter"] = [r[:axis_col] for r in rows]
    out["plot"] = [r[axis_col + 1:].ljust(plot_w) for r in rows]
    out["y_ticks"] = [(k, r[:axis_col].strip()) for k, r in enumerate(rows)
                      if r[axis_col] == "┤"]
    return out


def cells(plot: list[str], col: int) -> list[int]:
    """Rows whose braille cell in plot column `col` has any dot."""
    return [r for r, row in enumerate(plot) if row[col] not in BLANK]


def dots(ch: str) -> int:
    return 0 if ch == " " else ord(ch) - 0x2800


def lit_columns(plot: list[str]) -> list[int]:
    return [c for c in range(len(plot[0])) if cells(plot, c)]


def loss_curve(n: int = 40) -> tuple[list[int], list[float]]:
    x = list(range(1, n + 1))
    return x, [2.31 * math.exp(-(e - 1) / 8) + 0.0213 - 2.31 * math.exp(-(n - 1) / 8) for e in x]


# -- layout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("height", [5, 8, 16, 24])
@pytest.mark.parametrize("width", [30, 50, 72, 100])
def test_layout_has_height_plot_rows_and_fixed_extra_rows(width, height):
    x, y = loss_curve()
    lines = chart_lines([Series("train", x, y), Series("val", x, [v * 1.2 for v in y])],
                        width=width, height=height, title="loss")
    assert len(lines) == height + 6   # title, y label, rows, axis, ticks, x label, legend
    p = parts(lines, height, title=True)
    assert all(len(line) <= width for line in lines)
    assert all(line == line.rstrip() for line in lines)
    assert len(p["axis"]) == width           # the axis runs to the right edge
    assert p["axis"][p["axis_col"] + 1:].strip("─┬") == ""
    assert "loss" in p["title"] and p["y_label"] == "loss"
    assert p["x_label"].strip() == "epoch"
    assert 4 <= len(p["y_ticks"]) <= 6
    ticks = p["ticks"].split()
    assert 3 <= len(ticks) <= 6
    assert p["axis"].count("┬") == len(ticks)


def test_optional_rows_are_left_out():
    x, y = loss_curve()
    lines = chart_lines([Series("a", x, y)], height=6, x_label="", y_label="")
    assert len(lines) == 6 + 3                # plot rows, axis, ticks, legend
    parts(lines, 6, y_label=False, x_label=False)


def test_tick_labels_sit_under_their_tick_marks():
    x = list(range(0, 101))
    lines = chart_lines([Series("a", x, [float(v) for v in x])], width=72, height=10)
    p = parts(lines, 10)
    assert p["ticks"].split() == ["0", "20", "40", "60", "80", "100"]
    for m in re.finditer(r"\S+", p["ticks"]):
        marks = [c for c in range(m.start(), m.end()) if p["axis"][c] == "┬"]
        assert len(marks) == 1, (m.group(), p["axis"], p["ticks"])


def test_too_small_sizes_are_raised_to_the_minimum():
    x, y = loss_curve()
    lines = chart_lines([Series("a", x, y)], width=10, height=1)
    p = parts(lines, 5)
    assert len(p["plot"]) == 5
    assert max(len(line) for line in lines) <= 30 and len(p["axis"]) == 30


# -- geometry ---------------------------------------------------------------------------------

def test_rising_line_goes_from_bottom_left_to_top_right():
    h = 10
    x = list(range(100))
    p = parts(chart_lines([Series("y=x", x, [float(v) for v in x])], width=60, height=h), h)
    plot = p["plot"]
    first, last = 0, p["plot_w"] - 1
    assert cells(plot, first) == [h - 1]      # only the bottom row at the left edge
    assert cells(plot, last) == [0]           # only the top row at the right edge
    assert dots(plot[h - 1][first]) & DOTS[3][0]   # the bottom-left dot itself
    assert dots(plot[0][last]) & DOTS[0][1]        # the top-right dot itself
    # monotone: the lit rows of each column never go back down
    tops = [min(cells(plot, c)) for c in range(p["plot_w"])]
    assert all(cells(plot, c) for c in range(p["plot_w"]))      # no empty column
    assert tops == sorted(tops, reverse=True)


def test_falling_line_is_the_mirror_image():
    h = 8
    x = list(range(50))
    p = parts(chart_lines([Series("down", x, [-float(v) for v in x])], height=h), h)
    assert cells(p["plot"], 0) == [0]
    assert cells(p["plot"], p["plot_w"] - 1) == [h - 1]


def test_segments_are_joined_without_gaps():
    # two points far apart: Bresenham fills every column in between
    h = 8
    p = parts(chart_lines([Series("a", [0, 10], [0.0, 1.0])], width=50, height=h), h)
    assert lit_columns(p["plot"]) == list(range(p["plot_w"]))
    for c in range(p["plot_w"] - 1):        # and neighbouring columns touch (no vertical gap)
        a, b = cells(p["plot"], c), cells(p["plot"], c + 1)
        assert min(a) - max(b) <= 1


def test_series_of_different_x_ranges_share_one_x_axis():
    h = 8
    a = Series("a", list(range(0, 11)), [1.0] * 6 + [2.0] * 5, "red")      # x 0..10
    b = Series("b", list(range(5, 21)), [float(v) for v in range(16)], "blue")  # x 5..20
    text = line_chart([a, b], width=60, height=h)
    p = parts(text.plain.split("\n"), h)
    assert lit_columns(p["plot"])[0] == 0 and lit_columns(p["plot"])[-1] == p["plot_w"] - 1
    assert p["ticks"].split()[0] == "0" and p["ticks"].split()[-1] == "20"
    cols = {"red": set(), "blue": set()}
    for (row, col), styles in plot_cells(text).items():
        for style in styles:
            cols[style].add(col)
    w = p["plot_w"]
    assert min(cols["red"]) == 0 and abs(max(cols["red"]) - w / 2) <= 1      # a ends half way
    assert abs(min(cols["blue"]) - w / 4) <= 1 and max(cols["blue"]) == w - 1  # b starts at 1/4


# -- y axis labels and scale ------------------------------------------------------------------

def test_y_labels_include_min_and_max():
    x, y = loss_curve()
    h = 16
    p = parts(chart_lines([Series("train", x, y)], height=h), h)
    labels = dict(p["y_ticks"])
    assert labels[0] == format_number(max(y)) == "2.31"
    assert labels[h - 1] == format_number(min(y)) == "0.0213"
    values = [float(v) for _, v in p["y_ticks"]]
    assert values == sorted(values, reverse=True)       # top to bottom, decreasing
    assert "(log scale)" not in p["y_label"]


def test_log_scale_is_chosen_for_huge_ranges():
    x = list(range(1, 31))
    y = [2.5e7 * 10 ** (-(e - 1) * (11.39794 / 29)) for e in x]     # 2.5e7 -> 1e-4
    h = 16
    lines = chart_lines([Series("train", x, y)], height=h)
    p = parts(lines, h)
    assert p["y_label"] == "loss (log scale)"
    labels = dict(p["y_ticks"])
    assert labels[0] == "2.5e+07" and labels[h - 1] == "1e-04"
    assert all(re.fullmatch(r"-?[\d.]+(e[+-]\d\d)?", v) for v in labels.values())
    # on a log axis an exponential decay is a straight line: equal steps per column
    rows = [max(cells(p["plot"], c)) for c in lit_columns(p["plot"])]
    assert rows == sorted(rows)
    # the plain-linear version would squash everything into the bottom row
    lin = parts(chart_lines([Series("train", x, y)], height=h, log_y=False), h)
    assert "(log scale)" not in lin["y_label"]
    assert len(cells(lin["plot"], lin["plot_w"] // 2)) == 1
    assert cells(lin["plot"], lin["plot_w"] // 2) == [h - 1]


def test_log_scale_needs_positive_data_and_a_big_ratio():
    x = [1, 2, 3]
    assert "(log scale)" not in chart_lines([Series("a", x, [100.0, 10.0, 1.0])])[0]
    assert "(log scale)" not in chart_lines([Series("a", x, [1e6, 1.0, 0.0])])[0]
    assert "(log scale)" in chart_lines([Series("a", x, [1e6, 10.0, 1.0])])[0]
    assert "(log scale)" in chart_lines([Series("a", x, [100.0, 10.0, 1.0])], log_y=True)[0]
    # forced log with non-positive values: those points are dropped, nothing crashes
    lines = chart_lines([Series("a", x, [-1.0, 0.0, 5.0]), Series("b", x, [1.0, 2.0, 3.0])],
                        log_y=True, height=5)
    assert len(parts(lines, 5)["plot"]) == 5


@pytest.mark.parametrize("value, text", [
    (2.5e7, "2.5e+07"), (1.234e-4, "1.23e-04"), (1e-4, "1e-04"), (0.59341, "0.593"),
    (2.3149, "2.31"), (12, "12"), (0, "0"), (-1.5, "-1.5"), (123456, "1.23e+05"),
    (999.4, "999"), (0.00123, "0.00123"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_y_labels_get_more_digits_only_when_needed():
    x = [1, 2, 3]
    p = parts(chart_lines([Series("a", x, [1.0001, 1.0002, 1.0003])], height=8), 8)
    labels = [v for _, v in p["y_ticks"]]
    assert len(set(labels)) == len(labels)


# -- robustness -------------------------------------------------------------------------------

def test_constant_series_draws_a_flat_line_in_the_middle():
    h = 9
    x = list(range(1, 21))
    p = parts(chart_lines([Series("flat", x, [0.5] * 20)], height=h), h)
    rows = {r for c in range(p["plot_w"]) for r in cells(p["plot"], c)}
    assert rows == {h // 2}
    assert lit_columns(p["plot"]) == list(range(p["plot_w"]))
    labels = [float(v) for _, v in p["y_ticks"]]
    assert min(labels) < 0.5 < max(labels)


def test_zero_constant_and_single_point_draw_something():
    for series in ([Series("zero", [1, 2, 3], [0.0, 0.0, 0.0])],
                   [Series("one", [7], [0.25])],
                   [Series("one", [0.5], [1e-9])]):
        p = parts(chart_lines(series, height=6), 6)
        assert lit_columns(p["plot"]), series
        assert "━━ " + series[0].label in p["legend"]


def test_non_finite_values_are_skipped():
    x = [1, 2, 3, 4, 5, 6]
    y = [3.0, float("nan"), 2.0, float("inf"), None, 1.0]
    clean = Series("a", [1, 3, 6], [3.0, 2.0, 1.0])
    assert chart_lines([Series("a", x, y)]) == chart_lines([clean])
    # x may be bad too
    xs = [1, float("nan"), 3, float("-inf"), 5, 6]
    ys = [3.0, 9.0, 2.0, 9.0, float("nan"), 1.0]
    assert chart_lines([Series("a", xs, ys)]) == chart_lines([clean])


def test_empty_and_all_nan_series_are_skipped():
    x, y = loss_curve()
    good = Series("train", x, y)
    with_empty = chart_lines([good, Series("val", [], []),
                              Series("nan", [1, 2], [float("nan")] * 2)])
    alone = chart_lines([good])
    h = 16
    assert parts(with_empty, h)["plot"] == parts(alone, h)["plot"]
    legend = parts(with_empty, h)["legend"]
    assert "val (no data)" in legend and "nan (no data)" in legend


def test_no_data_at_all_still_draws_the_frame():
    for series in ([], [Series("a", [], [])], [Series("a", [1.0], [float("nan")])]):
        lines = chart_lines(series, height=5, width=40)
        p = parts(lines, 5, x_label=True) if series else None
        text = "\n".join(lines)
        assert "no data" in text
        assert sum(1 for line in lines if "┤" in line or "│" in line) == 5
        if p:
            assert len(p["plot"]) == 5


def test_unequal_x_and_y_lengths_use_the_common_prefix():
    assert chart_lines([Series("a", [1, 2, 3, 4], [1.0, 2.0])]) == \
        chart_lines([Series("a", [1, 2], [1.0, 2.0])])


def test_numpy_arrays_are_accepted():
    np = pytest.importorskip("numpy")
    x = np.arange(1, 51)
    y = np.exp(-x / 10.0).astype(np.float32)
    y[3] = np.nan
    assert chart_lines([Series("a", x, y)]) == chart_lines([Series("a", list(x), list(y))])


def test_module_does_not_import_numpy():
    code = "import sys, bptrain.app.chart; assert 'numpy' not in sys.modules, 'numpy imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_thousands_of_points_are_fast():
    import random
    rnd = random.Random(0)
    n = 3000
    x = list(range(n))
    series = [Series("noisy", x, [rnd.random() for _ in x]),
              Series("smooth", x, [math.exp(-i / 300) for i in x])]
    line_chart(series)                              # warm up
    t = time.perf_counter()
    text = line_chart(series)
    elapsed = time.perf_counter() - t
    assert text.plain
    assert elapsed < 0.25, elapsed                  # typically ~10 ms; generous for slow CI


# -- several series, legend and colors --------------------------------------------------------

def test_legend_lists_every_label_in_order():
    x, y = loss_curve()
    labels = ["train", "val", "run-2 (lr=0.1)", "baseline"]
    series = [Series(lbl, x, [v * (1 + k / 10) for v in y]) for k, lbl in enumerate(labels)]
    legend = parts(chart_lines(series), 16)["legend"]
    assert legend == "  ".join("━━ " + lbl for lbl in labels)


def test_long_legends_wrap_within_the_width():
    x, y = loss_curve()
    series = [Series(f"run-{k:02d}-with-a-long-name", x, y) for k in range(6)]
    lines = chart_lines(series, width=50)
    assert all(len(line) <= 50 for line in lines)
    legend = lines[lines.index(next(x for x in lines if x.strip() == "epoch")) + 1:]
    assert len(legend) > 1
    assert all(any(s.label in line for line in legend) for s in series)


def plot_styles(text) -> dict[int, set[str]]:
    """Styles applied to braille characters, by character offset in text.plain."""
    out: dict[int, set[str]] = {}
    for span in text.spans:
        for i in range(span.start, span.end):
            if 0x2800 < ord(text.plain[i]) <= 0x28FF:
                out.setdefault(i, set()).add(str(span.style))
    return out


def plot_cells(text) -> dict[tuple[int, int], set[str]]:
    """Styles of braille characters by (plot row, plot column) of a default-layout chart."""
    lines = text.plain.split("\n")
    axis_col = next(line.index("└") for line in lines if "└" in line)
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    first_row = next(k for k, line in enumerate(lines) if len(line) > axis_col
                     and line[axis_col] in "┤│")
    out = {}
    for i, styles in plot_styles(text).items():
        k = max(n for n, st in enumerate(starts) if st <= i)
        out[(k - first_row, i - starts[k] - axis_col - 1)] = styles
    return out


def test_series_get_their_colors_and_the_later_one_wins():
    x = [0, 1, 2, 3]
    same = [1.0, 2.0, 3.0, 4.0]
    text = line_chart([Series("a", x, same, "red"), Series("b", x, same, "blue")])
    styles = plot_styles(text)
    assert styles and all(s == {"blue"} for s in styles.values())
    # default palette: distinct colors per series
    text = line_chart([Series("a", x, [1.0, 1.0, 1.0, 1.0]), Series("b", x, [4.0] * 4)])
    used = set().union(*plot_styles(text).values())
    assert len(used) == 2


def test_dots_of_series_sharing_a_cell_are_or_ed():
    # 5 rows = 20 dot rows; range 0..19 so y=19 is dot row 0 and y=18 is dot row 1
    x = [0, 10]
    series = [Series("low", x, [0.0, 0.0], "green"),
              Series("top", x, [19.0, 19.0], "red"),
              Series("next", x, [18.0, 18.0], "blue")]
    text = line_chart(series, height=5, width=40)
    p = parts(text.plain.split("\n"), 5)
    both = DOTS[0][0] | DOTS[0][1] | DOTS[1][0] | DOTS[1][1]
    assert {p["plot"][0][c] for c in range(p["plot_w"])} == {chr(0x2800 + both)}
    top_row_styles = {i: s for i, s in plot_styles(text).items()
                      if i < text.plain.index("\n", text.plain.index("┤"))}
    assert top_row_styles and all(s == {"blue"} for s in top_row_styles.values())


# -- rich rendering ---------------------------------------------------------------------------

@pytest.mark.parametrize("log_y", [None, True])
def test_rich_rendering_matches_chart_lines(log_y):
    x, y = loss_curve()
    series = [Series("train", x, y), Series("val", x[::3], [v * 1.3 for v in y[::3]]),
              Series("empty", [], [])]
    kwargs = dict(width=80, height=12, title="my run", log_y=log_y)
    console = Console(record=True, width=100, color_system=None)
    console.print(line_chart(series, **kwargs))
    assert console.export_text().splitlines() == chart_lines(series, **kwargs)


def test_rich_text_carries_the_series_styles():
    x, y = loss_curve()
    text = line_chart([Series("train", x, y, "magenta"), Series("val", x, y[::-1], "cyan")])
    assert text.plain.split("\n") == chart_lines([Series("train", x, y),
                                                  Series("val", x, y[::-1])])
    styles = {str(s.style) for s in text.spans}
    assert {"magenta", "cyan"} <= styles
