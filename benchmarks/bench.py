"""Benchmark: bptrain's training step against a hand-written flat NumPy loop and PyTorch (CPU).

    python benchmarks/bench.py            # full run (a few minutes)
    python benchmarks/bench.py --quick    # fewer repeats
    python benchmarks/bench.py --workloads c,d,e --no-memory   # some workloads, no RSS runs

Workloads:
  (a) note 004: N=64, 1000-100-10, ReLU, MSE (sum), no biases, SGD lr 1e-6
  (b) CIFAR-sized: batch 256 of 2560 random 3072-d inputs, 3072-512-256-10, ReLU,
      softmax + L2 (1e-4), SGD lr 1e-3, shuffled minibatches
  (c) batchnorm MLP: batch 128 of 2048 random 784-d inputs, 784-512-256-10, affine -
      batchnorm - ReLU per hidden layer (model.normalization: batchnorm), softmax + L2, SGD
  (d) residual MLP: batch 128 of 2048 random 256-d inputs, affine 256-128, ReLU, 20 residual
      blocks h + W2 relu(W1 h + b1) + b2 of width 128, affine 128-10, softmax + L2, SGD
  (e) per-gate overhead: batch 8, 50 hidden ReLU layers of width 8: every gate does almost no
      arithmetic, so the time per gate and step is the graph's own cost (beside PyTorch's)
  (f) CS231n's ThreeLayerConvNet: batch 50 of 500 random 3x32x32 images, conv 7x7 with 32
      filters pad 3 - ReLU - 2x2 max pool - affine 100 - ReLU - affine 10, softmax, SGD;
      the flat column is a hand-written NumPy im2col step of the same math
bptrain runs through `Trainer.batch` + `Trainer.train_step`, the code path `bptrain run` uses.
Implementations are interleaved (one block of steps each, in turn, repeated) so that they see
the same machine conditions; the table shows medians over the blocks.
Peak memory is the growth of the maximum RSS in a fresh process for each implementation.
Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS = {
    "a": dict(title="(a) note 004: 64 x 1000-100-10, MSE sum, no bias", n=64, batch=64,
              dims=[1000, 100, 10], loss="mse", bias=False, reg=0.0, lr=1e-6, shuffle=False),
    "b": dict(title="(b) CIFAR-sized: 256 x 3072-512-256-10, softmax + L2", n=2560, batch=256,
              dims=[3072, 512, 256, 10], loss="softmax", bias=True, reg=1e-4, lr=1e-3,
              shuffle=True),
    "c": dict(title="(c) batchnorm MLP: 128 x 784-512-256-10, affine-bn-relu, softmax + L2",
              n=2048, batch=128, dims=[784, 512, 256, 10], loss="softmax", bias=True,
              reg=1e-4, lr=1e-3, shuffle=True, kind="bn", steps=10),
    "d": dict(title="(d) residual MLP: 128 x 256-128-[20 blocks of 128]-10, softmax + L2",
              n=2048, batch=128, dims=[256, 128, 10], blocks=20, loss="softmax", bias=True,
              reg=1e-4, lr=1e-3, shuffle=True, kind="res", steps=5),
    "e": dict(title="(e) per-gate overhead: 8 x 8-[50 x 8]-8, ReLU, softmax", n=64, batch=8,
              dims=[8] * 52, loss="softmax", bias=True, reg=0.0, lr=1e-3, shuffle=False,
              kind="deep", steps=50),
    "f": dict(title="(f) ThreeLayerConvNet: 50 x 3x32x32, conv 7x7x32 pad 3 - pool - 100 - 10",
              n=500, batch=50, dims=[3 * 32 * 32, 100, 10], image=(3, 32, 32), filters=32,
              size=7, loss="softmax", bias=True, reg=0.0, lr=1e-3, shuffle=True, kind="conv",
              steps=3),
}


def make_data(w: dict, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w["n"], w["dims"][0])).astype(dtype)
    if w["loss"] == "mse":
        y = rng.standard_normal((w["n"], w["dims"][-1])).astype(dtype)
    else:
        y = rng.integers(0, w["dims"][-1], size=w["n"])
    return X, y


def weight_shapes(w: dict) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every weight, in config order (a residual block: W1 then W2;
    a convolution: (C*HH*WW, F))."""
    dims = w["dims"]
    if w.get("kind") == "conv":
        C, H, W = w["image"]
        F, k = w["filters"], w["size"]
        return [(C * k * k, F), (F * (H // 2) * (W // 2), dims[1]), (dims[1], dims[2])]
    if w.get("kind") == "res":
        d, width, c = dims
        return [(d, width)] + [(width, width)] * (2 * w["blocks"]) + [(width, c)]
    return list(zip(dims[:-1], dims[1:]))


def init_weights(w: dict, dtype: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    shapes = weight_shapes(w)
    Ws = [(rng.standard_normal((a, b)) * (1.0 if w["loss"] == "mse" else np.sqrt(2.0 / a)))
          .astype(dtype) for a, b in shapes]
    if w.get("kind") == "conv":  # W1 as filters (F, C, HH, WW)
        C, k = w["image"][0], w["size"]
        Ws[0] = np.ascontiguousarray(Ws[0].T.reshape(w["filters"], C, k, k))
    if w.get("kind") == "res":  # each block's second weight small: h stays O(1) over 20 blocks
        for k in range(2, len(Ws) - 1, 2):
            Ws[k] *= 0.1
    bs = [np.zeros(b, dtype=dtype) for _, b in shapes] if w["bias"] else []
    return Ws, bs


def model_config(w: dict) -> dict:
    """The `model` section bptrain builds each workload from."""
    kind = w.get("kind", "mlp")
    init = "gaussian" if w["loss"] == "mse" else "he"
    if kind == "conv":
        pad = w["size"] // 2
        return {"layers": [{"type": "conv", "filters": w["filters"], "size": w["size"],
                            "pad": pad}, {"type": "relu"}, {"type": "maxpool"},
                           {"type": "affine", "units": w["dims"][1]}, {"type": "relu"},
                           {"type": "affine"}], "init": init}
    if kind == "res":
        d, width, c = w["dims"]
        block = {"type": "residual", "layers": [{"type": "affine", "units": width},
                                                {"type": "relu"},
                                                {"type": "affine", "units": width}]}
        return {"layers": [{"type": "affine", "units": width}, {"type": "relu"},
                           *[block] * w["blocks"], {"type": "affine"}], "init": init}
    return {"hidden": w["dims"][1:-1], "activation": "relu", "bias": w["bias"], "init": init,
            "std": 1.0, "normalization": "batchnorm" if kind == "bn" else "none"}


# ---- bptrain ------------------------------------------------------------------------------
def bptrain_stepper(w: dict, dtype: str):
    from bptrain.net.config import load_config
    from bptrain.net.data import Dataset
    from bptrain.training.trainer import Trainer
    X, y = make_data(w, dtype)
    cfg = load_config({
        "name": "bench", "data": {"source": "regression" if w["loss"] == "mse" else "npz",
                                  "path": "unused.npz" if w["loss"] != "mse" else None},
        "model": model_config(w),
        "loss": {"type": w["loss"], "reduction": "sum"},
        "regularization": {"type": "l2" if w["reg"] else "none", "strength": w["reg"]},
        "optimizer": {"type": "sgd", "lr": w["lr"]},
        # Steps far from any evaluation: the benchmark times training steps, not evaluations.
        "train": {"batch_size": w["batch"], "shuffle": w["shuffle"], "dtype": dtype,
                  "iterations": 10**9, "eval_every": 10**6}})
    empty = X[:0]
    data = Dataset(X, y, empty, y[:0], None if w["loss"] == "mse" else w["dims"][-1], "bench",
                   image_shape=w.get("image"))
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), data=data)
    Ws, bs = init_weights(w, dtype)  # the same starting point as the other implementations
    for i, W in enumerate(Ws):
        trainer.model.params[f"W{i + 1}"] = W
    for i, b in enumerate(bs):
        trainer.model.params[f"b{i + 1}"] = b
    n_batches = w["n"] // w["batch"]
    state = {"i": 0}

    trainer.perm = np.arange(w["n"])

    def step():  # what Trainer.run does per step (a new order each epoch when shuffled)
        if w["shuffle"] and state["i"] % n_batches == 0:
            trainer.perm = trainer.shuffle_rng.permutation(w["n"])
        loss = trainer.train_step(*trainer.batch(state["i"] % n_batches), w["lr"])
        state["i"] += 1
        return loss
    return step


# ---- flat NumPy (the note-004 style loop, written out by hand) --------------------------
def flat_stepper(w: dict, dtype: str):
    if w.get("kind") == "conv":
        return flat_conv_stepper(w, dtype)
    if w.get("kind", "mlp") != "mlp":
        return flat_graph_stepper(w, dtype)
    X, y = make_data(w, dtype)
    Ws, bs = init_weights(w, dtype)
    lr, reg, B = w["lr"], w["reg"], w["batch"]
    rng = np.random.default_rng([0, 1])
    n_batches = w["n"] // B
    state = {"i": 0, "perm": None}

    if w["loss"] == "mse":
        w1, w2 = Ws

        def step():  # note 004, verbatim in spirit
            nonlocal w1, w2
            h = X.dot(w1)
            h_relu = np.maximum(h, 0)
            y_pred = h_relu.dot(w2)
            loss = np.square(y_pred - y).sum()
            grad_y_pred = 2.0 * (y_pred - y)
            grad_w2 = h_relu.T.dot(grad_y_pred)
            grad_h_relu = grad_y_pred.dot(w2.T)
            grad_h = grad_h_relu.copy()
            grad_h[h < 0] = 0
            grad_w1 = X.T.dot(grad_h)
            w1 -= lr * grad_w1
            w2 -= lr * grad_w2
            return loss
        return step

    W1, W2, W3 = Ws
    b1, b2, b3 = bs
    rows = np.arange(B)

    def step():  # a CS231n-style three-layer net, forward and backward by hand
        if state["i"] % n_batches == 0:
            state["perm"] = rng.permutation(w["n"])
        lo = (state["i"] % n_batches) * B
        idx = state["perm"][lo:lo + B]
        state["i"] += 1
        Xb, yb = X[idx], y[idx]
        h1 = Xb @ W1 + b1
        a1 = np.maximum(h1, 0)
        h2 = a1 @ W2 + b2
        a2 = np.maximum(h2, 0)
        s = a2 @ W3 + b3
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        p = e / e.sum(axis=1, keepdims=True)
        loss = -np.log(p[rows, yb]).mean() + 0.5 * reg * ((W1 * W1).sum() + (W2 * W2).sum()
                                                          + (W3 * W3).sum())
        ds = p
        ds[rows, yb] -= 1
        ds /= B
        dW3 = a2.T @ ds + reg * W3
        db3 = ds.sum(axis=0)
        da2 = ds @ W3.T
        da2[h2 <= 0] = 0
        dW2 = a1.T @ da2 + reg * W2
        db2 = da2.sum(axis=0)
        da1 = da2 @ W2.T
        da1[h1 <= 0] = 0
        dW1 = Xb.T @ da1 + reg * W1
        db1 = da1.sum(axis=0)
        for P, G in ((W1, dW1), (b1, db1), (W2, dW2), (b2, db2), (W3, dW3), (b3, db3)):
            P -= lr * G
        return loss
    return step


def flat_conv_stepper(w: dict, dtype: str):
    """Workload (f) by hand, the way a careful NumPy programmer writes CS231n's fast layers:
    im2col of the padded batch through a strided view (rows (n, h, w), columns (c, i, j)), one
    matrix multiply, ReLU, 2x2 max pooling by reshape, two affine layers, softmax; backward
    by the same rules; no dx for the first layer (its input is the data); SGD."""
    from numpy.lib.stride_tricks import sliding_window_view
    X, y = make_data(w, dtype)
    C, H, W = w["image"]
    X = X.reshape(-1, C, H, W)
    (Wc, W2, W3), (bc, b2, b3) = init_weights(w, dtype)
    F, k = w["filters"], w["size"]
    p = k // 2
    lr, B = w["lr"], w["batch"]
    rng = np.random.default_rng([0, 1])
    n_batches = w["n"] // B
    state = {"i": 0, "perm": None}
    rows = np.arange(B)

    def step():
        if state["i"] % n_batches == 0:
            state["perm"] = rng.permutation(w["n"])
        lo = (state["i"] % n_batches) * B
        Xb, yb = X[state["perm"][lo:lo + B]], y[state["perm"][lo:lo + B]]
        state["i"] += 1
        xp = np.pad(Xb, ((0, 0), (0, 0), (p, p), (p, p)))
        win = sliding_window_view(xp, (k, k), axis=(2, 3))          # (B, C, H, W, k, k)
        cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(B * H * W, -1)
        conv = cols @ Wc.reshape(F, -1).T + bc                       # (B H W, F)
        a = np.maximum(conv, 0).reshape(B, H // 2, 2, W // 2, 2, F)
        pooled = a.max(axis=(2, 4))                                  # (B, H/2, W/2, F)
        flat = pooled.transpose(0, 3, 1, 2).reshape(B, -1)           # C order, as bptrain
        h2 = flat @ W2 + b2
        a2 = np.maximum(h2, 0)
        s = a2 @ W3 + b3
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        prob = e / e.sum(axis=1, keepdims=True)
        loss = -np.log(prob[rows, yb]).mean()
        ds = prob
        ds[rows, yb] -= 1
        ds /= B
        dW3, db3 = a2.T @ ds, ds.sum(axis=0)
        da2 = ds @ W3.T
        da2[h2 <= 0] = 0
        dW2, db2 = flat.T @ da2, da2.sum(axis=0)
        dpooled = (da2 @ W2.T).reshape(B, F, H // 2, W // 2).transpose(0, 2, 3, 1)
        # the max of each window gets the gradient (ties: every maximum, as masks do)
        mask = a == pooled[:, :, None, :, None, :]
        dconv = (mask * dpooled[:, :, None, :, None, :]).reshape(B * H * W, F)
        dconv[conv.reshape(B * H * W, F) <= 0] = 0
        dWc = (dconv.T @ cols).reshape(Wc.shape)
        dbc = dconv.sum(axis=0)
        for P, G in ((Wc, dWc), (bc, dbc), (W2, dW2), (b2, db2), (W3, dW3), (b3, db3)):
            P -= lr * G
        return loss
    return step


def flat_graph_stepper(w: dict, dtype: str):
    """Workloads (c), (d), (e) by hand: CS231n's batchnorm forward/backward (the short
    backward, as bptrain's gate), residual blocks, or a deep ReLU chain; softmax + L2; SGD."""
    X, y = make_data(w, dtype)
    Ws, bs = init_weights(w, dtype)
    kind, lr, reg, B = w["kind"], w["lr"], w["reg"], w["batch"]
    L = len(Ws)
    gammas = [np.ones(W.shape[1], dtype=dtype) for W in Ws[:-1]] if kind == "bn" else []
    betas = [np.zeros(W.shape[1], dtype=dtype) for W in Ws[:-1]] if kind == "bn" else []
    running = [[np.zeros(W.shape[1], dtype=dtype), np.ones(W.shape[1], dtype=dtype)]
               for W in Ws[:-1]] if kind == "bn" else []
    rng = np.random.default_rng([0, 1])
    n_batches = w["n"] // B
    rows = np.arange(B)
    eps, momentum = 1e-5, 0.9
    state = {"i": 0, "perm": np.arange(w["n"])}

    def batch():
        if w["shuffle"] and state["i"] % n_batches == 0:
            state["perm"] = rng.permutation(w["n"])
        lo = (state["i"] % n_batches) * B
        state["i"] += 1
        if not w["shuffle"]:
            return X[lo:lo + B], y[lo:lo + B]
        idx = state["perm"][lo:lo + B]
        return X[idx], y[idx]

    def softmax(s, yb):
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        p = e / e.sum(axis=1, keepdims=True)
        loss = -np.log(p[rows, yb]).mean()
        p[rows, yb] -= 1
        p /= B
        return loss, p

    def penalty():
        return 0.5 * reg * sum(float(np.vdot(W, W)) for W in Ws) if reg else 0.0

    def update(grads_W, grads_b, extra=()):
        for P, G in (*zip(Ws, grads_W), *zip(bs, grads_b), *extra):
            P -= lr * G

    def step_chain():  # (c) with batchnorm, (e) without: affine - [bn] - relu, then scores
        Xb, yb = batch()
        cache, h = [], Xb
        for k in range(L - 1):
            z = h @ Ws[k] + bs[k]
            if kind == "bn":
                mean = z.mean(axis=0)
                zc = z - mean
                var = (zc * zc).mean(axis=0)
                inv = 1.0 / np.sqrt(var + eps)
                xhat = zc * inv
                rm, rv = running[k]
                running[k] = [momentum * rm + (1 - momentum) * mean,
                              momentum * rv + (1 - momentum) * var]
                z_bn = gammas[k] * xhat + betas[k]
                a = np.maximum(z_bn, 0)
                cache.append((h, z_bn, xhat, inv))
            else:
                a = np.maximum(z, 0)
                cache.append((h, z, None, None))
            h = a
        loss, ds = softmax(h @ Ws[-1] + bs[-1], yb)
        loss += penalty()
        dW, db, dg, dbeta = [None] * L, [None] * L, [None] * (L - 1), [None] * (L - 1)
        dW[-1] = h.T @ ds + reg * Ws[-1]
        db[-1] = ds.sum(axis=0)
        dh = ds @ Ws[-1].T
        for k in range(L - 2, -1, -1):
            h_in, pre, xhat, inv = cache[k]
            dz = dh * (pre > 0)
            if kind == "bn":
                dg[k] = (dz * xhat).sum(axis=0)
                dbeta[k] = dz.sum(axis=0)
                dxhat = dz * gammas[k]
                dz = inv * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
            dW[k] = h_in.T @ dz + reg * Ws[k]
            db[k] = dz.sum(axis=0)
            if k:
                dh = dz @ Ws[k].T
        update(dW, db, (*zip(gammas, dg), *zip(betas, dbeta)))
        return loss

    def step_residual():  # (d): h = relu(X W + b), then h + W2 relu(W1 h + b1) + b2 each block
        Xb, yb = batch()
        z0 = Xb @ Ws[0] + bs[0]
        h = np.maximum(z0, 0)
        cache = []
        for k in range(1, L - 1, 2):
            u = h @ Ws[k] + bs[k]
            r = np.maximum(u, 0)
            cache.append((h, u, r))
            h = h + (r @ Ws[k + 1] + bs[k + 1])
        loss, ds = softmax(h @ Ws[-1] + bs[-1], yb)
        loss += penalty()
        dW, db = [None] * L, [None] * L
        dW[-1] = h.T @ ds + reg * Ws[-1]
        db[-1] = ds.sum(axis=0)
        dh = ds @ Ws[-1].T
        for j in range(len(cache) - 1, -1, -1):
            k = 2 * j + 1
            h_in, u, r = cache[j]
            dW[k + 1] = r.T @ dh + reg * Ws[k + 1]
            db[k + 1] = dh.sum(axis=0)
            du = (dh @ Ws[k + 1].T) * (u > 0)
            dW[k] = h_in.T @ du + reg * Ws[k]
            db[k] = du.sum(axis=0)
            dh = dh + du @ Ws[k].T  # the identity path and the block's path add up
        dz0 = dh * (z0 > 0)
        dW[0] = Xb.T @ dz0 + reg * Ws[0]
        db[0] = dz0.sum(axis=0)
        update(dW, db)
        return loss

    return step_residual if kind == "res" else step_chain


# ---- PyTorch ------------------------------------------------------------------------------
def torch_stepper(w: dict, dtype: str):
    import torch
    torch.set_num_threads(2)
    tdtype = getattr(torch, dtype)
    Xn, yn = make_data(w, dtype)
    X = torch.from_numpy(Xn)
    y = torch.from_numpy(yn)
    Ws, bs = init_weights(w, dtype)
    Ws = [torch.from_numpy(W).requires_grad_() for W in Ws]
    bs = [torch.from_numpy(b).requires_grad_() for b in bs]
    kind = w.get("kind", "mlp")
    F = torch.nn.functional
    gammas = [torch.ones(W.shape[1], dtype=tdtype, requires_grad=True)
              for W in Ws[:-1]] if kind == "bn" else []
    betas = [torch.zeros(W.shape[1], dtype=tdtype, requires_grad=True)
             for W in Ws[:-1]] if kind == "bn" else []
    running = [(torch.zeros(W.shape[1], dtype=tdtype), torch.ones(W.shape[1], dtype=tdtype))
               for W in Ws[:-1]] if kind == "bn" else []
    params = Ws + bs + gammas + betas
    lr, reg, B = w["lr"], w["reg"], w["batch"]
    g = torch.Generator().manual_seed(0)
    n_batches = w["n"] // B
    state = {"i": 0, "perm": None}

    def step():
        if w["shuffle"]:
            if state["i"] % n_batches == 0:
                state["perm"] = torch.randperm(w["n"], generator=g)
            lo = (state["i"] % n_batches) * B
            idx = state["perm"][lo:lo + B]
            Xb, yb = X[idx], y[idx]
        elif kind == "mlp":
            Xb, yb = X, y
        else:
            lo = (state["i"] % n_batches) * B
            Xb, yb = X[lo:lo + B], y[lo:lo + B]
        state["i"] += 1
        h = Xb
        if kind == "conv":
            pad = w["size"] // 2
            h = h.reshape(-1, *w["image"])
            h = F.max_pool2d(torch.relu(F.conv2d(h, Ws[0], bs[0], padding=pad)), 2)
            h = torch.relu(torch.addmm(bs[1], h.reshape(len(h), -1), Ws[1]))
            h = torch.addmm(bs[2], h, Ws[2])
        elif kind == "res":
            h = torch.relu(torch.addmm(bs[0], h, Ws[0]))
            for k in range(1, len(Ws) - 1, 2):
                h = h + torch.addmm(bs[k + 1], torch.relu(torch.addmm(bs[k], h, Ws[k])),
                                    Ws[k + 1])
            h = torch.addmm(bs[-1], h, Ws[-1])
        else:
            for k, W in enumerate(Ws):
                h = h @ W + bs[k] if bs else h @ W
                if k < len(Ws) - 1:
                    if kind == "bn":
                        h = F.batch_norm(h, *running[k], gammas[k], betas[k], training=True,
                                         momentum=0.1, eps=1e-5)
                    h = torch.relu(h)
        if w["loss"] == "mse":
            loss = (h - yb).pow(2).sum()
        else:
            loss = torch.nn.functional.cross_entropy(h, yb)
            if reg:
                loss = loss + 0.5 * reg * sum((W * W).sum() for W in Ws)
        loss.backward()
        with torch.no_grad():
            for P in params:
                P -= lr * P.grad
                P.grad = None
        return float(loss.detach())
    return step


IMPLS = {"bptrain": bptrain_stepper, "flat numpy": flat_stepper, "pytorch": torch_stepper}


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def time_side_by_side(workload: str, dtype: str, blocks: int, steps: int,
                      impls: list[str]) -> dict[str, float]:
    """Median milliseconds per step, implementations interleaved block by block."""
    w = WORKLOADS[workload]
    steppers = {name: IMPLS[name](w, dtype) for name in impls}
    for fn in steppers.values():  # warm up: allocations, BLAS threads, caches
        for _ in range(max(3, steps // 2)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(steppers)
    for block in range(blocks):
        # Rotate the order, and pause before each block: BLAS and OpenMP worker threads keep
        # spinning for a while after a burst, which would slow whichever implementation
        # runs next (PyTorch's threads especially).
        for name in names[block % len(names):] + names[:block % len(names)]:
            fn = steppers[name]
            time.sleep(0.1)
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def gates_per_step(workload: str, dtype: str) -> int:
    """Gates one bptrain training step runs forward and backward (the plan of the loss)."""
    from bptrain.net.config import load_config
    from bptrain.net.model import build_model
    w = WORKLOADS[workload]
    cfg = load_config({"model": model_config(w), "loss": {"type": w["loss"]},
                       "regularization": {"type": "l2" if w["reg"] else "none",
                                          "strength": w["reg"]}, "train": {"dtype": dtype}})
    model = build_model(cfg, w["dims"][0], w["dims"][-1])
    order, _ = model.graph.plan(model.loss)
    return sum(1 for node in order if node.gate is not None)


def peak_memory(workload: str, dtype: str, impl: str, steps: int = 10) -> float:
    """MiB the peak RSS grows by in a fresh process that builds the workload and trains.
    (VmHWM from /proc, not ru_maxrss: Linux carries ru_maxrss over from the parent.)"""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "sys.argv=['bench']; import benchmarks.bench as b; import numpy; "
            + ("import torch; " if impl == "pytorch" else "")
            + "base = b.peak_rss_kib(); "
            f"fn = b.IMPLS[{impl!r}](b.WORKLOADS[{workload!r}], {dtype!r}); "
            f"[fn() for _ in range({steps})]; "
            "print((b.peak_rss_kib() - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def gemm_peak_gflops(dtype: str) -> float:
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_flops(workload: str) -> float:
    """Matmul FLOPs of one training step: forward, dW for every layer, dX above the first."""
    w = WORKLOADS[workload]
    n = w["batch"]
    layers = weight_shapes(w)
    mults = sum(n * a * b for a, b in layers) * 2 + sum(n * a * b for a, b in layers[1:])
    return 2.0 * mults


def startup_seconds(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(args, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated workloads to run (default: all, a,b,c,d,e)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory runs (a fresh process per implementation)")
    args = parser.parse_args()
    chosen = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(WORKLOADS)}")
    blocks = 7 if args.quick else 15
    impls = ["bptrain", "flat numpy"] + (["pytorch"] if have_torch() else [])
    rows = []
    print(f"numpy {np.__version__}; cores {os.cpu_count()}; "
          + ("torch " + __import__("torch").__version__ + " (2 threads)" if have_torch()
             else "torch not installed: PyTorch columns skipped "
                  "(pip install torch==2.13.0 to include them)"), flush=True)
    for dtype in ("float64", "float32"):
        peak = gemm_peak_gflops(dtype)
        for workload in chosen:
            w = WORKLOADS[workload]
            steps = w.get("steps", 20 if workload == "a" else 3)
            ms = time_side_by_side(workload, dtype, blocks, steps, impls)
            bound = step_flops(workload) / (peak * 1e9) * 1e3
            mem = {name: float("nan") if args.no_memory else peak_memory(workload, dtype, name)
                   for name in impls}
            row = {"workload": workload, "dtype": dtype, "ms": ms, "blas_bound_ms": bound,
                   "peak_mib": mem}
            gates = gates_per_step(workload, dtype) if w.get("kind") == "deep" else None
            if gates:
                row["gates"] = gates
                row["us_per_gate"] = {name: ms[name] * 1e3 / gates for name in impls}
            rows.append(row)
            print(f"{w['title']} [{dtype}]", flush=True)
            for name in impls:
                ratio_flat = ms[name] / ms["flat numpy"]
                ratio_torch = ms[name] / ms["pytorch"] if "pytorch" in ms else float("nan")
                per_gate = (f"  {row['us_per_gate'][name]:6.2f} us/gate" if gates else "")
                print(f"  {name:11s} {ms[name]:8.3f} ms/step  x{ratio_flat:5.2f} flat  "
                      f"x{ratio_torch:5.2f} torch  x{ms[name] / bound:5.2f} BLAS bound  "
                      f"peak +{mem[name]:6.1f} MiB{per_gate}", flush=True)
            if gates:
                print(f"  (per gate: the step's time over the {gates} gates of bptrain's graph, "
                      "each run forward and backward; the same count for every column)",
                      flush=True)
    imp = startup_seconds([sys.executable, "-c", "import bptrain"])
    helpt = startup_seconds([sys.executable, "-m", "bptrain", "--help"])
    print(f"start-up: import bptrain {imp:.3f} s, bptrain --help {helpt:.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "import_s": imp, "help_s": helpt},
                                        indent=1))


if __name__ == "__main__":
    main()
