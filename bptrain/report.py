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

from bptrain.chart import Series, line_chart


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def fmt(x: Any, digits: int = 4) -> str:
    """A metric for humans: '-' for missing, short floats."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"
    return str(x)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def error(console: Console, message: str, label: str = "error") -> None:
    console.print(Text(f"{label}: ", style="bold red") + Text(message))


def network_table(layers: Sequence[Any], batch: int | None = None) -> Table:
    """The network, one row a layer: kind, output shape, parameters."""
    table = Table(title="network", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("layer")
    table.add_column("gate")
    table.add_column("in -> out", justify="right")
    table.add_column("params", justify="right")
    for layer in layers:
        table.add_row(layer.name, layer.kind, f"{layer.in_dim} -> {layer.out_dim}",
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
        n_tr, d = info["train_shape"]
        classes = f", {info['num_classes']} classes" if info["num_classes"] else ""
        c.print(f"data   {info['data']}: train {n_tr} x {d}, val {info['val_shape'][0]}"
                f"{classes}  ({info['dtype']})")
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


def loss_chart(history: Sequence[dict[str, Any]], title: str = "loss") -> Text:
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
        return Text(f"FAIL: {len(failed)} of {len(results)} checks failed: {names}. Their "
                    f"backward disagrees with the numerical gradient{note}.", style="bold red")
    worst = max((r.max_rel_error for r in results), default=0.0)
    return Text(f"PASS: {len(results)} checks, {entries} entries, max relative error "
                f"{worst:.1e}{note}.", style="bold green")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def trace_report(t: Any) -> list[Any]:
    """`bptrain trace`: (a) forward values, (b) backward steps, (c) gradients."""
    values = ", ".join(f"{k} = {_num(v)}" for k, v in t.values.items())
    out: list[Any] = [Text(f"f = {t.expression}   at {values}", style="bold")]
    fwd = Table(title="(a) forward, in topological order", title_justify="left",
                show_edge=False, pad_edge=False)
    for col in ("node", "gate", "inputs", "value"):
        fwd.add_column(col, justify="right" if col == "value" else "left")
    for n in t.nodes:
        fwd.add_row(n["name"], n["gate"], ", ".join(n["inputs"]), _num(n["value"]))
    out.append(fwd)
    back = Table(title="(b) backward, in reverse order: downstream = local x upstream",
                 title_justify="left", show_edge=False, pad_edge=False)
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
    grads = Table(title=f"(c) gradients of f = {_num(t.output)}", title_justify="left",
                  show_edge=False, pad_edge=False)
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
                   ("params", "right"), ("note", "left")):
        table.add_column(col, justify=j)
    for r in s.rows:
        note = f"copy -> {', '.join(r.consumers)}" if len(r.consumers) > 1 else ""
        table.add_row(r.name, r.gate, ", ".join(r.inputs),
                      "x".join(map(str, r.shape)) or "scalar",
                      f"{r.params:,}" if r.params else "", note)
    totals = Text("copy: a value used by several gates; their gradients add up in backward.\n"
                  f"parameters {s.params:,}   forward multiply-adds per batch of {s.batch}: "
                  f"{s.macs:,}   cached activations: {s.cached_bytes:,} bytes "
                  f"({s.cached_bytes / 2**20:.2f} MiB)")
    return [table, totals]
