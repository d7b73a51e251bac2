"""The engine: a Graph of nodes that runs gates (bptrain/engine/gate.py) forward and backward.

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

from bptrain.engine.gate import Gate, unbroadcast
from bptrain.engine.gates.arithmetic import Add, Divide, Multiply, Negate, Power, Subtract
from bptrain.engine.gates.linalg import MatMul

__all__ = ["Gate", "Graph", "Node", "unbroadcast"]


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
        self.needs_input_grad: tuple[bool, ...] = ()  # per input, set when the graph plans

    def __repr__(self) -> str:
        what = self.gate.label() if self.gate else self.kind
        shape = np.shape(self.value) if self.value is not None else "?"
        return f"Node({self.name!r}, {what}, shape={shape})"

    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self.value)

    # Operator overloading: each operator applies its gate class from the library.
    def __add__(self, other: Any) -> "Node":
        return self.graph.apply(Add(), self, other)

    def __radd__(self, other: Any) -> "Node":
        return self.graph.apply(Add(), other, self)

    def __sub__(self, other: Any) -> "Node":
        return self.graph.apply(Subtract(), self, other)

    def __rsub__(self, other: Any) -> "Node":
        return self.graph.apply(Subtract(), other, self)

    def __mul__(self, other: Any) -> "Node":
        return self.graph.apply(Multiply(), self, other)

    def __rmul__(self, other: Any) -> "Node":
        return self.graph.apply(Multiply(), other, self)

    def __truediv__(self, other: Any) -> "Node":
        return self.graph.apply(Divide(), self, other)

    def __rtruediv__(self, other: Any) -> "Node":
        return self.graph.apply(Divide(), other, self)

    def __neg__(self) -> "Node":
        return self.graph.apply(Negate(), self)

    def __pow__(self, exponent: float) -> "Node":
        if isinstance(exponent, Node):
            raise TypeError("the power gate takes a constant exponent, not a graph node")
        return self.graph.apply(Power(exponent), self)

    def __matmul__(self, other: Any) -> "Node":
        return self.graph.apply(MatMul(), self, other)

    def __rmatmul__(self, other: Any) -> "Node":
        return self.graph.apply(MatMul(), other, self)


def _shape(value: Any) -> tuple[int, ...]:
    """np.shape without NumPy's dispatch for the usual case, an array (it runs per gradient)."""
    return value.shape if type(value) is np.ndarray else np.shape(value)


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
        for n in backward:  # handed to gates that can skip inputs (see Gate.backward)
            n.needs_input_grad = tuple(p.requires_grad for p in n.inputs)
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
        downstream = gate.backward(upstream), added into each input's gradient (a node that
        feeds several gates sums their gradients: the copy gate). Gradients are reset first,
        so calling backward twice gives the same result (micrograd's sharp edge).
        """
        order, backward = self.plan(output)
        for node in order:
            node.grad = None
        output.grad = np.ones_like(output.value)  # dL/dL = 1
        for node in backward:
            upstream = node.grad
            if upstream is None:  # nothing downstream of this node reached the output
                continue
            gate = node.gate
            if gate.takes_needs_input_grad:
                downstream = gate.backward(upstream, node.needs_input_grad)
            else:
                downstream = gate.backward(upstream)
            if type(downstream) is not tuple:
                downstream = tuple(downstream) if isinstance(downstream, list) else (downstream,)
            if len(downstream) != len(node.inputs):
                raise ValueError(f"{gate.label()}.backward returned {len(downstream)} "
                                 f"gradients for {len(node.inputs)} inputs")
            for parent, grad in zip(node.inputs, downstream):
                if grad is None or not parent.requires_grad:
                    continue
                if _shape(grad) != _shape(parent.value):  # a broadcast input: sum it back
                    grad = unbroadcast(np.asarray(grad), _shape(parent.value))
                # A new array, never `+=`: the first gradient may be another node's
                # upstream handed through unchanged (an add gate does that).
                parent.grad = grad if parent.grad is None else parent.grad + grad

    @property
    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "param"]
