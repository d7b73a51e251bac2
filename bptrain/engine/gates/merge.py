"""Merge layers that are not arithmetic: concatenation along the feature axis.

(`add`, the other merge, is the elementwise sum in arithmetic.py: the residual connection.)
"""
from __future__ import annotations

import numpy as np

from bptrain.engine.gate import Built, Gate, away_from_zero


class Concat(Gate):
    """z = [x1 | x2 | ...]: the inputs side by side along axis 1 (features, or channels).

    forward(*xs):        x_k (N, D_k)         -> z (N, D_1 + D_2 + ...)
                         x_k (N, C_k, H, W)   -> z (N, C_1 + C_2 + ..., H, W)
    backward(upstream):  upstream like z      -> one slice per input, upstream[:, lo_k:hi_k]

    Every output entry is a copy of one input entry, so its local gradient is 1 and each input
    gets back exactly the columns (channels) it contributed: the distributor, split by position.
    """
    name, kind, pattern = "concat", "merge", "distributor"

    def forward(self, *xs):
        # Where each input's columns end in z: backward cuts the upstream at these points.
        self.ends = np.cumsum([x.shape[1] for x in xs])
        return np.concatenate(xs, axis=1)

    def backward(self, upstream):
        return tuple(np.split(upstream, self.ends[:-1], axis=1))

    @classmethod
    def build(cls, in_shapes, settings, init):
        shapes = [tuple(s) for s in in_shapes]
        shown = " and ".join(str(s) for s in shapes)
        if len(shapes) < 2:
            raise ValueError("concat joins two or more inputs; give `inputs: [a, b]`")
        if all(len(s) == 1 for s in shapes):
            return Built(cls(), {}, (sum(s[0] for s in shapes),))
        if all(len(s) == 3 for s in shapes):
            if len({s[1:] for s in shapes}) == 1:
                return Built(cls(), {}, (sum(s[0] for s in shapes),) + shapes[0][1:])
            raise ValueError(f"concat joins images along their channels, so their heights and "
                             f"widths must agree, got {shown}; pool or stride them to one size")
        raise ValueError(f"concat needs all inputs flat (D,) or all images (C, H, W), got "
                         f"{shown}; add a flatten layer before it")

    @classmethod
    def examples(cls, rng):
        return [
            ("concat of two", cls(), [away_from_zero(rng, 4, 3), away_from_zero(rng, 4, 5)]),
            ("concat of three", cls(), [away_from_zero(rng, 4, 2), away_from_zero(rng, 4, 1),
                                        away_from_zero(rng, 4, 3)]),
            ("concat images", cls(), [away_from_zero(rng, 2, 1, 3, 3),
                                      away_from_zero(rng, 2, 2, 3, 3)]),
        ]
