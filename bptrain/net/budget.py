"""Memory budget: estimate what an allocation will need before making it, and refuse what
cannot fit with the number it would need.

    check(nbytes, "the network of model.hidden", "reduce model.hidden")   # ConfigError if too big

The budget is the memory this process may still use: the smaller of the machine's available
memory (MemAvailable in /proc/meminfo, else physical memory) and the address-space limit
(`ulimit -v`), or BPTRAIN_MEMORY_LIMIT (bytes, or with a K/M/G/T suffix) when set. Sizes are
Python integers, so an estimate never overflows: 10**15 hidden units are refused with their
petabytes, not wrapped around into a small number.

Only the standard library is imported (numpy is not needed to do arithmetic on sizes).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Iterable

from bptrain.errors import ConfigError

ENV = "BPTRAIN_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int | None:
    """'2G' -> 2147483648, '512M', '1000000'; None when it is not a size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def available_bytes() -> int:
    """How many bytes this process can still allocate, as well as it can be known."""
    override = os.environ.get(ENV)
    if override:
        size = parse_size(override)
        if size is not None:
            return size
    limits = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not limits:
        try:
            limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            limits.append(int(soft))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else 2**40


def human(nbytes: int | float) -> str:
    """1536 -> '1.5 KiB'; 10**20 -> '88817.8 PiB' (always a readable number)."""
    n = float(nbytes) if nbytes < 2**1000 else math.inf
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    if n < 1e6:
        return f"{n:.1f} PiB"
    return f"{n:.1e} PiB" if math.isfinite(n) else "more than 1e300 PiB"


def check(nbytes: int, what: str, fix: str, error: type = ConfigError) -> None:
    """Raise `error` when `nbytes` (an estimate) exceeds the budget: "WHAT would need N, more
    than the M this machine has available; FIX." """
    budget = available_bytes()
    if nbytes > budget:
        raise error(f"{what} would need about {human(nbytes)} of memory, more than the "
                    f"{human(budget)} available here; {fix}.")


# ---- the network ----------------------------------------------------------------------------
def _prod(shape: Iterable[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _walk(layers: list[dict[str, Any]], shape: tuple[int, ...], output_dim: int | None,
          path: str, tally: dict[str, Any]) -> tuple[int, ...]:
    """Add each layer's parameters and activations (per sample) to `tally`; returns the output
    shape. Shapes follow affine and convolution/pooling layers; other layers keep the shape."""
    affines = [i for i, l in enumerate(layers) if l.get("type") == "affine"]
    last = affines[-1] if affines and output_dim is not None else None
    for i, layer in enumerate(layers):
        where = f"{path}[{i}]"
        kind = layer.get("type")
        params = 0
        if kind == "affine":
            units = output_dim if i == last else layer.get("units")
            units = int(units) if isinstance(units, int) and units > 0 else 1
            fan_in = _prod(shape)
            params = fan_in * units + (units if layer.get("bias", True) else 0)
            shape = (units,)
        elif kind == "conv" and len(shape) == 3:
            f, k = int(layer.get("filters") or 1), int(layer.get("size") or 3)
            s, p = max(int(layer.get("stride") or 1), 1), int(layer.get("pad") or 0)
            c, h, w = shape
            params = f * c * k * k + f
            shape = (f, max((h + 2 * p - k) // s + 1, 1), max((w + 2 * p - k) // s + 1, 1))
        elif kind in ("maxpool", "avgpool") and len(shape) == 3:
            k = int(layer.get("size") or 2)
            s = max(int(layer.get("stride") or k), 1)
            c, h, w = shape
            shape = (c, max((h - k) // s + 1, 1), max((w - k) // s + 1, 1))
        elif kind == "residual" and isinstance(layer.get("layers"), list):
            _walk(layer["layers"], shape, None, f"{where}.layers", tally)
        tally["params"] += params
        tally["activations"] += _prod(shape)
        if params > tally["largest"][0]:
            tally["largest"] = (params, where)
    return shape


def network_bytes(plan: list[dict[str, Any]], input_shape: tuple[int, ...], output_dim: int,
                  batch: int, itemsize: int = 8, optimizer_slots: int = 2) -> dict[str, Any]:
    """An estimate of a network's memory: {"bytes", "params", "activations", "largest":
    (params, layer path)}. Parameters are counted with their gradient, the optimizer's slots
    and the copies a run keeps (best, checkpoint); activations with their backward caches."""
    tally: dict[str, Any] = {"params": 0, "activations": 0, "largest": (0, "model")}
    _walk(plan, tuple(int(s) for s in input_shape), int(output_dim), "model.layers", tally)
    per_param = 2 + optimizer_slots + 2
    total = (tally["params"] * per_param + tally["activations"] * batch * 3) * itemsize
    return dict(tally, bytes=total)


def check_network(plan: list[dict[str, Any]], input_shape: tuple[int, ...], output_dim: int,
                  cfg: Any) -> None:
    """Refuse a network that cannot fit, before any weight is allocated (ConfigError naming
    the largest layer and the numbers)."""
    itemsize = 4 if getattr(cfg.train, "dtype", "float64") == "float32" else 8
    slots = {"sgd": 1, "momentum": 1, "nesterov": 1, "rmsprop": 1}.get(cfg.optimizer.type, 2)
    batch = max(1, int(cfg.train.batch_size))
    est = network_bytes(plan, input_shape, output_dim, batch, itemsize, slots)
    params, where = est["largest"]
    if cfg.model.layers is None and where.startswith("model.layers["):
        # the shorthand: model.layers[2k] is hidden layer k (affine, activation, ...)
        affine_index = [i for i, l in enumerate(plan) if l.get("type") == "affine"]
        index = int(where[len("model.layers["):].split("]")[0])
        k = affine_index.index(index) if index in affine_index else 0
        where = (f"model.hidden[{k}]" if k < len(cfg.model.hidden) else
                 f"the output layer ({output_dim} outputs)")
    check(est["bytes"], f"{where}: the network ({est['params']:,} parameters, {params:,} of "
          "them in this layer)", "reduce model.hidden (or the layer's units), the number of "
          "classes or features, or train.batch_size")


def check_data(rows: int, columns: int, what: str, fix: str, itemsize: int = 8,
               copies: int = 3, error: type | None = None) -> None:
    """Refuse data of rows x columns numbers that cannot fit (the arrays and the copies that
    loading, splitting and standardizing make)."""
    from bptrain.errors import DataError
    check(int(rows) * int(columns) * itemsize * copies, what, fix, error or DataError)
