"""Everything bptrain prints: the run header, live progress, evaluation lines, the loss chart,
summary and check tables. The engine and trainer never print; they call a reporter.

On a terminal: colors and a live progress bar. Otherwise (a pipe, CI, a file): plain lines,
one per evaluation. NO_COLOR is respected (rich reads it)."""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from bptrain.app.chart import Chart, Series, chart_grid, line_chart
from bptrain.formatting import fmt, format_value, pct  # noqa: F401  (re-exported)


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def error(console: Console, message: str, label: str = "error") -> None:
    # soft_wrap: the terminal wraps the paragraph itself; a log keeps paths and commands whole.
    console.print(Text(f"{label}: ", style="bold red") + Text(message), soft_wrap=True)


def network_table(layers: Sequence[Any], batch: int | None = None) -> Table:
    """The network, one row a layer: kind, output shape, parameters."""
    table = Table(title="network", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("layer")
    table.add_column("gate")
    table.add_column("in -> out", justify="right")
    table.add_column("params", justify="right")
    for layer in layers:
        shape_in, shape_out = ("x".join(map(str, s)) for s in (layer.in_shape, layer.out_shape))
        table.add_row(layer.name, layer.kind, f"{shape_in} -> {shape_out}",
                      f"{layer.params:,}" if layer.params else "")
    return table


def describe_optimizer(opt: Any) -> str:
    extra = {"sgd": f"momentum {opt.momentum:g}" if opt.momentum else "",
             "momentum": f"mu {opt.momentum:g}", "nesterov": f"mu {opt.momentum:g}",
             "rmsprop": f"decay {opt.decay_rate:g}",
             "adam": f"betas ({opt.beta1:g}, {opt.beta2:g})",
             "adamw": f"betas ({opt.beta1:g}, {opt.beta2:g}), weight decay {opt.weight_decay:g}",
             }[opt.type]
    return f"{opt.type} lr {opt.lr:g}" + (f", {extra}" if extra else "")


def describe_loss(loss: Any, reg: Any) -> str:
    what = {"softmax": "softmax cross-entropy", "svm": f"multiclass SVM (margin {loss.margin:g})",
            "mse": f"MSE ({loss.reduction} over the batch)"}[loss.type]
    if reg.type != "none" and reg.strength > 0:
        what += f" + {reg.type.upper()} {reg.strength:g}"
    return what


def evaluation_line(rec: dict[str, Any], epochs: int) -> Text:
    """One evaluation in under 80 columns: epoch, step, train and val loss/accuracy, lr."""
    line = Text(f"epoch {rec['epoch']:>{len(str(epochs))}}/{epochs} step {rec['step']:>5} ")
    line.append(f"train {fmt(rec['train_loss'])}")
    if rec.get("train_acc") is not None:
        line.append(f" {pct(rec['train_acc'])}")
    if rec.get("val_loss") is not None:
        line.append("  val ")
        line.append(fmt(rec["val_loss"]), style="cyan")
        if rec.get("val_acc") is not None:
            line.append(" ")
            line.append(pct(rec["val_acc"]), style="bold cyan")
    line.append(f"  lr {rec['lr']:.3g} {rec['seconds']:.1f}s", style="dim")
    return line


class RichReporter:
    """Training's console: header, progress bar (terminal only), evaluation lines, chart."""

    SMOOTH = 20  # the progress bar shows the mean of the last 20 minibatch losses

    def __init__(self, console: Console | None = None, quiet: bool = False,
                 progress: bool | None = None):
        self.console = console or make_console()
        self.quiet = quiet
        self.live = self.console.is_terminal if progress is None else progress
        self.progress: Progress | None = None
        self.recent: deque[float] = deque(maxlen=self.SMOOTH)
        self.epochs = 1

    def start(self, info: dict[str, Any]) -> None:
        self.epochs = info["epochs"]
        if self.quiet:
            return
        c = self.console
        resumed = f" (resumed at step {info['resumed_at']})" if info["resumed_at"] else ""
        c.print(Text(f"bptrain run -> {info['run_dir']}{resumed}", style="bold"))
        n_tr, *sample = info["train_shape"]
        d = "x".join(map(str, sample))
        classes = f", {info['num_classes']} classes" if info["num_classes"] else ""
        test = f", test {info['test_size']}" if info.get("test_size") else ""
        c.print(f"data   {info['data']}: train {n_tr} x {d}, val {info['val_shape'][0]}"
                f"{test}{classes}  ({info['dtype']})")
        for spec in info.get("user_code", []):
            c.print(Text(f"user code: {spec} was loaded and runs in this network",
                         style="yellow"))
        c.print(network_table(info["layers"]))
        c.print(f"params {info['num_params']:,}   loss {describe_loss(info['loss'], info['regularization'])}")
        c.print(f"optim  {describe_optimizer(info['optimizer'])}, schedule "
                f"{info['schedule'].type}; batch {info['batch_size']}, "
                f"{info['epochs']} epochs = {info['total_steps']} steps")
        if self.live:
            self.progress = Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TextColumn("batch loss (mean of last {task.fields[k]}): {task.fields[loss]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=c, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("training", total=info["total_steps"],
                                               completed=info["resumed_at"], loss="-",
                                               k=self.SMOOTH)

    def step(self, step: int, epoch: int, loss: float) -> None:
        if self.progress is not None:
            self.recent.append(loss)
            if step % 5 == 0 or len(self.recent) == 1:
                self.progress.update(self.task, completed=step,
                                     loss=fmt(sum(self.recent) / len(self.recent)),
                                     description=f"epoch {epoch + 1}/{self.epochs}")

    def evaluation(self, record: dict[str, Any]) -> None:
        if not self.quiet:
            self.console.print(evaluation_line(record, self.epochs))

    def end(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.close()
        if self.quiet:
            return
        c = self.console
        if len(history) >= 2:
            c.print(training_charts(history, c.width, use_markers(c)))
        c.print(summary_table(summary))
        stop = summary.get("early_stopping")
        if stop and stop.get("stopped"):
            c.print(Text(f"stopped early at epoch {stop['stopped_epoch']} ({stop['metric']} "
                         f"did not improve for {stop['patience']} evaluations); model.npz has "
                         f"the weights of epoch {stop['restored_epoch']}", style="yellow"))

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(Text("note: ", style="yellow") + Text(text))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def use_markers(console: Console) -> bool:
    """Tell lines apart by markers, not only colour: under NO_COLOR, in a pipe or a log."""
    return bool(console.no_color or console.color_system is None or not console.is_terminal)


def training_charts(history: Sequence[dict[str, Any]], width: int = 72,
                    markers: bool = False) -> Text:
    """The loss chart and, for classifiers, the accuracy chart beside it (stacked when the
    terminal is narrow), sized to `width` columns."""
    x = [r["epoch"] for r in history]
    val = any(r.get("val_loss") is not None for r in history)
    loss = [Series("train", x, [r["train_loss"] for r in history], "magenta")]
    if val:
        loss.append(Series("val", x, [r.get("val_loss") for r in history], "cyan"))
    charts = [Chart(loss, title="loss", y_label="loss")]
    if any(r.get("train_acc") is not None or r.get("val_acc") is not None for r in history):
        acc = [Series("train", x, [_percent(r.get("train_acc")) for r in history], "magenta")]
        if any(r.get("val_acc") is not None for r in history):
            acc.append(Series("val", x, [_percent(r.get("val_acc")) for r in history], "cyan"))
        charts.append(Chart(acc, title="accuracy", y_label="accuracy %", log_y=False))
    return chart_grid(charts, width=width, height=12, markers=markers)


def _percent(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def loss_chart(history: Sequence[dict[str, Any]], title: str | None = None) -> Text:
    """Train and validation loss against epochs, as a terminal chart."""
    x = [r["epoch"] for r in history]
    series = [Series("train", x, [r["train_loss"] for r in history], "magenta")]
    if any(r.get("val_loss") is not None for r in history):
        series.append(Series("val", x, [r["val_loss"] for r in history], "cyan"))
    return line_chart(series, title=title, x_label="epoch", y_label="loss")


def summary_table(summary: dict[str, Any]) -> Table:
    """Final and best: "best" is the evaluation the run's metric picked (summary's best_by:
    the highest val_acc, else the lowest val_loss, else the lowest train_loss), whose weights
    are best.npz; its other numbers (a train loss above the final one, say) are that
    evaluation's, not each metric's best, and the header says so."""
    final, best = summary.get("final") or {}, summary.get("best") or {}
    by = summary.get("best_by") or next((k for k in ("val_acc", "val_loss", "train_loss")
                                         if best.get(k) is not None), None)
    table = Table(title=f"summary: {summary['name']}", title_justify="left", show_edge=False)
    table.add_column("")
    table.add_column("final", justify="right")
    table.add_column(f"best (by {BEST_WORDS.get(by, by)})" if by else "best", justify="right")
    for key, show in (("train_loss", fmt), ("val_loss", fmt), ("train_acc", pct),
                      ("val_acc", pct), ("epoch", str)):
        if final.get(key) is not None or best.get(key) is not None:
            table.add_row(key, show(final.get(key)), show(best.get(key)))
    test = summary.get("test")
    if test:  # evaluated once at the end, with the final and the best weights
        tf, tb = test.get("final") or {}, test.get("best") or {}
        table.add_row(f"test_loss (n={test['n']})", fmt(tf.get("loss")), fmt(tb.get("loss")))
        if tf.get("accuracy") is not None:
            table.add_row("test_acc", pct(tf.get("accuracy")), pct(tb.get("accuracy")))
    table.caption = (f"{summary['steps']} steps, {summary['seconds']:.2f}s, "
                     f"{summary['num_params']:,} parameters" +
                     (f"; best: epoch {best.get('epoch')}, the "
                      f"{'highest' if by.endswith('_acc') else 'lowest'} {BEST_WORDS.get(by, by)}"
                      " (best.npz)" if by and best else ""))
    return table


def confusion_table(matrix: Any, title: str = "confusion matrix (rows: true, cols: predicted)"
                    ) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("")
    k = len(matrix)
    for j in range(k):
        table.add_column(str(j), justify="right")
    for i in range(k):
        cells = [Text(str(int(v)), style="bold green" if i == j and v else
                      ("red" if v else "dim")) for j, v in enumerate(matrix[i])]
        table.add_row(str(i), *cells)
    return table


def per_class_table(metrics: dict[str, Any]) -> Table:
    """Precision, recall, F1 and support per class (runs.per_class_metrics), then the macro
    and weighted means."""
    table = Table(title="per class", title_justify="left", show_edge=False, pad_edge=False)
    named = any("name" in r for r in metrics["per_class"])
    table.add_column("class")
    if named:
        table.add_column("name")
    for col in ("precision", "recall", "f1", "support"):
        table.add_column(col, justify="right")
    rows = metrics["per_class"]
    for i, r in enumerate(rows):
        table.add_row(str(r["class"]), *([r["name"]] if named else []), pct(r["precision"]),
                      pct(r["recall"]), pct(r["f1"]), str(r["support"]),
                      end_section=i == len(rows) - 1)
    support = sum(r["support"] for r in rows)
    for label in ("macro", "weighted"):
        m = metrics[label]
        table.add_row(Text(label, style="bold"), *([""] if named else []), pct(m["precision"]),
                      pct(m["recall"]), pct(m["f1"]), str(support))
    return table


# ---- tables that fit the terminal ---------------------------------------------------------
def _natural_width(table: Table) -> int:
    """The width a table takes when nothing limits it."""
    import io

    from rich.measure import Measurement
    console = Console(width=100_000, file=io.StringIO(), color_system=None)
    return Measurement.get(console, console.options, table).maximum


def fit_table(columns: Sequence[dict[str, Any]], rows: Sequence[Sequence[Any]],
              width: int | None, **table_kw: Any) -> Table:
    """A table whose every row stays one line at `width` columns (rows are never wrapped
    onto a second line, so they never look doubled):

    1. as it is, when it fits;
    2. else compact: no vertical rules, two spaces between columns;
    3. else without the optional columns, dropped in order of their `drop` rank (the `flex`
       column, if it has a rank, is first tried shortened to what is left, with an ellipsis);
    4. else the `flex` column is shortened to what is left, with an ellipsis.

    columns: {"header", "justify", "style", "drop" (rank, or None: always kept), "flex"}."""
    def build(dropped: set[int], compact: bool, flex_max: int | None = None) -> Table:
        kw = dict(table_kw)
        if compact:
            kw.update(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      collapse_padding=True)
        table = Table(**kw)
        for i, c in enumerate(columns):
            if i in dropped:
                continue
            table.add_column(c["header"], justify=c.get("justify", "left"),
                             style=c.get("style"), no_wrap=True, overflow="ellipsis",
                             max_width=flex_max if c.get("flex") else None)
        for r in rows:
            table.add_row(*[cell for i, cell in enumerate(r) if i not in dropped])
        return table

    table = build(set(), False)
    if width is None or _natural_width(table) <= width:
        return table
    flex = next((i for i, c in enumerate(columns) if c.get("flex")), None)

    def shrunk(dropped: set[int], least: int) -> Table | None:
        """The table with the flex column cut to what is left (at least `least` wide)."""
        if flex is None or flex in dropped:
            return None
        t = build(dropped, True)
        excess = _natural_width(t) - width
        if excess <= 0:
            return t
        natural = max([Text(str(columns[flex]["header"])).cell_len]
                      + [Text(r[flex]).cell_len if isinstance(r[flex], str) else
                         r[flex].cell_len for r in rows])
        if natural - excess < least:
            return None
        return build(dropped, True, natural - excess)

    dropped: set[int] = set()
    table = build(dropped, True)
    order = sorted((c["drop"], i) for i, c in enumerate(columns) if c.get("drop") is not None)
    for _, i in order:
        if _natural_width(table) <= width:
            return table
        if i == flex:  # before dropping the flex column, try it shortened
            cut = shrunk(dropped, 12)
            if cut is not None:
                return cut
        dropped.add(i)
        table = build(dropped, True)
    return shrunk(dropped, 1) or table


STATUS_STYLE = {"pass": "bold green", "kink": "bold yellow", "fail": "bold red"}


def gradcheck_table(results: Sequence[Any], title: str, width: int | None = None) -> Table:
    """One row per checked array: shape, entries, max relative error, kinks, status; at
    `width` columns (the terminal's), fitted as `fit_table` says (kinks, then entries go
    first)."""
    columns = [{"header": "check", "flex": True}, {"header": "shape", "justify": "right"},
               {"header": "entries", "justify": "right", "drop": 2},
               {"header": "max rel error", "justify": "right"},
               {"header": "kinks", "justify": "right",
                "drop": 0 if not any(r.kinks for r in results) else 3},
               {"header": "status"}]
    rows = []
    for r in results:
        err = Text(f"{r.max_rel_error:.2e}", style="red" if r.status == "fail" else
                   ("green" if r.max_rel_error < 1e-7 else "yellow"))
        rows.append([r.name, "x".join(map(str, r.shape)) or "scalar", str(r.checked), err,
                     str(r.kinks) if r.kinks else "",
                     Text(r.status, style=STATUS_STYLE[r.status])])
    return fit_table(columns, rows, width, title=title, title_justify="left",
                     show_edge=False, pad_edge=False)


def gradcheck_verdict(results: Sequence[Any]) -> Text:
    failed = [r for r in results if r.status == "fail"]
    kinks = sum(r.kinks for r in results)
    entries = sum(r.checked for r in results)
    note = f" ({kinks} entries crossed a kink and were not counted)" if kinks else ""
    if failed:
        names = ", ".join(r.name for r in failed[:5]) + (" ..." if len(failed) > 5 else "")
        why = "".join(f"\n  {r.name}: {r.worst['error']}" for r in failed
                      if r.worst.get("error"))  # a crash or a wrong shape: say which
        return Text(f"FAIL: {len(failed)} of {len(results)} checks failed: {names}. Their "
                    f"backward disagrees with the numerical gradient{note}.{why}",
                    style="bold red")
    worst = max((r.max_rel_error for r in results), default=0.0)
    return Text(f"PASS: {len(results)} checks, {entries} entries, max relative error "
                f"{worst:.1e}{note}.", style="bold green")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


TRACE_ROWS = 100  # rows of each trace table shown from each end (all of them in --json)


def _few(items: Sequence[Any], skipped_row) -> Any:
    """The first and last TRACE_ROWS items; in between, `skipped_row(n)` adds one row that
    says how many were left out (a 20,000-term expression prints in a second, not minutes)."""
    items = list(items)
    if len(items) <= 2 * TRACE_ROWS + 1:
        yield from items
        return
    yield from items[:TRACE_ROWS]
    skipped_row(len(items) - 2 * TRACE_ROWS)
    yield from items[-TRACE_ROWS:]


def trace_report(t: Any, width: int | None = None) -> list[Any]:
    """`bptrain trace`: (a) forward values, (b) backward steps, (c) gradients; the backward
    table fitted to `width` columns (the terminal's) as `fit_table` says."""
    values = ", ".join(f"{k} = {_num(v)}" for k, v in list(t.values.items())[:TRACE_ROWS])
    if len(t.values) > TRACE_ROWS:
        values += f", ... ({len(t.values) - TRACE_ROWS:,} more)"
    expression = (t.expression if len(t.expression) <= 400 else
                  f"{t.expression[:200]} ... {t.expression[-100:]} ({len(t.expression):,} "
                  "characters)")
    out: list[Any] = [Text(f"f = {expression}   at {values}", style="bold")]
    # Each title is a line of its own: a table's title wraps at the table's width, which
    # split "(c) gradients of f =" from the value on narrow tables.
    out.append(Text("(a) forward, in topological order", style="italic"))
    fwd = Table(show_edge=False, pad_edge=False)
    for col in ("node", "gate", "inputs", "value"):
        fwd.add_column(col, justify="right" if col == "value" else "left")
    for n in _few(t.nodes, lambda skipped: fwd.add_row(f"... {skipped:,} more", "", "", "")):
        fwd.add_row(n["name"], n["gate"], ", ".join(n["inputs"]), _num(n["value"]))
    out.append(fwd)
    out.append(Text("(b) backward, in reverse order: downstream = local x upstream",
                    style="italic"))
    columns = [{"header": "gate", "flex": True}, {"header": "pattern", "drop": 0}]
    columns += [{"header": c, "justify": "right" if c != "to input" else "left"}
                for c in ("upstream", "to input", "local", "downstream")]
    rows: list[list[Any]] = []
    for s in _few(t.steps, lambda skipped: rows.append([f"... {skipped:,} more", "", "", "",
                                                        "", ""])):
        for i, row in enumerate(s.inputs):
            first = i == 0
            rows.append([f"{s.node} ({s.gate})" if first else "", (s.pattern or "") if first
                         else "", _num(s.upstream) if first else "", row["name"],
                         _num(row["local"]), _num(row["downstream"])])
    out.append(fit_table(columns, rows, width, show_edge=False, pad_edge=False))
    for c in t.copies:
        parts = " + ".join(_num(p["gradient"]) for p in c["contributions"][:TRACE_ROWS])
        if len(c["contributions"]) > TRACE_ROWS:
            parts += f" + ... ({len(c['contributions']) - TRACE_ROWS:,} more)"
        out.append(Text(f"copy (adder): {c['variable']} is used {len(c['contributions'])} "
                        f"times, so its gradients add: {parts} = {_num(c['total'])}"))
    out.append(Text(f"(c) gradients of f = {_num(t.output)}", style="italic"))
    grads = Table(show_edge=False, pad_edge=False)
    grads.add_column("variable")
    grads.add_column("df/dvariable", justify="right")
    if t.numerical:
        grads.add_column("numerical", justify="right")
        grads.add_column("rel error", justify="right")
    for name in _few(list(t.gradients), lambda skipped: grads.add_row(f"... {skipped:,} more",
                                                                      "")):
        g = t.gradients[name]
        row = [name, _num(g)]
        if t.numerical:
            n = t.numerical[name]
            note = " (kink)" if n["kink"] else ""
            row += [_num(n["numeric"]), Text(f"{n['rel_error']:.1e}{note}",
                                             style="green" if n["rel_error"] < 1e-6 or n["kink"]
                                             else "red")]
        grads.add_row(*row)
    out.append(grads)
    return out


def graph_table(s: Any, title: str, width: int | None = None) -> list[Any]:
    """`bptrain show`: one row a node, then totals; at `width` columns (the terminal's),
    fitted as `fit_table` says (MACs, then params go first: the totals line has both)."""
    columns = [{"header": "node"}, {"header": "gate"}, {"header": "inputs", "flex": True},
               {"header": "shape", "justify": "right"},
               {"header": "params", "justify": "right", "drop": 1},
               {"header": "MACs", "justify": "right", "drop": 0},
               {"header": "note", "drop": 2}]
    rows = []
    for r in s.rows:
        note = f"copy -> {', '.join(r.consumers)}" if len(r.consumers) > 1 else ""
        rows.append([r.name, r.gate, ", ".join(r.inputs),
                     "x".join(map(str, r.shape)) or "scalar",
                     f"{r.params:,}" if r.params else "", f"{r.macs:,}" if r.macs else "",
                     note])
    table = fit_table(columns, rows, width, title=title, title_justify="left",
                      show_edge=False, pad_edge=False)
    fans_out = any(len(r.consumers) > 1 for r in s.rows)
    totals = Text(("copy: a value used by several gates; their gradients add up in backward.\n"
                   if fans_out else "") + f"parameters {s.params:,}   forward multiply-adds per batch of {s.batch}: "
                  f"{s.macs:,}   cached activations: {s.cached_bytes:,} bytes "
                  f"({s.cached_bytes / 2**20:.2f} MiB)")
    return [table, totals]


# ---- bptrain sweep ------------------------------------------------------------------------
SWEEP_STATUS_STYLE = {"queued": "dim", "submitted": "dim", "running": "cyan", "done": "green",
                      "failed": "bold red", "interrupted": "yellow"}


def plural(n: int, word: str) -> str:
    """1 trial, 2 trials, 1 worker process, 3 worker processes."""
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}{'es' if word.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


def sweep_metric(value: Any, metric: str) -> str:
    """A sweep metric: accuracies in percent, losses as numbers."""
    if value is None:
        return "-"
    return pct(value) if metric.endswith("_acc") else fmt(value)


def short_reason(reason: str | None, width: int = 90) -> str:
    """A failure reason's first sentence, cut to `width` characters."""
    if not reason:
        return ""
    text = reason.split(" (last finite loss")[0].split(". ")[0].rstrip(".")
    return text if len(text) <= width else text[:width - 1] + "…"


def _settings_cells(row: dict[str, Any], names: dict[str, str]) -> list[str]:
    return [format_value(row["settings"].get(k)) for k in names]


def sweep_table(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                progress: dict[str, Any] | None = None, max_rows: int | None = None) -> Table:
    """The live table: one row a trial (status, settings, metric so far, epoch, note)."""
    progress = progress or {}
    names, metric = info["axes"], info["metric"]
    table = Table(title=f"sweep {info['name']} -> {info['dir']}/", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("trial")
    table.add_column("status")
    for short in names.values():
        table.add_column(short, justify="right")
    table.add_column(metric, justify="right")
    table.add_column("epoch", justify="right")
    table.add_column("note", overflow="ellipsis", no_wrap=True, max_width=60)
    shown = list(rows)
    hidden = 0
    if max_rows is not None and len(shown) > max_rows:
        order = {"running": 0, "done": 1, "failed": 2, "interrupted": 3}
        sign = -1 if info["goal"] == "maximize" else 1
        shown.sort(key=lambda r: (order.get(r["status"], 4),
                                  sign * r["metric"] if r["metric"] is not None else 0,
                                  r["index"]))
        hidden = len(shown) - max_rows
        shown = sorted(shown[:max_rows], key=lambda r: r["index"])
    for r in shown:
        p = progress.get(r["trial"])
        status, value, epoch = r["status"], r["metric"], r["epoch"]
        if status == "running" and p:
            value = p.get("metric")
            epoch = f"{p['epoch']}/{p['epochs']}" if p.get("epochs") else p.get("epoch")
        label = "done (kept)" if r.get("reused") else status
        table.add_row(_short_id(r), Text(label, style=SWEEP_STATUS_STYLE.get(status, "")),
                      *_settings_cells(r, names), sweep_metric(value, metric),
                      "" if epoch is None else str(epoch), short_reason(r.get("reason")))
    counts = {s: sum(r["status"] == s for r in rows) for s in SWEEP_STATUS_STYLE}
    best = _best_row(rows, info["goal"])
    caption = (f"{counts['done']}/{len(rows)} done, {counts['running']} running, "
               f"{counts['failed']} failed")
    if hidden:
        caption += f", {hidden} not shown"
    if best:
        caption += f"; best {_short_id(best)} {sweep_metric(best['metric'], metric)}"
    table.caption = caption
    return table


def _best_row(rows: Sequence[dict[str, Any]], goal: str) -> dict[str, Any] | None:
    done = [r for r in rows if r["status"] == "done" and r["metric"] is not None]
    if not done:
        return None
    sign = -1 if goal == "maximize" else 1
    return min(done, key=lambda r: (sign * r["metric"], r["index"]))


def _secs(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def sweep_leaderboard(records: Sequence[dict[str, Any]], info: dict[str, Any]) -> list[Any]:
    """Finished trials best first (then the others), and each failure's reason."""
    names, metric, goal = info["axes"], info["metric"], info["goal"]
    sign = -1 if goal == "maximize" else 1
    done = sorted((r for r in records if r["status"] == "done"),
                  key=lambda r: (sign * r["metric"], r["index"]))
    other = [r for r in records if r["status"] != "done"]
    better = "higher" if goal == "maximize" else "lower"
    table = Table(title=f"leaderboard: {info['name']} by {metric} ({better} is better)",
                  title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("trial", no_wrap=True)
    for short in names.values():
        table.add_column(short, justify="right")
    table.add_column(metric, justify="right")
    # The test split is shown beside the ranking metric and never ranks: it chose nothing.
    test = ("test_acc" if any(r.get("test_acc") is not None for r in done) else
            "test_loss" if any(r.get("test_loss") is not None for r in done) else None)
    if test:
        table.add_column(f"{test} (not ranked)", justify="right")
    table.add_column("epoch", justify="right")
    table.add_column("seconds", justify="right")
    for rank, r in enumerate(done, 1):
        table.add_row(str(rank), Text(_short_id(r), style="bold green" if rank == 1 else ""),
                      *_settings_cells(r, names), sweep_metric(r["metric"], metric),
                      *([sweep_metric(r.get(test), test)] if test else []),
                      str(r["epoch"] or ""), _secs(r.get("seconds")) +
                      (" (kept)" if r.get("reused") else ""))
    for r in other:
        table.add_row("-", _short_id(r), *_settings_cells(r, names),
                      Text(r["status"], style=SWEEP_STATUS_STYLE.get(r["status"], "")),
                      *([""] if test else []), "", "")
    out: list[Any] = [table]
    for r in other:
        if r.get("reason"):
            out.append(Text(f"{_short_id(r)} {r['status']}: ", style=SWEEP_STATUS_STYLE.get(
                r["status"], "")) + Text(short_reason(r["reason"], 160)))
    return out


def _short_id(row: dict[str, Any]) -> str:
    """t003 of t003-lr0.1-strength1e-4: the settings have their own columns."""
    return row["trial"].split("-")[0]


def sweep_line(row: dict[str, Any], n: int, total: int, metric: str) -> Text:
    """One finished trial as a plain line (logs, CI, pipes): the n-th of `total` to run."""
    line = Text(f"[{n:>{len(str(total))}}/{total}] {row['trial']} ")
    status = row["status"]
    line.append(status, style=SWEEP_STATUS_STYLE.get(status, ""))
    if status == "done":
        line.append(f"  {metric} {sweep_metric(row['metric'], metric)} "
                    f"(epoch {row['epoch']}, {_secs(row.get('seconds'))}s)")
    elif row.get("reason"):
        line.append(f": {short_reason(row['reason'])}")
    return line


class SweepReporter:
    """The sweep's console: a live table on a terminal, plain lines otherwise; then the
    leaderboard and where the results are."""

    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console or make_console()
        self.use_live = self.console.is_terminal if live is None else live
        self.live: Any = None
        self.info: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.progress: dict[str, Any] = {}
        self.finished = 0

    def _render(self) -> Table:
        return sweep_table(self.rows, self.info, self.progress,
                           max_rows=max(self.console.height - 8, 5))

    def start(self, info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        from rich.live import Live
        self.info, self.rows = info, rows
        c = self.console
        kind = "local Ray CPU" if info["backend"] == "ray" else "worker process"
        where = (f"the Ray cluster at {info['address']}" if info.get("address") else
                 plural(info["workers"], kind))
        c.print(Text(f"bptrain sweep {info['name']} -> {info['dir']}/", style="bold"))
        goal = "higher" if info["goal"] == "maximize" else "lower"
        c.print(f"{plural(info['trials'], 'trial')}, {info['to_run']} to run on {where}; metric "
                f"{info['metric']} ({goal} is better)")
        if info["reused"]:
            c.print(f"{plural(info['reused'], 'trial')} already finished with the same config: "
                    "kept, not trained again")
        if info["invalid"]:
            c.print(Text(f"{plural(info['invalid'], 'trial')} "
                         f"{'has' if info['invalid'] == 1 else 'have'} an invalid setting and "
                         f"{'is' if info['invalid'] == 1 else 'are'} recorded as failed",
                         style="yellow"))
        if self.use_live and info["to_run"]:
            self.live = Live(self._render(), console=c, refresh_per_second=4, transient=True)
            self.live.start()

    def update(self, rows: list[dict[str, Any]], progress: dict[str, Any]) -> None:
        self.rows, self.progress = rows, progress
        if self.live is not None:
            self.live.update(self._render())

    def trial_finished(self, row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        if self.live is not None:
            self.live.update(self._render())
        else:
            self.finished += 1
            self.console.print(sweep_line(row, self.finished, self.info["to_run"],
                                          self.info["metric"]))

    def message(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(Text("note: ", style="yellow") + Text(text))
        else:
            self.console.print(Text("note: ", style="yellow") + Text(text))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def end(self, info: dict[str, Any], records: list[dict[str, Any]], result: Any) -> None:
        self.close()
        c = self.console
        for part in sweep_leaderboard(records, info):
            c.print(part)
        ran = [r for r in records if r["status"] in ("done", "failed") and not r.get("reused")
               and r.get("seconds") is not None]
        busy = sum(r["seconds"] for r in ran)
        if ran:
            unit = "Ray CPU" if result.backend == "ray" else "worker"
            c.print(f"wall {result.wall_seconds:.1f}s for {plural(len(ran), 'trial')} on "
                    f"{plural(result.workers, unit)}; "
                    f"{'its' if len(ran) == 1 else 'their'} training time adds up to {busy:.1f}s"
                    + (f" ({busy / result.wall_seconds:.1f}x the wall time)"
                       if busy >= result.wall_seconds > 0 else ""))
        elif not info["to_run"]:
            c.print("nothing to train: every valid trial had already finished")
        if result.best:
            b = result.best
            c.print(Text(f"best: {b['trial']}  {info['metric']} "
                         f"{sweep_metric(b['metric'], info['metric'])} (epoch {b['epoch']}) -> "
                         f"{info['dir']}/best.yaml", style="bold green"))
            key = "test_acc" if b.get("test_acc") is not None else "test_loss"
            if b.get(key) is not None:
                c.print(f"its test split ({b.get('test_n')} samples, {b.get('test_weights')} "
                        f"weights, not used to choose): {key} {sweep_metric(b[key], key)}")


# ---- diagnostics, runs, compare, sanity ---------------------------------------------------
def _ratio_style(r: float | None) -> str:
    """update/weight ratio: about 1e-3 is healthy (CS231n); far off is red."""
    if r is None:
        return "dim"
    if r > 1e-1 or r < 1e-5:
        return "bold red"
    return "green" if 1e-4 <= r <= 1e-2 else "yellow"


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def diagnostics_table(record: dict[str, Any]) -> Table:
    """One evaluation's per-layer diagnostics (bptrain run --diagnostics)."""
    table = Table(title=f"diagnostics at epoch {record.get('epoch')}", title_justify="left",
                  show_edge=False, pad_edge=False, title_style="dim")
    for col, j in (("layer", "left"), ("act", "left"), ("|grad W|", "right"),
                   ("|W|", "right"), ("update/|W|", "right"), ("dead/sat", "right"),
                   ("", "left")):
        table.add_column(col, justify=j)
    flagged = {w["layer"] for w in record.get("warnings") or ()}
    for name, d in (record.get("diagnostics") or {}).items():
        frac = d.get("dead", d.get("saturated"))
        frac_cell = (Text("-", style="dim") if frac is None else
                     Text(f"{frac:.0%}" + (" dead" if "dead" in d else " sat"),
                          style="bold red" if frac > 0.5 else ("yellow" if frac > 0.1 else "")))
        note = "identical units" if d.get("identical") else ""
        table.add_row(Text(name, style="bold red" if name in flagged else ""),
                      d.get("activation") or "", _sci(d.get("grad_norm")),
                      _sci(d.get("weight_norm")),
                      Text(_sci(d.get("update_ratio")), style=_ratio_style(d.get("update_ratio"))),
                      frac_cell, Text(note, style="bold red"))
    return table


class DiagnosticsReporter(RichReporter):
    """`bptrain run --diagnostics`: the usual console plus a per-layer table at each
    evaluation."""

    def evaluation(self, record: dict[str, Any]) -> None:
        super().evaluation(record)
        if not self.quiet and record.get("diagnostics"):
            self.console.print(diagnostics_table(record))


from rich import box  # noqa: E402  (bptrain runs / compare / sanity)
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402


def _group_warnings(items: Sequence[str]) -> str:
    """["exploding (fc1)", "exploding (scores)"] -> "exploding: fc1, scores"."""
    kinds: dict[str, list[str]] = {}
    for item in items:
        kind, _, layer = item.partition(" (")
        kinds.setdefault(kind, []).append(layer.rstrip(")"))
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items())


BEST_WORDS = {"val_acc": "val acc", "val_loss": "val loss", "train_loss": "train loss"}


def best_text(m: dict[str, Any]) -> str:
    """The best evaluation's number and the metric that picked it: "98.06% val acc"."""
    by, value = m.get("best_by"), m.get("best_value")
    if by is None or value is None:
        return "-"
    return f"{pct(value) if by.endswith('_acc') else fmt(value)} {BEST_WORDS.get(by, by)}"


def runs_table(runs: Sequence[Any], root: str, width: int | None = None) -> Table:
    """`bptrain runs`: one row per run directory, oldest first: date (month-day hour:minute
    of the end, or of the last file written), the best evaluation and the metric that picked
    it; a damaged run is marked so, its problem in the caption. At `width` columns (the
    terminal's) the table is fitted as `fit_table` says (config, then warnings go first)."""
    columns = [{"header": "run"}, {"header": "date"}, {"header": "config", "drop": 0},
               {"header": "network", "flex": True, "drop": 2},
               {"header": "epochs", "justify": "right"},
               {"header": "best", "justify": "right"},
               {"header": "warnings", "style": "red", "drop": 1}]
    rows, damaged = [], []
    for r in runs:
        date = r.date[5:16] if len(r.date) >= 16 else r.date  # "12-01 08:48"
        if getattr(r, "problem", None):
            damaged.append(f"{r.name} ({r.problem})")
            rows.append([r.name, date, "-", "-", Text("damaged", style="bold red"),
                         Text("-", style="dim"), ""])
            continue
        m = r.metrics()
        total = f"/{r.total_epochs}" if r.total_epochs else ""
        epochs = (Text(str(m["epochs"])) if r.finished else
                  Text(f"{m['epochs']}{total} unfinished", style="yellow"))
        kinds = sorted({w.split(" (")[0] for w in m["warnings"]})
        best = best_text(m)
        rows.append([r.name, date, Path(r.source).name if r.source else "-",
                     describe_network(r.config), epochs,
                     Text(best, style="bold cyan" if best != "-" else "dim"), ", ".join(kinds)])
    table = fit_table(columns, rows, width, title=f"runs in {root}/", title_justify="left",
                      show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD)
    if not runs:
        table.caption = "no runs yet: bptrain run CONFIG writes one"
    elif damaged:
        table.caption = ("damaged (listed, not read): " + "; ".join(damaged))
        table.caption_justify = "left"
    return table


def describe_network(config: dict[str, Any]) -> str:
    """A config in a few words: hidden sizes, activation, loss, optimizer and rate."""
    def section(key: str) -> dict[str, Any]:
        v = config.get(key) if isinstance(config, dict) else None
        return v if isinstance(v, dict) else {}
    model, loss, opt = section("model"), section("loss"), section("optimizer")
    if not (model or loss or opt):
        return "-"
    if isinstance(model.get("layers"), list) and model["layers"]:
        units = [str(l.get("units") or "out") for l in model["layers"]
                 if isinstance(l, dict) and l.get("type") == "affine"]
        net = "layers " + "-".join(units)
    else:
        hidden = model.get("hidden")
        net = ("-".join(map(str, hidden)) if isinstance(hidden, list) else str(hidden))
        net += f" {model.get('activation', '')}"
    return f"{net} {loss.get('type', '?')} {opt.get('type', '?')} {_show_setting(opt.get('lr'))}"


def _show_setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return str(v)


def compare_report(runs: Sequence[Any], labels: Sequence[str], width: int = 72,
                   markers: bool = False) -> list[Any]:
    """`bptrain compare`: settings that differ, final and best metrics, overlaid loss curves."""
    from bptrain.training.runs import differing_settings
    out: list[Any] = []
    diff = differing_settings(list(runs))
    settings = Table(title="settings that differ", title_justify="left", show_edge=False,
                     pad_edge=False)
    settings.add_column("key")
    for label in labels:
        settings.add_column(label, justify="right")
    for key, values in diff:
        settings.add_row(key, *[_show_setting(v) for v in values])
    if not diff:
        settings.caption = "the configs are identical"
    out.append(settings)

    metrics = [r.metrics() for r in runs]
    table = Table(title="metrics", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")

    def row(name: str, key: str, show, better: str | None = None, extra=None) -> None:
        vals = [m.get(key) for m in metrics]
        if all(v is None for v in vals):
            return
        known = [v for v in vals if v is not None]
        best = (max(known) if better == "max" else min(known)) if better and len(known) > 1 \
            else None
        cells = []
        for m, v in zip(metrics, vals):
            text = show(v) + (extra(m) if extra and v is not None else "")
            cells.append(Text(text, style="bold green" if best is not None and v == best
                              else ""))
        table.add_row(name, *cells)

    table.add_row("status", *[Text("finished" if r.finished else "unfinished",
                                   style="" if r.finished else "yellow") for r in runs])
    row("epochs", "epochs", str)
    row("final train loss", "final_train_loss", fmt, "min")
    row("final val loss", "final_val_loss", fmt, "min")
    row("final train acc", "final_train_acc", pct, "max")
    row("final val acc", "final_val_acc", pct, "max")
    # "best": the one evaluation each run's metric picked (rundir.best_by), as in training,
    # summary.json and best.npz; the row says which metric, and the other numbers are "at" it.
    bys = {m["best_by"] for m in metrics if m.get("best_by")}
    if len(bys) == 1:
        (by,) = bys
        show = pct if by.endswith("_acc") else fmt
        row(f"best {BEST_WORDS.get(by, by)}", "best_value", show,
            "max" if by.endswith("_acc") else "min", lambda m: f" (ep {m['best_epoch']})")
        if by == "val_acc":
            row("val loss at best", "best_loss", fmt)
    elif bys:  # runs picked by different metrics: no common "best" to rank
        table.add_row("best (metric)", *[Text(best_text(m)) for m in metrics])
    row("seconds", "seconds", lambda v: f"{v:.1f}")
    table.add_row("warnings", *[Text(_group_warnings(m["warnings"]) or "none",
                                     style="red" if m["warnings"] else "dim")
                                for m in metrics])
    out.append(table)

    series = []
    kinds = set()
    for label, r in zip(labels, runs):
        kind, x, y = r.curve()
        kinds.add(kind)
        series.append(Series(f"{label} ({kind})", x, y))
    what = " / ".join(sorted(kinds, reverse=True)) if kinds else "loss"
    charts = [Chart(series, title=f"{what} loss per run", y_label="loss")]
    if any(r.get("val_acc") is not None for run in runs for r in run.history):
        acc = [Series(label, [r["epoch"] for r in run.history],
                      [_percent(r.get("val_acc")) for r in run.history])
               for label, run in zip(labels, runs)]
        charts.append(Chart(acc, title="val accuracy per run", y_label="accuracy %",
                            log_y=False))
    out.append(chart_grid(charts, width=width, height=14, markers=markers))
    return out


SANITY_STYLE = {"pass": "bold green", "fail": "bold red", "skip": "dim"}


def sanity_report(checks: Sequence[Any], title: str) -> list[Any]:
    """`bptrain sanity`: one line per check (status, name, measured vs expected), the sentence
    on what it means under it, and a verdict."""
    out: list[Any] = [Text(title, style="bold")]
    for c in checks:
        line = Text(f"{c.status.upper():4} ", style=SANITY_STYLE[c.status])
        line.append(c.name, style="bold")
        if c.measured:
            line.append(f"  {c.measured}")
        out.append(line)
        out.append(Text(textwrap.fill(c.meaning, width=80, initial_indent=" " * 5,
                                      subsequent_indent=" " * 5)))
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        out.append(Text(f"FAIL: {len(failed)} of {len(checks)} checks failed: "
                        f"{', '.join(c.name for c in failed)}.", style="bold red"))
    else:
        ran = sum(c.status == "pass" for c in checks)
        out.append(Text(f"PASS: {ran} checks passed" + (
            f" ({len(checks) - ran} skipped)" if ran < len(checks) else "") + ".",
            style="bold green"))
    return out
