"""bptrain: a transparent NumPy trainer. A YAML config declares a network; a readable graph of
gates trains it with backpropagation, showing its work.

    from bptrain import Graph, Gate
    g = Graph(); x, y, z = g.inputs("x y z"); f = (x + y) * z

Names are imported on first use, so `bptrain --help` starts without loading NumPy.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Gate": "bptrain.engine.gate", "Setting": "bptrain.engine.gate",
    "Graph": "bptrain.engine.graph", "Node": "bptrain.engine.graph",
    "gates": "bptrain.engine.gates",
    "check_gate": "bptrain.engine.gradcheck", "check_graph": "bptrain.engine.gradcheck",
    "load_config": "bptrain.net.config",
    "build_model": "bptrain.net.model", "Model": "bptrain.net.model",
    "load_dataset": "bptrain.net.data",
    "train": "bptrain.api", "load_run": "bptrain.api", "TrainedRun": "bptrain.api",
    "BptrainError": "bptrain.errors", "ConfigError": "bptrain.errors",
    "DataError": "bptrain.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bptrain' has no attribute {name!r}")
    value = importlib.import_module(module)
    return value if name == "gates" else getattr(value, name)
