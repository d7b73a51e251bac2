"""Data augmentation for image batches, training data only: random crops after zero padding
and random horizontal flips, as CS231n and most CIFAR-10 recipes use them. Seeded by the
trainer's own generator, whose state goes into checkpoints, so a resumed run draws the same."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def augment_batch(X: np.ndarray, rng: np.random.Generator, flip: bool = False,
                  crop_pad: int = 0) -> np.ndarray:
    """A new augmented copy of X (N, C, H, W); X itself is never changed.

    crop_pad p: zero-pad each image by p on every side, then cut an H x W window at a random
    offset (0..2p in each direction) per image. flip: mirror each image left-right with
    probability 1/2. Vectorized: one strided view and one gather, no loop over images."""
    n, _, h, w = X.shape
    out = X
    if crop_pad:
        p = crop_pad
        padded = np.pad(X, ((0, 0), (0, 0), (p, p), (p, p)))
        dy = rng.integers(0, 2 * p + 1, size=n)
        dx = rng.integers(0, 2 * p + 1, size=n)
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W)
        out = windows[np.arange(n), :, dy, dx]                       # (N, C, H, W), a copy
    if flip:
        mirror = rng.random(n) < 0.5
        out = np.where(mirror[:, None, None, None], out[..., ::-1], out)
    return out if out is not X else X.copy()
