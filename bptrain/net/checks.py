"""The gradient checks that need more than the engine: a config's whole network on its data,
and a user's gate class on inputs of the shapes its forward accepts. The algorithm itself is
bptrain.engine.gradcheck."""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from bptrain.engine.gradcheck import H, CheckResult, check_gate, check_graph
from bptrain.errors import ConfigError
from bptrain.net.config import load_config
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data


def check_config(cfg: Any, *, samples: int | None = 100, h: float = H, seed: int = 0,
                 batch: int = 16) -> list[CheckResult]:
    """A config's whole network (data loss + regularization), per parameter, in float64 on a
    small batch of its training data, whatever the config's dtype."""
    cfg = load_config(cfg, ["train.dtype=float64"])
    data = load_data(cfg)
    model = build_for_data(cfg, data)  # a network too large for memory: refused first
    X, y = data.X_train[:batch], data.y_train[:batch]
    model.graph.feed(X=model.shaped(X), y=model.targets(y))
    return check_graph(model.graph, model.loss, h=h, samples=samples, seed=seed)


def check_user_gate(cls: type, seed: int = 0, h: float = H) -> list[CheckResult]:
    """A user's gate on random inputs of the shapes its forward accepts: 0-d scalars,
    same-shape arrays, and matmul-like chains; a shape set it rejects is skipped."""
    try:
        gate = cls()
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}() needs arguments ({e}); give its settings "
                          "defaults so the checker can build it.") from None
    params = [p for p in inspect.signature(gate.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    n = max(len(params), 1)
    rng = np.random.default_rng(seed)
    shape_sets = {"scalars": [()] * n, "arrays": [(4, 3)] * n,
                  "chain": [(4, 3), (3, 5), (5, 2)][:n] if 2 <= n <= 3 else None}
    results, tried = [], []
    for tag, shapes in shape_sets.items():
        if shapes is None:
            continue
        inputs = [rng.standard_normal(s) for s in shapes]
        try:
            np.asarray(gate.forward(*inputs)) * 1.0
        except Exception:
            tried.append(tag)
            continue
        try:
            results += check_gate(gate, inputs, h=h, seed=seed, name=f"{cls.__name__} {tag}")
        except Exception as e:  # the learner's backward crashed: a failed check, not ours
            results.append(CheckResult(f"{cls.__name__} {tag}", tuple(np.shape(inputs[0])),
                                       0, float("inf"), 0, "fail",
                                       {"error": f"backward raised {type(e).__name__}: {e}"}))
    if not results:
        raise ConfigError(f"{cls.__name__}.forward failed on every input shape tried "
                          f"({', '.join(tried)}); check that it runs on NumPy arrays.")
    return results
