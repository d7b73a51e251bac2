"""Shared helpers for the engine tests (graph, gates, gradcheck).

Everything here is float64. The helpers are plain functions and classes so that test modules can
`from conftest import ...` them; the tests directory and the project root are put on sys.path.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bptrain.engine.graph import Gate  # noqa: E402
from bptrain.training.trainer import SilentReporter  # noqa: E402

GATE_TOL = 1e-7  # max relative error every gate must meet in float64


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


def away_from_zero(rng: np.random.Generator, shape, lo: float = 0.2, hi: float = 2.0) -> np.ndarray:
    """Random float64 values with lo <= |v| <= hi and random signs: no kink at 0 within h."""
    magnitude = rng.uniform(lo, hi, size=shape)
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return np.asarray(magnitude * sign, dtype=np.float64)


def assert_gate_passes(results, inputs, tol: float = GATE_TOL) -> None:
    """Every float input got a full check with status "pass" (no kink, no failure)."""
    float_inputs = [np.asarray(x) for x in inputs if np.asarray(x).dtype.kind == "f"]
    assert len(results) == len(float_inputs), [r.name for r in results]
    for r, x in zip(results, float_inputs):
        assert r.shape == x.shape, (r.name, r.shape, x.shape)
        assert r.checked == x.size, (r.name, r.checked, x.size)
        assert r.kinks == 0, (r.name, r.kinks, r.worst)
        assert r.status == "pass", (r.name, r.status, r.max_rel_error, r.worst)
        assert r.max_rel_error < tol, (r.name, r.max_rel_error, r.worst)


class Counting(Gate):
    """z = 2 x, counting its forward and backward calls."""
    name = "counting"

    def __init__(self):
        self.forward_calls = 0
        self.backward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return 2.0 * x

    def backward(self, upstream):
        self.backward_calls += 1
        return (2.0 * upstream,)


class Boom(Exception):
    """What `StopAtStep` raises: a crash part-way through a run."""


class StopAtStep(SilentReporter):
    """A training reporter that crashes the run at `step` (from the step callback), to test
    what a killed run leaves behind and how it resumes."""

    def __init__(self, step: int):
        self.at = step

    def step(self, step, epoch, loss):
        if step == self.at:
            raise Boom(step)


def sigmoid_ref(x):
    """The logistic function written directly (no tanh form)."""
    return 1.0 / (1.0 + np.exp(-x))


def hsettings(max_examples: int = 20):
    """Hypothesis settings of this suite: few examples, no deadline, no example database
    written into the working tree. BPTRAIN_HYPOTHESIS_EXAMPLES=N overrides the count for a
    long soak run."""
    import os

    from hypothesis import settings
    n = int(os.environ.get("BPTRAIN_HYPOTHESIS_EXAMPLES", max_examples))
    return settings(max_examples=n, deadline=None, database=None)
