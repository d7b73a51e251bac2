"""How results and trained runs show themselves in a notebook: a compact `repr`, and an HTML
repr with the loss curves drawn as a small inline SVG (no plotting library needed).

Plain Python; imported by the training layer only when a repr is asked for.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

from bptrain.formatting import fmt, format_number, pct

WIDTH, HEIGHT = 320, 150
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 10, 10, 28
COLORS = {"train": "#c2185b", "val": "#0097a7"}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def loss_curve_svg(history: Sequence[dict[str, Any]], width: int = WIDTH,
                   height: int = HEIGHT) -> str:
    """Train and validation loss against epochs as an inline <svg> ('' without records)."""
    series = []
    for kind in ("train", "val"):
        pts = [(r.get("epoch"), r.get(f"{kind}_loss")) for r in history]
        pts = [(float(x), float(y)) for x, y in pts if _finite(x) and _finite(y)]
        if pts:
            series.append((kind, pts))
    if not series:
        return ""
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    iw, ih = width - PAD_LEFT - PAD_RIGHT, height - PAD_TOP - PAD_BOTTOM

    def px(x: float) -> float:
        return PAD_LEFT + (x - x0) / (x1 - x0) * iw

    def py(y: float) -> float:
        return PAD_TOP + (1 - (y - y0) / (y1 - y0)) * ih

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
             f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{iw}" height="{ih}" fill="none" '
             'stroke="#bbb"/>']
    for v, y in ((y1, PAD_TOP), (y0, PAD_TOP + ih)):
        parts.append(f'<text x="{PAD_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">'
                     f'{format_number(v)}</text>')
    for v, x in ((x0, PAD_LEFT), (x1, PAD_LEFT + iw)):
        parts.append(f'<text x="{x:.1f}" y="{PAD_TOP + ih + 12}" text-anchor="middle">'
                     f'{format_number(v)}</text>')
    parts.append(f'<text x="{PAD_LEFT + iw / 2:.1f}" y="{height - 3}" text-anchor="middle">'
                 'epoch</text>')
    for i, (kind, pts) in enumerate(series):
        color = COLORS[kind]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{path}"/>')
        if len(pts) == 1:
            (x, y), = pts
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{color}"/>')
        parts.append(f'<text x="{PAD_LEFT + iw - 4}" y="{PAD_TOP + 12 + 12 * i}" '
                     f'text-anchor="end" fill="{color}">{kind} loss</text>')
    parts.append("</svg>")
    return "".join(parts)


def _metric(key: str, value: Any) -> str:
    return pct(value) if key.endswith("acc") or key == "accuracy" else fmt(value)


def metric_line(summary: dict[str, Any] | None, history: Sequence[dict[str, Any]]) -> str:
    """'final val_acc 97.50%, best 98.06% (epoch 9), test 97.22%': the numbers that matter."""
    summary = summary or {}
    final = summary.get("final") or (history[-1] if history else {})
    best = summary.get("best") or {}
    key = next((k for k in ("val_acc", "val_loss", "train_acc", "train_loss")
                if final.get(k) is not None), None)
    if key is None:
        return "no evaluation yet"
    text = f"final {key} {_metric(key, final.get(key))}"
    if best.get(key) is not None:
        text += f", best {_metric(key, best[key])} (epoch {best.get('epoch')})"
    test = summary.get("test")
    if test:
        t = test.get("best") or test.get("final") or {}
        which = "best" if test.get("best") else "final"
        if t.get("accuracy") is not None:
            text += f", test {pct(t['accuracy'])} ({which} weights)"
        elif t.get("loss") is not None:
            text += f", test loss {fmt(t['loss'])} ({which} weights)"
    return text


def html_card(title: str, rows: Sequence[tuple[str, str]],
              history: Sequence[dict[str, Any]]) -> str:
    """A small HTML block: a title, a two-column table, the loss curves."""
    cells = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                    f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in rows)
    svg = loss_curve_svg(history)
    return (f"<div><b>{html.escape(title)}</b><table>{cells}</table>{svg}</div>")


def result_rows(summary: dict[str, Any] | None, history: Sequence[dict[str, Any]]
                ) -> list[tuple[str, str]]:
    summary = summary or {}
    rows = [("metrics", metric_line(summary, history))]
    if summary.get("steps") is not None:
        rows.append(("training", f"{summary.get('epochs')} epochs, {summary['steps']} steps, "
                                 f"{summary.get('seconds', 0):.2f}s"))
    return rows
