"""The examples run as a user runs them: a fresh process, from another folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_python_api_example_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("BPTRAIN_DEBUG", None)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"),
                           str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "RunResult(" in out and "TrainedRun(" in out and "test accuracy" in out
    assert (tmp_path / "run" / "summary.json").is_file()
