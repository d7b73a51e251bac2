"""bptrain report: the self-contained HTML run report, opened in headless Chromium as a person
would, and read as a file (self-contained, escaped, weight tiles right).

Set BPTRAIN_SCREENSHOT=docs/report.png to (re)write the README's screenshot from the browser
test (a 30-epoch run then, so the curves have a shape)."""
from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptrain.app import html_report
from bptrain.app.cli import app
from bptrain.app.html_report import png_bytes, tile_mosaic, weight_tiles, write_report
from bptrain.net.config import load_config
from bptrain.training import rundir
from bptrain.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cdp  # noqa: E402  (tests/app/cdp.py)

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "configs" / "mlp.yaml")
SCREENSHOT = os.environ.get("BPTRAIN_SCREENSHOT")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs made by `bptrain run` (which writes report.html itself), and the
    overlay report of both."""
    root = tmp_path_factory.mktemp("report")
    epochs = "30" if SCREENSHOT else "3"
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(root)   # relative run directories, as a person types them (and the page shows)
    try:
        for out, extra in (("mlp", ["train.epochs=" + epochs]),
                           ("mlp-lr0.02", ["train.epochs=4", "optimizer.lr=0.02",
                                           "model.activation=tanh"])):
            args = ["run", MLP, "--out", out]
            for s in extra:
                args += ["--set", s]
            result = runner.invoke(app, args, env={"COLUMNS": "100"})
            assert result.exit_code == 0, result.output
            assert f"report {Path(out) / rundir.REPORT}" in result.output
        result = runner.invoke(app, ["report", "mlp", "mlp-lr0.02", "-o", "both.html"])
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root / "mlp", root / "mlp-lr0.02", root / "both.html"


def _history(run: Path) -> list[dict]:
    return rundir.RunDir(run).read_metrics()


SERIES_JS = """[...document.querySelectorAll('svg.chart g.series')].map(g => ({
  chart: g.closest('svg').dataset.chart, series: g.dataset.series, run: g.dataset.run,
  layer: g.dataset.layer || '', points: +g.dataset.points,
  circles: g.querySelectorAll('circle.point').length,
  drawn: [...g.querySelectorAll('circle.point')].filter(c => {
     const r = c.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length,
  stroke: (g.querySelector('polyline') || g.querySelector('circle')).getAttribute('stroke')
          || g.querySelector('circle').getAttribute('fill')}))"""

SECTIONS_JS = """[...document.querySelectorAll('section')].map(s => s.className)"""


def _check_series(series: list[dict], histories: dict[str, list[dict]]) -> None:
    """Every curve has one drawn point per evaluation of its run."""
    assert series
    for s in series:
        n = len(histories[s["run"]])
        assert s["points"] == s["circles"] == s["drawn"] == n, s


@pytest.mark.skipif(cdp.find_chromium() is None, reason="no chromium on PATH")
def test_report_in_a_browser(runs):
    a, b, both = runs
    ha, hb = _history(a), _history(b)
    with cdp.Browser(width=1100, height=900) as browser:
        # one run: the page bptrain run wrote
        with browser.page(a / rundir.REPORT) as page:
            assert page.console_errors == []
            assert page.requests == []              # nothing but the file itself
            assert page.evaluate("document.title") == "bptrain report: mlp"
            classes = page.evaluate(SECTIONS_JS)
            for name in ("overview", "curves", "run", "gradients", "warnings", "confusion",
                         "network", "weights", "config"):
                assert name in classes, (name, classes)
            series = page.evaluate(SERIES_JS)
            _check_series(series, {"mlp": ha})
            charts = {s["chart"] for s in series}
            assert {"loss", "accuracy", "lr", "grad_norm", "update_ratio",
                    "dead_saturated"} <= charts
            keys = {(s["chart"], s["series"], s["layer"]) for s in series}
            assert {("loss", "train_loss", ""), ("loss", "val_loss", ""),
                    ("accuracy", "val_acc", ""), ("lr", "lr", ""),
                    ("grad_norm", "grad_norm", "fc1"), ("grad_norm", "grad_norm", "scores"),
                    ("update_ratio", "update_ratio", "fc1"),
                    ("dead_saturated", "dead", "fc1")} <= keys
            # the charts are laid out and visible: real width, inside the page
            widths = page.evaluate("[...document.querySelectorAll('svg.chart')].map("
                                   "s => s.getBoundingClientRect().width)")
            assert len(widths) == 6 and min(widths) > 300
            # the weight tiles decoded as an image: 100 hidden units of 8x8
            img = page.evaluate("(() => { const i = document.querySelector('img.tiles'); "
                                "return [i.complete, i.naturalWidth, i.naturalHeight, "
                                "i.dataset.tiles, i.dataset.tile]; })()")
            assert img == [True, 91, 91, "100", "8x8"]
            # the confusion matrix: 10 x 10 counts that add up to the validation split
            cm = page.evaluate("[...document.querySelectorAll('table.cm td')].map("
                               "td => +td.textContent)")
            assert len(cm) == 100 and sum(cm) == 360
            assert page.evaluate("document.querySelectorAll('table.net tbody tr').length") == 3
            config = page.evaluate("document.querySelector('pre.config-text').textContent")
            assert config == (a / rundir.CONFIG).read_text()
            if SCREENSHOT:
                page.send("Emulation.setDeviceMetricsOverride", width=1000, height=900,
                          deviceScaleFactor=1, mobile=False)
                top = page.evaluate("document.querySelector('section.gradients')"
                                    ".getBoundingClientRect().bottom + scrollY")
                page.screenshot(SCREENSHOT, clip={"x": 0, "y": 0, "width": 1000,
                                                  "height": int(top) + 8})
            png = page.screenshot(clip={"x": 0, "y": 0, "width": 1100, "height": 900})
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # not a blank page

        # two runs overlaid: one colour per run, each curve with its own run's points
        with browser.page(both) as page:
            assert page.console_errors == [] and page.requests == []
            assert page.evaluate("document.title") == "bptrain report: mlp, mlp-lr0.02"
            series = page.evaluate(SERIES_JS)
            _check_series(series, {"mlp": ha, "mlp-lr0.02": hb})
            val = {s["run"]: s["stroke"] for s in series if s["series"] == "val_loss"}
            assert set(val) == {"mlp", "mlp-lr0.02"} and len(set(val.values())) == 2
            legend = page.evaluate("[...document.querySelectorAll('svg[data-chart=loss]')]"
                                   ".map(s => s.parentNode.querySelector('ul.legend')"
                                   ".textContent)")[0]
            assert "mlp train" in legend and "mlp-lr0.02 validation" in legend
            assert page.evaluate("document.querySelectorAll('section.run').length") == 2
            assert page.evaluate("document.querySelectorAll('svg[data-chart=loss] "
                                 "g.series').length") == 4
            # tanh units report saturation, ReLU units death
            kinds = {(s["run"], s["series"]) for s in series if s["chart"] == "dead_saturated"}
            assert kinds == {("mlp", "dead"), ("mlp-lr0.02", "saturated")}
            settings = page.evaluate("document.querySelector('table.settings').textContent")
            assert "optimizer.lr" in settings and "model.activation" in settings
    if SCREENSHOT:
        assert Path(SCREENSHOT).stat().st_size < 200_000


def test_report_is_self_contained(runs):
    a, b, both = runs
    for page in (a / rundir.REPORT, both):
        text = page.read_text(encoding="utf-8")
        lower = text.lower()
        for banned in ("http://", "https://", "<script", "<link", "@import", "url("):
            assert banned not in lower, (page, banned)
        assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
        assert len(re.findall(r'src="data:image/png;base64,', text)) == \
            text.count("<img")                          # every image is inline
    # one <circle> per evaluation in each curve of the one-run report
    text = (a / rundir.REPORT).read_text()
    n = len(_history(a))
    for m in re.finditer(r'<g class="series" data-series="(\w+)"[^>]*data-points="(\d+)"'
                         r'[^>]*>(.*?)</g>', text):
        assert int(m.group(2)) == n == m.group(3).count("<circle"), m.group(1)


def test_default_output_paths(runs, tmp_path, monkeypatch):
    a, b, _ = runs
    (a / rundir.REPORT).unlink()
    assert write_report([a]) == a / rundir.REPORT and (a / rundir.REPORT).is_file()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file() and "report.html" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "not a run directory" in bad.output


def test_config_text_and_labels_are_escaped(runs, tmp_path):
    a, _, _ = runs
    run = tmp_path / "run"
    shutil.copytree(a, run)
    cfg = run / rundir.CONFIG
    evil = '# <script>alert("x")</script> & </pre><img src=x onerror=alert(1)>\n'
    cfg.write_text(cfg.read_text() + evil)
    out = write_report([run], tmp_path / "r.html", labels=["<b>run & co</b>"])
    text = out.read_text()
    assert "<script>" not in text and "<img src=x" not in text and "<b>run" not in text
    assert ("# &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;/pre&gt;"
            "&lt;img src=x onerror=alert(1)&gt;") in text
    assert "&lt;b&gt;run &amp; co&lt;/b&gt;" in text


def _decode_png(data: bytes) -> np.ndarray:
    """Our own PNGs back to pixels (8-bit, filter 0, gray or RGB)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat, w, h, channels = 8, b"", 0, 0, 1
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        assert struct.unpack(">I", data[i + 8 + n:i + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            channels = {0: 1, 2: 3}[color]
        elif kind == b"IDAT":
            idat += body
        i += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * channels)
    assert (raw[:, 0] == 0).all()
    px = raw[:, 1:]
    return px.reshape(h, w, 3) if channels == 3 else px


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (7, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode_png(png_bytes(gray)), gray)
    np.testing.assert_array_equal(_decode_png(png_bytes(rgb)), rgb)


def test_digit_tiles_one_per_hidden_unit():
    rng = np.random.default_rng(1)
    W1 = rng.standard_normal((64, 100))
    tiles = weight_tiles(W1, (1, 8, 8))
    assert len(tiles) == 100 and all(t.shape == (8, 8) for t in tiles)
    np.testing.assert_array_equal(tiles[7], W1[:, 7].reshape(8, 8))   # row-major pixels
    img, cols, rows = tile_mosaic(tiles)
    assert (cols, rows) == (10, 10) and img.shape == (91, 91)
    # each tile is scaled to its own range: its darkest pixel 0, its brightest 255
    t = img[1 + 9 * 2:1 + 9 * 2 + 8, 1 + 9 * 3:1 + 9 * 3 + 8]       # tile 23
    assert t.min() == 0 and t.max() == 255
    assert np.array_equal(np.argsort(t.ravel(), kind="stable")[-1:],
                          np.argsort(W1[:, 23], kind="stable")[-1:])
    assert weight_tiles(W1, None) is None                  # not images: no tiles
    assert weight_tiles(rng.standard_normal((2, 100)), None) is None
    cifar = weight_tiles(rng.standard_normal((3 * 32 * 32, 5)), (3, 32, 32))
    assert len(cifar) == 5 and cifar[0].shape == (32, 32, 3)


def test_conv_filter_tiles():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((32, 1, 3, 3))
    tiles = weight_tiles(W, (1, 8, 8))
    assert len(tiles) == 32 and tiles[5].shape == (3, 3)
    np.testing.assert_array_equal(tiles[5], W[5, 0])
    rgb = weight_tiles(rng.standard_normal((6, 3, 5, 5)), (3, 32, 32))
    assert len(rgb) == 6 and rgb[0].shape == (5, 5, 3)
    img, cols, rows = tile_mosaic(rgb)
    assert img.shape == (2 * 6 + 1, 3 * 6 + 1, 3)


def test_conv_run_report(tmp_path):
    cfg = load_config({"name": "tinyconv", "data": {"source": "digits"},
                       "model": {"layers": [{"type": "conv", "filters": 6, "size": 3, "pad": 1},
                                            {"type": "relu"},
                                            {"type": "maxpool", "size": 2, "stride": 2},
                                            {"type": "affine"}]},
                       "train": {"iterations": 3, "train_eval_samples": 100}})
    run = train(cfg, out=tmp_path / "conv").run_dir
    text = write_report([run]).read_text()
    assert 'data-param="W1" data-tiles="6" data-tile="3x3"' in text
    assert "one tile per convolution filter" in text
    assert "6 × 1 × 3 × 3" in text and "1 × 8 × 8" in text      # W1 and the input shape


def test_report_without_data_or_classes(runs, tmp_path):
    a, _, _ = runs
    run = tmp_path / "lost"
    shutil.copytree(a, run)
    cfg = run / rundir.CONFIG
    cfg.write_text(cfg.read_text().replace("source: digits", "source: npz").replace(
        "path: null", "path: /nonexistent/digits.npz", 1))
    text = write_report([run]).read_text()
    assert "could not be loaded" in text and "No confusion matrix" in text
    assert text.count('<svg class="chart"') == 6               # the curves are still there
    # a regression run: no accuracy chart, no confusion matrix, not images
    reg = train(load_config(ROOT / "configs" / "regression.yaml", ["train.iterations=3"]),
                out=tmp_path / "reg").run_dir
    text = write_report([reg]).read_text()
    assert 'data-chart="accuracy"' not in text and 'data-chart="loss"' in text
    assert "a regression run" in text and "does not act on images" in text


def test_writing_the_report_is_cheap(runs):
    a, _, _ = runs
    write_report([a])
    best = min(_timed(lambda: write_report([a])) for _ in range(3))
    assert best < 1.0, best          # about 0.1 s for configs/mlp.yaml (README)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_svg_chart_handles_gaps_and_log_axes():
    curves = [html_report.Curve("x", "x", [(1, 1e-5), (2, None), (3, float("nan")),
                                           (4, 1e-2)], "#000")]
    svg = html_report.svg_chart(curves, chart="c", title="t", y_label="y", log_y=True)
    assert 'data-points="2"' in svg and svg.count("<circle") == 2
    assert "(log scale)" in svg
    empty = html_report.svg_chart([], chart="e", title="t", y_label="y")
    assert "no data" in empty
