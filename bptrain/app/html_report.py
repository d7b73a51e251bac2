"""`bptrain report`: one self-contained HTML page about one run, or several overlaid.

Everything is inline: CSS in a <style> element, charts as SVG drawn here, weight tiles as PNG
images encoded here (zlib, no Pillow) in data: URLs. No script, no font, no link: the file
opens offline, from an e-mail attachment, or years later.

The page, top to bottom:
  overview         final and best metrics (one column per run); settings that differ
  training curves  train/validation loss and accuracy, and the learning rate, against epoch
                   (several runs: one colour per run; train dashed, validation solid)
  per run          gradient flow (per-layer gradient norm, update/weight ratio, dead or
                   saturated fraction at each evaluation), the warnings with their likely
                   fixes, the confusion matrix of the final weights on the validation split,
                   the network table, first-layer weights as image tiles (image data), the
                   resolved config.yaml

Every chart is `<svg class="chart" data-chart=...>`; each curve in it is
`<g class="series" data-series="val_loss" data-run="mlp" data-points="N">` holding one
`<circle class="point">` per evaluation, so a test (or a reader of the source) can count them.
"""
from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bptrain.errors import BptrainError
from bptrain.training import rundir

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
              "#e377c2")
KIND_COLORS = {"train": "#d6604d", "val": "#2166ac"}
LAYER_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                "#666666")
DASH = {"train": "6 4", "val": ""}
MAX_TILES = 256


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ---- PNG, by hand ---------------------------------------------------------------------------
def png_bytes(img: np.ndarray) -> bytes:
    """A PNG file of an (H, W) grayscale or (H, W, 3) RGB uint8 image (filter 0, zlib)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 2:
        color, (h, w) = 0, img.shape
    elif img.ndim == 3 and img.shape[2] == 3:
        color, (h, w) = 2, img.shape[:2]
    else:
        raise ValueError(f"png_bytes takes (H, W) or (H, W, 3) images, not {img.shape}")
    rows = img.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def png_data_url(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


# ---- first-layer weights as tiles -----------------------------------------------------------
def weight_tiles(W: np.ndarray, image_shape: Sequence[int] | None) -> list[np.ndarray] | None:
    """One image per unit of a first layer: (k, k) grayscale or (k, k, 3) RGB float arrays.

    Affine W (D, H) on images of (C, h, w) with D = C*h*w: H tiles of (h, w) (C = 1) or
    (h, w, 3) (C = 3), each a column of W. Convolution W (F, C, k, k): F tiles of (k, k), or
    (k, k, 3) for C = 3 (other C: the filter averaged over its channels). None when the
    weights are not images."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 4:
        F, C = W.shape[:2]
        if C == 3:
            return [W[f].transpose(1, 2, 0) for f in range(F)]
        return [W[f].mean(axis=0) if C > 1 else W[f, 0] for f in range(F)]
    if W.ndim == 2 and image_shape is not None:
        C, h, w = image_shape
        if C * h * w != W.shape[0] or C not in (1, 3):
            return None
        cols = W.T.reshape(W.shape[1], C, h, w)
        return [c[0] if C == 1 else c.transpose(1, 2, 0) for c in cols]
    return None


def tile_mosaic(tiles: Sequence[np.ndarray], gap: int = 1) -> tuple[np.ndarray, int, int]:
    """The tiles in a near-square grid, each scaled to 0..255 on its own (so each unit's
    pattern shows whatever its size), separated by `gap` gray pixels. (image, columns, rows)."""
    n = len(tiles)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    th, tw = tiles[0].shape[:2]
    rgb = tiles[0].ndim == 3
    H, Wd = rows * (th + gap) + gap, cols * (tw + gap) + gap
    out = np.full((H, Wd, 3) if rgb else (H, Wd), 160, np.uint8)
    for i, t in enumerate(tiles):
        t = np.nan_to_num(np.asarray(t, np.float64))
        lo, hi = float(t.min()), float(t.max())
        scaled = (t - lo) / (hi - lo) * 255 if hi > lo else np.full_like(t, 128.0)
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        out[y:y + th, x:x + tw] = np.round(scaled).astype(np.uint8)
    return out, cols, rows


# ---- SVG charts -----------------------------------------------------------------------------
@dataclass
class Curve:
    key: str                       # data-series, e.g. "val_loss", "grad_norm"
    label: str                     # legend text
    points: list[tuple[float, float]]
    color: str
    dash: str = ""
    run: str = ""
    layer: str = ""


def _num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    k0, k1 = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(k0, k1 + 1)]


def _finite(points: Sequence[tuple[Any, Any]]) -> list[tuple[float, float]]:
    out = []
    for x, y in points:
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) \
                and math.isfinite(x) and math.isfinite(y):
            out.append((float(x), float(y)))
    return out


def svg_chart(curves: Sequence[Curve], *, chart: str, title: str, y_label: str,
              x_label: str = "epoch", log_y: bool | None = None,
              y_range: tuple[float, float] | None = None,
              band: tuple[float, float] | None = None, hline: float | None = None,
              width: int = 520, height: int = 270) -> str:
    """A line chart as an inline <svg> with its legend under it (HTML)."""
    curves = [Curve(c.key, c.label, _finite(c.points), c.color, c.dash, c.run, c.layer)
              for c in curves]
    ys = [y for c in curves for _, y in c.points]
    xs = [x for c in curves for x, _ in c.points]
    if log_y is None:
        log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 1e3
    if log_y:
        curves = [Curve(c.key, c.label, [(x, y) for x, y in c.points if y > 0], c.color,
                        c.dash, c.run, c.layer) for c in curves]
        ys = [y for c in curves for _, y in c.points]
    ml, mr, mt, mb = 62, 14, 12, 40
    pw, ph = width - ml - mr, height - mt - mb
    parts = [f'<svg class="chart" data-chart="{esc(chart)}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{esc(title)}">',
             f'<rect class="plot" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/>']
    if not ys:
        parts.append(f'<text class="nodata" x="{ml + pw / 2}" y="{mt + ph / 2}" '
                     'text-anchor="middle">no data</text></svg>')
        return _figure(title, "".join(parts), curves)
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    extra = [f(v) for v in (band or ()) if not log_y or v > 0]
    if hline is not None and (not log_y or hline > 0):
        extra.append(f(hline))
    if y_range is not None:
        t0, t1 = f(y_range[0]), f(y_range[1])
    else:
        tv = [f(y) for y in ys]
        t0, t1 = min(tv), max(tv)
        if extra and log_y:   # show the reference lines when they are within two decades
            t0 = min(t0, *[e for e in extra if e > t0 - 2])
            t1 = max(t1, *[e for e in extra if e < t1 + 2])
        if t1 - t0 < 1e-12 * max(1.0, abs(t0)):
            pad = 0.5 if log_y else (abs(t0) * 0.1 or 1.0)
            t0, t1 = t0 - pad, t1 + pad
        elif not log_y:
            pad = (t1 - t0) * 0.06
            t0, t1 = t0 - pad, t1 + pad
            if min(ys) >= 0 and t0 < 0:
                t0 = 0.0

    def X(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def Y(t: float) -> float:
        return mt + (t1 - t) / (t1 - t0) * ph

    # grid and y ticks
    if log_y:
        yt = [float(e) for e in range(math.ceil(t0 - 1e-9), math.floor(t1 + 1e-9) + 1)]
        for ms in ((1, 2, 5), (1, 2, 3, 5), range(1, 10)):   # under two decades: 1-2-5 ...
            if len(yt) >= 3:
                break
            yt = [math.log10(m) + e for e in range(math.floor(t0) - 1, math.ceil(t1) + 1)
                  for m in ms if t0 - 1e-9 <= math.log10(m) + e <= t1 + 1e-9]
        if len(yt) < 2:
            yt = [t0, t1]
        labels = [_num(float(f"{10 ** t:.2g}")) for t in yt]
    else:
        yt = _nice_ticks(t0, t1, 5)
        labels = [_num(t) for t in yt]
    for t, lbl in zip(yt, labels):
        y = Y(t)
        parts.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{esc(lbl)}</text>')
    integral = all(float(x).is_integer() for x in xs)
    xt = _nice_ticks(x0, x1, 6)
    if integral:
        xt = sorted({int(round(v)) for v in xt if abs(v - round(v)) < 1e-9}) or [int(x0)]
    for v in xt:
        x = X(v)
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">'
                     f'{esc(_num(v))}</text>')
    if band is not None:
        b0, b1 = (f(band[0]), f(band[1]))
        b0, b1 = max(b0, t0), min(b1, t1)
        if b1 > b0:
            parts.append(f'<rect class="band" x="{ml}" y="{Y(b1):.1f}" width="{pw}" '
                         f'height="{Y(b0) - Y(b1):.1f}"/>')
    if hline is not None and (not log_y or hline > 0) and t0 <= f(hline) <= t1:
        parts.append(f'<line class="ref" x1="{ml}" x2="{ml + pw}" y1="{Y(f(hline)):.1f}" '
                     f'y2="{Y(f(hline)):.1f}"/>')
    parts.append(f'<text class="axis-label" x="{ml + pw / 2}" y="{height - 6}" '
                 f'text-anchor="middle">{esc(x_label)}</text>'
                 f'<text class="axis-label" transform="translate(14 {mt + ph / 2}) rotate(-90)" '
                 f'text-anchor="middle">{esc(y_label + (" (log scale)" if log_y else ""))}'
                 '</text>')
    for c in curves:
        pts = [(X(x), Y(f(y)), x, y) for x, y in c.points]
        attrs = (f'class="series" data-series="{esc(c.key)}" data-run="{esc(c.run)}" '
                 f'data-points="{len(pts)}"' + (f' data-layer="{esc(c.layer)}"' if c.layer else ""))
        g = [f"<g {attrs}>"]
        if len(pts) >= 2:
            dash = f' stroke-dasharray="{c.dash}"' if c.dash else ""
            g.append(f'<polyline fill="none" stroke="{c.color}" stroke-width="2"{dash} points="'
                     + " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts) + '"/>')
        for px, py, x, y in pts:
            g.append(f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="2.6" '
                     f'fill="{c.color}" data-x="{x:g}" data-y="{y:.6g}"><title>'
                     f'{esc(c.label)}, {esc(x_label)} {x:g}: {y:.4g}</title></circle>')
        g.append("</g>")
        parts.append("".join(g))
    parts.append("</svg>")
    return _figure(title, "".join(parts), curves)


def _figure(title: str, svg: str, curves: Sequence[Curve]) -> str:
    items = []
    for c in curves:
        dash = f' stroke-dasharray="{c.dash}"' if c.dash else ""
        items.append(f'<li><svg width="30" height="10" aria-hidden="true"><line x1="1" y1="5" '
                     f'x2="29" y2="5" stroke="{c.color}" stroke-width="2.5"{dash}/></svg>'
                     f'{esc(c.label)}{"" if c.points else " (no data)"}</li>')
    return (f'<figure class="chart-box"><figcaption>{esc(title)}</figcaption>{svg}'
            f'<ul class="legend">{"".join(items)}</ul></figure>')


# ---- what the page shows of each run --------------------------------------------------------
@dataclass
class RunView:
    label: str
    path: Path
    record: Any                                   # bptrain.training.runs.RunRecord
    config_text: str
    layers: list[Any] | None = None               # bptrain.net.model.Layer rows
    evaluation: Any | None = None                 # bptrain.training.runs.Evaluation
    weights_file: str | None = None
    first_weights: tuple[str, np.ndarray] | None = None
    image_shape: tuple[int, int, int] | None = None
    notes: dict[str, str] = field(default_factory=dict)   # section -> why it is missing


def load_view(path: str | Path, label: str | None = None) -> RunView:
    """Read what the page needs from a run directory. The metrics and config are required
    (DataError when the folder is not a run); the model, data and weights are optional:
    where they cannot be loaded the page says why instead."""
    from bptrain.net.config import load_config
    from bptrain.net.data import load_data
    from bptrain.net.model import build_for_data
    from bptrain.training.runs import evaluate, load_weights, read_run
    path = Path(path)
    rec = read_run(path, label)
    view = RunView(rec.name, path, rec, (path / rundir.CONFIG).read_text(encoding="utf-8",
                                                                          errors="replace"))
    try:
        cfg = load_config(path / rundir.CONFIG)
        data = load_data(cfg)
        model = build_for_data(cfg, data)
    except (BptrainError, OSError, ValueError) as e:
        why = f"the run's data or model could not be loaded: {e}"
        for k in ("network", "confusion", "weights"):
            view.notes[k] = why
        return view
    view.layers = list(model.layers)
    view.image_shape = data.image_shape
    weights = next((w for w in (rundir.MODEL, rundir.BEST) if (path / w).is_file()), None)
    if weights is None:
        view.notes["confusion"] = view.notes["weights"] = (
            "the run saved no weights (model.npz or best.npz): it stopped before its first "
            "evaluation")
        return view
    try:
        load_weights(model, path / weights)  # names, shapes, dtypes checked, buffers too
    except (BptrainError, OSError, KeyError, ValueError) as e:
        view.notes["confusion"] = view.notes["weights"] = f"{weights} could not be read ({e})"
        return view
    view.weights_file = weights
    first = next((l for l in model.layers if l.type in ("affine", "conv") and l.param_names),
                 None)
    if first is not None:
        view.first_weights = (first.param_names[0], np.asarray(model.params[first.param_names[0]]))
    try:
        if len(data.y_val):
            view.evaluation = evaluate(model, data.X_val, data.y_val,
                                       f"validation split of {data.name}")
        else:
            view.evaluation = evaluate(model, data.X_train, data.y_train,
                                       f"training set of {data.name} (no validation split)")
    except (BptrainError, ValueError, FloatingPointError) as e:
        view.notes["confusion"] = f"evaluating the weights failed: {e}"
    if view.evaluation is not None and view.evaluation.confusion is None:
        view.notes["confusion"] = "a regression run, with no classes to confuse"
    return view


# ---- sections -------------------------------------------------------------------------------
def _fmt(v: Any, kind: str = "num") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _overview(views: Sequence[RunView]) -> str:
    from bptrain.training.runs import differing_settings
    ms = [v.record.metrics() for v in views]
    rows = [("status", [("finished" if v.record.finished else "unfinished") for v in views]),
            ("epochs", [m["epochs"] for m in ms]), ("steps", [m["steps"] for m in ms]),
            ("seconds", [_fmt(m["seconds"]) for m in ms]),
            ("final train loss", [_fmt(m["final_train_loss"]) for m in ms]),
            ("final val loss", [_fmt(m["final_val_loss"]) for m in ms]),
            ("final train acc", [_fmt(m["final_train_acc"], "pct") for m in ms]),
            ("final val acc", [_fmt(m["final_val_acc"], "pct") for m in ms]),
            ("best val acc", [_fmt(m["best_val_acc"], "pct") + (
                f" (epoch {m['best_val_acc_epoch']})" if m["best_val_acc"] is not None else "")
                for m in ms]),
            ("warnings", [len(m["warnings"]) for m in ms])]
    head = "".join(f'<th style="color:{_run_color(i, len(views))}">{esc(v.label)}</th>'
                   for i, v in enumerate(views))
    body = "".join(f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{esc(x)}</td>" for x in vals)
                   + "</tr>" for k, vals in rows)
    out = [f'<section class="overview" id="overview"><h2>Overview</h2>'
           f'<table class="metrics"><thead><tr><th></th>{head}</tr></thead>'
           f'<tbody>{body}</tbody></table>']
    for v in views:
        when = "finished" if v.record.finished else "last written"
        out.append(f'<p class="where">{esc(v.label)}: run directory <code>{esc(v.path)}</code>'
                   f', {when} {esc(v.record.date)}</p>')
    if len(views) > 1:
        diff = differing_settings([v.record for v in views])
        if diff:
            trs = "".join(f"<tr><th>{esc(k)}</th>" + "".join(
                f"<td>{esc(_setting(x))}</td>" for x in vals) + "</tr>" for k, vals in diff)
            out.append(f'<h3>Settings that differ</h3><table class="settings"><thead><tr>'
                       f'<th></th>{head}</tr></thead><tbody>{trs}</tbody></table>')
        else:
            out.append("<p>The configs are identical.</p>")
    out.append("</section>")
    return "".join(out)


def _setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "null" if v is None else str(v)


def _run_color(i: int, n: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)] if n > 1 else "inherit"


def _curves(views: Sequence[RunView]) -> str:
    several = len(views) > 1

    def series(key: str, kind: str, name: str) -> list[Curve]:
        out = []
        for i, v in enumerate(views):
            pts = [(r["epoch"], r.get(key)) for r in v.record.history if r.get(key) is not None]
            if not pts:
                continue
            color = RUN_COLORS[i % len(RUN_COLORS)] if several else KIND_COLORS[kind]
            label = f"{v.label} {name}" if several else name
            out.append(Curve(key, label, pts, color, DASH[kind], v.label))
        return out

    loss = series("train_loss", "train", "train") + series("val_loss", "val", "validation")
    acc = series("train_acc", "train", "train") + series("val_acc", "val", "validation")
    lr = []
    for i, v in enumerate(views):
        pts = [(r["epoch"], r.get("lr")) for r in v.record.history if r.get("lr") is not None]
        if pts:
            lr.append(Curve("lr", v.label if several else "learning rate", pts,
                            RUN_COLORS[i % len(RUN_COLORS)], "", v.label))
    lrs = [y for c in lr for _, y in c.points if y and y > 0]
    charts = [svg_chart(loss, chart="loss", title="Loss", y_label="loss")]
    if acc:
        charts.append(svg_chart(acc, chart="accuracy", title="Accuracy", y_label="accuracy",
                                y_range=None))
    charts.append(svg_chart(lr, chart="lr", title="Learning rate", y_label="learning rate",
                            log_y=bool(lrs) and max(lrs) / min(lrs) > 20))
    note = ("<p class='hint'>Train dashed, validation solid; one colour per run.</p>"
            if several else "<p class='hint'>Train dashed, validation solid. Train numbers are "
            "measured on a fixed sample of the training set at each evaluation.</p>")
    return (f'<section class="curves" id="curves"><h2>Training curves</h2>{note}'
            f'<div class="charts">{"".join(charts)}</div></section>')


def _gradients(v: RunView, idx: int) -> str:
    hist = [r for r in v.record.history if r.get("diagnostics")]
    sid = f"gradients-{idx}"
    if not hist:
        return (f'<section class="gradients" id="{sid}"><h3>Gradient flow</h3><p class="note">'
                "The run's metrics.jsonl has no per-layer diagnostics.</p></section>")
    layers: list[str] = []
    for r in hist:
        layers += [n for n in r["diagnostics"] if n not in layers]

    def curves(key: str) -> list[Curve]:
        out = []
        for j, name in enumerate(layers):
            pts = [(r["epoch"], r["diagnostics"].get(name, {}).get(key)) for r in hist
                   if r["diagnostics"].get(name, {}).get(key) is not None]
            if pts:
                out.append(Curve(key, name, pts, LAYER_COLORS[j % len(LAYER_COLORS)],
                                 run=v.label, layer=name))
        return out

    frac = []
    for j, name in enumerate(layers):
        for key in ("dead", "saturated"):
            pts = [(r["epoch"], r["diagnostics"].get(name, {}).get(key)) for r in hist
                   if r["diagnostics"].get(name, {}).get(key) is not None]
            if pts:
                frac.append(Curve(key, f"{name} {key}", pts, LAYER_COLORS[j % len(LAYER_COLORS)],
                                  run=v.label, layer=name))
    charts = [svg_chart(curves("grad_norm"), chart="grad_norm", y_label="||dL/dW||",
                        title="Gradient norm per layer", log_y=True),
              svg_chart(curves("update_ratio"), chart="update_ratio", y_label="update / weight",
                        title="Update / weight ratio per layer (green band: 1e-4 to 1e-2)",
                        log_y=True, band=(1e-4, 1e-2), hline=1e-3)]
    if frac:
        charts.append(svg_chart(frac, chart="dead_saturated", y_label="fraction of units",
                                title="Dead (ReLU) or saturated (sigmoid/tanh) units",
                                y_range=(0.0, 1.0), hline=0.5))
    return (f'<section class="gradients" id="{sid}"><h3>Gradient flow</h3>'
            "<p class='hint'>Measured at the last training step before each evaluation: the "
            "norm of the data loss's weight gradient, the real update divided by the weights "
            "(about 1e-3 is healthy), and the units that pass no gradient.</p>"
            f'<div class="charts">{"".join(charts)}</div></section>')


def _warnings(v: RunView, idx: int) -> str:
    from bptrain.training.diagnostics import TITLES, fix, warnings_summary
    lr = (v.record.config.get("optimizer") or {}).get("lr")
    lr = lr if isinstance(lr, (int, float)) else None
    ws = warnings_summary(v.record.history, lr)
    sid = f"warnings-{idx}"
    if not ws:
        return (f'<section class="warnings" id="{sid}"><h3>Warnings</h3><p class="ok">None: no '
                "layer showed a classic failure pattern (dead or saturated units, vanishing or "
                "exploding gradients, update ratios far from 1e-3).</p></section>")
    items = "".join(
        f'<li class="warning" data-kind="{esc(w["kind"])}" data-layer="{esc(w["layer"])}">'
        f'<b>{esc(w["layer"])}: {esc(TITLES.get(w["kind"], w["kind"]))}</b> '
        f'<span class="when">(from epoch {esc(w["first_epoch"])}, {esc(w["evaluations"])} '
        f'evaluation{"s" if w["evaluations"] != 1 else ""})</span><br>{esc(w["detail"])}.'
        f'<br><span class="fix">Likely fix: {esc(fix(w["kind"], lr))}</span></li>'
        for w in ws)
    return f'<section class="warnings" id="{sid}"><h3>Warnings</h3><ul>{items}</ul></section>'


def _confusion(v: RunView, idx: int) -> str:
    sid = f"confusion-{idx}"
    ev = v.evaluation
    if ev is None or ev.confusion is None:
        why = v.notes.get("confusion", "not available")
        return (f'<section class="confusion" id="{sid}"><h3>Confusion matrix</h3>'
                f'<p class="note">No confusion matrix: {esc(why)}.</p></section>')
    m = np.asarray(ev.confusion)
    k = len(m)
    sums = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, sums, out=np.zeros(m.shape, float), where=sums > 0)
    head = "".join(f"<th>{j}</th>" for j in range(k))
    rows = []
    for i in range(k):
        cells = []
        for j in range(k):
            a = frac[i, j]
            rgb = "33,140,80" if i == j else "214,39,40"
            style = f' style="background: rgba({rgb},{0.08 + 0.82 * a:.2f})"' if m[i, j] else ""
            cells.append(f'<td data-true="{i}" data-pred="{j}"{style}>{int(m[i, j])}</td>')
        rows.append(f"<tr><th>{i}</th>{''.join(cells)}</tr>")
    acc = f", accuracy {100 * ev.accuracy:.2f}%" if ev.accuracy is not None else ""
    return (f'<section class="confusion" id="{sid}"><h3>Confusion matrix</h3>'
            f'<p>{esc(v.weights_file)} on the {esc(ev.name)}: {ev.n} samples, loss '
            f'{ev.loss:.4g}{acc}. Rows: true class; columns: predicted.</p>'
            f'<table class="cm"><thead><tr><th>true \\ pred</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def _network(v: RunView, idx: int) -> str:
    sid = f"network-{idx}"
    if v.layers is None:
        return (f'<section class="network" id="{sid}"><h3>Network</h3><p class="note">'
                f'{esc(v.notes.get("network", "not available"))}.</p></section>')

    def shape(s: Sequence[int]) -> str:
        return " × ".join(map(str, s))

    rows = "".join(f"<tr><td>{esc(l.name)}</td><td>{esc(l.kind)}</td><td>{esc(shape(l.in_shape))}"
                   f"</td><td>{esc(shape(l.out_shape))}</td><td>{l.params:,}</td>"
                   f"<td>{esc(', '.join(l.param_names))}</td></tr>" for l in v.layers)
    total = sum(l.params for l in v.layers)
    return (f'<section class="network" id="{sid}"><h3>Network</h3><table class="net"><thead>'
            "<tr><th>layer</th><th>gate</th><th>in (per sample)</th><th>out</th><th>params</th>"
            f"<th>arrays</th></tr></thead><tbody>{rows}</tbody><tfoot><tr><td colspan='4'>"
            f"total</td><td>{total:,}</td><td></td></tr></tfoot></table></section>")


def _weights(v: RunView, idx: int) -> str:
    sid = f"weights-{idx}"
    head = f'<section class="weights" id="{sid}"><h3>First-layer weights</h3>'
    if v.first_weights is None:
        why = v.notes.get("weights", "the network has no affine or convolution layer")
        return head + f'<p class="note">No tiles: {esc(why)}.</p></section>'
    name, W = v.first_weights
    tiles = weight_tiles(W, v.image_shape)
    if tiles is None:
        return head + (f'<p class="note">No tiles: {esc(name)} {esc(W.shape)} does not act on '
                       "images (the data have no image shape).</p></section>")
    shown = tiles[:MAX_TILES]
    img, cols, rows = tile_mosaic(shown)
    th, tw = shown[0].shape[:2]
    scale = max(2, min(8, 640 // max(img.shape[1], 1)))
    what = ("one tile per convolution filter" if W.ndim == 4 else
            "one tile per hidden unit: the column of weights it applies to the image")
    more = f" (the first {MAX_TILES} of {len(tiles)})" if len(tiles) > MAX_TILES else ""
    return head + (f"<p>{esc(name)} {esc(' × '.join(map(str, W.shape)))}: {len(shown)} tiles of "
                   f"{th}×{tw}{more}, {what}; each scaled from its own minimum (black) to "
                   "maximum (white).</p>"
                   f'<img class="tiles" alt="{esc(name)} as {len(shown)} tiles" '
                   f'data-param="{esc(name)}" data-tiles="{len(shown)}" data-tile="{th}x{tw}" '
                   f'width="{img.shape[1] * scale}" height="{img.shape[0] * scale}" '
                   f'src="{png_data_url(img)}"></section>')


def _config(v: RunView, idx: int) -> str:
    return (f'<section class="config" id="config-{idx}"><h3>Resolved config</h3>'
            f"<p><code>{esc(v.path / rundir.CONFIG)}</code>: defaults and overrides applied.</p>"
            f'<pre class="config-text">{esc(v.config_text)}</pre></section>')


CSS = """
:root { --fg:#1d232a; --muted:#5b6670; --line:#d8dde2; --bg:#fff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 auto; max-width: 1180px;
       padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px;
     border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
nav a { margin-right: 12px; color: #2166ac; text-decoration: none; }
.hint, .where, .when { color: var(--muted); } .note { color: #8a5300; } .ok { color: #1b7a3e; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
.net td:nth-child(2), .net td:nth-child(6) { text-align: left; }
.cm td { min-width: 34px; text-align: center; border: 1px solid var(--line); }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
          gap: 14px; }
figure.chart-box { margin: 0; background: var(--panel); border: 1px solid var(--line);
                   border-radius: 6px; padding: 8px 10px 4px; }
figcaption { font-weight: 600; margin-bottom: 2px; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart .plot { fill: #fff; stroke: var(--line); }
svg.chart .grid { stroke: #e8ebee; stroke-width: 1; }
svg.chart .tick { font-size: 11px; fill: var(--muted); }
svg.chart .axis-label { font-size: 12px; fill: var(--muted); }
svg.chart .band { fill: #2ca02c; opacity: .12; }
svg.chart .ref { stroke: #2ca02c; stroke-dasharray: 3 3; stroke-width: 1.2; }
svg.chart .nodata { fill: var(--muted); font-size: 13px; }
ul.legend { list-style: none; padding: 0; margin: 4px 0; display: flex; flex-wrap: wrap;
            gap: 4px 14px; font-size: 12px; }
ul.legend svg { vertical-align: middle; margin-right: 4px; }
li.warning { margin-bottom: 8px; } .fix { color: #1b5e9a; }
img.tiles { image-rendering: pixelated; border: 1px solid var(--line); }
pre.config-text { background: var(--panel); border: 1px solid var(--line); padding: 10px;
                  overflow: auto; max-height: 420px; font-size: 12px; }
section.run { border-top: 3px solid var(--line); margin-top: 28px; }
"""


def render(views: Sequence[RunView]) -> str:
    """The page, as one HTML string."""
    names = ", ".join(v.label for v in views)
    title = f"bptrain report: {names}"
    nav = ['<a href="#overview">overview</a>', '<a href="#curves">training curves</a>']
    nav += [f'<a href="#run-{i}">{esc(v.label)}</a>' for i, v in enumerate(views)]
    body = [f"<h1>{esc(title)}</h1>", f'<nav>{"".join(nav)}</nav>', _overview(views),
            _curves(views)]
    for i, v in enumerate(views):
        color = _run_color(i, len(views))
        body.append(f'<section class="run" id="run-{i}" data-run="{esc(v.label)}">'
                    f'<h2 style="color:{color}">{esc(v.label)}</h2>'
                    + _gradients(v, i) + _warnings(v, i) + _confusion(v, i) + _network(v, i)
                    + _weights(v, i) + _config(v, i) + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "<footer class='hint'><p>Written by bptrain report; one "
            "self-contained file (no scripts, no network).</p></footer></body></html>\n")


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    """RUN_DIR/report.html for one run, ./report.html for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / rundir.REPORT
    return Path(rundir.REPORT)


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None,
                 labels: Sequence[str] | None = None) -> Path:
    """Write the report of one or more runs; returns the file written."""
    from bptrain.training.runs import run_labels
    if not run_dirs:
        raise BptrainError("give one or more run directories, e.g. bptrain report runs/mlp.")
    labels = list(labels) if labels is not None else run_labels(list(run_dirs))
    views = [load_view(p, lbl) for p, lbl in zip(run_dirs, labels)]
    path = Path(out) if out is not None else default_output(run_dirs)
    if path.parent and not path.parent.is_dir():
        raise BptrainError(f"{path}: its folder {path.parent} does not exist.")
    rundir.write_text(path, render(views))
    return path
