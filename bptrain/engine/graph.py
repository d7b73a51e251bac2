"""The engine: a Gate base class and a Graph of nodes that runs forward and backward.

A gate is a small object with two methods, as in the lecture notes and in PyTorch's
autograd.Function:

    forward(*inputs)    computes the output and keeps in `self` what backward will need;
    backward(upstream)  returns one downstream gradient per input (local gradient x upstream).

A Graph holds nodes: inputs, parameters, constants, and applications of gates to other nodes.
It is built once; the topological order towards each output is computed once and cached.
`forward` evaluates nodes in that order; `backward` seeds dL/dL = 1 and visits gates in reverse
order, adding gradients where a node feeds several gates (the copy gate is an adder).
Only nodes that both lead to the output and depend on something that wants a gradient
get any backward work. Jacobians are never built: every backward is a vector-Jacobian product.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Array = np.ndarray


class _EveryInput(tuple):
    """`needs_input_grad` of a gate used outside a graph: every input wants its gradient."""

    def __getitem__(self, i):  # type: ignore[override]
        return True


class Gate:
    """Base class of every gate. Subclass it, write `forward` and `backward`; nothing else.

    forward(*inputs) -> output          (save what backward needs on self)
    backward(upstream) -> tuple         (one downstream gradient per input, or None for an
                                          input that needs none, see `needs_input_grad`)

    Class attributes, all optional:
      name     short label shown by `trace` and `show` (default: the class name, lower case)
      pattern  the lecture's word for how the gate routes gradients ("distributor", ...)
      kinked   True if the gate's derivative jumps somewhere (relu, max, abs, hinge, ...);
               such a gate returns a fingerprint of the branches it took from `branches()`
               so that a gradient check can tell a kink crossing from a bug.
      fresh_downstream  True if backward always returns newly made arrays (never the
               upstream, never a cached array): the graph may then add further
               gradients into them in place at a fan-out instead of allocating.
    Instance attributes set by the Graph before a pass:
      training          False in evaluation mode (dropout reads it)
      needs_input_grad  tuple of bools; a gate may skip the work for inputs marked False
    """

    name: str | None = None
    pattern: str | None = None
    kinked: bool = False
    fresh_downstream: bool = False  # backward returns new arrays no one else holds
    training: bool = True
    needs_input_grad: Sequence[bool] = _EveryInput()

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

    def __call__(self, *nodes: Any) -> "Node":
        """Apply the gate to nodes: `Sigmoid()(x)` adds a node to x's graph."""
        graph = next((n.graph for n in nodes if isinstance(n, Node)), None)
        if graph is None:
            raise TypeError(f"{self.label()} needs at least one graph node among its inputs")
        return graph.apply(self, *nodes)


def unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
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


class Node:
    """A value in the graph: an input, a parameter, a constant, or a gate's output.

    After `graph.forward`, `node.value` holds the value; after `graph.backward`, `node.grad`
    holds d(output)/d(node), of the node's shape (None if no gradient reached it).
    Arithmetic operators build new nodes, so `f = (x + y) * z` builds a graph.
    """

    __array_priority__ = 1000  # so that `ndarray * node` calls Node.__rmul__

    def __init__(self, graph: "Graph", kind: str, name: str, gate: Gate | None = None,
                 inputs: Sequence["Node"] = (), value: Any = None, requires_grad: bool = False):
        self.graph = graph
        self.kind = kind            # "input" | "param" | "const" | "op"
        self.name = name
        self.gate = gate
        self.inputs = tuple(inputs)
        self.value = value
        self.grad: Any = None
        self.requires_grad = requires_grad  # for leaves; ops inherit it from their inputs

    def __repr__(self) -> str:
        what = self.gate.label() if self.gate else self.kind
        shape = np.shape(self.value) if self.value is not None else "?"
        return f"Node({self.name!r}, {what}, shape={shape})"

    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self.value)

    # Operator overloading: each operator applies the matching gate from the library.
    def _apply(self, gate_name: str, *others: Any, **settings: Any) -> "Node":
        return self.graph.apply(_gate(gate_name, **settings), self, *others)

    def __add__(self, other: Any) -> "Node":
        return self._apply("Add", other)

    def __radd__(self, other: Any) -> "Node":
        return self.graph.apply(_gate("Add"), other, self)

    def __sub__(self, other: Any) -> "Node":
        return self._apply("Subtract", other)

    def __rsub__(self, other: Any) -> "Node":
        return self.graph.apply(_gate("Subtract"), other, self)

    def __mul__(self, other: Any) -> "Node":
        return self._apply("Multiply", other)

    def __rmul__(self, other: Any) -> "Node":
        return self.graph.apply(_gate("Multiply"), other, self)

    def __truediv__(self, other: Any) -> "Node":
        return self._apply("Divide", other)

    def __rtruediv__(self, other: Any) -> "Node":
        return self.graph.apply(_gate("Divide"), other, self)

    def __neg__(self) -> "Node":
        return self._apply("Negate")

    def __pow__(self, exponent: float) -> "Node":
        if isinstance(exponent, Node):
            raise TypeError("the power gate takes a constant exponent, not a graph node")
        return self._apply("Power", exponent=exponent)

    def __matmul__(self, other: Any) -> "Node":
        return self._apply("MatMul", other)

    def __rmatmul__(self, other: Any) -> "Node":
        return self.graph.apply(_gate("MatMul"), other, self)


def _gate(gate_name: str, **settings: Any) -> Gate:
    from bptrain.engine import gates  # lazily: the gate library imports this module
    return getattr(gates, gate_name)(**settings)


class Graph:
    """A computational graph of gates, built once and then run forward and backward many times.

    >>> g = Graph()
    >>> x, y, z = g.input("x"), g.input("y"), g.input("z")
    >>> f = (x + y) * z
    >>> g.forward(f, x=-2.0, y=5.0, z=-4.0)
    array(-12.)
    >>> g.backward(f); (x.grad, y.grad, z.grad)
    (array(-4.), array(-4.), array(3.))
    """

    def __init__(self, dtype: Any = np.float64):
        self.dtype = np.dtype(dtype)
        self.nodes: list[Node] = []
        self._names: dict[str, Node] = {}
        self._plans: dict[int, tuple[list[Node], list[Node]]] = {}
        self.training = True
        self._gates: set[int] = set()  # ids of the gate instances applied in this graph

    # ---- building -------------------------------------------------------------------------
    def _add(self, node: Node) -> Node:
        if node.name in self._names:
            raise ValueError(f"the graph already has a node named {node.name!r}")
        self.nodes.append(node)
        self._names[node.name] = node
        self._plans.clear()  # a new node may change what an output depends on
        return node

    def _fresh_name(self, prefix: str) -> str:
        i = len(self.nodes)
        while f"{prefix}{i}" in self._names:
            i += 1
        return f"{prefix}{i}"

    def input(self, name: str, value: Any = None, requires_grad: bool = True) -> Node:
        """A value fed at each forward (`graph.forward(out, name=value)`): data, or a variable."""
        return self._add(Node(self, "input", name, value=self._as_array(value),
                              requires_grad=requires_grad))

    def inputs(self, names: str) -> list[Node]:
        """Several inputs at once: `x, y, z = g.inputs("x y z")`."""
        return [self.input(n) for n in names.replace(",", " ").split()]

    def param(self, name: str, value: Any) -> Node:
        """A trainable parameter: it keeps its value between passes and always gets a gradient."""
        return self._add(Node(self, "param", name, value=self._as_array(value, copy=True),
                              requires_grad=True))

    def const(self, value: Any, name: str | None = None) -> Node:
        """A constant: a value that never changes and never gets a gradient."""
        return self._add(Node(self, "const", name or self._fresh_name("c"),
                              value=self._as_array(value), requires_grad=False))

    def apply(self, gate: Gate, *inputs: Any, name: str | None = None) -> Node:
        """Add a node that applies `gate` to `inputs` (nodes, or numbers taken as constants)."""
        nodes = [x if isinstance(x, Node) else self.const(x) for x in inputs]
        for n in nodes:
            if n.graph is not self:
                raise ValueError(f"node {n.name!r} belongs to another graph")
        if id(gate) in self._gates:
            # A gate keeps its last forward's values for backward: one instance per node.
            raise ValueError(f"this {gate.label()} gate is already applied in the graph; "
                             "create a new gate for each use")
        gate.training = self.training  # a gate added in evaluation mode starts in it
        wants = any(n.requires_grad for n in nodes)
        node = self._add(Node(self, "op", name or self._fresh_name(gate.label().split("(")[0]),
                              gate=gate, inputs=nodes, requires_grad=wants))
        self._gates.add(id(gate))
        return node

    def __getitem__(self, name: str) -> Node:
        return self._names[name]

    def _as_array(self, value: Any, copy: bool = False) -> Any:
        """Floats take the graph's dtype (float32 stays float32); integers (labels) stay."""
        if value is None:
            return None
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and arr.dtype != self.dtype or copy and arr.dtype.kind != "f":
            return arr.astype(self.dtype)
        return arr.copy() if copy else arr

    # ---- planning (once per output) -------------------------------------------------------
    def plan(self, output: Node) -> tuple[list[Node], list[Node]]:
        """(forward order, backward order) for `output`, computed once and cached.

        Forward order: every ancestor of `output`, each after its inputs (an iterative
        depth-first sort, so deep graphs never hit Python's recursion limit).
        Backward order: the op nodes of that order, reversed, that depend on something
        requiring a gradient; the rest cost no backward work.
        """
        cached = self._plans.get(id(output))
        if cached is not None:
            return cached
        order: list[Node] = []
        done: set[int] = set()
        stack: list[tuple[Node, bool]] = [(output, False)]
        while stack:
            node, inputs_done = stack.pop()
            if id(node) in done:
                continue
            if inputs_done:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for parent in reversed(node.inputs):
                if id(parent) not in done:
                    stack.append((parent, False))
        backward = [n for n in reversed(order) if n.gate is not None and n.requires_grad]
        for n in backward:
            n.gate.needs_input_grad = tuple(p.requires_grad for p in n.inputs)
        self._plans[id(output)] = (order, backward)
        return order, backward

    def fan_out(self, output: Node) -> dict[str, list[str]]:
        """For each node used by more than one gate on the way to `output`: its consumers."""
        order, _ = self.plan(output)
        users: dict[str, list[str]] = {}
        for n in order:
            for p in n.inputs:
                users.setdefault(p.name, []).append(n.name)
        return {k: v for k, v in users.items() if len(v) > 1}

    # ---- running ---------------------------------------------------------------------------
    def set_training(self, training: bool) -> None:
        """Training mode (dropout active) or evaluation mode (dropout is the identity)."""
        self.training = training
        for n in self.nodes:
            if n.gate is not None:
                n.gate.training = training

    def feed(self, **values: Any) -> None:
        """Set input values without running anything."""
        for name, value in values.items():
            node = self._names.get(name)
            if node is None or node.kind != "input":
                known = ", ".join(n.name for n in self.nodes if n.kind == "input") or "none"
                raise KeyError(f"{name!r} is not an input of this graph (inputs: {known})")
            node.value = self._as_array(value)

    def forward(self, output: Node, **values: Any) -> Any:
        """Feed `values` to inputs by name, evaluate every node `output` depends on, in
        topological order, and return output's value."""
        if values:
            self.feed(**values)
        order, _ = self.plan(output)
        for node in order:
            if node.gate is not None:
                node.value = node.gate.forward(*[p.value for p in node.inputs])
            elif node.value is None:
                raise ValueError(f"input {node.name!r} has no value: pass {node.name}=... "
                                 "to forward")
        return output.value

    def backward(self, output: Node) -> None:
        """Fill `node.grad` = d(output)/d(node) for every node that needs one.

        Seeds d(output)/d(output) = 1, then for each gate in reverse topological order:
        downstream = gate.backward(upstream), added into each input's gradient. Gradients are
        reset first, so calling backward twice gives the same result (micrograd's sharp edge).
        """
        order, backward = self.plan(output)
        for node in order:
            node.grad = None
        value = output.value
        # dL/dL = 1: a scalar of the loss's dtype (cheaper than ones_like for the usual case)
        output.grad = value.dtype.type(1) if np.ndim(value) == 0 else np.ones_like(value)
        owned: set[Node] = set()  # nodes whose grad array is ours alone to add into
        for node in backward:
            upstream = node.grad
            if upstream is None:  # nothing downstream of this node reached the output
                continue
            gate = node.gate
            downstream = gate.backward(upstream)
            if type(downstream) is not tuple:
                downstream = tuple(downstream) if isinstance(downstream, list) else (downstream,)
            if len(downstream) != len(node.inputs):
                raise ValueError(f"{gate.label()}.backward returned {len(downstream)} "
                                 f"gradients for {len(node.inputs)} inputs")
            for parent, grad in zip(node.inputs, downstream):
                if grad is None or not parent.requires_grad:
                    continue
                shape = np.shape(parent.value)
                if getattr(grad, "shape", None) != shape:
                    grad = unbroadcast(np.asarray(grad), shape)
                if parent.grad is None:
                    parent.grad = grad
                    if gate.fresh_downstream and type(grad) is np.ndarray:
                        owned.add(parent)
                elif parent in owned:
                    parent.grad += grad  # ours alone (see fresh_downstream): add in place
                else:
                    # Fan-out: a new array, not `+=`, since the first gradient may be
                    # another node's upstream handed through (an add gate does that).
                    parent.grad = parent.grad + grad
                    owned.add(parent)

    @property
    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "param"]
