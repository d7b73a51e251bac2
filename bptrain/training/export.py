"""ONNX export of a trained run: `bptrain export RUN_DIR [-o model.onnx] [--weights best|final]`.

The exported graph takes what `bptrain predict` takes, raw (N, D) rows in the run's dtype, and
gives what `TrainedRun.scores` gives:

    X (N, D) raw -> Sub(mean) -> Div(std) -> [Reshape (N, C, H, W)] -> layers -> scores (N, K)
                                                         softmax runs also: probabilities (N, K)

The layers are the built Model's own graph, walked in its forward order
(`model.graph.plan(model.scores_node)`), each gate turned into ONNX nodes by the function that
`EXPORTERS` names for its class: one function per gate family. Parameters become initializers
named like bptrain's (W1, b1, gamma1, ...); evaluation mode is exported (dropout is the
identity, batch normalization uses its running statistics). A gate class with no entry (a
user's own) is an error that names it.

float32 runs use the plain ONNX operators. onnxruntime has no float64 kernels for Conv,
AveragePool and Elu, and ONNX attributes (LeakyRelu's alpha, LayerNormalization's epsilon)
are float32, so float64 runs write those as equivalent elementary operators with float64
constants (the windows gathered by index, then MatMul / ReduceMean; Where; ReduceMean, Sqrt).

onnx is an optional dependency: pip install 'bptrain[onnx]' (onnx, and onnxruntime to run it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from bptrain.errors import BptrainError

OPSET = 17        # LayerNormalization is in the default domain from opset 17
IR_VERSION = 8    # readable by onnxruntime >= 1.10
RESERVED = ("X", "scores", "probabilities")  # the graph's own input and outputs


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise BptrainError("bptrain export writes ONNX files with the onnx package, which is "
                           "not installed; install it with pip install 'bptrain[onnx]' (or "
                           "pip install onnx onnxruntime).") from None
    return onnx


class _Writer:
    """Collects the nodes and initializers of one ONNX graph, with unique tensor names."""

    def __init__(self, onnx: Any, dtype: np.dtype):
        self.onnx, self.helper = onnx, onnx.helper
        self.dtype = np.dtype(dtype)
        self.double = self.dtype == np.float64
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.used: set[str] = set(RESERVED)

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, base: str, value: Any, integer: bool = False) -> str:
        """An initializer: floats in the model's dtype, integers (shapes, indices) int64."""
        arr = np.asarray(value, dtype=np.int64 if integer else self.dtype)
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, out: str | None = None,
           **attrs: Any) -> str:
        """Add one node; returns its output's name (`out`, or a fresh one from `base`)."""
        out = out or self.name(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


# ---- one function per gate family: (writer, node, input names, output name, shapes) -------
Shapes = dict  # id(graph node) -> its per-sample shape


def _affine(w: _Writer, node, ins, out, shapes) -> None:
    """Affine (X W + b) and MatMul (X W, an affine layer without bias)."""
    if len(ins) == 2:
        w.op("MatMul", ins, "", out)
        return
    xw = w.op("MatMul", ins[:2], f"{out}/matmul")
    w.op("Add", [xw, ins[2]], "", out)


def _activation(w: _Writer, node, ins, out, shapes) -> None:
    gate, kind = node.gate, type(node.gate).__name__
    if kind == "ReLU":
        w.op("Relu", ins, "", out)
    elif kind == "LeakyReLU" and not w.double:
        w.op("LeakyRelu", ins, "", out, alpha=float(gate.slope))
    elif kind == "LeakyReLU":  # float64: ONNX attributes are float32, so slope is a tensor
        (x,) = ins
        zero, slope = w.const(f"{out}/zero", 0.0), w.const(f"{out}/slope", gate.slope)
        w.op("Where", [w.op("Greater", [x, zero], f"{out}/positive"), x,
                       w.op("Mul", [x, slope], f"{out}/below")], "", out)
    elif kind == "Sigmoid":
        w.op("Sigmoid", ins, "", out)
    elif kind == "Tanh":
        w.op("Tanh", ins, "", out)
    elif kind == "ELU" and not w.double:
        w.op("Elu", ins, "", out, alpha=float(gate.alpha))
    else:  # ELU in float64: alpha (e^min(x, 0) - 1) below 0, x above
        (x,) = ins
        zero, one = w.const(f"{out}/zero", 0.0), w.const(f"{out}/one", 1.0)
        alpha = w.const(f"{out}/alpha", gate.alpha)
        e = w.op("Exp", [w.op("Min", [x, zero], f"{out}/min")], f"{out}/exp")
        below = w.op("Mul", [alpha, w.op("Sub", [e, one], f"{out}/expm1")], f"{out}/below")
        w.op("Where", [w.op("Greater", [x, zero], f"{out}/positive"), x, below], "", out)


def _identity(w: _Writer, node, ins, out, shapes) -> None:
    """Dropout: the identity in evaluation mode."""
    w.op("Identity", ins, "", out)


def _batchnorm(w: _Writer, node, ins, out, shapes) -> None:
    """Batch normalization in evaluation mode, with the running statistics. Flat (N, D), and
    images in float64: the gate's own arithmetic, gamma ((x - mean) / sqrt(var + eps)) + beta
    (ONNX's epsilon attribute is float32); images (N, C, H, W) in float32: BatchNormalization."""
    gate = node.gate
    x, gamma, beta = ins
    mean = np.asarray(gate.running_mean, dtype=w.dtype)
    var = np.asarray(gate.running_var, dtype=w.dtype)
    if gate.sample_ndim == 1 or w.double:
        view = (-1,) + (1,) * (gate.sample_ndim - 1)  # (C,) or (C, 1, 1): along axis 1
        inv_std = 1.0 / np.sqrt(var + gate.eps)  # as BatchNorm.forward computes it
        centered = w.op("Sub", [x, w.const(f"{out}/running_mean", mean.reshape(view))],
                        f"{out}/centered")
        xhat = w.op("Mul", [centered, w.const(f"{out}/inv_std", inv_std.reshape(view))],
                    f"{out}/xhat")
        if gate.sample_ndim > 1:
            shape = w.const(f"{out}/channel_shape", view, True)
            gamma = w.op("Reshape", [gamma, shape], f"{out}/gamma")
            beta = w.op("Reshape", [beta, shape], f"{out}/beta")
        w.op("Add", [w.op("Mul", [xhat, gamma], f"{out}/scaled"), beta], "", out)
        return
    w.op("BatchNormalization", [x, gamma, beta, w.const(f"{out}/running_mean", mean),
                                w.const(f"{out}/running_var", var)], "", out,
         epsilon=float(gate.eps))


def _normalized(w: _Writer, x: str, axis: int, eps: float, out: str) -> str:
    """(x - mean) / sqrt(var + eps) over `axis`, the biased variance of the centered values:
    the arithmetic of bptrain's _normalize."""
    mean = w.op("ReduceMean", [x], f"{out}/mean", axes=[axis], keepdims=1)
    centered = w.op("Sub", [x, mean], f"{out}/centered")
    var = w.op("ReduceMean", [w.op("Mul", [centered, centered], f"{out}/squares")],
               f"{out}/var", axes=[axis], keepdims=1)
    std = w.op("Sqrt", [w.op("Add", [var, w.const(f"{out}/eps", eps)], f"{out}/var_eps")],
               f"{out}/std")
    return w.op("Mul", [centered, w.op("Reciprocal", [std], f"{out}/inv_std")], f"{out}/xhat")


def _layernorm(w: _Writer, node, ins, out, shapes) -> None:
    """ONNX LayerNormalization; in float64 the elementary operators, with eps a float64
    tensor (ONNX attributes are float32)."""
    if not w.double:
        w.op("LayerNormalization", ins, "", out, axis=-1, epsilon=float(node.gate.eps))
        return
    x, gamma, beta = ins
    xhat = _normalized(w, x, 1, node.gate.eps, out)
    w.op("Add", [w.op("Mul", [xhat, gamma], f"{out}/scaled"), beta], "", out)


def _groupnorm(w: _Writer, node, ins, out, shapes) -> None:
    """Group normalization as elementary operators: the (N, C, H, W) input viewed as
    (N, G, C/G H W), each group normalized over its last axis, then gamma and beta per channel."""
    gate = node.gate
    x, gamma, beta = ins
    C = shapes[id(node.inputs[0])][0]
    grouped = w.op("Reshape", [x, w.const(f"{out}/groups", [0, gate.groups, -1], True)],
                   f"{out}/grouped")
    xhat = _normalized(w, grouped, 2, gate.eps, out)
    xhat = w.op("Reshape", [xhat, w.op("Shape", [x], f"{out}/shape")], f"{out}/xhat_images")
    per_channel = w.const(f"{out}/channel_shape", [C, 1, 1], True)
    g = w.op("Reshape", [gamma, per_channel], f"{out}/gamma")
    b = w.op("Reshape", [beta, per_channel], f"{out}/beta")
    w.op("Add", [w.op("Mul", [xhat, g], f"{out}/scaled"), b], "", out)


def _merge(w: _Writer, node, ins, out, shapes) -> None:
    """add (the residual connection too): summed in order, as Add.forward; concat: axis 1."""
    if type(node.gate).__name__ == "Concat":
        w.op("Concat", ins, "", out, axis=1)
        return
    total = ins[0]
    for i, x in enumerate(ins[1:], start=1):
        total = w.op("Add", [total, x], f"{out}/sum{i}", out if i == len(ins) - 1 else None)


def _window_index(C: int, H: int, W: int, k: tuple[int, int], stride: int,
                  Ho: int, Wo: int) -> np.ndarray:
    """(C k k, Ho Wo) flat indices into a (C, H, W) image: im2col's columns, for Gather."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(k[0]), np.arange(k[1]), indexing="ij")
    h, v = np.meshgrid(np.arange(Ho) * stride, np.arange(Wo) * stride, indexing="ij")
    rows = (c.reshape(-1, 1) * H + i.reshape(-1, 1) + h.reshape(1, -1)) * W
    return rows + j.reshape(-1, 1) + v.reshape(1, -1)


def _conv(w: _Writer, node, ins, out, shapes) -> None:
    gate = node.gate
    F, C, HH, WW = node.inputs[1].value.shape
    s, p = int(gate.stride), int(gate.pad)
    if not w.double:
        w.op("Conv", ins, "", out, kernel_shape=[HH, WW], strides=[s, s], pads=[p, p, p, p])
        return
    # float64: out = W_flat @ im2col(x) (+ b), the windows gathered by index
    x = ins[0]
    _, H, W = shapes[id(node.inputs[0])]
    Ho, Wo = gate.out_hw(H, W, HH, WW)
    if p:
        x = w.op("Pad", [x, w.const(f"{out}/pads", [0, 0, p, p, 0, 0, p, p], True)],
                 f"{out}/padded")
    flat = w.op("Reshape", [x, w.const(f"{out}/flat", [0, -1], True)], f"{out}/flat_x")
    index = w.const(f"{out}/windows", _window_index(C, H + 2 * p, W + 2 * p, (HH, WW), s,
                                                    Ho, Wo), True)
    cols = w.op("Gather", [flat, index], f"{out}/cols", axis=1)       # (N, C HH WW, Ho Wo)
    w_flat = w.op("Reshape", [ins[1], w.const(f"{out}/w_shape", [F, -1], True)],
                  f"{out}/w_flat")
    y = w.op("MatMul", [w_flat, cols], f"{out}/matmul")                 # (N, F, Ho Wo)
    if len(ins) == 3:
        bias = w.op("Reshape", [ins[2], w.const(f"{out}/b_shape", [F, 1], True)],
                    f"{out}/b_column")
        y = w.op("Add", [y, bias], f"{out}/biased")
    w.op("Reshape", [y, w.const(f"{out}/out_shape", [0, F, Ho, Wo], True)], "", out)


def _pool(w: _Writer, node, ins, out, shapes) -> None:
    gate = node.gate
    k, s = int(gate.size), int(gate.stride)
    if type(gate).__name__ == "MaxPool2D":
        w.op("MaxPool", ins, "", out, kernel_shape=[k, k], strides=[s, s])
    elif not w.double:
        w.op("AveragePool", ins, "", out, kernel_shape=[k, k], strides=[s, s])
    else:  # float64: the mean of each gathered window
        C, H, W = shapes[id(node.inputs[0])]
        Ho, Wo = gate.out_hw(H, W)
        index = _window_index(1, H, W, (k, k), s, Ho, Wo).T            # (Ho Wo, k k)
        flat = w.op("Reshape", [ins[0], w.const(f"{out}/flat", [0, C, -1], True)],
                    f"{out}/flat_x")
        windows = w.op("Gather", [flat, w.const(f"{out}/windows", index, True)],
                       f"{out}/windows_x", axis=2)                      # (N, C, Ho Wo, k k)
        mean = w.op("ReduceMean", [windows], f"{out}/mean", axes=[3], keepdims=0)
        w.op("Reshape", [mean, w.const(f"{out}/out_shape", [0, C, Ho, Wo], True)], "", out)


def _flatten(w: _Writer, node, ins, out, shapes) -> None:
    w.op("Flatten", ins, "", out, axis=1)


Exporter = Callable[[_Writer, Any, list, str, Shapes], None]
EXPORTERS: dict[str, Exporter] = {
    "Affine": _affine, "MatMul": _affine,
    "ReLU": _activation, "LeakyReLU": _activation, "Sigmoid": _activation,
    "Tanh": _activation, "ELU": _activation,
    "Dropout": _identity,
    "BatchNorm": _batchnorm, "SpatialBatchNorm": _batchnorm,
    "LayerNorm": _layernorm, "GroupNorm": _groupnorm,
    "Add": _merge, "Concat": _merge,
    "Conv2D": _conv, "MaxPool2D": _pool, "AvgPool2D": _pool, "Flatten": _flatten,
}


# ---- the whole model ------------------------------------------------------------------------
def to_onnx(model: Any, feature_mean: np.ndarray | None = None,
            feature_std: np.ndarray | None = None, probabilities: bool = False,
            name: str = "bptrain") -> Any:
    """The ONNX ModelProto of a built bptrain Model (its current weights, evaluation mode),
    with the standardization (X - mean) / std first and the scores (and, with
    `probabilities`, their softmax) as outputs."""
    onnx = _import_onnx()
    helper = onnx.helper
    w = _Writer(onnx, model.dtype)
    elem = helper.np_dtype_to_tensor_dtype(w.dtype)
    layer_of = {id(layer.node): layer for layer in model.layers}
    shapes: Shapes = {id(model.X): tuple(model.input_shape)}
    shapes.update({k: tuple(layer.out_shape) for k, layer in layer_of.items()})
    order, _ = model.graph.plan(model.scores_node)
    # Check every gate first: one error naming each layer that cannot be exported.
    missing = [(n, type(n.gate)) for n in order
               if n.gate is not None and type(n.gate).__name__ not in EXPORTERS]
    if missing:
        shown = ", ".join(f"layer '{n.name}' ({cls.__module__}.{cls.__name__})"
                          for n, cls in missing)
        raise BptrainError(f"ONNX export: {shown} has no ONNX mapping; bptrain exports "
                           f"{', '.join(sorted(EXPORTERS))}. Add a function for it to "
                           "bptrain.training.export.EXPORTERS (keyed by the gate class name).")
    D = int(np.prod(model.input_shape))
    x = "X"
    if feature_mean is not None:
        x = w.op("Sub", [x, w.const("feature_mean", np.reshape(feature_mean, -1))], "centered")
        x = w.op("Div", [x, w.const("feature_std", np.reshape(feature_std, -1))],
                 "standardized")
    if len(model.input_shape) > 1:
        x = w.op("Reshape", [x, w.const("image_shape", [-1, *model.input_shape], True)],
                 "images")
    tensor = {id(model.X): x}
    for n in order:
        if n.kind == "param":
            tensor[id(n)] = w.name(n.name)  # W1, b1, gamma1, ... as bptrain names them
            w.initializers.append(onnx.numpy_helper.from_array(
                np.asarray(n.value, dtype=w.dtype), tensor[id(n)]))
        elif n.kind == "const":
            tensor[id(n)] = w.const(n.name, n.value)
        elif n.gate is not None:
            out = w.name(n.name)
            tensor[id(n)] = out
            ins = [tensor[id(p)] for p in n.inputs]
            EXPORTERS[type(n.gate).__name__](w, n, ins, out, shapes)
        elif n is not model.X:
            raise BptrainError(f"ONNX export: the scores depend on the input {n.name!r}, "
                               "which only X may be.")
    w.op("Identity", [tensor[id(model.scores_node)]], "", "scores")
    K = int(model.output_dim)
    outputs = [helper.make_tensor_value_info("scores", elem, ["N", K])]
    if probabilities:
        w.op("Softmax", ["scores"], "", "probabilities", axis=1)
        outputs.append(helper.make_tensor_value_info("probabilities", elem, ["N", K]))
    graph = helper.make_graph(w.nodes, name, [helper.make_tensor_value_info("X", elem, ["N", D])],
                              outputs, w.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="bptrain", ir_version=IR_VERSION)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_run(run_dir: str | Path, out: str | Path | None = None,
               weights: str = "best") -> tuple[Path, Any]:
    """Write a run's network as ONNX (default RUN_DIR/model.onnx); returns the path and the
    TrainedRun it was made from."""
    from bptrain.training.predict import load_run
    onnx = _import_onnx()
    run = load_run(run_dir, weights)
    softmax = run.config.loss.type == "softmax" and bool(run.num_classes)
    proto = to_onnx(run.model, run.feature_mean, run.feature_std, probabilities=softmax,
                    name=run.config.name)
    meta = {"bptrain_run": str(run.path), "bptrain_weights": run.weights,
            "loss": run.config.loss.type, "input": "X: raw (N, D) rows, standardized inside"}
    if run.classes:
        meta["classes"] = ",".join(run.classes)
    onnx.helper.set_model_props(proto, meta)
    path = Path(out) if out is not None else Path(run_dir) / "model.onnx"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from bptrain.training.rundir import atomic_write_bytes
        atomic_write_bytes(path, lambda f: f.write(proto.SerializeToString()))
    except OSError as e:
        raise BptrainError(f"{path}: cannot write the ONNX file ({e}).") from None
    return path, run
