"""An exported ONNX graph as the package rewrites see it (token_axes, simplify, fuse): who produces and who
reads each tensor, constant values, node attributes, and the one way they replace nodes and prune."""

from __future__ import annotations

from typing import Any

import numpy as np

CONTRIB = ("QAttention", "MatMulIntegerToFloat")  # onnxruntime's com.microsoft kernels the rewrites write


def attr(node: Any, name: str, default: Any = None) -> Any:
    """A node attribute's value, or `default`."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def graph_const(name: str, inits: dict[str, Any], producer: dict[str, Any]) -> np.ndarray | None:
    """The value of a graph tensor that is an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    n = producer.get(name)
    if n is not None and n.op_type == "Constant":
        return numpy_helper.to_array(n.attribute[0].t)
    return None


def prune(g: Any) -> None:
    """Drop nodes and initializers nothing reads any more (what a rewrite replaced)."""
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)


class Graph:
    """A loaded model (`m`, its graph `g`) with producer / consumer maps and constant lookup, as they were
    when it was loaded (a rewrite collects its changes and applies them once, with `rewrite`)."""

    def __init__(self, m: Any) -> None:
        self.m, self.g = m, m.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> np.ndarray | None:
        """A constant's value; through Identity nodes (the exporter shares equal initializers that way)."""
        n = self.producer.get(name)
        while n is not None and n.op_type == "Identity":
            name, n = n.input[0], self.producer.get(n.input[0])
        return graph_const(name, self.inits, self.producer)

    def only_consumer(self, name: str, op: str) -> Any | None:
        """The one node reading `name`, if there is exactly one and it is an `op`."""
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def make(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> Any:
        from onnx import helper

        return helper.make_node(op, inputs, outputs, name=name, domain="com.microsoft" if op in CONTRIB else "",
                                **attrs)

    def rewrite(self, drop: set[int], replace: dict[int, list[Any]]) -> None:
        """Drop the nodes whose id() is in `drop`, put replace[id(node)] where each such node was (in order),
        prune what nothing reads any more, and forget inferred shapes (onnxruntime infers them again)."""
        from onnx import helper

        out: list[Any] = []
        for n in self.g.node:
            if id(n) not in drop:
                out.extend(replace.get(id(n), [n]))
        del self.g.node[:]
        self.g.node.extend(out)
        if any(n.domain == "com.microsoft" for n in self.g.node) and not any(
                o.domain == "com.microsoft" for o in self.m.opset_import):
            self.m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        prune(self.g)
        del self.g.value_info[:]
