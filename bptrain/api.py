"""The top-level Python API, for scripts and notebooks: the one module that may join the
training layer with the app layer (training never imports the app).

    import bptrain
    result = bptrain.train("configs/mlp.yaml", progress=True)   # rich progress, as `bptrain run`
    run = bptrain.load_run(result.run_dir)                      # best weights
    run.predict(X_raw)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bptrain.training.predict import TrainedRun, load_run  # noqa: F401  (re-exported)
from bptrain.training.trainer import RunResult, train as _train


def train(cfg: Any, *, progress: bool = False, out: str | Path | None = None,
          reporter: Any = None, resume: str | Path | None = None,
          runs_root: str | Path = "runs", quiet: bool = False) -> RunResult:
    """Run what `bptrain run` runs and return its RunResult (run_dir, metrics, summary,
    history). progress=True shows what `bptrain run` shows (header, a live progress bar, an
    evaluation line per epoch, the summary), in a terminal or a Jupyter notebook; the default
    is silent. A `reporter` of your own takes precedence."""
    if reporter is not None or not progress:
        return _train(cfg, out=out, reporter=reporter, resume=resume, runs_root=runs_root)
    from bptrain.app.report import RichReporter
    reporter = RichReporter(quiet=quiet, progress=True)
    try:
        return _train(cfg, out=out, reporter=reporter, resume=resume, runs_root=runs_root)
    finally:
        reporter.close()
