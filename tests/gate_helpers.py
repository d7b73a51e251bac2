"""What the gate test modules share (tests/engine/gates/test_*.py): input domains, shape
strategies, and the check of an elementwise gate against its reference formula and against
centered differences (check_gate, max relative error < 1e-7, float64)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bptrain.engine.gradcheck import check_gate
from conftest import assert_gate_passes, away_from_zero, hsettings

SEEDS = st.integers(0, 2**32 - 1)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
PAIRS = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1,
                                          max_side=4)


def normal(rng, shape):
    return rng.standard_normal(shape)


def wide(rng, shape):
    # |x| <= 4 keeps sigmoid's slope above 0.017: a smaller gradient is swamped by the
    # rounding of the centered difference before it can meet a 1e-7 relative error.
    return rng.uniform(-4.0, 4.0, size=shape)


def away(rng, shape):
    return away_from_zero(rng, shape, 0.2, 2.0)


def positive(rng, shape):
    return rng.uniform(0.3, 3.0, size=shape)


def check_elementwise_unary(make, domain, reference, shape, seed):
    rng = np.random.default_rng(seed)
    x = domain(rng, shape)
    gate = make()
    out = gate.forward(x.copy())
    assert np.shape(out) == x.shape
    np.testing.assert_allclose(out, reference(x), rtol=1e-12, atol=1e-14)
    assert_gate_passes(check_gate(make(), [x], seed=seed % 1000), [x])


def unary_gate_tests(unary: dict, variants: dict):
    """The three tests of a table of elementwise unary gates (name -> (make gate, input
    domain, reference forward)) and of their further settings: random shapes, the settings'
    variants, 0-d scalars. A test module binds them to test_* names."""
    @pytest.mark.parametrize("name", sorted(unary))
    @hsettings(20)
    @given(shape=SHAPES, seed=SEEDS)
    def test_unary_gate(name, shape, seed):
        check_elementwise_unary(*unary[name], shape, seed)

    @pytest.mark.parametrize("name", sorted(variants))
    @hsettings(10)
    @given(shape=SHAPES, seed=SEEDS)
    def test_unary_gate_variant(name, shape, seed):
        check_elementwise_unary(*variants[name], shape, seed)

    @pytest.mark.parametrize("name", sorted(unary) + sorted(variants))
    def test_unary_gate_on_0d_scalar(name):
        make, domain, reference = {**unary, **variants}[name]
        x = domain(np.random.default_rng(5), ())
        out = make().forward(x)
        assert np.shape(out) == ()
        np.testing.assert_allclose(out, reference(x), rtol=1e-12)
        assert_gate_passes(check_gate(make(), [x]), [x])

    return test_unary_gate, test_unary_gate_variant, test_unary_gate_on_0d_scalar
