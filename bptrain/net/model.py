"""Build the graph of gates a config declares, once, and wrap it as a Model.

    X -> affine(W1, b1) -> relu -> ... -> affine(Wk, bk) = scores -> data loss --+-> loss
                  W1, W2, ... ------------------------------> regularizer -------+

Each weight feeds both its layer's gate and the regularizer: a copy gate, so its gradient is
the sum of both. Layers come from the gate registry: a layer's `type` names a registered gate
class, whose `build` makes its gate, parameters and output shape. A layer takes the previous
layer by default, or the layers its `input`/`inputs` name, so a config can declare any directed
acyclic graph (residual blocks, merges). The graph's topological order is computed once; every
training step reuses it.
"""
from __future__ import annotations

import inspect
from collections.abc import MutableMapping
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from bptrain.engine import gates as G
from bptrain.engine.gate import LAYER_KINDS, Gate, registry
from bptrain.engine.graph import Graph, Node
from bptrain.errors import ConfigError
from bptrain.net import budget
from bptrain.net.config import Config, load_config, located
from bptrain.net.usercode import load_gate_class

Shape = tuple[int, ...]


@dataclass
class Layer:
    """One row of the network table: what a layer is and the shapes it maps (per sample)."""
    name: str
    kind: str            # the gate's label: "affine", "relu", "dropout(0.5)", "conv", ...
    in_shape: Shape
    out_shape: Shape
    params: int
    node: Node
    type: str = ""       # the config's layer type
    param_names: tuple[str, ...] = ()

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_dim(self) -> int:
        return int(np.prod(self.out_shape))


class ParamDict(MutableMapping):
    """`model.params`: name -> array, in the order their layers appear in the config
    (W1, b1, gamma1, beta1, W2, ...).

    Reading gives the live parameter array. Assigning copies the new values into it (shape
    checked), so the graph, the optimizer and the user always share one array."""

    def __init__(self, nodes: list[Node]):
        self._nodes = {n.name: n for n in nodes}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._nodes[name].value

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._nodes:
            raise KeyError(f"no parameter {name!r}; parameters: {', '.join(self._nodes)}")
        target = self._nodes[name].value
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"{name} has shape {target.shape}; got an array of {value.shape}")
        np.copyto(target, value, casting="same_kind")

    def __delitem__(self, name: str) -> None:
        raise TypeError("parameters cannot be removed from a built model")

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())


def layer_plan(cfg: Config) -> list[dict[str, Any]]:
    """The explicit layer list, from `model.layers` or expanded from the shorthand
    (CS231n's FullyConnectedNet: affine - [norm] - activation - [dropout] per hidden layer)."""
    m = cfg.model
    if m.layers is not None:
        return [dict(layer) for layer in m.layers]
    act_cls = registry.find(m.activation, ("activation",))
    act = {"type": m.activation, **{k: getattr(m, k) for k in act_cls.settings if hasattr(m, k)}}
    plan: list[dict[str, Any]] = []
    for units in m.hidden:
        plan.append({"type": "affine", "units": units, "bias": m.bias})
        if m.normalization != "none":
            plan.append({"type": m.normalization})
        plan.append(dict(act))
        if m.dropout > 0:
            plan.append({"type": "dropout", "p": m.dropout})
    plan.append({"type": "affine", "units": None, "bias": m.bias})
    return plan


def init_weight(kind: str, shape: Shape, fan_in: int, fan_out: int, std: float,
                rng: np.random.Generator) -> np.ndarray:
    """gaussian: N(0, std^2); xavier (Glorot): std sqrt(2 / (fan_in + fan_out));
    he: std sqrt(2 / fan_in), for ReLU; zeros: all zero (never breaks symmetry).
    For a convolution, fan_in is C*HH*WW: the inputs one output entry sees."""
    if kind == "zeros":
        return np.zeros(shape)
    scale = {"gaussian": std, "xavier": np.sqrt(2.0 / (fan_in + fan_out)),
             "he": np.sqrt(2.0 / fan_in)}[kind]
    return rng.standard_normal(shape) * scale


def _last_weight_layer(plan: Sequence[dict[str, Any]]) -> int | None:
    """Index of the top-level affine layer whose outputs are the scores."""
    affines = [i for i, layer in enumerate(plan) if layer["type"] == "affine"]
    return affines[-1] if affines else None


class _Builder:
    """Adds a config's layers to a graph, one registry class at a time."""

    def __init__(self, model: "Model", cfg: Config, rng: np.random.Generator):
        self.model, self.cfg, self.rng = model, cfg, rng
        self.graph = model.graph
        self.counters: dict[str, int] = {}   # "W" -> layers so far that made a W (W1, W2, ...)
        self.names: dict[str, tuple[Node, Shape, str]] = {}  # layer name -> node, shape, where
        self.count = 0                         # layers built, for dropout seeds

    def init(self, shape: Shape, fan_in: int, fan_out: int) -> np.ndarray:
        m = self.cfg.model
        return init_weight(m.init, tuple(shape), fan_in, fan_out, m.std, self.rng)

    def chain(self, layers: list[dict[str, Any]], node: Node, shape: Shape, path: str,
              output_dim: int | None = None) -> tuple[Node, Shape]:
        """Build `layers` in order from (node, shape); returns the last layer's (node, shape).
        `output_dim` is the scores' width: the top-level last affine layer gets it."""
        last = _last_weight_layer(layers) if output_dim is not None else None
        later = {layer.get("name"): f"{path}[{i}]" for i, layer in enumerate(layers)
                 if layer.get("name")}
        for i, layer in enumerate(layers):
            where = f"{path}[{i}]"
            inputs = self._inputs(layer, (node, shape), where, later)
            node, shape = self.layer(layer, inputs, where,
                                     output_dim if i == last else None)
            if layer.get("name"):
                self.names[layer["name"]] = (node, shape, where)
        return node, shape

    def _inputs(self, layer: dict[str, Any], previous: tuple[Node, Shape], where: str,
                later: dict[str, str]) -> list[tuple[Node, Shape]]:
        wanted = layer.get("inputs") or ([layer["input"]] if layer.get("input") else None)
        if wanted is None:
            return [previous]
        found = []
        for name in wanted:
            if name not in self.names:
                if name in later:
                    raise ConfigError(
                        f"{where}.input: '{name}' is the layer at {later[name]}, which comes "
                        "later: a layer takes only layers before it (so the graph has no "
                        "cycle); reorder the layers or name an earlier one.")
                known = ", ".join(self.names) or "none yet"
                raise ConfigError(f"{where}.input: no layer before it is named '{name}' (named "
                                  f"layers so far: {known}); give the name of an earlier "
                                  "layer, or leave input out to take the previous layer.")
            node, shape, _ = self.names[name]
            found.append((node, shape))
        return found

    def layer(self, layer: dict[str, Any], inputs: list[tuple[Node, Shape]], where: str,
              output_dim: int | None) -> tuple[Node, Shape]:
        kind = layer["type"]
        self.count += 1
        if kind == "residual":
            (x, shape), = inputs
            out, out_shape = self.chain(layer["layers"], x, shape, f"{where}.layers")
            if out_shape != shape:
                raise ConfigError(
                    f"{where}: a residual block adds its input to its layers' output, but its "
                    f"layers map {shape} to {out_shape}; make the last layer give {shape} "
                    f"(units: {shape[0]})" if len(shape) == 1 else
                    f"{where}: a residual block adds its input to its layers' output, but its "
                    f"layers map {shape} to {out_shape}; keep the shape (pad, stride, filters).")
            name = layer.get("name") or self._auto_name("residual")
            node = self.graph.apply(G.Add(), x, out, name=name)
            self._record(name, "residual add", shape, shape, node, kind, ())
            return node, shape
        if kind == "gate":
            base = Path(self.cfg.source_path).parent if self.cfg.source_path else None
            cls = load_gate_class(layer["class"], f"{where}.class", base)
            self.model.user_code.append(f"gate class {cls.__name__} from "
                                        f"{inspect.getsourcefile(cls) or cls.__module__}")
        else:
            cls = registry.find(kind, LAYER_KINDS)
        settings = {k: v for k, v in layer.items()
                    if k not in ("type", "name", "input", "inputs", "class")}
        shapes = [s for _, s in inputs]
        if cls.name == "affine" and len(shapes[0]) > 1:  # images into an affine: flatten first
            flat = self.graph.apply(registry.find("flatten", LAYER_KINDS)(), inputs[0][0],
                                    name=self._auto_name("flatten"))
            flat_shape = (int(np.prod(shapes[0])),)
            self._record(flat.name, "flatten", shapes[0], flat_shape, flat, "flatten", ())
            inputs, shapes = [(flat, flat_shape)], [flat_shape]
        if cls.name == "affine":
            settings = self._affine_units(settings, where, output_dim)
        try:
            built = cls.build(shapes, settings, self.init)
        except (ValueError, TypeError) as e:
            shown = " and ".join(str(tuple(s)) for s in shapes)
            raise ConfigError(f"{where} ({kind}): {e} (input shape{'s' if len(shapes) > 1 else ''}"
                              f" {shown}).") from None
        gate = built.gate
        if hasattr(gate, "rng"):  # dropout: a seed of its own per layer, fixed by the config
            gate.rng = np.random.default_rng(self.cfg.seed * 1000 + self.count)
        param_nodes, names = self._params(built.params)
        default = "scores" if output_dim is not None else self._auto_name(
            "fc" if cls.name == "affine" else kind)
        name = layer.get("name") or default
        node = self.graph.apply(gate, *[n for n, _ in inputs], *param_nodes, name=name)
        self._record(name, gate.label(), shapes[0], tuple(built.out_shape), node, kind, names)
        for attr in type(gate).buffers:  # running statistics: named like the parameters
            suffix = names[0][len(next(iter(built.params))):] if names else str(self.count)
            self.model.buffers[f"{attr}{suffix}"] = (gate, attr)
        if "W" in built.params:  # weights are what the regularizer penalizes
            self.model.weights.append(param_nodes[list(built.params).index("W")])
        return node, tuple(built.out_shape)

    def _affine_units(self, settings: dict[str, Any], where: str,
                      output_dim: int | None) -> dict[str, Any]:
        units = settings.get("units")
        if output_dim is None:
            if units is None:
                raise ConfigError(f"{where}.units: hidden affine layers need 'units'; only the "
                                  "last one's is inferred from the data.")
            return settings
        if units is not None and units != output_dim:
            m = self.model
            what = (f"{output_dim} classes" if m.num_classes else
                    f"{output_dim} target columns")
            raise ConfigError(f"{where}.units: the output layer has {units} units but the data "
                              f"has {what}; set units: {output_dim} or leave it out.")
        return dict(settings, units=output_dim)

    def _params(self, params: dict[str, np.ndarray]) -> tuple[list[Node], tuple[str, ...]]:
        """Parameters named by family and position, CS231n's way: the k-th layer that makes a
        W names its W{k}, b{k}; the k-th normalization layer its gamma{k}, beta{k}."""
        if not params:
            return [], ()
        family = next(iter(params))
        k = self.counters[family] = self.counters.get(family, 0) + 1
        names = tuple(f"{short}{k}" for short in params)
        return [self.graph.param(n, v) for n, v in zip(names, params.values())], names

    def _auto_name(self, prefix: str) -> str:
        base = f"{prefix}{self.counters.get('W', 0)}"
        name, i = base, 1
        while name in self.graph._names:
            i += 1
            name = f"{base}_{i}"
        return name

    def _record(self, name: str, label: str, in_shape: Shape, out_shape: Shape, node: Node,
                kind: str, params: tuple[str, ...]) -> None:
        size = sum(int(np.size(self.graph[p].value)) for p in params)
        self.model.layers.append(Layer(name, label, tuple(in_shape), tuple(out_shape), size,
                                       node, kind, params))


class Model:
    """A network built from a config: a Graph plus named handles into it.

    model.params                 name -> parameter array (W1, b1, W2, b2, ...)
    model.buffers                name -> (gate, attribute) of running statistics
    model.loss_and_grads(X, y)   (total loss incl. regularization, name -> gradient)
    model.scores(X), model.predict(X)
    """

    def __init__(self, cfg: Config, input_dim: int | Sequence[int], output_dim: int,
                 num_classes: int | None = None):
        self.cfg = cfg
        self.dtype = np.dtype(cfg.train.dtype)
        self.input_shape: Shape = ((int(input_dim),) if np.ndim(input_dim) == 0
                                   else tuple(int(d) for d in input_dim))
        self.input_dim = input_dim
        self.output_dim = output_dim
        loss = cfg.loss.type
        loss_cls = registry.find(loss, ("loss",))
        if loss in ("softmax", "svm") and num_classes is None:
            num_classes = output_dim
        self.num_classes = num_classes
        # MSE against class labels trains on one-hot targets.
        self.onehot = loss == "mse" and num_classes is not None
        rng = np.random.default_rng(cfg.seed)
        g = self.graph = Graph(self.dtype)
        self.X = g.input("X", requires_grad=False)
        self.y = g.input("y", requires_grad=False)
        self.layers: list[Layer] = []
        self.weights: list[Node] = []
        self.buffers: dict[str, tuple[Gate, str]] = {}
        self.user_code: list[str] = []
        plan = layer_plan(cfg)
        budget.check_network(plan, self.input_shape, output_dim, cfg)  # before any allocation
        builder = _Builder(self, cfg, rng)
        h, _ = builder.chain(plan, self.X, self.input_shape, "model.layers",
                             output_dim=output_dim)
        self.scores_node = h
        settings = {k: getattr(cfg.loss, k) for k in loss_cls.settings}
        self.data_loss = g.apply(loss_cls(**settings), h, self.y, name="data_loss")
        reg = cfg.regularization
        self.reg_loss = None
        if reg.type != "none" and reg.strength > 0 and self.weights:
            penalty = registry.find(reg.type, ("penalty",))(reg.strength)
            self.reg_loss = g.apply(penalty, *self.weights, name="reg_loss")
            self.loss = g.apply(G.Add(), self.data_loss, self.reg_loss, name="loss")
        else:
            self.loss = self.data_loss
        self.params = ParamDict(g.params)
        for name, (gate, attr) in self.buffers.items():  # running statistics in the dtype
            setattr(gate, attr, np.asarray(getattr(gate, attr), dtype=self.dtype))
        self._eye = np.eye(num_classes, dtype=self.dtype) if self.onehot else None

    # ---- running ---------------------------------------------------------------------------
    def targets(self, y: np.ndarray) -> np.ndarray:
        """What the loss gate compares scores with: labels, or one-hot rows for MSE."""
        return self._eye[y] if self.onehot and y.ndim == 1 else y

    def shaped(self, X: np.ndarray) -> np.ndarray:
        """X as the network reads it: flat rows of an image network become (N, C, H, W)
        (a view, no copy)."""
        if len(self.input_shape) > 1 and np.ndim(X) == 2:
            return np.reshape(X, (len(X), *self.input_shape))
        return X

    def forward_backward(self, X: np.ndarray, y: np.ndarray) -> float:
        """One training pass: total loss, with every parameter's gradient left in node.grad."""
        self.graph.forward(self.loss, X=self.shaped(X), y=self.targets(y))
        self.graph.backward(self.loss)
        return float(self.loss.value)

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Total loss (data + regularization) on (X, y) and the gradient of each parameter."""
        loss = self.forward_backward(X, y)
        return loss, self.grads()

    def grads(self) -> dict[str, np.ndarray]:
        return {n.name: n.grad for n in self.params.nodes()}

    def evaluate_loss(self, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(total loss, scores) without a backward pass (evaluation mode: no dropout, running
        statistics in batch normalization)."""
        self.graph.set_training(False)
        try:
            loss = float(self.graph.forward(self.loss, X=self.shaped(X), y=self.targets(y)))
            return loss, self.scores_node.value
        finally:
            self.graph.set_training(True)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class scores (or regression outputs) for X, in evaluation mode."""
        self.graph.set_training(False)
        try:
            return self.graph.forward(self.scores_node, X=self.shaped(X)).copy()
        finally:
            self.graph.set_training(True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class per row (argmax of the scores); the outputs for regression."""
        s = self.scores(X)
        return s.argmax(axis=1) if self.num_classes else s

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def rng_gates(self) -> list[Gate]:
        """Gates that draw random numbers (dropout); their states go into checkpoints."""
        return [n.gate for n in self.graph.nodes if n.gate is not None and hasattr(n.gate, "rng")]

    # ---- state that is not a parameter: running statistics ----------------------------------
    def buffer_arrays(self) -> dict[str, np.ndarray]:
        """name -> a copy of each running statistic (running_mean1, running_var1, ...)."""
        return {name: np.array(getattr(gate, attr)) for name, (gate, attr) in self.buffers.items()}

    def load_buffers(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the running statistics from `arrays` (bit-exact; shapes checked)."""
        for name, (gate, attr) in self.buffers.items():
            current = np.asarray(getattr(gate, attr))
            value = np.asarray(arrays[name])
            if value.shape != current.shape:
                raise ValueError(f"{name} has shape {current.shape}; got {value.shape}")
            setattr(gate, attr, value.astype(self.dtype, copy=True))


def build_model(cfg: Config | dict | str, input_dim: int | Sequence[int], output_dim: int,
                num_classes: int | None = None) -> Model:
    """Build the network a config declares for inputs of `input_dim` features (or an image
    shape (C, H, W)) and `output_dim` classes (or regression outputs)."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    return Model(cfg, input_dim, output_dim, num_classes)


def check_data_fits(cfg: Config, data: Any) -> None:
    """Combinations of loss and data that only the data can rule out."""
    if cfg.loss.type in ("softmax", "svm") and not data.is_classification:
        raise ConfigError(f"loss.type: '{cfg.loss.type}' needs integer class labels, but "
                          f"{data.name} has real-valued targets of shape {data.y_train.shape}; "
                          "use loss.type=mse.")
    if cfg.loss.type == "mse" and data.is_classification and cfg.data.encoding != "onehot":
        raise ConfigError(f"loss.type: MSE compares outputs with real targets, but {data.name} "
                          "has integer class labels and no stated encoding; set "
                          "data.encoding=onehot to regress one-hot rows, or use softmax/svm.")


def build_for_data(cfg: Config, data: Any) -> Model:
    """The config's network for a loaded Dataset: its input shape, classes or outputs. The
    network's memory is estimated first (Model checks it before allocating a weight)."""
    with located(cfg):  # a config error names its place in the config file (file:line:col)
        check_data_fits(cfg, data)
        shape = input_shape(cfg, data)
        return build_model(cfg, shape if len(shape) > 1 else shape[0], data.output_dim,
                           data.num_classes)


def input_shape(cfg: Config, data: Any) -> Shape:
    """What one sample looks like to the network: (C, H, W) for a network with image layers
    (the dataset's image shape), else (D,)."""
    if cfg.takes_images():
        if data.image_shape is None:
            raise ConfigError(f"model.layers: the network has image layers (conv, pooling), but "
                              f"{data.name} has flat rows of {data.input_dim} features and no "
                              "image shape; set data.shape: [C, H, W].")
        return tuple(data.image_shape)
    return (data.input_dim,)
