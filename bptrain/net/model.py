"""Build the graph of gates a config declares, once, and wrap it as a Model.

    X -> affine(W1, b1) -> relu -> ... -> affine(Wk, bk) = scores -> data loss --+-> loss
                  W1, W2, ... ------------------------------> regularizer -------+

Each weight feeds both its affine gate and the regularizer: a copy gate, so its gradient is
the sum of both. The graph's topological order is computed once; every training step reuses it.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from bptrain.engine import gates as G
from bptrain.net.config import Config, LayerConfig, load_config
from bptrain.errors import ConfigError
from bptrain.engine.graph import Gate, Graph, Node


@dataclass
class Layer:
    """One row of the network table: what a layer is and the shapes it maps."""
    name: str
    kind: str            # "affine" or an activation / dropout name
    in_dim: int
    out_dim: int
    params: int
    node: Node


class ParamDict(MutableMapping):
    """`model.params`: name -> array, in layer order W1, b1, W2, b2, ...

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


def _layer_plan(cfg: Config) -> list[LayerConfig]:
    """The explicit layer list, from `model.layers` or expanded from the shorthand."""
    m = cfg.model
    if m.layers is not None:
        return list(m.layers)
    plan: list[LayerConfig] = []
    for units in m.hidden:
        plan.append(LayerConfig(type="affine", units=units, bias=m.bias))
        plan.append(LayerConfig(type=m.activation, slope=m.slope, alpha=m.alpha))
        if m.dropout > 0:
            plan.append(LayerConfig(type="dropout", p=m.dropout))
    plan.append(LayerConfig(type="affine", units=None, bias=m.bias))
    return plan


def init_weight(kind: str, fan_in: int, fan_out: int, std: float,
                rng: np.random.Generator) -> np.ndarray:
    """gaussian: N(0, std^2); xavier (Glorot): std sqrt(2 / (fan_in + fan_out));
    he: std sqrt(2 / fan_in), for ReLU; zeros: all zero (never breaks symmetry)."""
    if kind == "zeros":
        return np.zeros((fan_in, fan_out))
    scale = {"gaussian": std, "xavier": np.sqrt(2.0 / (fan_in + fan_out)),
             "he": np.sqrt(2.0 / fan_in)}[kind]
    return rng.standard_normal((fan_in, fan_out)) * scale


def _activation_gate(layer: LayerConfig, seed: int) -> Gate:
    return {"relu": lambda: G.ReLU(), "leaky_relu": lambda: G.LeakyReLU(layer.slope),
            "sigmoid": lambda: G.Sigmoid(), "tanh": lambda: G.Tanh(),
            "elu": lambda: G.ELU(layer.alpha),
            "dropout": lambda: G.Dropout(layer.p, seed=seed)}[layer.type]()


class Model:
    """A network built from a config: a Graph plus named handles into it.

    model.params                 name -> parameter array (W1, b1, W2, b2, ...)
    model.loss_and_grads(X, y)   (total loss incl. regularization, name -> gradient)
    model.scores(X), model.predict(X)
    """

    def __init__(self, cfg: Config, input_dim: int, output_dim: int,
                 num_classes: int | None = None):
        self.cfg = cfg
        self.dtype = np.dtype(cfg.train.dtype)
        self.input_dim, self.output_dim = input_dim, output_dim
        loss = cfg.loss.type
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
        h, width, weights, n_affine = self.X, input_dim, [], 0
        plan = _layer_plan(cfg)
        last_affine = max(i for i, l in enumerate(plan) if l.type == "affine")
        for i, layer in enumerate(plan):
            if layer.type == "affine":
                n_affine += 1
                units = layer.units
                if i == last_affine:
                    if units is not None and units != output_dim:
                        what = (f"{output_dim} classes" if num_classes else
                                f"{output_dim} target columns")
                        raise ConfigError(
                            f"model.layers[{i}].units: the output layer has {units} units but "
                            f"the data has {what}; set units: {output_dim} or leave it out.")
                    units = output_dim
                W = g.param(f"W{n_affine}", init_weight(cfg.model.init, width, units,
                                                         cfg.model.std, rng))
                weights.append(W)
                name = "scores" if i == last_affine else f"fc{n_affine}"
                if layer.bias:
                    b = g.param(f"b{n_affine}", np.zeros(units))
                    h = g.apply(G.Affine(), h, W, b, name=name)
                else:
                    h = g.apply(G.MatMul(), h, W, name=name)
                self.layers.append(Layer(name, "affine", width, units,
                                         width * units + (units if layer.bias else 0), h))
                width = units
            else:
                gate = _activation_gate(layer, seed=cfg.seed * 1000 + i + 1)
                h = g.apply(gate, h, name=f"{layer.type}{n_affine}")
                self.layers.append(Layer(h.name, gate.label(), width, width, 0, h))
        self.scores_node = h
        data_loss = {"softmax": lambda: G.SoftmaxCrossEntropy(),
                     "svm": lambda: G.SVMHinge(cfg.loss.margin),
                     "mse": lambda: G.MSE(cfg.loss.reduction)}[loss]()
        self.data_loss = g.apply(data_loss, h, self.y, name="data_loss")
        reg = cfg.regularization
        self.reg_loss = None
        if reg.type != "none" and reg.strength > 0:
            penalty = G.L2(reg.strength) if reg.type == "l2" else G.L1(reg.strength)
            self.reg_loss = g.apply(penalty, *weights, name="reg_loss")
            self.loss = g.apply(G.Add(), self.data_loss, self.reg_loss, name="loss")
        else:
            self.loss = self.data_loss
        self.weights = weights
        self.params = ParamDict(g.params)
        self._eye = np.eye(num_classes, dtype=self.dtype) if self.onehot else None

    # ---- running ---------------------------------------------------------------------------
    def targets(self, y: np.ndarray) -> np.ndarray:
        """What the loss gate compares scores with: labels, or one-hot rows for MSE."""
        return self._eye[y] if self.onehot and y.ndim == 1 else y

    def forward_backward(self, X: np.ndarray, y: np.ndarray) -> float:
        """One training pass: total loss, with every parameter's gradient left in node.grad."""
        self.graph.forward(self.loss, X=X, y=self.targets(y))
        self.graph.backward(self.loss)
        return float(self.loss.value)

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Total loss (data + regularization) on (X, y) and the gradient of each parameter."""
        loss = self.forward_backward(X, y)
        return loss, {n.name: n.grad for n in self.params.nodes()}

    def grads(self) -> dict[str, np.ndarray]:
        return {n.name: n.grad for n in self.params.nodes()}

    def evaluate_loss(self, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(total loss, scores) without a backward pass (evaluation mode: no dropout)."""
        self.graph.set_training(False)
        try:
            loss = float(self.graph.forward(self.loss, X=X, y=self.targets(y)))
            return loss, self.scores_node.value
        finally:
            self.graph.set_training(True)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class scores (or regression outputs) for X, in evaluation mode."""
        self.graph.set_training(False)
        try:
            return self.graph.forward(self.scores_node, X=X).copy()
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


def build_model(cfg: Config | dict | str, input_dim: int, output_dim: int,
                num_classes: int | None = None) -> Model:
    """Build the network a config declares for data of `input_dim` features and
    `output_dim` classes (or regression outputs)."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    return Model(cfg, input_dim, output_dim, num_classes)
