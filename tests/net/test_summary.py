"""bptrain/net/summary.py: a config's graph as rows and as DOT, merges and fan-out drawn."""
from __future__ import annotations

import re

from bptrain.net.config import load_config
from bptrain.net.summary import show_config, to_dot

RESIDUAL = {"data": {"source": "spiral", "n_samples": 60},
            "model": {"layers": [{"type": "affine", "units": 8, "name": "stem"},
                                 {"type": "residual", "name": "block",
                                  "layers": [{"type": "relu"}, {"type": "affine", "units": 8}]},
                                 {"type": "affine", "units": 4, "input": "stem", "name": "side"},
                                 {"type": "concat", "inputs": ["block", "side"]},
                                 {"type": "affine"}]},
            "train": {"batch_size": 16}}


def test_rows_show_merges_with_their_inputs_and_the_fan_out():
    import bptrain.engine.gates.merge  # noqa: F401  (concat)
    s = show_config(load_config(RESIDUAL))
    rows = {r.name: r for r in s.rows}
    assert rows["block"].kind == "merge" and rows["block"].inputs == ["stem", "fc2"]
    assert rows["block"].shape == (16, 8)
    concat = next(r for r in s.rows if r.gate == "concat")
    assert concat.inputs == ["block", "side"] and concat.shape == (16, 12)
    # stem feeds the residual block's relu, its add, and the side branch: three consumers
    assert sorted(rows["stem"].consumers) == sorted(["relu1", "block", "side"])
    dot = to_dot(s)
    assert re.search(r'"block" \[shape=doublecircle', dot)
    for consumer in ("relu1", "block", "side"):
        assert re.search(rf'"stem" -> "{consumer}" \[color=red, fontcolor=red, label="copy"\]', dot)
