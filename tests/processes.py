"""`bptrain ARGS` as a separate OS process: forked children of the test process (cheap, for
whole matrices of cases) or a fresh `python -m bptrain` interpreter. Used by the fault tests
(tests/app/test_cli_faults.py) and the kill-and-resume tests (tests/training/test_resume.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "configs" / "mlp.yaml"
# Wide console (no wrapped messages), the package under test first on the path, no debug.
ENV = {k: v for k, v in os.environ.items() if k != "BPTRAIN_DEBUG"}
ENV.update(COLUMNS="400", PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")

# ---- running the command line -------------------------------------------------------------
# A real `python -m bptrain` costs about a second of interpreter start and imports on a busy
# machine, so the full matrix runs in forked children of this (already importing) process:
# each child is a separate OS process with its own working directory, stdout and stderr files
# and exit status, and executes the `bptrain` package's __main__ exactly as `python -m bptrain`
# does; an uncaught exception is printed and exits 1, as the interpreter does. A subset of the
# cases (REAL) also runs in a fresh interpreter, and must produce the same code and message.
import bptrain.app.cli  # noqa: E402,F401  (what the commands import lazily, loaded once before forking)
import bptrain.app.report  # noqa: E402,F401
import bptrain.training.runs  # noqa: E402,F401
import bptrain.app.trace  # noqa: E402,F401
import bptrain.training.trainer  # noqa: E402,F401


def _child_main(args: list[str], cwd: Path, out_fd: int, err_fd: int) -> None:
    """In a forked child: run `bptrain ARGS` in CWD with stdout/stderr to the given files and
    exit with its status. Never returns."""
    import runpy
    import signal
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(ENV)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["bptrain", *args]
        try:
            runpy.run_module("bptrain", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # what the interpreter does (typer installs one)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class Child:
    """`bptrain ARGS` running in a forked child process (see above); `real=True` starts a fresh
    `python -m bptrain` interpreter instead."""

    def __init__(self, args: list[str], cwd: Path, real: bool = False):
        import tempfile
        self.args, self.cwd = list(args), Path(cwd)
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.returncode: int | None = None
        self._proc = None
        if real:
            self._proc = subprocess.Popen([sys.executable, "-m", "bptrain", *args], cwd=cwd,
                                          env=ENV, stdout=self._out, stderr=self._err)
            self.pid = self._proc.pid
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            _child_main(self.args, self.cwd, self._out.fileno(), self._err.fileno())
        self.pid = pid

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._proc is not None:
                self.returncode = self._proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess:
        import time
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                self.poll() if self._proc is None else self._proc.wait()
                raise AssertionError(f"bptrain {' '.join(self.args)}: still running after "
                                     f"{timeout} s (a hang)")
            time.sleep(0.005)
        out = []
        for f in (self._out, self._err):
            f.seek(0)
            out.append(f.read().decode("utf-8", "replace"))
            f.close()
        return subprocess.CompletedProcess(["bptrain", *self.args], self.returncode, *out)


def run_all(jobs: dict[str, tuple[list[str], Path]], real: bool = False,
            at_once: int = 6) -> dict[str, subprocess.CompletedProcess]:
    """Run every job, `at_once` at a time; {id: CompletedProcess}."""
    results, running = {}, {}
    pending = list(jobs.items())
    while pending or running:
        while pending and len(running) < at_once:
            cid, (args, cwd) = pending.pop(0)
            running[cid] = Child(args, cwd, real)
        cid = next(iter(running))
        results[cid] = running.pop(cid).wait()
    return results


