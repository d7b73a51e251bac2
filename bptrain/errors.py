"""The errors bptrain raises on bad input, and the exit code each one maps to.

Every user-facing failure is a BptrainError: the CLI prints its message (one paragraph that names
the place and the fix) and exits with its code, never with a traceback unless --debug is given.
"""
from __future__ import annotations

# Exit codes, documented in README.
EXIT_OK = 0
EXIT_FAILED = 1        # a check failed (gradcheck, sanity)
EXIT_USAGE = 2         # bad usage, config or data
EXIT_DIVERGED = 3      # training stopped because the loss became nan or inf
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; a checkpoint was saved


class BptrainError(Exception):
    """A problem with what the user gave us; the message says where and how to fix it."""

    exit_code = EXIT_USAGE


class ConfigError(BptrainError):
    """A config file or override is malformed, unknown, of the wrong type or impossible."""


class DataError(BptrainError):
    """Data is missing, malformed, non-finite or of the wrong shape."""


class DivergenceError(BptrainError):
    """The loss became nan or inf during training."""

    exit_code = EXIT_DIVERGED
