"""The package `etool-sensor adapt` writes: the base package's files with the adapted graph (the base graph, the
extended heads, the biases and the local forest), the merged tables, and a manifest with its lineage and drift
reference; checked against the numpy computation of the adapted head before it is kept."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .local_fit import LOCAL_TREES, AdaptError, LocalFlows, Parts


def _graph(src: Path, dst: Path, parts: Parts, base_labels: dict[str, list[str]]) -> None:
    """The base graph with the adapted heads: new label columns, the biases, the blended forest."""
    import onnx
    from onnx import helper, numpy_helper

    from etool_sensor.export.hybrid import forest_onnx

    from .forest import column_map

    m = onnx.load(str(src))
    g = m.graph
    outs = {o.name: o for o in g.output}

    # a package adapted again gets its own names (adapt/, adapt2/, ...)
    used = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    gen = 1
    while any(x.startswith(f"adapt{gen if gen > 1 else ''}/") for x in used):
        gen += 1
    P = f"adapt{gen if gen > 1 else ''}/"

    def const(name: str, v: Any) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(v), name))
        return name

    def rename(old: str, new: str) -> None:
        for n in g.node:
            n.output[:] = [new if o == old else o for o in n.output]
            n.input[:] = [new if i == old else i for i in n.input]

    def set_width(name: str, k: int) -> None:
        outs[name].type.tensor_type.shape.dim[1].dim_value = k

    nodes = []
    for head, out, labels, bias in (("service", "service_logits", parts.service_labels, parts.bias / parts.mix),
                                    ("app", "app_logits", parts.app_labels, None)):
        k0, n_new = len(base_labels[head]), len(labels) - len(base_labels[head])
        if not n_new and bias is None:
            continue
        src_name = f"{P}{head}_student"
        rename(out, src_name)
        cur = src_name
        if n_new:
            nodes += [helper.make_node("ReduceLogSumExp", [cur], [f"{P}{head}_lse"], axes=[1], keepdims=1),
                      helper.make_node("Sub", [f"{P}{head}_lse", const(f"{P}{head}_logk",
                                                                        np.float32(math.log(k0)))],
                                       [f"{P}{head}_neutral"]),
                      helper.make_node("Concat", [cur] + [f"{P}{head}_neutral"] * n_new, [f"{P}{head}_ext"],
                                       axis=1)]
            cur = f"{P}{head}_ext"
        if bias is not None:
            nodes.append(helper.make_node("Add", [cur, const(f"{P}{head}_bias", bias.astype(np.float32)[None, :])],
                                          [out]))
        else:
            nodes.append(helper.make_node("Identity", [cur], [out]))
        set_width(out, len(labels))
    # forest: (1 - a) * base (columns padded) + a * local
    fo = "forest_proba"
    k0, k = len(base_labels["service"]), len(parts.service_labels)
    rename(fo, P + "base_forest")
    pad = np.eye(k0, k, dtype=np.float32)
    nodes.append(helper.make_node("MatMul", [P + "base_forest", const(P + "base_columns", pad)],
                                  [P + "base_forest_ext"]))
    if parts.forest is not None and parts.a > 0:
        f = forest_onnx(parts.forest, parts.x_width).graph
        ren = {f.input[0].name: "forest/X"}
        for t in f.initializer:
            ren[t.name] = P + "forest/" + t.name
        for n in f.node:
            for o in n.output:
                ren[o] = P + "forest/" + o
        probs = ren[[o.name for o in f.output if o.name.startswith("prob")][0]]
        for n in f.node:
            n.input[:] = [ren.get(i, i) for i in n.input]
            n.output[:] = [ren[o] for o in n.output]
            n.name = P + "forest/" + (n.name or n.op_type)
            nodes.append(n)
        for t in f.initializer:
            t.name = ren[t.name]
            g.initializer.append(t)
        cmap = column_map([str(c) for c in parts.forest.classes_], parts.service_labels)
        nodes += [helper.make_node("MatMul", [probs, const(P + "local_columns", cmap)], [P + "local_forest"]),
                  helper.make_node("Mul", [P + "base_forest_ext", const(P + "base_w", np.float32(1 - parts.a))],
                                   [P + "base_part"]),
                  helper.make_node("Mul", [P + "local_forest", const(P + "local_w", np.float32(parts.a))],
                                   [P + "local_part"]),
                  helper.make_node("Add", [P + "base_part", P + "local_part"], [fo])]
    else:
        nodes.append(helper.make_node("Identity", [P + "base_forest_ext"], [fo]))
    set_width(fo, k)
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def drift_reference_for(model: Any, records: Sequence[Any], contexts: Sequence[Any], source: str) -> dict:
    """The package's `drift_reference` (manifest key, etool_sensor/drift.py) from its verdicts on the local flows."""
    from ..drift import reference_from_verdicts
    from ..runtime import Thresholds

    th = Thresholds()
    verdicts = model.classify(records, contexts, th)
    return reference_from_verdicts(verdicts, [v.table_hit for v in verdicts], th.default, source)


def digest(labels_csv: str | Path, data_dir: str | Path, pcaps: Sequence[str]) -> str:
    """sha256 over the labels CSV and the bytes of every local capture it names (sorted by name)."""
    h = hashlib.sha256()
    h.update(Path(labels_csv).read_bytes())
    for name in sorted(set(pcaps)):
        h.update(name.encode() + b"\0")
        with open(Path(data_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_package(model: Any, parts: Parts, lf: LocalFlows, out: str | Path, *, lineage: dict[str, Any],
                  name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Copy the base package to `out` with the adapted graph, tables and manifest; checked against the
    numpy computation on the local flows before it is returned."""
    from etool_sensor.export.hybrid import table_entry

    from ..fingerprints import TABLES
    from ..runtime import MANIFEST, MODEL_FILE, load_model, sha256_file

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AdaptError(f"{out}: exists and is not empty (give a new directory)")
    tmp = Path(tempfile.mkdtemp(prefix=".adapt-", dir=str(out.parent.resolve())))
    try:
        for f in model.path.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        _graph(model.path / MODEL_FILE, tmp / MODEL_FILE, parts, model.label_sets)
        man = json.loads(json.dumps(model.manifest))
        hyb = man["hybrid"]
        for head, t in parts.tables.items():
            key, fname = TABLES[head]
            t.save(tmp / fname)
            hyb[key] = table_entry(t, fname, sha256_file(tmp / fname))
        hyb["forest"] = {**hyb["forest"], "local": {
            "weight": parts.a, "trees": LOCAL_TREES if parts.forest is not None else 0,
            "flows": parts.info.get("flows"), "seed": parts.info.get("seed", 0)}}
        man["label_sets"] = {"service": parts.service_labels, "app": parts.app_labels}
        man["sha256"] = sha256_file(tmp / MODEL_FILE)
        hyb["graph_bytes"] = (tmp / MODEL_FILE).stat().st_size
        man["name"] = name or man["name"]
        man["version"] = version or f"{model.version}+local.{lineage['local_sha256'][:8]}"
        man["adapt"] = {"prior_bias": {l: round(float(b), 4) for l, b in zip(parts.service_labels, parts.bias)},
                        **{k: v for k, v in parts.info.items() if k != "seed"}}
        man["lineage"] = lineage
        (tmp / MANIFEST).write_text(json.dumps(man, indent=1) + "\n")
        adapted = load_model(tmp, threads=1)
        idx = np.arange(len(lf))
        got = adapted.predict_proba(lf.records, lf.contexts)
        want = parts.service_proba(lf, idx)
        agree = float((got.argmax(1) == want.argmax(1)).mean()) if len(idx) else 1.0
        if agree < 0.99:
            raise AdaptError(f"the written graph does not compute the adapted head (labels agree on {agree:.3f} "
                             "of the local flows); nothing written")
        man["parity"] = {**man.get("parity", {}), "adapt": {"flows": len(idx), "argmax_agreement_vs_numpy": agree}}
        man["drift_reference"] = drift_reference_for(adapted, lf.records, lf.contexts,
                                                     f"local traffic, {lineage['captures']} captures")
        (tmp / MANIFEST).write_text(json.dumps(man, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return man
