"""bptrain/engine/gate.py: the Gate base class, Setting, the registry the classes fill."""
from __future__ import annotations

import numpy as np
import pytest

from bptrain.engine import gates as G
from bptrain.engine.gate import EVERY_INPUT, Built, Gate, Setting, registry, unbroadcast


def test_library_classes_register_themselves_by_kind_and_config_name():
    assert registry.find("relu", ("activation",)) is G.ReLU
    assert registry.find("softmax", ("loss",)) is G.SoftmaxCrossEntropy  # config_name
    assert registry.find("conv", ("layer",)) is G.Conv2D
    assert registry.find("add", ("merge",)) is G.Add
    assert registry.find("relu", ("loss",)) is None
    assert {"affine", "batchnorm", "conv", "maxpool", "flatten", "dropout", "concat"} <= set(
        registry.names(("activation", "layer", "merge", "shape")))


def test_a_private_base_class_is_not_registered_and_a_bad_kind_is_refused():
    class _Base(Gate):
        kind = "activation"

    assert registry.find("_base", ("activation",)) is None
    with pytest.raises(TypeError, match="kind is 'weird'"):
        class Weird(Gate):  # noqa: F841
            name, kind = "weird_gate", "weird"


def test_backward_that_takes_needs_input_grad_is_detected_from_its_signature():
    assert G.MatMul.takes_needs_input_grad and not G.ReLU.takes_needs_input_grad
    X, W = np.ones((2, 3)), np.ones((3, 4))
    gate = G.MatMul()
    gate.forward(X, W)
    dX, dW = gate.backward(np.ones((2, 4)))              # alone: every input's gradient
    assert dX.shape == (2, 3) and dW.shape == (3, 4)
    assert gate.backward(np.ones((2, 4)), (False, True))[0] is None
    assert EVERY_INPUT[7] is True


def test_default_build_makes_the_gate_from_its_settings():
    built = G.LeakyReLU.build([(5,)], {"slope": 0.2}, init=None)
    assert isinstance(built, Built) and built.gate.slope == 0.2
    assert built.params == {} and built.out_shape == (5,)
    assert G.LeakyReLU.settings["slope"] == Setting(0.01, float, ge=0.0, help="gradient below 0")


def test_unbroadcast_sums_copies_and_refuses_a_wrong_shape():
    np.testing.assert_array_equal(unbroadcast(np.ones((4, 3)), (3,)), np.full(3, 4.0))
    np.testing.assert_array_equal(unbroadcast(np.ones((4, 3)), (4, 1)), np.full((4, 1), 3.0))
    with pytest.raises(ValueError, match="does not fit"):
        unbroadcast(np.ones((2, 3)), (3, 2))


def test_every_library_gate_has_a_test_module_and_gradcheck_examples():
    """A new gate without a test, or without inputs for gradcheck's sweep, fails here."""
    import re
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    text = " ".join(p.read_text() for p in tests.rglob("test_*.py"))
    for name in G.__all__:
        cls = getattr(G, name)
        assert isinstance(cls, type) and issubclass(cls, Gate)
        assert re.search(rf"\bG\.{name}\b|\b{name}\(", text), f"{name} has no test"
        assert cls.examples(np.random.default_rng(0)), f"{name} gives gradcheck no examples"
