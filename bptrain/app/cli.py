"""The command line: thin typer commands that parse, delegate, and turn errors into messages.

Heavy modules (numpy and everything that uses it) are imported inside the commands, so
`bptrain --help` stays fast."""
from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from bptrain.errors import BptrainError  # light: no NumPy

# add_completion: --install-completion and --show-completion (bash, zsh, fish, PowerShell).
app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="bptrain: train neural networks declared in YAML with a readable "
                       "graph-of-gates backprop engine.")
_state = {"debug": False}

SET_HELP = "Override a config key, e.g. --set optimizer.lr=0.05 (repeatable)."


def _print_version(value: bool) -> None:
    if value:
        from bptrain import __version__
        typer.echo(f"bptrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
          version: bool = typer.Option(False, "--version", callback=_print_version,
                                       is_eager=True, help="Print the version and exit."),
          ):
    _state["debug"] = debug or bool(os.environ.get("BPTRAIN_DEBUG"))


class Weights(str, Enum):
    model = "model"
    final = "final"
    best = "best"


class Split(str, Enum):
    val = "val"
    test = "test"
    train = "train"


class GraphFormat(str, Enum):
    table = "table"
    dot = "dot"


class TraceFormat(str, Enum):
    text = "text"
    json = "json"
    svg = "svg"
    html = "html"
    dot = "dot"


class Backend(str, Enum):
    local = "local"
    ray = "ray"


def _report_error(exc: BaseException) -> int:
    """The one error boundary: a BptrainError (or running out of memory) becomes one paragraph
    on stderr and its exit code; anything else is a bug and keeps its traceback."""
    from bptrain.app.report import error, make_console
    from bptrain.errors import EXIT_INTERRUPTED
    if isinstance(exc, MemoryError):
        exc = BptrainError("out of memory building or training the network: the layers, batch "
                           "or data are too large for this machine; reduce model.hidden, "
                           "train.batch_size or the data.")
    elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C outside training's own handling
        exc = BptrainError("interrupted (Ctrl-C) before anything was saved; nothing already "
                           "written was changed. Run the command again to start over.")
        exc.exit_code = EXIT_INTERRUPTED
    elif isinstance(exc, OSError):  # the file system: a full or read-only disk, a bad path
        from bptrain.training.rundir import describe_os_error
        exc = BptrainError(describe_os_error(exc))
    error(make_console(stderr=True), str(exc),
          "stopped" if exc.exit_code == EXIT_INTERRUPTED else "error")
    return exc.exit_code


def _emit(text: str, out: Optional[Path], what: str) -> bool:
    """Print `text`, or write it to `out` (atomically); True when it went to a file."""
    if out is None:
        typer.echo(text, nl=False)
        return False
    from bptrain.training.rundir import write_text
    try:
        write_text(out, text)
    except OSError as e:
        raise BptrainError(f"{out}: cannot write {what} ({e}).") from None
    return True


def command(*args, **kwargs):
    """`app.command`, with the command run inside the one error boundary."""
    def register(fn):
        @functools.wraps(fn)
        def guarded(*a, **k):
            try:
                return fn(*a, **k)
            except (BptrainError, MemoryError, OSError, KeyboardInterrupt) as e:
                if _state["debug"]:
                    raise
                raise typer.Exit(_report_error(e)) from None
        return app.command(*args, **kwargs)(guarded)
    return register


@command()
def run(config: Optional[Path] = typer.Argument(None, help="The YAML config to train."),
        set_: List[str] = typer.Option([], "--set", help=SET_HELP),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its checkpoint."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
        diagnostics: bool = typer.Option(False, "--diagnostics", help="Print per-layer gradient/weight norms, update ratios and dead or saturated units at each evaluation (always saved in metrics.jsonl)."),
        tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard event files to <run>/tensorboard/ (same as --set train.tensorboard=true; needs bptrain[tensorboard])."),
        ) -> None:
    """Train the network a config declares; outputs land in runs/<name>/ (report.html too)."""
    from bptrain.errors import EXIT_USAGE
    from bptrain.net.config import dump_config, load_config
    from bptrain.app.report import RichReporter
    from bptrain.training.trainer import train
    if resume is None and config is None:
        raise BptrainError("give a config to train (bptrain run configs/mlp.yaml) or a run "
                           "to continue (bptrain run --resume runs/NAME).")
    if resume is not None and (config is not None or set_):
        raise BptrainError("--resume continues a run exactly as it was configured; drop the "
                           "config and --set arguments (the run's config.yaml is used).")
    if tensorboard and resume is not None:
        raise BptrainError("--tensorboard applies to a new run; a resumed run writes event "
                           "files when its config.yaml has train.tensorboard: true.")
    if tensorboard:
        set_ = [*set_, "train.tensorboard=true"]
    cfg = load_config(config, set_) if config is not None else None
    if print_config:
        if cfg is None:
            from bptrain.training.rundir import CONFIG
            cfg = load_config(resume / CONFIG)
        typer.echo(dump_config(cfg), nl=False)
        return
    if diagnostics:
        from bptrain.app.report import DiagnosticsReporter as RichReporter  # noqa: F811
    reporter = RichReporter(quiet=quiet)
    try:
        result = train(cfg, out=out, reporter=reporter, resume=resume)
    finally:
        reporter.close()
    _write_run_report(result.run_dir, reporter)


def _write_run_report(run_dir: Path, reporter) -> None:
    """report.html into the run directory, after training (a failure here is a note: the
    run itself is saved)."""
    import time
    from bptrain.app.html_report import write_report
    started = time.perf_counter()
    try:
        path = write_report([run_dir])
    except (BptrainError, OSError) as e:
        reporter.message(f"the run is saved, but its report.html could not be written: {e}")
        return
    if not reporter.quiet:
        reporter.console.print(f"report {path} ({time.perf_counter() - started:.2f}s)")


@command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/mlp."),
          data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this .npz/.csv instead of the run's validation split."),
          weights: Weights = typer.Option(Weights.model, "--weights", help="model (final) or best."),
          split: Optional[Split] = typer.Option(None, "--split", help="Only this split: val, test or train (default: the validation split, then the test split if the run has one)."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
          ) -> None:
    """Reload a run and report loss, accuracy, a confusion matrix and per-class precision,
    recall and F1."""
    import json
    from bptrain.app.report import confusion_table, fmt, make_console, pct, per_class_table
    from bptrain.training.rundir import WEIGHTS
    from bptrain.training.runs import evaluate_splits
    if data is not None and split is not None:
        raise BptrainError("--data evaluates a file, --split one of the run's splits; give one.")
    evs = evaluate_splits(run_dir, str(data) if data else None, weights.value,
                          split.value if split else None)
    if as_json:
        typer.echo(json.dumps({"run": str(run_dir), "weights": WEIGHTS[weights.value],
                               "evaluations": [ev.to_dict() for ev in evs]}, indent=1))
        return
    console = make_console()
    for i, ev in enumerate(evs):
        if i:
            console.print()
        console.print(f"{run_dir} ({WEIGHTS[weights.value]}) on {ev.name}: {ev.n} samples")
        console.print(f"loss {fmt(ev.loss)}" + (f"   accuracy {pct(ev.accuracy)}"
                                                 if ev.accuracy is not None else ""))
        if ev.confusion is not None and 6 + 6 * len(ev.confusion) <= console.width:
            console.print(confusion_table(ev.confusion))
            console.print(per_class_table(ev.per_class()))
        elif ev.confusion is not None:  # wider than the terminal: say where it is
            console.print(f"({len(ev.confusion)} classes: the confusion matrix and per-class "
                          "metrics are too wide for this terminal; --json has them)")
        elif ev.accuracy is not None:
            console.print("(more classes than a confusion matrix is counted for)")


@command()
def predict(run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/mlp."),
            data: Path = typer.Option(..., "--data", help="Inputs without labels: .npz (X), .npy, .csv (a header row; the run's label column is dropped if present), IDX images, a CIFAR-10 batch."),
            weights: Weights = typer.Option(Weights.best, "--weights", help="best (default) or final."),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the predictions to this file (default: standard output)."),
            as_json: bool = typer.Option(False, "--json", help="JSON (a list, one object a row) instead of CSV."),
            ) -> None:
    """Predict on new data with a trained run: the class (and its probabilities, or the
    scores) of every row, with the run's preprocessing applied."""
    import json
    from bptrain.training.predict import (load_run, prediction_table, read_inputs, table_csv,
                                          table_records)
    run = load_run(run_dir, weights.value)
    X = read_inputs(data, run)
    header, rows = prediction_table(run, X)
    text = (json.dumps(table_records(header, rows), indent=1) + "\n" if as_json
            else table_csv(header, rows))
    if _emit(text, out, "the predictions"):
        from bptrain.app.report import make_console
        make_console(stderr=True).print(f"{len(rows)} predictions ({run.weights}) -> {out}")


@command()
def gradcheck(config: Optional[Path] = typer.Argument(None, help="Check this config's network (default: every library gate and the default config's network)."),
              set_: List[str] = typer.Option([], "--set", help=SET_HELP),
              gate: Optional[str] = typer.Option(None, "--gate", help="Check your own gate: package.module:ClassName or file.py:ClassName."),
              samples: int = typer.Option(100, "--samples", min=1, help="Entries checked per large array (small ones fully)."),
              h: float = typer.Option(1e-5, "--h", min=1e-12, help="Step of the centered differences."),
              seed: int = typer.Option(0, "--seed", help="Seed for inputs and sampled entries."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
              ) -> None:
    """Compare every backward pass with numerical gradients (float64, centered differences)."""
    from bptrain.errors import EXIT_FAILED
    import json
    from bptrain.app.report import gradcheck_table, gradcheck_verdict, make_console
    from bptrain.engine import gradcheck as gc
    from bptrain.net import checks
    from bptrain.net.usercode import load_gate_class
    sections = []
    if gate is not None:
        cls = load_gate_class(gate)
        sections.append((f"gate {cls.__name__}", checks.check_user_gate(cls, seed, h)))
    if config is not None or set_:
        from bptrain.net.config import load_config
        from bptrain.net.config import located
        cfg = load_config(config if config is not None else {}, set_)
        label = str(config) if config is not None else "default config"
        with located(cfg):
            sections.append((f"network of {label} (float64)",
                             checks.check_config(cfg, samples=samples, h=h, seed=seed)))
    if gate is None and config is None and not set_:
        sections.append(("library gates", gc.check_library(seed, h)))
        sections.append(("network of the default config (float64)",
                         checks.check_config({}, samples=samples, h=h, seed=seed)))
    results = [r for _, rs in sections for r in rs]
    failed = sum(r.status == "fail" for r in results)
    if as_json:
        typer.echo(json.dumps({"checks": [dict(r.to_dict(), section=s) for s, rs in sections
                                          for r in rs],
                               "summary": {"checks": len(results), "failed": failed,
                                           "kinks": sum(r.kinks for r in results),
                                           "passed": failed == 0}}, indent=1))
    else:
        console = make_console()
        for title, rs in sections:
            console.print(gradcheck_table(rs, title, console.width))
        console.print(gradcheck_verdict(results))
    if failed:
        raise typer.Exit(EXIT_FAILED)


@command()
def trace(expression: str = typer.Argument(..., help='An expression, e.g. "(x + y) * z" or "W @ x".'),
          values: List[str] = typer.Argument(None, help="Variable values: x=-2 y=5 z=-4, or vectors and matrices: W=[[1,2],[3,4]] x=[1,-1]."),
          check: bool = typer.Option(False, "--check", help="Put the numerical gradient beside each analytic one."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts (same as --format json)."),
          fmt: Optional[TraceFormat] = typer.Option(None, "--format", help="text (default), json, svg (the lecture's figure), html (the figure and a backward stepper) or dot (Graphviz)."),
          output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
          ) -> None:
    """Watch backprop on an expression: forward values, each gate's backward step, gradients."""
    import json
    from bptrain.app.report import make_console, trace_report
    from bptrain.app.trace import parse_assignments, trace as run_trace
    if as_json and fmt not in (None, TraceFormat.json):
        raise BptrainError(f"--json and --format {fmt.value} ask for two formats; give one.")
    fmt = TraceFormat.json if as_json else (fmt or TraceFormat.text)
    result = run_trace(expression, parse_assignments(values or []), check=check)
    if fmt is TraceFormat.text:
        from bptrain.app.tensors import TensorTrace, tensor_report
        parts = (tensor_report(result) if isinstance(result, TensorTrace) else
                 trace_report(result, make_console().width if output is None else 160))
        if output is None:
            console = make_console()
            for part in parts:
                console.print(part)
            return
        import io
        from rich.console import Console
        buffer = io.StringIO()
        console = Console(file=buffer, width=160, highlight=False, no_color=True)
        for part in parts:
            console.print(part)
        text = buffer.getvalue()
    elif fmt is TraceFormat.json:
        text = json.dumps(result.to_dict(), indent=1) + "\n"
    else:
        from bptrain.app import figure
        text = {TraceFormat.svg: figure.to_svg, TraceFormat.html: figure.to_html,
                TraceFormat.dot: figure.to_dot}[fmt](result)
    _emit(text, output, "the trace")


@command()
def show(config: Path = typer.Argument(..., help="The YAML config whose graph to show."),
         set_: List[str] = typer.Option([], "--set", help=SET_HELP),
         fmt: GraphFormat = typer.Option(GraphFormat.table, "--format", help="table or dot (Graphviz)."),
         ) -> None:
    """Show the graph of gates a config builds: shapes, parameters, fan-out, costs."""
    from bptrain.net.config import load_config
    from bptrain.app.report import graph_table, make_console
    from bptrain.net.config import located
    from bptrain.net.summary import show_config, to_dot
    cfg = load_config(config, set_)
    with located(cfg):
        summary = show_config(cfg)  # the network's size is checked before it is built
    if fmt is GraphFormat.dot:
        typer.echo(to_dot(summary, cfg.name), nl=False)
    else:
        console = make_console()
        for part in graph_table(summary, f"graph of {config} (batch {summary.batch})",
                                console.width):
            console.print(part)


@command()
def sweep(sweep_file: Path = typer.Argument(..., help="The sweep YAML: a base config and the axes to vary."),
          workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Trials at once (default: one per core)."),
          backend: Backend = typer.Option(Backend.local, "--backend", help="local (worker processes) or ray."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray: join the cluster at HOST:PORT (default: start a local Ray instance)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="List the trials and exit."),
          ) -> None:
    """Tune hyperparameters: train every trial of a sweep in parallel, rank them by a metric."""
    from bptrain.app.report import make_console
    from bptrain.training.sweep import load_sweep, plan, run_sweep
    if address and backend is not Backend.ray:
        raise BptrainError("--address joins a Ray cluster; add --backend ray.")
    sw = load_sweep(sweep_file)
    if dry_run:
        for t in plan(sw):
            typer.echo(t.id + (f"  invalid: {t.error}" if t.error else ""))
        return
    from bptrain.app.report import SweepReporter
    run_sweep(sw, workers=workers, backend=backend.value, address=address,
              reporter=SweepReporter())


@command()
def runs(dir_: Path = typer.Option(Path("runs"), "--dir", help="The folder holding the runs."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
         ) -> None:
    """List the runs: name, date, config, epochs, best validation accuracy, warnings."""
    import json
    from bptrain.app.report import make_console, runs_table
    from bptrain.training.runs import list_runs
    found = list_runs(dir_)
    if as_json:
        typer.echo(json.dumps([{"run": r.name, "path": str(r.path), "date": r.date,
                                "config": r.source, "finished": r.finished,
                                **r.metrics()} for r in found], indent=1))
    else:
        console = make_console()
        console.print(runs_table(found, str(dir_).rstrip("/"), console.width))


@command()
def compare(run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories, e.g. runs/mlp runs/mlp-2."),
            ) -> None:
    """Put runs side by side: settings that differ, final and best metrics, loss curves."""
    from bptrain.app.report import compare_report, make_console, use_markers
    from bptrain.training.runs import read_run, run_labels
    if len(run_dirs) < 2:
        raise BptrainError("compare needs two or more run directories, e.g. bptrain compare "
                           "runs/mlp runs/mlp-2 (bptrain runs lists them).")
    labels = run_labels(run_dirs)
    found = [read_run(d, label) for d, label in zip(run_dirs, labels)]
    console = make_console()
    for part in compare_report(found, labels, console.width, use_markers(console)):
        console.print(part)


@command()
def report(run_dirs: List[Path] = typer.Argument(..., help="One or more run directories, e.g. runs/mlp (several: overlaid)."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="The HTML file (default RUN_DIR/report.html for one run, ./report.html for several)."),
           ) -> None:
    """Write a self-contained HTML page: curves, gradient flow, warnings, confusion matrix,
    network, first-layer weights, config (no scripts, no network needed to view it)."""
    from bptrain.app.html_report import write_report
    path = write_report(run_dirs, output)
    typer.echo(f"wrote {path}")


@command()
def sanity(config: Path = typer.Argument(..., help="The YAML config to check before a long run."),
           set_: List[str] = typer.Option([], "--set", help=SET_HELP),
           samples: int = typer.Option(50, "--samples", min=2, help="Size of the subset to overfit."),
           steps: int = typer.Option(1000, "--steps", min=1, help="Most steps the overfit check may take."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
           ) -> None:
    """The course's sanity checks: initial loss at chance, regularization raises the loss, and
    the network can overfit a tiny subset. Exit 0 if all pass, 1 if any fails."""
    from bptrain.errors import EXIT_FAILED
    import json
    from bptrain.net.config import load_config
    from bptrain.app.report import make_console, sanity_report
    from bptrain.training.sanity import run_sanity
    from bptrain.net.config import located
    cfg = load_config(config, set_)
    with located(cfg):
        checks = run_sanity(cfg, samples=samples, max_steps=steps)
    if as_json:
        typer.echo(json.dumps({"checks": [c.to_dict() for c in checks],
                               "passed": all(c.passed for c in checks)}, indent=1))
    else:
        console = make_console()
        for part in sanity_report(checks, f"sanity checks of {config}"):
            console.print(part)
    if not all(c.passed for c in checks):
        raise typer.Exit(EXIT_FAILED)


class ExportWeights(str, Enum):
    best = "best"
    final = "final"


@command()
def export(run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/mlp."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="The ONNX file to write (default RUN_DIR/model.onnx)."),
           weights: ExportWeights = typer.Option(ExportWeights.best, "--weights", help="best (default) or final."),
           ) -> None:
    """Write a trained run as an ONNX file: raw (N, D) rows in, the run's standardization
    inside, scores (and softmax probabilities) out. Needs pip install 'bptrain[onnx]'."""
    from bptrain.training.export import export_run
    path, run = export_run(run_dir, out, weights.value)
    outputs = "scores, probabilities" if run.config.loss.type == "softmax" else "scores"
    typer.echo(f"wrote {path} ({run.weights}; input X: (N, {run.input_dim}) raw rows in "
               f"{run.model.dtype}; outputs: {outputs})")


@command()
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the schema to this file instead of printing it."),
           ) -> None:
    """Print the JSON Schema (draft 2020-12) of the config, from the gate registry: editors
    with a YAML language server check and complete configs with it, e.g. by a first line
    `# yaml-language-server: $schema=../bptrain.schema.json`."""
    import json
    from bptrain.net.schema import config_schema
    text = json.dumps(config_schema(), indent=2) + "\n"
    if _emit(text, out, "the schema"):
        typer.echo(f"wrote {out}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # before a command started (or a second Ctrl-C after it ended)
        print("stopped: interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
