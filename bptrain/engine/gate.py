"""The Gate base class, the settings a gate declares, and the registry that gate classes fill
themselves.

A gate is a small object with two methods, as in the lecture notes and in PyTorch's
autograd.Function:

    forward(*inputs)    computes the output and keeps in `self` what backward will need;
    backward(upstream)  returns one downstream gradient per input (local gradient x upstream).

A gate class that sets `kind` (and a `name`) is registered when Python defines it: configs find
layer types and losses there, `trace` its functions, `gradcheck` its library sweep, `show` its
labels and costs. The registry is only an index that the classes fill; the class stays the one
definition. Adding a layer type is one class in one file.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

Array = np.ndarray
Shape = tuple[int, ...]

# What a config or `trace` may do with a registered gate class, by its `kind`:
#   "activation"  a layer type with one input and no parameters, and a trace function
#   "layer"       a layer type with parameters (affine, batchnorm, conv, ...)
#   "merge"       a layer type that joins several inputs (add, concat)
#   "shape"       a layer type that only moves entries (flatten, pooling)
#   "loss"        a `loss.type`
#   "penalty"     a `regularization.type`
#   "function"    a trace function only (exp, log, abs, max, min)
#   "operator"    reached through Python's operators (+, -, *, /, **, @), never by name
LAYER_KINDS = ("activation", "layer", "merge", "shape")
KINDS = LAYER_KINDS + ("loss", "penalty", "function", "operator")

REQUIRED: Any = object()  # a setting without a default


class _EveryInput(tuple):
    """The default `needs_input_grad`: a gate called on its own owes every input a gradient."""

    def __getitem__(self, i):  # type: ignore[override]
        return True

    def __repr__(self) -> str:
        return "EVERY_INPUT"


EVERY_INPUT: Any = _EveryInput()


@dataclass(frozen=True)
class Setting:
    """One setting of a gate as a config writes it: its type, default and allowed values."""
    default: Any = REQUIRED
    type: type = float          # int, float, bool or str (a list: `list[int]` style via `item`)
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    nullable: bool = False      # None allowed (and then means "inferred")
    help: str = ""


class Gate:
    """Base class of every gate. Subclass it, write `forward` and `backward`; nothing else.

    forward(*inputs) -> output          (save what backward needs on self)
    backward(upstream) -> tuple         (one downstream gradient per input)

    A gate that can skip work for inputs that need no gradient (the data X of a matmul) takes a
    second argument: backward(upstream, needs_input_grad=EVERY_INPUT), a tuple of bools, one per
    input; it may return None for an input marked False. The graph hands it over.

    Class attributes, all optional:
      name      short label shown by `trace` and `show` (default: the class name, lower case)
      kind      where configs may use the gate (see KINDS); set it to register the class
      config_name  the name a config writes, when it differs from `name` (loss.type: softmax)
      settings  name -> Setting: what a config may set (constructor keywords, unless the class
                overrides `build`)
      pattern   the lecture's word for how the gate routes gradients ("distributor", ...)
      kinked    True if the derivative jumps somewhere (relu, max, abs, hinge, ...); such a gate
                returns from `branches()` which side of each kink the last forward took, so a
                gradient check can tell a kink crossing from a bug
      buffers   names of array attributes that are state but not parameters (batch norm's
                running statistics): saved in checkpoints and model files
      input_rank  3 for a layer that reads images (C, H, W) per sample: the data then reach
                the network as (N, C, H, W) and images are standardized per channel
    Instance attribute set by the Graph: training (False in evaluation mode).
    """

    name: ClassVar[str | None] = None
    kind: ClassVar[str | None] = None
    config_name: ClassVar[str | None] = None
    settings: ClassVar[dict[str, Setting]] = {}
    pattern: ClassVar[str | None] = None
    kinked: ClassVar[bool] = False
    buffers: ClassVar[tuple[str, ...]] = ()
    input_rank: ClassVar[int | None] = None  # 3: a layer that reads images (C, H, W)
    training: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Whether backward takes needs_input_grad: read once, from its signature.
        params = list(inspect.signature(cls.backward).parameters)
        cls.takes_needs_input_grad = len(params) >= 3
        # Registered: a class with a kind that names itself, or that sets its own kind (a base
        # class whose name starts with "_" only shares code and is not a gate of its own).
        own = cls.__dict__
        if cls.kind is not None and ("name" in own or "config_name" in own or (
                "kind" in own and not cls.__name__.startswith("_"))):
            registry.add(cls)

    takes_needs_input_grad: ClassVar[bool] = False

    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward(*inputs)")

    def backward(self, upstream: Any) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} must define backward(upstream)")

    def branches(self) -> Any:
        """Which side of each kink the last forward took (a bool array), or None."""
        return None

    def label(self) -> str:
        """The gate's display name, with its settings (e.g. 'leaky_relu(0.01)')."""
        return self.name or type(self).__name__.lower()

    def macs(self, *input_shapes: Shape) -> int:
        """Multiply-adds of one forward on inputs of these shapes (0 for elementwise gates)."""
        return 0

    def __call__(self, *nodes: Any) -> Any:
        """Apply the gate to nodes: `Sigmoid()(x)` adds a node to x's graph."""
        graph = next((n.graph for n in nodes if hasattr(n, "graph")), None)
        if graph is None:
            raise TypeError(f"{self.label()} needs at least one graph node among its inputs")
        return graph.apply(self, *nodes)

    # ---- how configs use a registered class ---------------------------------------------
    @classmethod
    def build(cls, in_shapes: Sequence[Shape], settings: dict[str, Any],
              init: Callable[[Shape, int, int], Array]) -> "Built":
        """A layer for inputs of `in_shapes` (one shape per input, per sample: no batch axis).

        The default suits gates without parameters whose output has their input's shape:
        the settings are constructor keywords. Layers with parameters override it and create
        them here; `init(shape, fan_in, fan_out)` draws a weight array by the config's scheme.
        """
        return Built(cls(**settings), {}, tuple(in_shapes[0]))

    @classmethod
    def examples(cls, rng: np.random.Generator) -> list[tuple[str, "Gate", list[Array]]]:
        """(label, gate, inputs) cases for gradcheck's library sweep, away from any kink."""
        return []


@dataclass
class Built:
    """What `Gate.build` returns: the gate, its parameters by short name in the order the
    gate takes them after the data (W, b / gamma, beta), and the output shape per sample."""
    gate: Gate
    params: dict[str, Array]
    out_shape: Shape


class Registry:
    """Gate classes by kind and config name, filled by `Gate.__init_subclass__`."""

    def __init__(self) -> None:
        self._classes: dict[tuple[str, str], type[Gate]] = {}

    @staticmethod
    def key(cls: type[Gate]) -> str:
        return cls.config_name or cls.name or cls.__name__.lower()

    def add(self, cls: type[Gate]) -> None:
        if cls.kind not in KINDS:
            raise TypeError(f"{cls.__name__}.kind is {cls.kind!r}; choose one of "
                            f"{', '.join(KINDS)}")
        # The newest definition of a name wins, so re-importing a module replaces its classes.
        self._classes[(cls.kind, self.key(cls))] = cls

    def find(self, name: str, kinds: Sequence[str]) -> type[Gate] | None:
        for kind in kinds:
            cls = self._classes.get((kind, name))
            if cls is not None:
                return cls
        return None

    def names(self, kinds: Sequence[str]) -> list[str]:
        return [name for (kind, name) in self._classes if kind in kinds]

    def classes(self, kinds: Sequence[str] = KINDS) -> Iterator[type[Gate]]:
        return (c for (kind, _), c in self._classes.items() if kind in kinds)


registry = Registry()


def away_from_zero(rng: np.random.Generator, *shape: int, gap: float = 0.2) -> Array:
    """Random normal float64 values at least `gap` away from 0, where relu/abs/... have kinks:
    the inputs of the gradient-check examples."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + gap, x - gap)


def unbroadcast(grad: Array, shape: Shape) -> Array:
    """Sum `grad` back down to `shape`, undoing NumPy broadcasting.

    A bias of shape (H,) added to a batch (N, H) was copied N times, so its gradient is the
    batch sum: copies add up their gradients (the copy gate again).
    """
    if grad.shape == shape:
        return grad
    given = grad.shape
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    elif extra < 0:  # missing leading axes count as length 1
        grad = grad.reshape((1,) * -extra + grad.shape)
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    if grad.shape != shape:  # never reshape: a (2, 3) gradient for a (3, 2) value is a bug
        raise ValueError(f"a gradient of shape {given} does not fit a value of shape {shape}")
    return grad
