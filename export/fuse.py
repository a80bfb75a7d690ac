"""Integer products with float outputs, and onnxruntime's int8 attention, in a static-int8 student graph.

The static-int8 exporter (QOperator format) writes every weight product as
`QuantizeLinear -> QLinearMatMul -> DequantizeLinear -> Add(bias)`: the exact int32 product is requantised to
uint8 with a calibrated output scale and at once dequantised again. That round trip costs two kernels per
product and adds a rounding step the trained function does not have. Three rewrites drop it:

- **products with float outputs.** `QLinearMatMul -> DequantizeLinear [-> Add(bias)]` becomes
  `MatMulIntegerToFloat` (com.microsoft) with the bias: the same uint8 x int8 product, scaled straight to
  fp32; `QGemm -> DequantizeLinear` becomes a QGemm without an output scale (fp32 output).
- **int8 attention.** Each attention block (the quantised qkv product, its bias, the split into heads,
  the scaled scores, the padding mask, softmax, the weighted sum and the merge of the heads) becomes one
  `QAttention` (com.microsoft) over the quantised LayerNorm output, with the token keep mask as its 2-D
  mask. Padding then gets weight 0 instead of the clamp's exp(-20), which the check below shows moves
  nothing that matters (as docs/performance.md, "Fixed runtime settings and why", says for exact zeros).

56 fewer kernels per run for the default student (166 -> 110), which matters most to the daemon's
small batches (a few flows per run). The result is one rounding step closer to the trained function, so it
is not the previous graph's bits: `fuse_package` accepts the new graph only if it is at least as close to a
reference as the graph it replaces (`check_closer`). The reference is the torch model when there is one
(`etool_sensor.export.package.build_package`), else the package's own graph with every activation quantisation removed
(`float_activations_graph`: int8 weights, fp32 activations).

A flow's scores still depend on the flow alone: the integer products are exact, and every float step
(scaling, LayerNorm, attention per flow and head) is computed per row.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .graph import Graph, attr


def _attention(G: Graph, split: Any) -> tuple[Any, list[str], str, int, float] | None:
    """For a Split of the dequantised qkv product: (the node whose output is the merged heads, QAttention's
    inputs but the mask, the bool keep mask [batch, tokens], heads, scale), or None when the block is not
    the exporter's attention."""
    add = G.producer.get(split.input[0])
    if add is None or add.op_type != "Add" or len(split.output) != 3 or attr(split, "axis") not in (2, -1):
        return None
    dq = next((G.producer.get(i) for i in add.input if G.producer.get(i) is not None
               and G.producer[i].op_type == "DequantizeLinear"), None)
    qmm = G.producer.get(dq.input[0]) if dq is not None else None
    bias_name = next((i for i in add.input if dq is not None and i != dq.output[0]), "")
    bias = G.const(bias_name)
    if qmm is None or qmm.op_type != "QLinearMatMul" or bias is None or bias.ndim != 1:
        return None
    heads = []  # per q, k, v: (heads, head_dim, transpose perm, transpose node)
    for o in split.output:
        r = G.only_consumer(o, "Reshape")
        t = G.only_consumer(r.output[0], "Transpose") if r is not None else None
        target = G.const(r.input[1]) if r is not None else None
        if t is None or target is None or target.size != 4:
            return None
        heads.append((int(target[2]), int(target[3]), list(attr(t, "perm", [])), t))
    (h, hd, pq, tq), (_, _, pk, tk), (_, _, pv, tv) = heads
    if pq != [0, 2, 1, 3] or pk != [0, 2, 3, 1] or pv != [0, 2, 1, 3] or h * hd * 3 != bias.size:
        return None
    scores = G.only_consumer(tq.output[0], "MatMul")
    if scores is None or list(scores.input) != [tq.output[0], tk.output[0]]:
        return None
    # scores -> Mul(scale) -> Add(mask) -> [ReduceMax, Sub, Clip] -> Softmax
    mul = G.only_consumer(scores.output[0], "Mul")
    scale = G.const(next((i for i in mul.input if i != scores.output[0]), "")) if mul is not None else None
    madd = G.only_consumer(mul.output[0], "Add") if mul is not None else None
    if scale is None or scale.size != 1 or madd is None:
        return None
    mask_add = next(i for i in madd.input if i != mul.output[0])
    node, seen = madd, 0
    while node is not None and node.op_type != "Softmax" and seen < 4:
        nxt = [c for c in G.consumers.get(node.output[0], []) if c.op_type in ("Sub", "Clip", "Softmax")]
        node, seen = (nxt[0] if len(nxt) == 1 else None), seen + 1
    if node is None or node.op_type != "Softmax":
        return None
    weighted = G.only_consumer(node.output[0], "MatMul")
    if weighted is None or list(weighted.input) != [node.output[0], tv.output[0]]:
        return None
    t_out = G.only_consumer(weighted.output[0], "Transpose")
    merged = G.only_consumer(t_out.output[0], "Reshape") if t_out is not None else None
    if merged is None or list(attr(t_out, "perm", [])) != [0, 2, 1, 3]:
        return None
    # the additive mask: Reshape(Mul(Cast(Not(keep)), big negative)) -> keep [batch, tokens] (bool)
    r = G.producer.get(mask_add)
    mm = G.producer.get(r.input[0]) if r is not None and r.op_type == "Reshape" else None
    big = None
    if mm is not None and mm.op_type == "Mul":
        big = G.const(next((i for i in mm.input if G.const(i) is not None), ""))
    cast = next((G.producer.get(i) for i in mm.input if G.producer.get(i) is not None
                 and G.producer[i].op_type == "Cast"), None) if mm is not None else None
    not_ = G.producer.get(cast.input[0]) if cast is not None else None
    if big is None or big.size != 1 or float(big.reshape(-1)[0]) > -1000.0 or not_ is None or not_.op_type != "Not":
        return None
    x, xs, xz, w, ws, wz = qmm.input[:6]
    return merged, [x, w, bias_name, xs, ws, xz, wz], not_.input[0], h, float(scale.reshape(-1)[0])


def fuse_graph(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Rewrite the static-int8 graph at `src` to `dst`; returns how many of each rewrite it made. ValueError
    if it made none (not a static-int8 export, or already fused)."""
    import onnx
    from onnx import TensorProto

    G = Graph(onnx.load(str(src)))
    drop: set[int] = set()
    replace: dict[int, list[Any]] = {}
    done = {"int8_attention": 0, "matmul_float_out": 0, "gemm_float_out": 0}
    masks: dict[str, str] = {}  # keep tensor -> its int32 copy, made before the first attention reading it
    for n in list(G.g.node):
        found = _attention(G, n) if n.op_type == "Split" else None
        if found is None:
            continue
        merged, (x, w, bias, xs, ws, xz, wz), keep, heads, scale = found
        nodes = []
        if keep not in masks:
            masks[keep] = f"etool_fuse_keep{len(masks)}"
            nodes.append(G.make("Cast", [keep], [masks[keep]], masks[keep], to=TensorProto.INT32))
        nodes.append(G.make("QAttention", [x, w, bias, xs, ws, masks[keep], xz, wz], [merged.output[0]],
                            f"etool_fuse_{merged.name}", num_heads=heads, scale=scale))
        replace[id(merged)] = nodes
    for n in G.g.node:  # a fused attention's qkv product is rewritten too, then pruned as dead
        dq = G.only_consumer(n.output[0], "DequantizeLinear") if n.op_type in ("QLinearMatMul", "QGemm") else None
        if dq is None:
            continue
        if n.op_type == "QGemm":
            if len(n.input) < 9 or not n.input[7]:
                continue  # already float out
            new = G.make("QGemm", list(n.input[:7]), [dq.output[0]], n.name + "_float")
            new.domain = n.domain
            new.attribute.extend(n.attribute)
            drop.add(id(n))
            replace[id(dq)] = [new]
            continue
        a, a_scale, a_zero, w, w_scale, w_zero = n.input[:6]
        operands = [a, w, a_scale, w_scale, a_zero, w_zero]  # MatMulIntegerToFloat's order
        add = G.only_consumer(dq.output[0], "Add")
        bias_name = next((i for i in add.input if i != dq.output[0]), "") if add is not None else ""
        bias = G.const(bias_name) if bias_name else None
        if add is not None and bias is not None and bias.ndim == 1:
            drop.update({id(n), id(dq)})
            replace[id(add)] = [G.make("MatMulIntegerToFloat", operands + [bias_name], [add.output[0]],
                                       n.name + "_float")]
        else:
            drop.add(id(n))
            replace[id(dq)] = [G.make("MatMulIntegerToFloat", operands, [dq.output[0]], n.name + "_float")]
    if not drop and not replace:
        raise ValueError(f"{src}: nothing to fuse (not a static-int8 export, or already fused)")
    G.rewrite(drop, replace)
    for n in G.g.node:
        if n.op_type == "QAttention":
            done["int8_attention"] += 1
        elif n.op_type == "MatMulIntegerToFloat":
            done["matmul_float_out"] += 1
        elif n.op_type == "QGemm" and n.name.endswith("_float"):
            done["gemm_float_out"] += 1
    onnx.checker.check_model(G.m)
    onnx.save(G.m, str(dst))
    return done


def float_activations_graph(src: str | Path, dst: str | Path) -> Path:
    """The static-int8 graph at `src` with every activation quantisation removed: each quantised product
    (`QuantizeLinear -> QLinearMatMul/QGemm -> DequantizeLinear`) becomes a float MatMul/Gemm of the
    unquantised input and the dequantised int8 weights. The reference `fuse_package` checks against when
    no torch model is at hand: the int8 weights are the package's, the rounding of activations is gone."""
    import onnx
    from onnx import helper, numpy_helper

    G = Graph(onnx.load(str(src)))
    drop: set[int] = set()
    replace: dict[int, list[Any]] = {}
    for k, n in enumerate(G.g.node):
        if n.op_type not in ("QLinearMatMul", "QGemm"):
            continue
        q = G.producer.get(n.input[0])
        dq = G.only_consumer(n.output[0], "DequantizeLinear")
        w, ws, wz = (G.const(i) for i in n.input[3:6])
        if q is None or q.op_type != "QuantizeLinear" or dq is None or w is None or ws is None or wz is None:
            raise ValueError(f"{src}: {n.name} is not a static-int8 weight product")
        name = f"etool_ref_w{k}"
        G.g.initializer.append(numpy_helper.from_array(((w.astype(np.float32) - wz.astype(np.float32))
                                                        * ws.astype(np.float32)).astype(np.float32), name))
        if n.op_type == "QLinearMatMul":
            node = helper.make_node("MatMul", [q.input[0], name], [dq.output[0]], name=f"etool_ref_mm{k}")
        else:
            inputs = [q.input[0], name]
            c = G.const(n.input[6]) if len(n.input) > 6 and n.input[6] else None
            if c is not None:  # int32 bias at scale a_scale * b_scale
                a_scale = G.const(n.input[1])
                G.g.initializer.append(numpy_helper.from_array(
                    (c.astype(np.float64) * float(a_scale) * ws.astype(np.float64)).astype(np.float32), name + "_b"))
                inputs.append(name + "_b")
            node = helper.make_node("Gemm", inputs, [dq.output[0]], name=f"etool_ref_gemm{k}",
                                    alpha=float(attr(n, "alpha", 1.0)), transA=int(attr(n, "transA", 0)),
                                    transB=int(attr(n, "transB", 0)))
        drop.add(id(n))
        replace[id(dq)] = [node]
    if not drop:
        raise ValueError(f"{src}: no static-int8 weight products")
    G.rewrite(drop, replace)
    onnx.checker.check_model(G.m)
    onnx.save(G.m, str(dst))
    return Path(dst)


def closeness(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """export.quantize.parity plus the mean abs logit difference per head."""
    from .quantize import parity

    out = parity(ref, got)
    for h, r, g in zip(("service", "app"), ref, got):
        out[f"{h}_mean_abs_logit_diff"] = float(np.abs(r - g).mean()) if len(r) else 0.0
    return out


def check_closer(previous: dict[str, float], fused: dict[str, float], flows: int, what: str) -> None:
    """ValueError unless, on both heads, the fused graph is at least as close to the reference as the graph
    it replaces: mean abs logit difference no larger, and no more labels off the reference's (one flow, or
    0.1 % of them, of slack for a near-tie)."""
    slack = max(1, int(0.001 * flows))
    for h in ("service", "app"):
        wrong_p = round((1.0 - previous[f"{h}_argmax_agreement"]) * flows)
        wrong_f = round((1.0 - fused[f"{h}_argmax_agreement"]) * flows)
        if fused[f"{h}_mean_abs_logit_diff"] > previous[f"{h}_mean_abs_logit_diff"] or wrong_f > wrong_p + slack:
            raise ValueError(f"{what}: the fused graph is further from the reference than the one it replaces "
                             f"({h}: {wrong_f} vs {wrong_p} labels off, mean abs logit diff "
                             f"{fused[f'{h}_mean_abs_logit_diff']:.4f} vs {previous[f'{h}_mean_abs_logit_diff']:.4f})")


def fuse_package(pkg: str | Path, pcaps: Sequence[str | Path], *, version: str | None = None) -> dict[str, Any]:
    """Fuse the model.onnx of a static-int8 package in place, after checking on the flows of `pcaps` (run cut,
    as the runtime runs them) that the new graph is at least as close as the old one to the package's graph
    without activation quantisation (check_closer). Records manifest `fused` (the rewrites made) and parity
    `fused` (both graphs against that reference, and against each other)."""
    import tempfile

    from .quantize import parity
    from .token_axes import commit_rewrite, cut_logits, open_rewrite

    first = "run `python -m etool_sensor.export.simplify` on it first"
    d, manifest, gran, feats, n, src, tmp = open_rewrite(
        pkg, pcaps, ("fused", "already fused"), [("simplified", first)], ".fused")
    try:
        done = fuse_graph(src, tmp)
        with tempfile.TemporaryDirectory() as td:
            ref = cut_logits(float_activations_graph(src, Path(td) / "ref.onnx"), feats, gran)
        before, after = cut_logits(src, feats, gran), cut_logits(tmp, feats, gran)
        par = {"flows": n, "reference": "the same graph without activation quantisation",
               "previous_vs_reference": closeness(ref, before), "fused_vs_reference": closeness(ref, after),
               "fused_vs_previous": parity(before, after)}
        check_closer(par["previous_vs_reference"], par["fused_vs_reference"], n, str(d))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    from .quantize import STATIC_INT8

    return commit_rewrite(d, manifest, tmp, version, "fused", par, fused=done, quantization=STATIC_INT8)


def main(argv: Sequence[str] | None = None) -> int:
    from .token_axes import rewrite_main

    def summary(m: dict[str, Any]) -> str:
        p = m["parity"]["fused"]
        return (f"fused {m['fused']}; labels off the float-activation reference, service/app: "
                + ", ".join(f"{k.split('_vs_')[0]} "
                            f"{round((1 - p[k]['service_argmax_agreement']) * p['flows'])}/"
                            f"{round((1 - p[k]['app_argmax_agreement']) * p['flows'])}"
                            for k in ("previous_vs_reference", "fused_vs_reference")) + f" of {p['flows']}")

    return rewrite_main(argv, "python -m etool_sensor.export.fuse", fuse_package, summary)


if __name__ == "__main__":
    sys.exit(main())
