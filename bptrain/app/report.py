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

from bptrain.app.chart import Series, line_chart
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
        c.print(f"data   {info['data']}: train {n_tr} x {d}, val {info['val_shape'][0]}"
                f"{classes}  ({info['dtype']})")
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
            c.print(loss_chart(history))
        c.print(summary_table(summary))

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(Text("note: ", style="yellow") + Text(text))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def loss_chart(history: Sequence[dict[str, Any]], title: str | None = None) -> Text:
    """Train and validation loss against epochs, as a terminal chart."""
    x = [r["epoch"] for r in history]
    series = [Series("train", x, [r["train_loss"] for r in history], "magenta")]
    if any(r.get("val_loss") is not None for r in history):
        series.append(Series("val", x, [r["val_loss"] for r in history], "cyan"))
    return line_chart(series, title=title, x_label="epoch", y_label="loss")


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"summary: {summary['name']}", title_justify="left", show_edge=False)
    table.add_column("")
    table.add_column("final", justify="right")
    table.add_column("best", justify="right")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    for key, show in (("train_loss", fmt), ("val_loss", fmt), ("train_acc", pct),
                      ("val_acc", pct), ("epoch", str)):
        if final.get(key) is not None or best.get(key) is not None:
            table.add_row(key, show(final.get(key)), show(best.get(key)))
    table.caption = (f"{summary['steps']} steps, {summary['seconds']:.2f}s, "
                     f"{summary['num_params']:,} parameters")
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


STATUS_STYLE = {"pass": "bold green", "kink": "bold yellow", "fail": "bold red"}


def gradcheck_table(results: Sequence[Any], title: str) -> Table:
    """One row per checked array: shape, entries, max relative error, kinks, status."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col, justify in (("check", "left"), ("shape", "right"), ("entries", "right"),
                         ("max rel error", "right"), ("kinks", "right"), ("status", "left")):
        table.add_column(col, justify=justify)
    for r in results:
        err = Text(f"{r.max_rel_error:.2e}", style="red" if r.status == "fail" else
                   ("green" if r.max_rel_error < 1e-7 else "yellow"))
        table.add_row(r.name, "x".join(map(str, r.shape)) or "scalar", str(r.checked), err,
                      str(r.kinks) if r.kinks else "", Text(r.status, style=STATUS_STYLE[r.status]))
    return table


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


def trace_report(t: Any) -> list[Any]:
    """`bptrain trace`: (a) forward values, (b) backward steps, (c) gradients."""
    values = ", ".join(f"{k} = {_num(v)}" for k, v in t.values.items())
    out: list[Any] = [Text(f"f = {t.expression}   at {values}", style="bold")]
    # Each title is a line of its own: a table's title wraps at the table's width, which
    # split "(c) gradients of f =" from the value on narrow tables.
    out.append(Text("(a) forward, in topological order", style="italic"))
    fwd = Table(show_edge=False, pad_edge=False)
    for col in ("node", "gate", "inputs", "value"):
        fwd.add_column(col, justify="right" if col == "value" else "left")
    for n in t.nodes:
        fwd.add_row(n["name"], n["gate"], ", ".join(n["inputs"]), _num(n["value"]))
    out.append(fwd)
    out.append(Text("(b) backward, in reverse order: downstream = local x upstream",
                    style="italic"))
    back = Table(show_edge=False, pad_edge=False)
    for col in ("gate", "pattern", "upstream", "to input", "local", "downstream"):
        back.add_column(col, justify="right" if col in ("upstream", "local", "downstream")
                        else "left")
    for s in t.steps:
        for i, row in enumerate(s.inputs):
            first = i == 0
            back.add_row(f"{s.node} ({s.gate})" if first else "", (s.pattern or "") if first
                         else "", _num(s.upstream) if first else "", row["name"],
                         _num(row["local"]), _num(row["downstream"]))
    out.append(back)
    for c in t.copies:
        parts = " + ".join(_num(p["gradient"]) for p in c["contributions"])
        out.append(Text(f"copy (adder): {c['variable']} is used {len(c['contributions'])} "
                        f"times, so its gradients add: {parts} = {_num(c['total'])}"))
    out.append(Text(f"(c) gradients of f = {_num(t.output)}", style="italic"))
    grads = Table(show_edge=False, pad_edge=False)
    grads.add_column("variable")
    grads.add_column("df/dvariable", justify="right")
    if t.numerical:
        grads.add_column("numerical", justify="right")
        grads.add_column("rel error", justify="right")
    for name, g in t.gradients.items():
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


def graph_table(s: Any, title: str) -> list[Any]:
    """`bptrain show`: one row a node, then totals."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col, j in (("node", "left"), ("gate", "left"), ("inputs", "left"), ("shape", "right"),
                   ("params", "right"), ("MACs", "right"), ("note", "left")):
        table.add_column(col, justify=j)
    for r in s.rows:
        note = f"copy -> {', '.join(r.consumers)}" if len(r.consumers) > 1 else ""
        table.add_row(r.name, r.gate, ", ".join(r.inputs),
                      "x".join(map(str, r.shape)) or "scalar",
                      f"{r.params:,}" if r.params else "", f"{r.macs:,}" if r.macs else "",
                      note)
    fans_out = any(len(r.consumers) > 1 for r in s.rows)
    totals = Text(("copy: a value used by several gates; their gradients add up in backward.\n"
                   if fans_out else "") + f"parameters {s.params:,}   forward multiply-adds per batch of {s.batch}: "
                  f"{s.macs:,}   cached activations: {s.cached_bytes:,} bytes "
                  f"({s.cached_bytes / 2**20:.2f} MiB)")
    return [table, totals]


# ---- bptrain sweep ------------------------------------------------------------------------
SWEEP_STATUS_STYLE = {"queued": "dim", "submitted": "dim", "running": "cyan", "done": "green",
                      "failed": "bold red", "interrupted": "yellow"}


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
    table.add_column("epoch", justify="right")
    table.add_column("seconds", justify="right")
    for rank, r in enumerate(done, 1):
        table.add_row(str(rank), Text(_short_id(r), style="bold green" if rank == 1 else ""),
                      *_settings_cells(r, names), sweep_metric(r["metric"], metric),
                      str(r["epoch"] or ""), _secs(r.get("seconds")) +
                      (" (kept)" if r.get("reused") else ""))
    for r in other:
        table.add_row("-", _short_id(r), *_settings_cells(r, names),
                      Text(r["status"], style=SWEEP_STATUS_STYLE.get(r["status"], "")), "", "")
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
                 f"{info['workers']} {kind}{'es' if kind.endswith('s') else 's'}"
                 if info["workers"] != 1 else f"1 {kind}")
        c.print(Text(f"bptrain sweep {info['name']} -> {info['dir']}/", style="bold"))
        goal = "higher" if info["goal"] == "maximize" else "lower"
        c.print(f"{info['trials']} trials, {info['to_run']} to run on {where}; metric "
                f"{info['metric']} ({goal} is better)")
        if info["reused"]:
            c.print(f"{info['reused']} trials already finished with the same config: kept, "
                    "not trained again")
        if info["invalid"]:
            c.print(Text(f"{info['invalid']} trials have an invalid setting and are recorded "
                         "as failed", style="yellow"))
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
            unit = "Ray CPUs" if result.backend == "ray" else "workers"
            c.print(f"wall {result.wall_seconds:.1f}s for {len(ran)} trials on {result.workers} "
                    f"{unit}; their training time adds up to {busy:.1f}s"
                    + (f" ({busy / result.wall_seconds:.1f}x the wall time)"
                       if busy >= result.wall_seconds > 0 else ""))
        elif not info["to_run"]:
            c.print("nothing to train: every valid trial had already finished")
        if result.best:
            b = result.best
            c.print(Text(f"best: {b['trial']}  {info['metric']} "
                         f"{sweep_metric(b['metric'], info['metric'])} (epoch {b['epoch']}) -> "
                         f"{info['dir']}/best.yaml", style="bold green"))


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


def _best_val(m: dict[str, Any]) -> Text:
    if m["best_val_acc"] is not None:
        return Text(pct(m["best_val_acc"]), style="bold cyan")
    if m["best_loss"] is not None:
        return Text(f"loss {fmt(m['best_loss'])}" + ("" if m["best_loss_kind"] == "val"
                                                    else " (train)"))
    return Text("-", style="dim")


def runs_table(runs: Sequence[Any], root: str) -> Table:
    """`bptrain runs`: one row per run directory, oldest first."""
    table = Table(title=f"runs in {root}/", title_justify="left", show_edge=False,
                  pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    table.add_column("date (m-d)", no_wrap=True)
    table.add_column("config")
    table.add_column("network")
    table.add_column("epochs", justify="right")
    table.add_column("best val", justify="right", no_wrap=True)
    table.add_column("warnings", style="red")
    for r in runs:
        m = r.metrics()
        total = f"/{r.total_epochs}" if r.total_epochs else ""
        epochs = (Text(str(m["epochs"])) if r.finished else
                  Text(f"{m['epochs']}{total} unfinished", style="yellow"))
        kinds = sorted({w.split(" (")[0] for w in m["warnings"]})
        table.add_row(r.name, r.date[5:] if len(r.date) == 16 else r.date,
                      Path(r.source).name if r.source else "-", describe_network(r.config),
                      epochs, _best_val(m), ", ".join(kinds))
    if not runs:
        table.caption = "no runs yet: bptrain run CONFIG writes one"
    return table


def describe_network(config: dict[str, Any]) -> str:
    """A config in a few words: hidden sizes, activation, loss, optimizer and rate."""
    model, loss = config.get("model") or {}, config.get("loss") or {}
    opt = config.get("optimizer") or {}
    if model.get("layers"):
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


def compare_report(runs: Sequence[Any], labels: Sequence[str]) -> list[Any]:
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
    row("best val acc", "best_val_acc", pct, "max",
        lambda m: f" (ep {m['best_val_acc_epoch']})")
    kinds = {m["best_loss_kind"] for m in metrics if m["best_loss"] is not None}
    row("best val loss" if kinds == {"val"} else "best loss", "best_loss", fmt, "min",
        lambda m: (f" (ep {m['best_loss_epoch']})" if kinds == {"val"} else
                   f" ({m['best_loss_kind']}, ep {m['best_loss_epoch']})"))
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
    out.append(line_chart(series, title=f"{what} loss per run", x_label="epoch",
                          y_label="loss"))
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
