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

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="bptrain: train neural networks declared in YAML with a readable "
                       "graph-of-gates backprop engine.")
_state = {"debug": False}

SET_HELP = "Override a config key, e.g. --set optimizer.lr=0.05 (repeatable)."


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug or bool(os.environ.get("BPTRAIN_DEBUG"))


class Weights(str, Enum):
    model = "model"
    final = "final"
    best = "best"


class GraphFormat(str, Enum):
    table = "table"
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
    error(make_console(stderr=True), str(exc),
          "stopped" if exc.exit_code == EXIT_INTERRUPTED else "error")
    return exc.exit_code


def command(*args, **kwargs):
    """`app.command`, with the command run inside the one error boundary."""
    def register(fn):
        @functools.wraps(fn)
        def guarded(*a, **k):
            try:
                return fn(*a, **k)
            except (BptrainError, MemoryError) as e:
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
        ) -> None:
    """Train the network a config declares; outputs land in runs/<name>/."""
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
    cfg = load_config(config, set_) if config is not None else None
    if print_config:
        if cfg is None:
            cfg = load_config(resume / "config.yaml")
        typer.echo(dump_config(cfg), nl=False)
        return
    if diagnostics:
        from bptrain.app.report import DiagnosticsReporter as RichReporter  # noqa: F811
    reporter = RichReporter(quiet=quiet)
    try:
        train(cfg, out=out, reporter=reporter, resume=resume)
    finally:
        reporter.close()


@command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/mlp."),
          data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this .npz/.csv instead of the run's validation split."),
          weights: Weights = typer.Option(Weights.model, "--weights", help="model (final) or best."),
          ) -> None:
    """Reload a run and report loss, accuracy and a confusion matrix."""
    from bptrain.app.report import confusion_table, fmt, make_console, pct
    from bptrain.training.runs import evaluate_run
    ev = evaluate_run(run_dir, str(data) if data else None, weights.value)
    console = make_console()
    from bptrain.training.rundir import WEIGHTS
    console.print(f"{run_dir} ({WEIGHTS[weights.value]}) on {ev.name}: {ev.n} samples")
    console.print(f"loss {fmt(ev.loss)}" + (f"   accuracy {pct(ev.accuracy)}"
                                             if ev.accuracy is not None else ""))
    if ev.confusion is not None:
        console.print(confusion_table(ev.confusion))


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
        cfg = load_config(config if config is not None else {}, set_)
        label = str(config) if config is not None else "default config"
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
            console.print(gradcheck_table(rs, title))
        console.print(gradcheck_verdict(results))
    if failed:
        raise typer.Exit(EXIT_FAILED)


@command()
def trace(expression: str = typer.Argument(..., help='A scalar expression, e.g. "(x + y) * z".'),
          values: List[str] = typer.Argument(None, help="Variable values: x=-2 y=5 z=-4."),
          check: bool = typer.Option(False, "--check", help="Put the numerical gradient beside each analytic one."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
          ) -> None:
    """Watch backprop on an expression: forward values, each gate's backward step, gradients."""
    import json
    from bptrain.app.report import make_console, trace_report
    from bptrain.app.trace import parse_assignments, trace as run_trace
    result = run_trace(expression, parse_assignments(values or []), check=check)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
    else:
        console = make_console()
        for part in trace_report(result):
            console.print(part)


@command()
def show(config: Path = typer.Argument(..., help="The YAML config whose graph to show."),
         set_: List[str] = typer.Option([], "--set", help=SET_HELP),
         fmt: GraphFormat = typer.Option(GraphFormat.table, "--format", help="table or dot (Graphviz)."),
         ) -> None:
    """Show the graph of gates a config builds: shapes, parameters, fan-out, costs."""
    from bptrain.net.config import load_config
    from bptrain.app.report import graph_table, make_console
    from bptrain.net.summary import show_config, to_dot
    cfg = load_config(config, set_)
    summary = show_config(cfg)
    if fmt is GraphFormat.dot:
        typer.echo(to_dot(summary, cfg.name), nl=False)
    else:
        console = make_console()
        for part in graph_table(summary, f"graph of {config} (batch {summary.batch})"):
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
        make_console().print(runs_table(found, str(dir_).rstrip("/")))


@command()
def compare(run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories, e.g. runs/mlp runs/mlp-2."),
            ) -> None:
    """Put runs side by side: settings that differ, final and best metrics, loss curves."""
    from bptrain.app.report import compare_report, make_console
    from bptrain.training.runs import read_run, run_labels
    if len(run_dirs) < 2:
        raise BptrainError("compare needs two or more run directories, e.g. bptrain compare "
                           "runs/mlp runs/mlp-2 (bptrain runs lists them).")
    labels = run_labels(run_dirs)
    found = [read_run(d, label) for d, label in zip(run_dirs, labels)]
    console = make_console()
    for part in compare_report(found, labels):
        console.print(part)


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
    cfg = load_config(config, set_)
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
