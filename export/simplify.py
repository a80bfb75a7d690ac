"""Fewer and cheaper kernels in an exported student graph, the same function.

onnxruntime runs the student as ~180 small kernels; at the daemon's batch sizes (a few to a few dozen
flows) the per-kernel cost is a large part of a run, and at classify's the fp32 datagram convolution is
the largest single kernel. Two rewrites, each checked by `simplify_package` against the graph it replaces
on real flows before a package is changed:

- **datagram convolution as a matrix product.** `Transpose -> Conv(kernel k, stride k) -> Transpose` over
  [batch, units, d] is a product of the units reshaped to [batch, units/k, k*d] with the kernel laid out
  as [k*d, d_out], plus the bias: Reshape + MatMul + Add instead of two transposes and onnxruntime's
  im2col convolution (1.77 of 20.9 ms per run of 64 flows, the largest kernel; docs/performance.md).
- **constant reshape targets.** The exporter writes each attention reshape's target shape as
  Shape -> Gather -> Unsqueeze -> Concat of the batch and token counts. Those dims are the reshape's own
  input dims, which Reshape copies when the target says 0, so the target becomes a constant ([0, 0, h,
  hd] and [0, 0, -1]) and the shape arithmetic (about nine kernels per layer) drops out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .graph import Graph, attr


def simplify_graph(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Rewrite the graph at `src` to `dst`; returns how many of each rewrite it made. ValueError if it made
    none (not the exporter's graph, or already simplified)."""
    import onnx
    from onnx import helper, numpy_helper

    G = Graph(onnx.load(str(src)))
    m, g, producer, consumers, const = G.m, G.g, G.producer, G.consumers, G.const

    drop: set[int] = set()  # ids of nodes to remove
    add: list[tuple[Any, list[Any]]] = []  # (node to replace, its replacements in order)
    done = {"conv_as_matmul": 0, "constant_reshape": 0}

    # 1. Transpose(0,2,1) -> Conv(k, stride k, no pad/dilation/group) -> Transpose(0,2,1)
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        w = const(n.input[1])
        b = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        t_in = producer.get(n.input[0])
        outs = consumers.get(n.output[0], [])
        if w is None or w.ndim != 3 or t_in is None or t_in.op_type != "Transpose" or len(outs) != 1:
            continue
        t_out = outs[0]
        k = w.shape[2]
        if (t_out.op_type != "Transpose" or list(attr(t_in, "perm", [])) != [0, 2, 1]
                or list(attr(t_out, "perm", [])) != [0, 2, 1] or list(attr(n, "kernel_shape", [k])) != [k]
                or list(attr(n, "strides", [1])) != [k] or any(attr(n, "pads", [0, 0]))
                or list(attr(n, "dilations", [1])) != [1] or attr(n, "group", 1) != 1
                or len(consumers.get(t_in.output[0], [])) != 1):
            continue
        d_out, d_in = w.shape[0], w.shape[1]
        tag = f"etool_simplify_conv{done['conv_as_matmul']}"
        wm = np.ascontiguousarray(w.transpose(2, 1, 0).reshape(k * d_in, d_out)).astype(w.dtype)
        g.initializer.extend([numpy_helper.from_array(wm, tag + "_w"),
                              numpy_helper.from_array(np.array([0, -1, k * d_in], np.int64), tag + "_shape")])
        nodes = [helper.make_node("Reshape", [t_in.input[0], tag + "_shape"], [tag + "_units"], name=tag + "_reshape"),
                 helper.make_node("MatMul", [tag + "_units", tag + "_w"],
                                  [tag + "_mm" if b is not None else t_out.output[0]], name=tag + "_matmul")]
        if b is not None:
            g.initializer.append(numpy_helper.from_array(b, tag + "_b"))
            nodes.append(helper.make_node("Add", [tag + "_mm", tag + "_b"], [t_out.output[0]], name=tag + "_bias"))
        drop.update({id(t_in), id(n)})
        add.append((t_out, nodes))
        done["conv_as_matmul"] += 1

    # 2. Reshape(x, Concat(Unsqueeze(Gather(Shape(s), i)) at position i < 2, constants ...))
    def shape_dim(name: str) -> int | None:
        """i when `name` is Unsqueeze(Gather(Shape(.), i)), else None."""
        u = producer.get(name)
        gat = producer.get(u.input[0]) if u is not None and u.op_type == "Unsqueeze" else None
        if gat is None or gat.op_type != "Gather" or producer.get(gat.input[0]) is None:
            return None
        if producer[gat.input[0]].op_type != "Shape" or attr(producer[gat.input[0]], "start") is not None:
            return None
        i = const(gat.input[1])
        return int(i) if i is not None and i.size == 1 else None

    for n in g.node:
        if n.op_type != "Reshape" or attr(n, "allowzero", 0):
            continue
        cat = producer.get(n.input[1])
        if cat is None or cat.op_type != "Concat":
            continue
        target: list[int] = []
        for pos, piece in enumerate(cat.input):
            c = const(piece)
            if c is not None and c.size == 1:
                target.append(int(c.reshape(-1)[0]))  # as written (0 and -1 keep their Reshape meaning)
            elif c is not None:
                target = []  # a multi-dim constant piece: not the pattern
                break
            elif pos < 2 and shape_dim(piece) == pos:
                target.append(0)  # this dim of the reshape's own input (batch, tokens)
            else:
                target.append(-1)  # computed: the one dim Reshape infers from the element count
        if target[:2] != [0, 0] or target.count(-1) > 1:
            continue
        name = f"etool_simplify_shape{done['constant_reshape']}"
        g.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        n.input[1] = name
        done["constant_reshape"] += 1

    if not any(done.values()):
        raise ValueError(f"{src}: nothing to simplify (not the exporter's graph, or already simplified)")
    G.rewrite(drop, {id(t): r for t, r in add})
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return done


AGREE = 0.999  # least label agreement per head with the graph it replaces (one flow in any check set)


def check_agreement(par: dict[str, Any], flows: int, what: str) -> None:
    """ValueError unless both heads' labels agree on at least AGREE of `flows`, or on all but one flow
    (a small check set: one near-tie is the rounding, not the rewrite)."""
    for h in ("service", "app"):
        wrong = round((1.0 - par[f"{h}_argmax_agreement"]) * flows)
        if wrong > max(1, int((1.0 - AGREE) * flows)):
            raise ValueError(f"{what}: the simplified graph changes {wrong} of {flows} {h} labels: {par}")


def simplify_package(pkg: str | Path, pcaps: Sequence[str | Path], *, version: str | None = None) -> dict[str, Any]:
    """Simplify the model.onnx of a package in place, after checking the new graph against the old one on
    the flows of `pcaps` as the runtime runs them (cut to length). Records manifest `simplified` (the
    rewrites made) and parity `simplified_vs_previous`.

    Both graphs compute the same function; with static int8 a last-bit change in the fp32 product can tip
    a later rounding by one step, which moves a few flows' probabilities by up to ~0.03 and may flip a
    near-tie. So labels must agree on at least AGREE of the flows per head (check_agreement), not on every one."""
    from .quantize import parity
    from .token_axes import commit_rewrite, cut_logits, open_rewrite

    d, manifest, gran, feats, n, src, tmp = open_rewrite(
        pkg, pcaps, ("simplified", "already simplified"), (), ".simplified")
    try:
        done = simplify_graph(src, tmp)
        par = parity(cut_logits(src, feats, gran), cut_logits(tmp, feats, gran))
        check_agreement(par, n, str(d))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return commit_rewrite(d, manifest, tmp, version, "simplified_vs_previous", {"flows": n, **par}, simplified=done)


def main(argv: Sequence[str] | None = None) -> int:
    from .token_axes import rewrite_main

    return rewrite_main(argv, "python -m etool_sensor.export.simplify", simplify_package,
                        lambda m: f"simplified {m['simplified']}, vs previous {m['parity']['simplified_vs_previous']}")


if __name__ == "__main__":
    sys.exit(main())
