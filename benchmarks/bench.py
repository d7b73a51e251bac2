"""Benchmark: bptrain's training step against a hand-written flat NumPy loop and PyTorch (CPU).

    python benchmarks/bench.py            # full run (a few minutes)
    python benchmarks/bench.py --quick    # fewer repeats

Workloads:
  (a) note 004: N=64, 1000-100-10, ReLU, MSE (sum), no biases, SGD lr 1e-6
  (b) CIFAR-sized: batch 256 of 2560 random 3072-d inputs, 3072-512-256-10, ReLU,
      softmax + L2 (1e-4), SGD lr 1e-3, shuffled minibatches
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
}


def make_data(w: dict, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w["n"], w["dims"][0])).astype(dtype)
    if w["loss"] == "mse":
        y = rng.standard_normal((w["n"], w["dims"][-1])).astype(dtype)
    else:
        y = rng.integers(0, w["dims"][-1], size=w["n"])
    return X, y


def init_weights(w: dict, dtype: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    dims = w["dims"]
    Ws = [(rng.standard_normal((a, b)) * (1.0 if w["loss"] == "mse" else np.sqrt(2.0 / a)))
          .astype(dtype) for a, b in zip(dims[:-1], dims[1:])]
    bs = [np.zeros(b, dtype=dtype) for b in dims[1:]] if w["bias"] else []
    return Ws, bs


# ---- bptrain ------------------------------------------------------------------------------
def bptrain_stepper(w: dict, dtype: str):
    from bptrain.net.config import load_config
    from bptrain.net.data import Dataset
    from bptrain.training.trainer import Trainer
    X, y = make_data(w, dtype)
    cfg = load_config({
        "name": "bench", "data": {"source": "regression" if w["loss"] == "mse" else "npz",
                                  "path": "unused.npz" if w["loss"] != "mse" else None},
        "model": {"hidden": w["dims"][1:-1], "activation": "relu", "bias": w["bias"],
                  "init": "gaussian" if w["loss"] == "mse" else "he", "std": 1.0},
        "loss": {"type": w["loss"], "reduction": "sum"},
        "regularization": {"type": "l2" if w["reg"] else "none", "strength": w["reg"]},
        "optimizer": {"type": "sgd", "lr": w["lr"]},
        # Steps far from any evaluation: the benchmark times training steps, not evaluations.
        "train": {"batch_size": w["batch"], "shuffle": w["shuffle"], "dtype": dtype,
                  "iterations": 10**9, "eval_every": 10**6}})
    empty = X[:0]
    data = Dataset(X, y, empty, y[:0], None if w["loss"] == "mse" else w["dims"][-1], "bench")
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), data=data)
    Ws, bs = init_weights(w, dtype)  # the same starting point as the other implementations
    for i, W in enumerate(Ws):
        trainer.model.params[f"W{i + 1}"] = W
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
    params = Ws + bs
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
        else:
            Xb, yb = X, y
        state["i"] += 1
        h = Xb
        for k, W in enumerate(Ws):
            h = h @ W + bs[k] if bs else h @ W
            if k < len(Ws) - 1:
                h = torch.relu(h)
        if w["loss"] == "mse":
            loss = (h - yb).pow(2).sum()
        else:
            loss = torch.nn.functional.cross_entropy(h, yb) + 0.5 * reg * sum(
                (W * W).sum() for W in Ws)
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
    dims, n = w["dims"], w["batch"]
    layers = list(zip(dims[:-1], dims[1:]))
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
    args = parser.parse_args()
    blocks = 7 if args.quick else 15
    impls = ["bptrain", "flat numpy"] + (["pytorch"] if have_torch() else [])
    rows = []
    print(f"numpy {np.__version__}; cores {os.cpu_count()}; "
          + ("torch " + __import__("torch").__version__ + " (2 threads)" if have_torch()
             else "torch not installed: PyTorch columns skipped "
                  "(pip install torch==2.13.0 to include them)"), flush=True)
    for dtype in ("float64", "float32"):
        peak = gemm_peak_gflops(dtype)
        for workload in ("a", "b"):
            steps = 20 if workload == "a" else 3
            ms = time_side_by_side(workload, dtype, blocks, steps, impls)
            bound = step_flops(workload) / (peak * 1e9) * 1e3
            mem = {name: peak_memory(workload, dtype, name) for name in impls}
            row = {"workload": workload, "dtype": dtype, "ms": ms, "blas_bound_ms": bound,
                   "peak_mib": mem}
            rows.append(row)
            print(f"{WORKLOADS[workload]['title']} [{dtype}]", flush=True)
            for name in impls:
                ratio_flat = ms[name] / ms["flat numpy"]
                ratio_torch = ms[name] / ms["pytorch"] if "pytorch" in ms else float("nan")
                print(f"  {name:11s} {ms[name]:8.3f} ms/step  x{ratio_flat:5.2f} flat  "
                      f"x{ratio_torch:5.2f} torch  x{ms[name] / bound:5.2f} BLAS bound  "
                      f"peak +{mem[name]:6.1f} MiB", flush=True)
    imp = startup_seconds([sys.executable, "-c", "import bptrain"])
    helpt = startup_seconds([sys.executable, "-m", "bptrain", "--help"])
    print(f"start-up: import bptrain {imp:.3f} s, bptrain --help {helpt:.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "import_s": imp, "help_s": helpt},
                                        indent=1))


if __name__ == "__main__":
    main()
