"""Terminal line charts drawn with Unicode braille, for loss curves and overlaid runs.

Each character cell of the plot area is a braille glyph (U+2800 block) holding a 2x4 grid of
dots, so a 56x16-cell plot is a 112x64-dot canvas. Consecutive points of a series are joined
with Bresenham line segments on that canvas. Stdlib + rich only (no NumPy import): x and y may
be any sequences of numbers, NumPy arrays included.

    from bptrain.app.chart import Series, chart_lines, line_chart
    print("\\n".join(chart_lines([Series("train", [1, 2, 3], [3.0, 2.0, 1.5])])))
    console.print(line_chart([Series("train", x, tr), Series("val", x, va)], title="loss"))

Layout of the lines (top to bottom; ``chart_lines`` and ``line_chart`` give the same text):

    [title]                  only if ``title``; centered over the plot area
    [y label]                only if ``y_label`` or a log axis: "loss" / "loss (log scale)"
    plot rows x height       "<tick label> ┤<braille>" on tick rows, "<blanks> │<braille>" else
    x axis                   "<blanks> └──┬─────┬──"  (┬ marks each x tick)
    x tick labels            each centered under its ┬ (shifted to stay inside the width)
    [x label]                only if ``x_label``; centered under the plot area
    legend                   "━━ train  ━━ val" in each series' color; wraps onto more lines
                             if wider than ``width``; absent when there are no series

Every line is at most ``width`` characters, trailing blanks stripped. The y axis has 4-6 tick
labels: the data maximum on the top row, the minimum on the bottom row, and round values in
between (whole decades on a log axis; evenly spaced values when round ones do not fit), each on
the row where a point with that value is drawn. Labels have 3 significant digits (more only
if needed to tell them apart), scientific beyond [1e-3, 1e5): 2.5e+07, 0.593, 1e-04. The x axis
has 3-6 ticks at round positions (1, 2, 2.5, 5 x 10^k; whole numbers for integer x such as
epochs), fewer only when the labels do not fit the width.

Robustness: None/NaN/inf points are skipped (the line joins the neighbouring finite points);
series with no finite point are not drawn and are marked "(no data)" in the legend; a constant
series or a single point get a padded range; ``width``/``height`` are raised to at least 30/5.
Where two series share a character cell the dots are OR-ed and the later series' color wins.

Without colour (NO_COLOR, a pipe, a log: ``markers=True``) series i's data points are drawn as
MARKERS[i] ("*", "o", "+", ...) over its line, and the legend reads "─*─ train  ─o─ val".
``chart_grid`` lays out several charts in a terminal's width: side by side when each gets at
least 50 columns, stacked otherwise; no line is longer than the width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rich.text import Text

from bptrain.formatting import format_number

__all__ = ["Series", "Chart", "line_chart", "chart_lines", "chart_grid", "chart_layout",
           "PALETTE", "MARKERS", "format_number"]

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red")
# With markers=True (no colour: NO_COLOR, a pipe, a log) each data point of series i is drawn
# as MARKERS[i] over the braille line, and the legend shows "─*─ train  ─o─ val".
MARKERS = ("*", "o", "+", "x", "#", "@", "%", "&")
MIN_WIDTH, MIN_HEIGHT = 30, 5
AXIS_STYLE = "bright_black"
LABEL_STYLE = "italic"

# Braille dot bits indexed [row within the cell 0..3][column within the cell 0..1].
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BRAILLE = 0x2800

_Run = tuple[str, "str | None"]  # (text, rich style) pieces of one output line


@dataclass
class Series:
    """One curve: y against x (equal lengths; extra items of the longer one are ignored)."""
    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str | None = None   # a rich color/style; None = next color of PALETTE


def _finite_points(s: Series) -> list[tuple[float, float]]:
    """(x, y) pairs of a series with None/NaN/inf (and absurd |v| > 1e300) dropped."""
    out = []
    for xv, yv in zip(s.x, s.y):
        try:
            xf, yf = float(xv), float(yv)
        except (TypeError, ValueError):
            continue
        if -1e300 < xf < 1e300 and -1e300 < yf < 1e300:    # False for NaN and inf too
            out.append((xf, yf))
    return out


def _pad_range(lo: float, hi: float, log: bool) -> tuple[float, float]:
    if hi - lo > max(1e-300, 1e-12 * max(abs(lo), abs(hi))):
        return lo, hi
    lo = hi = (lo + hi) / 2
    if log:                      # values are log10(y): half a decade either side
        return lo - 0.5, hi + 0.5
    pad = abs(lo) * 0.1 if abs(lo) > 1e-100 else 1.0
    return lo - pad, hi + pad


def _x_ticks(x0: float, x1: float, col_of, left: int, width: int, integral: bool
             ) -> list[tuple[int, int, str]]:
    """Up to 6 x ticks at round positions within [x0, x1], as (plot column, label start, label):
    the smallest round step (1, 2, 2.5, 5 x 10^k; whole numbers for integer x) whose labels,
    each centered under its tick, keep a blank between neighbours and stay inside `width`."""
    span = x1 - x0
    top = math.floor(math.log10(span))

    def candidates(mantissas: tuple[float, ...]) -> list[float]:
        out = []
        for e in range(top - 3, top + 2):
            for m in mantissas:
                step = m * 10.0 ** e
                if not (integral and step >= 1 and step != int(step)):
                    out.append(step)
        return out

    def label(v: float, decimals: int) -> str:
        if abs(v) >= 1e5 or (v != 0 and decimals > 4):
            return format_number(v)
        text = f"{v:.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text

    def layout(values: list[tuple[float, str]]) -> list[tuple[int, int, str]] | None:
        out, last_end = [], -2
        for v, lbl in values:
            col = col_of(v)
            start = max(0, min(left + col - (len(lbl) - 1) // 2, width - len(lbl)))
            if start <= last_end + 1:
                return None
            out.append((col, start, lbl))
            last_end = start + len(lbl) - 1
        return out

    def ticks_for(step: float) -> list[tuple[int, int, str]] | None:
        k0, k1 = math.ceil(x0 / step - 1e-9), math.floor(x1 / step + 1e-9)
        if k1 - k0 >= 6:
            return None
        decimals = 0
        while decimals < 12 and abs(round(step, decimals) - step) > 1e-9 * step:
            decimals += 1
        return layout([(k * step, label(k * step, decimals)) for k in range(k0, k1 + 1)])

    chosen = None
    for step in candidates((1, 2, 2.5, 5)):     # smallest step that is not crowded
        chosen = ticks_for(step)
        if chosen:
            break
    if not chosen or len(chosen) < 3:           # e.g. epochs 1..14: 3, 6, 9, 12
        for step3 in candidates((1, 2, 2.5, 3, 4, 5)):
            more = ticks_for(step3)
            if more and len(more) >= 3:
                chosen, step = more, step3
                break
    if not chosen:                              # very narrow: the ends, or just the start
        chosen = (layout([(x0, format_number(x0)), (x1, format_number(x1))])
                  or layout([(x0, format_number(x0))]) or [])
    if integral and len(chosen) >= 2 and step < 1 and span <= 6:
        whole = ticks_for(1.0)                  # prefer whole epochs when there are enough
        if whole and len(whole) >= 3:
            chosen = whole
    return chosen


def _y_ticks(t0: float, t1: float, height: int, log: bool, row_of) -> list[float]:
    """4-6 y tick positions (in axis units: y, or log10 y): t1 and t0 themselves plus round
    values between them (1, 2, 2.5, 5 x 10^k; whole decades on a log axis), each on its own row
    with a blank row between labels when the plot is tall enough. Falls back to evenly spaced
    values when round ones do not fit."""
    n = max(4, min(6, height // 3 + 1))            # labels wanted, ends included
    gap = 2 if height >= 10 else 1                  # least row distance between labels
    ends = (row_of(t1), row_of(t0))
    span = t1 - t0
    top = math.floor(math.log10(span))
    if log:
        steps = [m * 10 ** e for e in range(0, max(1, top) + 2) for m in (1, 2, 3, 5)]
        steps = sorted(set(steps))
    else:
        steps = [m * 10.0 ** e for e in range(top - 3, top + 2) for m in (1, 2, 2.5, 5)]
    for step in steps:
        k0, k1 = math.ceil(t0 / step - 1e-9), math.floor(t1 / step + 1e-9)
        if k1 - k0 + 1 > 4 * n:
            continue
        inner = [k * step for k in range(k0, k1 + 1)]
        inner = [t for t in inner
                 if row_of(t) - ends[0] >= gap and ends[1] - row_of(t) >= gap]
        rows = [row_of(t) for t in sorted(inner, reverse=True)]
        if not 2 <= len(inner) <= n - 2:
            continue
        if all(b - a >= gap for a, b in zip(rows, rows[1:])):
            return [t1, *sorted(inner, reverse=True), t0]
    out = []                                        # evenly spaced exact values
    for i in range(n):
        t = t1 - span * i / (n - 1)
        if not out or row_of(t) != row_of(out[-1]):
            out.append(t)
    return out


def _place(line: list[str], text: str, start: int) -> None:
    for i, ch in enumerate(text):
        if 0 <= start + i < len(line):
            line[start + i] = ch


def _strip_runs(runs: list[_Run]) -> list[_Run]:
    """Drop trailing blanks of a line (and empty pieces)."""
    runs = [r for r in runs if r[0]]
    while runs:
        text, style = runs[-1]
        stripped = text.rstrip(" ")
        if stripped:
            runs[-1] = (stripped, style)
            break
        runs.pop()
    return runs


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _render(series: Sequence[Series], width: int, height: int, title: str | None,
            x_label: str, y_label: str, log_y: bool | None,
            markers: bool = False) -> list[list[_Run]]:
    width, height = max(int(width), MIN_WIDTH), max(int(height), MIN_HEIGHT)
    styles = [s.style or PALETTE[i % len(PALETTE)] for i, s in enumerate(series)]

    # -- data, scale and ranges ------------------------------------------------------------
    raw = [_finite_points(s) for s in series]
    ys = [y for pts in raw for _, y in pts]
    if log_y is None:
        log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 1e3
    if log_y:
        pts_all = [[(x, math.log10(y)) for x, y in pts if y > 0] for pts in raw]
    else:
        pts_all = raw
    xs = [x for pts in pts_all for x, _ in pts]
    ts = [t for pts in pts_all for _, t in pts]
    has_data = bool(xs)
    if has_data:
        x0, x1 = _pad_range(min(xs), max(xs), log=False)
        if min(xs) == max(xs) and min(xs).is_integer() and abs(min(xs)) < 1e15:
            x0, x1 = min(xs) - 1, max(xs) + 1
        t0, t1 = _pad_range(min(ts), max(ts), log=log_y)
    else:
        x0, x1, t0, t1 = 0.0, 1.0, 0.0, 1.0
        if log_y:
            t0, t1 = -1.0, 1.0
    integral_x = has_data and all(float(x).is_integer() for x in xs)

    def value(t: float) -> float:
        return 10.0 ** t if log_y else t

    # -- y ticks: the min (bottom row), the max (top row) and round values between -----------
    h4 = height * 4
    sy = (h4 - 1) / (t1 - t0)

    def py_of(t: float) -> int:
        return min(h4 - 1, max(0, round((t1 - t) * sy)))

    tick_ts = _y_ticks(t0, t1, height, log_y, lambda t: py_of(t) // 4)
    tick_rows = [py_of(t) // 4 for t in tick_ts]
    for sig in range(3, 8):                         # more digits only if labels would repeat
        labels = [format_number(value(t), sig) for t in tick_ts]
        if len(set(labels)) == len(labels):
            break
    row_label = {}
    for row, lbl in zip(tick_rows, labels):
        row_label.setdefault(row, lbl)
    gutter = max(len(lbl) for lbl in labels)
    plot_w = width - gutter - 2
    left = gutter + 2                                # column where the plot area starts

    # -- canvas ----------------------------------------------------------------------------
    w2 = plot_w * 2
    sx = (w2 - 1) / (x1 - x0)
    bits = [0] * (plot_w * height)
    owner = [-1] * (plot_w * height)
    mark: dict[int, int] = {}                         # cell -> series whose marker it shows

    for si, pts in enumerate(pts_all):
        if not pts:
            continue
        pix = []
        for x, t in pts:
            px = min(w2 - 1, max(0, round((x - x0) * sx)))
            p = (px, py_of(t))
            if markers:
                mark[(p[1] >> 2) * plot_w + (px >> 1)] = si
            if not pix or pix[-1] != p:
                pix.append(p)
        pix = _thin(pix)
        if len(pix) == 1:                             # a lone point: a short horizontal dash
            px, py = pix[0]
            pix = [(px & ~1, py), (px | 1, py)]
        _draw(pix, bits, owner, si, plot_w)

    # -- lines -----------------------------------------------------------------------------
    lines: list[list[_Run]] = []
    if title:
        t = _fit(title, width)
        pad = max(0, left + (plot_w - len(t)) // 2) if len(t) <= plot_w else 0
        lines.append([(" " * pad, None), (t, "bold")])
    ylab = f"{y_label} (log scale)".strip() if log_y else y_label
    if ylab:
        lines.append([(_fit(ylab, width), LABEL_STYLE)])

    blank_row = " " * gutter
    no_data_row = height // 2
    for r in range(height):
        lbl = row_label.get(r)
        runs: list[_Run] = [((lbl.rjust(gutter) if lbl else blank_row) + " ", None),
                            ("┤" if lbl else "│", AXIS_STYLE)]
        base = r * plot_w
        cur_text: list[str] = []
        cur_style: str | None = None
        for c in range(plot_w):
            b = bits[base + c]
            if base + c in mark:
                si = mark[base + c]
                ch, st = MARKERS[si % len(MARKERS)], styles[si]
            elif b:
                ch, st = chr(_BRAILLE + b), styles[owner[base + c]]
            else:
                ch, st = " ", None
            if st != cur_style and cur_text:
                runs.append(("".join(cur_text), cur_style))
                cur_text = []
            cur_style = st
            cur_text.append(ch)
        if cur_text:
            runs.append(("".join(cur_text), cur_style))
        if not has_data and r == no_data_row:
            msg = "no data"
            runs = runs[:2] + [(" " * max(0, (plot_w - len(msg)) // 2), None), (msg, "dim")]
        lines.append(_strip_runs(runs))

    def col_of(x: float) -> int:
        return min(w2 - 1, max(0, round((x - x0) * sx))) // 2

    ticks = _x_ticks(x0, x1, col_of, left, width, integral_x)
    axis = ["─"] * plot_w
    label_line = [" "] * width
    for col, start, lbl in ticks:
        axis[col] = "┬"
        _place(label_line, lbl, start)
    lines.append([(blank_row + " ", None), ("└" + "".join(axis), AXIS_STYLE)])
    lines.append(_strip_runs([("".join(label_line), None)]))
    if x_label:
        xl = _fit(x_label, width)
        pad = max(0, left + (plot_w - len(xl)) // 2) if len(xl) <= plot_w else 0
        lines.append([(" " * pad, None), (xl, LABEL_STYLE)])

    legend: list[_Run] = []
    used = 0
    for i, s in enumerate(series):
        key = f"─{MARKERS[i % len(MARKERS)]}─ " if markers else "━━ "
        label = _fit(s.label, width - len(key) - (10 if not pts_all[i] else 0))
        piece_len = len(key) + len(label) + (10 if not pts_all[i] else 0) + (2 if legend else 0)
        if legend and used + piece_len > width:
            lines.append(_strip_runs(legend))
            legend, used = [], 0
            piece_len -= 2
        if legend:
            legend.append(("  ", None))
        legend += [(key, styles[i]), (label, styles[i])]
        if not pts_all[i]:
            legend.append((" (no data)", "dim"))
        used += piece_len
    if legend:
        lines.append(_strip_runs(legend))
    return lines


def _thin(pix: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Within each run of consecutive dots in one dot column keep only the first, lowest,
    highest and last (in order): the segments then light exactly the same dots, but thousands
    of noisy points cost a few per column."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(pix)
    while i < n:
        j = i + 1
        px = pix[i][0]
        while j < n and pix[j][0] == px:
            j += 1
        if j - i <= 4:
            out.extend(pix[i:j])
        else:
            run = pix[i:j]
            lo = min(range(len(run)), key=lambda k: run[k][1])
            hi = max(range(len(run)), key=lambda k: run[k][1])
            keep = sorted({0, lo, hi, len(run) - 1})
            out.extend(run[k] for k in keep)
        i = j
    return out


def _draw(pix: list[tuple[int, int]], bits: list[int], owner: list[int], si: int,
          plot_w: int) -> None:
    """Bresenham segments between consecutive dot coordinates (px, py)."""
    dots = _DOTS
    x, y = pix[0]
    cell = (y >> 2) * plot_w + (x >> 1)
    bits[cell] |= dots[y & 3][x & 1]
    owner[cell] = si
    for x1, y1 in pix[1:]:
        dx, dy = abs(x1 - x), -abs(y1 - y)
        stx = 1 if x < x1 else -1
        sty = 1 if y < y1 else -1
        err = dx + dy
        while x != x1 or y != y1:
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x += stx
            if e2 <= dx:
                err += dx
                y += sty
            cell = (y >> 2) * plot_w + (x >> 1)
            bits[cell] |= dots[y & 3][x & 1]
            owner[cell] = si


def chart_lines(series: Sequence[Series], *, width: int = 72, height: int = 16,
                title: str | None = None, x_label: str = "epoch", y_label: str = "loss",
                log_y: bool | None = None, markers: bool = False) -> list[str]:
    """The chart as plain strings (no styles), one per line; see the module doc for the layout.

    ``log_y=None`` picks a log10 y axis when every finite y is > 0 and max/min > 1e3;
    ``True`` forces it (y <= 0 points are then skipped), ``False`` forbids it.
    ``markers=True`` draws series i's data points as MARKERS[i] (for output without colour)."""
    rows = _render(series, width, height, title, x_label, y_label, log_y, markers)
    return ["".join(text for text, _ in runs) for runs in rows]


def line_chart(series: Sequence[Series], *, width: int = 72, height: int = 16,
               title: str | None = None, x_label: str = "epoch", y_label: str = "loss",
               log_y: bool | None = None, markers: bool = False) -> Text:
    """The chart as a styled ``rich.text.Text`` (lines joined by newlines, no wrapping, cropped
    if the console is narrower than ``width``); its plain text equals ``chart_lines``."""
    rows = _render(series, width, height, title, x_label, y_label, log_y, markers)
    return _text(rows)


def _text(rows: list[list[_Run]]) -> Text:
    text = Text(no_wrap=True, overflow="crop", end="\n")
    for i, runs in enumerate(rows):
        if i:
            text.append("\n")
        for piece, style in runs:
            text.append(piece, style=style)
    return text


# ---- several charts that fit the terminal -------------------------------------------------
@dataclass
class Chart:
    """One chart of a `chart_grid`: its series and labels (as for ``line_chart``)."""
    series: Sequence[Series]
    title: str | None = None
    x_label: str = "epoch"
    y_label: str = "loss"
    log_y: bool | None = None


SIDE_BY_SIDE_MIN = 50   # a chart narrower than this is stacked instead
MAX_CHART_WIDTH = 100   # wider is not easier to read


def chart_layout(n: int, width: int, gap: int = 3) -> tuple[int, int]:
    """(charts per row, width of each) for `n` charts in `width` columns: side by side when
    each gets at least SIDE_BY_SIDE_MIN columns, else stacked at the full width."""
    width = max(int(width), MIN_WIDTH)
    for per_row in range(max(n, 1), 0, -1):
        each = (width - gap * (per_row - 1)) // per_row
        if per_row == 1 or each >= SIDE_BY_SIDE_MIN:
            return per_row, min(each, MAX_CHART_WIDTH)
    return 1, min(width, MAX_CHART_WIDTH)


def chart_grid(charts: Sequence[Chart], *, width: int, height: int = 14, gap: int = 3,
               markers: bool = False) -> Text:
    """Charts laid out to fit `width` columns (a terminal's): side by side when there is
    room (each at least SIDE_BY_SIDE_MIN wide), stacked otherwise; no line is longer than
    `width`, so nothing wraps."""
    per_row, each = chart_layout(len(charts), width, gap)
    rendered = [_render(c.series, each, height, c.title, c.x_label, c.y_label, c.log_y,
                        markers) for c in charts]
    rows: list[list[_Run]] = []
    for start in range(0, len(rendered), per_row):
        group = rendered[start:start + per_row]
        if rows:
            rows.append([])
        for k in range(max(len(g) for g in group)):
            line: list[_Run] = []
            used = 0
            for j, g in enumerate(group):
                runs = g[k] if k < len(g) else []
                if j:
                    pad = j * (each + gap) - used
                    line.append((" " * pad, None))
                    used += pad
                line += runs
                used += sum(len(t) for t, _ in runs)
            rows.append(_strip_runs(line))
    return _text(rows)
