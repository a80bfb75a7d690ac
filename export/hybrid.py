"""Attach the shape forest (etool_sensor/train/forest.py) to a student package: the graph gains an output
`forest_proba` (the forest's probabilities over the service labels) and the manifest a `hybrid` entry; the
runtime turns them into the hybrid service head, w * log_softmax(student) + (1 - w) * log(forest + eps)
(runtime.hybrid_logits, in numpy so a flow's scores do not depend on its batch).

With hello tables (etool_sensor/fingerprints.py: the services, and the apps, of the training flows per
fingerprint: TLS hellos, else the opening bytes) the package also gets hello_table.json and app_table.json,
and its features read TLS hellos whole (hello_bytes); the runtime adds the first table's log-probabilities
to the mix and the second's to the student's app logits.

The forest is converted with skl2onnx (ai.onnx.ml TreeEnsembleClassifier) and joined to the student's graph
by name, so `serve`, `classify` and the daemon run one graph as before: the package's features gain
`flights`, its inputs `flt`. The student's own outputs keep their bits. Before it replaces the package's
model.onnx, the joined graph is checked on real flows against the student graph and sklearn.

    python -m etool_sensor.export.hybrid PKG --data ../shared/data/ndpi/pcap --labels ../shared/data/ndpi/labels.csv \\
        --pcap ../shared/data/ndpi/pcap/*.pcap* --name etool-hybrid --version 0.7.0 --hello-bytes 1024
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ML_OPSET = 3  # ai.onnx.ml TreeEnsembleClassifier; onnxruntime >= 1.17 runs it


def forest_onnx(forest: Any, n_features: int) -> Any:
    """The fitted sklearn forest as an ONNX model: input X [batch, n_features] float, outputs label and
    probabilities [batch, classes] (no ZipMap)."""
    from skl2onnx import to_onnx

    from onnx import helper

    x = np.zeros((1, n_features), np.float32)
    m = to_onnx(forest, x, options={id(forest): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": ML_OPSET})
    # skl2onnx lists every class's weight at every leaf; most are 0 (a leaf holds one or two classes) and a
    # weight not listed counts as 0, so dropping them shrinks the graph ~10x and changes no sum
    for n in m.graph.node:
        if n.op_type != "TreeEnsembleClassifier":
            continue
        a = {x.name: x for x in n.attribute}
        keep = [i for i, v in enumerate(a["class_weights"].floats) if v != 0.0]
        for key in ("class_ids", "class_nodeids", "class_treeids", "class_weights"):
            old = helper.get_attribute_value(a[key])
            a[key].CopyFrom(helper.make_attribute(key, [old[i] for i in keep]))
        # optional attributes that hold only their defaults (every hit rate 1, no missing-value routing)
        drop = [k for k, default in (("nodes_hitrates", 1.0), ("nodes_missing_value_tracks_true", 0))
                if k in a and all(v == default for v in helper.get_attribute_value(a[k]))]
        for k in drop:
            n.attribute.remove(a[k])
    return m


FOREST_OUTPUT = "forest_proba"


def join(student_onnx: str | Path, forest: Any, labels: Sequence[str], dst: str | Path) -> Path:
    """Write the student graph plus the forest, output FOREST_OUTPUT [batch, len(labels)], to `dst`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from etool_sensor.train.forest import column_map

    m = onnx.load(str(student_onnx))
    g = m.graph
    flights = forest.spec.flights
    if any(i.name == "flt" for i in g.input) or any(o.name == FOREST_OUTPUT for o in g.output):
        raise ValueError(f"{student_onnx}: not a plain student graph (it has flt or {FOREST_OUTPUT})")
    batch = g.input[0].type.tensor_type.shape.dim[0]
    flt = helper.make_tensor_value_info("flt", TensorProto.FLOAT, [None, 2 * flights])
    flt.type.tensor_type.shape.dim[0].CopyFrom(batch)
    g.input.append(flt)

    f = forest_onnx(forest.forest, 2 * flights + 1).graph
    rename = {f.input[0].name: "forest/X"}
    for t in list(f.initializer):
        rename[t.name] = "forest/" + t.name
    for n in f.node:
        for o in n.output:
            rename[o] = "forest/" + o
    probs = rename[[o.name for o in f.output if o.name.startswith("prob")][0]]

    def c(name: str, value: Any) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes = [helper.make_node("Slice", ["meta", c("forest/s0", np.array([0], np.int64)),
                                        c("forest/s1", np.array([1], np.int64)),
                                        c("forest/ax", np.array([1], np.int64))], ["forest/is_udp"]),
             helper.make_node("Concat", ["flt", "forest/is_udp"], ["forest/X"], axis=1)]
    for n in f.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename[o] for o in n.output]
        n.name = "forest/" + (n.name or n.op_type)
        nodes.append(n)
    for t in f.initializer:
        t.name = rename[t.name]
        g.initializer.append(t)
    # forest classes -> label columns: one 1 per column at most, so the product is exact at any batch size
    cmap = column_map([str(x) for x in forest.forest.classes_], labels)
    nodes.append(helper.make_node("MatMul", [probs, c("forest/columns", cmap)], [FOREST_OUTPUT]))
    g.node.extend(nodes)
    out = helper.make_tensor_value_info(FOREST_OUTPUT, TensorProto.FLOAT, [None, len(labels)])
    out.type.tensor_type.shape.dim[0].CopyFrom(batch)
    g.output.append(out)
    if not any(o.domain == "ai.onnx.ml" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    onnx.checker.check_model(m)
    dst = Path(dst)
    onnx.save(m, str(dst))
    return dst


def table_entry(t: Any, fname: str, sha256: str) -> dict[str, Any]:
    """A fingerprint table's entry under the manifest's `hybrid` (runtime._load_table checks file and sha256)."""
    e = {"file": fname, "sha256": sha256, "fingerprints": len(t.counts),
         "flows": int(sum(c.sum() for c in t.counts.values())), "alpha": t.alpha, "weight": t.weight}
    if t.near is not None:
        e["near"] = {"hellos": len(t.near.tokens), "m": t.near.m, "tau": t.near.tau}
    return e


def attach_forest(pkg: str | Path, forest: Any, feats: dict[str, np.ndarray], *, version: str | None = None,
                  name: str | None = None, tables: dict[str, Any] | None = None, hello_bytes: int = 0,
                  log: Any = None, priors: dict[str, Any] | None = None) -> dict[str, Any]:
    """Join a trained ShapeForest (and `tables`, fingerprints.HelloTable's by head from fit_tables, which need
    flows read with hellos whole: hello_bytes) to the student package `pkg` in place, checked on `feats`
    (encoded real flows with the forest's features: flt included, hfp with tables); `priors` (priors_entry)
    goes to the manifest as it is. ValueError when the package cannot take it."""
    from etool_sensor.fingerprints import TABLES
    from etool_sensor.runtime import MODEL_FILE, check_manifest, read_manifest, sha256_file
    from etool_sensor.train.forest import CONFIDENCE, EPS, MIX, mix, spread

    from .token_axes import commit_rewrite, graph_outputs

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    d, manifest = read_manifest(pkg)
    spec = check_manifest(d, manifest)
    if manifest.get("hybrid"):
        raise ValueError(f"{d}: the package already has the shape forest ({manifest['hybrid']['forest']})")
    gran = manifest["token_granules"]  # check_manifest refuses a package without it
    if dataclasses.replace(spec, flights=forest.spec.flights) != forest.spec:
        raise ValueError(f"{d}: the forest was trained on other features ({forest.spec}) than the package's ({spec})")
    if "flt" not in feats or not len(feats["flt"]):
        raise ValueError("no check flows with the forest's features (flt)")
    tables = tables or {}
    if tables and (not hello_bytes or "hfp" not in feats):
        raise ValueError("a hello table needs hello_bytes and check flows with their fingerprints (hfp)")
    for head, t in tables.items():
        if t.labels != manifest["label_sets"][head]:
            raise ValueError(f"{d}: the {head} table's labels are not the package's {head} labels")
    src, tmp = d / MODEL_FILE, d / (MODEL_FILE + ".hybrid")
    labels = manifest["label_sets"]["service"]
    join(src, forest, labels, tmp)
    student = graph_outputs(src, feats, gran)
    s_logits, a_logits, pf = graph_outputs(tmp, feats, gran)
    ref = spread(forest.proba(feats), forest.classes, labels)
    mixed = mix(s_logits, pf)
    n = len(feats["flt"])
    par = {"flows": n, "forest_max_abs_diff_vs_sklearn": float(np.abs(pf - ref).max()),
           "hybrid_argmax_agreement_vs_sklearn": float((mixed.argmax(1) == mix(s_logits, ref).argmax(1)).mean()),
           "student_outputs_unchanged": bool(np.array_equal(s_logits, student[0])
                                             and np.array_equal(a_logits, student[1])),
           "service_labels_changed_vs_student": float((mixed.argmax(1) != s_logits.argmax(1)).mean())}
    for head, t in tables.items():  # what each table moves: the service mix, the student's app logits
        base = mixed if head == "service" else a_logits
        with_table = base + t.log_proba(feats["hfp"])
        known = "flows_with_a_table_fingerprint" if head == "service" else "flows_with_an_app_table_fingerprint"
        par[known] = int(sum(1 for k in feats["hfp"].tolist() if k in t.counts))
        par[f"{head}_labels_changed_by_table"] = float((with_table.argmax(1) != base.argmax(1)).mean())
    if (par["forest_max_abs_diff_vs_sklearn"] > 1e-4 or par["hybrid_argmax_agreement_vs_sklearn"] < 0.999
            or not par["student_outputs_unchanged"]):
        tmp.unlink()
        raise ValueError(f"{d}: the joined graph does not compute the hybrid: {par}")
    size = tmp.stat().st_size
    hybrid = {"head": "service", "mix": MIX, "eps": EPS, "forest": forest.info,
              "forest_inputs": f"flt ({2 * forest.spec.flights}) + meta[:, 0] (is_udp)",
              "student": f"{manifest['name']}@{manifest['version']}", "graph_bytes": size,
              "confidence": CONFIDENCE}
    for head, t in tables.items():
        key, fname = TABLES[head]
        t.save(d / fname)
        hybrid[key] = table_entry(t, fname, sha256_file(d / fname))
    manifest["features"] = dataclasses.replace(forest.spec, hello_bytes=hello_bytes).to_dict()
    manifest["inputs"] = list(manifest.get("inputs", [])) + ["flt"]
    manifest["outputs"] = {**manifest.get("outputs", {}), "forest": FOREST_OUTPUT}
    if name:
        manifest["name"] = name
    log(f"hybrid: joined ({size / 1e6:.1f} MB), parity {par}")
    extra = {"priors": priors} if priors else {}
    return commit_rewrite(d, manifest, tmp, version, "hybrid", par, hybrid=hybrid, **extra)


def priors_entry(labels: Sequence[str], label_set: Sequence[str], head: str = "service") -> dict[str, Any]:
    """The manifest's `priors` block for a head trained on flows with these labels: their shares (`train`),
    and no deployment prior (runtime.Model rescales by deploy / train once one is set)."""
    from collections import Counter

    n = Counter(l for l in labels if l in set(label_set))
    total = sum(n.values())
    return {"head": head, "train": {l: round(n[l] / total, 6) for l in label_set if n[l]}}


def hybrid_package(pkg: str | Path, data: str | Path, labels_csv: str | Path, pcaps: Sequence[str | Path], *,
                   version: str | None = None, name: str | None = None, seed: int = 0, hello_bytes: int = 0,
                   near: int | None = None, log: Any = None) -> dict[str, Any]:
    """Train the shape forest on the labelled flows of `data`/`labels_csv` (all of them, as `train` reads
    them; service labels) and join it to the student package `pkg` in place, checked on the flows of `pcaps`.
    hello_bytes > 0: the flows are read with TLS hellos whole (flows.chunk_length) and a hello table is
    added (fingerprints.py); the package then asks for that collection (features.hello_bytes)."""
    from etool_sensor.features import FeatureSpec
    from etool_sensor.flows import FlowParams
    from etool_sensor.runtime import check_manifest, read_manifest
    from etool_sensor.train.data import load_labelled
    from etool_sensor.train.forest import forest_spec, train_forest

    from .token_axes import real_features

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    d, manifest = read_manifest(pkg)
    spec: FeatureSpec = forest_spec(check_manifest(d, manifest))
    if manifest.get("hybrid"):  # before reading hundreds of captures
        raise ValueError(f"{d}: the package already has the shape forest ({manifest['hybrid']['forest']})")
    p = FlowParams(packets=spec.packets, payload_bytes=spec.payload_bytes, payload_packets=spec.payload_packets,
                   hello_bytes=hello_bytes)
    ds = load_labelled(data, labels_csv, label_column="category", params=p)
    log(f"hybrid: {len(ds)} labelled flows from {len(set(ds.pcap))} captures")
    forest = train_forest(ds.records, ds.contexts, list(ds.service), spec=spec, seed=seed)
    tables = None
    if hello_bytes:
        from etool_sensor.fingerprints import fit_tables

        tables = fit_tables(ds.records, {"service": ds.service, "app": ds.app}, manifest["label_sets"],
                            spec.payload_packets, near=near)
        log("hybrid: fingerprint tables of " + ", ".join(f"{len(t.counts)} ({h})" for h, t in tables.items()))
    feats, _ = real_features(pcaps, dataclasses.replace(spec, hello_bytes=hello_bytes))
    return attach_forest(d, forest, feats, version=version, name=name, tables=tables, hello_bytes=hello_bytes,
                         log=log, priors=priors_entry(ds.service, manifest["label_sets"]["service"]))


def retable_package(pkg: str | Path, data: str | Path, labels_csv: str | Path, pcaps: Sequence[str | Path], *,
                    version: str | None = None, near: int | None = None, log: Any = None) -> dict[str, Any]:
    """Refit a hybrid package's fingerprint tables from the labelled flows of `data`/`labels_csv` (read as
    hybrid_package reads them), the service table with the near-hello back-off (fingerprints.NearHellos; `near`
    its m, default NEAR_M, 0 none), and leave model.onnx alone. The exact rows must come out as the package's
    own (the same flows and the same fingerprint definition), or the package is refused unchanged. parity
    `tables` says on the flows of `pcaps` how many flows the back-off reaches and how many service labels it
    changes."""
    from etool_sensor.fingerprints import TABLES, HelloTable, fingerprints, fit_tables
    from etool_sensor.flows import FlowParams
    from etool_sensor.runtime import MANIFEST, check_manifest, load_model, read_manifest, sha256_file
    from etool_sensor.train.data import load_labelled, read_with_context

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    d, manifest = read_manifest(pkg)
    spec = check_manifest(d, manifest)
    hyb = manifest.get("hybrid") or {}
    if not spec.hello_bytes or not all(hyb.get(key) for key, _ in TABLES.values()):
        raise ValueError(f"{d}: no fingerprint tables to refit (build them with python -m etool_sensor.export.hybrid --hello-bytes)")
    p = FlowParams(packets=spec.packets, payload_bytes=spec.payload_bytes, payload_packets=spec.payload_packets,
                   hello_bytes=spec.hello_bytes)
    ds = load_labelled(data, labels_csv, label_column="category", params=p)
    log(f"tables: {len(ds)} labelled flows from {len(set(ds.pcap))} captures")
    tables = fit_tables(ds.records, {"service": ds.service, "app": ds.app}, manifest["label_sets"],
                        spec.payload_packets, near=near)
    for head, t in tables.items():
        old = HelloTable.load(d / TABLES[head][1])
        if sorted(old.counts) != sorted(t.counts) or any(not np.array_equal(old.counts[k], t.counts[k])
                                                         for k in old.counts):
            raise ValueError(f"{d}: the refitted {head} table's exact rows differ from the package's: other flows "
                             "or another fingerprint definition; rebuild the hybrid instead")
    recs, ctxs = [], []
    for f in pcaps:
        r, c = read_with_context(f, p)
        recs += r
        ctxs += c
    if not recs:
        raise ValueError("no check flows in the given captures")
    model = load_model(d, threads=1)
    before = model.predict_proba(recs, ctxs)
    model._tables = dict(tables)  # the same graph with the refitted tables, before anything is written
    after = model.predict_proba(recs, ctxs)
    keys = fingerprints(recs, spec.payload_packets)
    svc = tables["service"]
    lacking = [i for i, k in enumerate(keys.tolist()) if k and k not in svc.counts]
    reached = [i for i in lacking if svc.log_proba(keys[i:i + 1], recs[i:i + 1], spec.payload_packets).any()]
    changed = np.flatnonzero(np.abs(after - before).max(1) > 0)
    par = {"flows": len(recs), "flows_without_a_table_fingerprint": len(lacking), "flows_with_near_hellos": len(reached),
           "flows_whose_service_scores_changed": int(len(changed)),
           "service_labels_changed_by_near": float((after.argmax(1) != before.argmax(1)).mean())}
    if not set(changed.tolist()) <= set(reached):
        raise ValueError(f"{d}: the refitted tables move flows the near hellos do not reach: {par}")
    for head, t in tables.items():  # all files written before any replaces its old one
        t.save(d / (TABLES[head][1] + ".new"))
    for head, t in tables.items():
        key, fname = TABLES[head]
        (d / (fname + ".new")).replace(d / fname)
        hyb[key] = table_entry(t, fname, sha256_file(d / fname))
    manifest["hybrid"] = hyb
    manifest.setdefault("parity", {})["tables"] = par
    if version:
        manifest["version"] = version
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if not np.array_equal(load_model(d, threads=1).predict_proba(recs, ctxs), after):
        raise ValueError(f"{d}: the written package does not give the checked scores")
    log(f"tables: refitted, parity {par}")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from etool_sensor.runtime import ModelError
    from etool_sensor.train.data import LabelsError

    ap = argparse.ArgumentParser(prog="python -m etool_sensor.export.hybrid", description=hybrid_package.__doc__)
    ap.add_argument("package", help="student model package directory (rewritten in place)")
    ap.add_argument("--data", required=True, help="directory of the labelled captures")
    ap.add_argument("--labels", required=True, help="labels CSV (columns of nDPI labels.csv)")
    ap.add_argument("--pcap", nargs="+", required=True, help="captures whose flows check the joined graph")
    ap.add_argument("--version", help="new package version")
    ap.add_argument("--name", help="new package name (e.g. etool-hybrid)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables-only", action="store_true",
                    help="a hybrid package already: refit only its fingerprint tables, the service table with "
                         "near hellos (retable_package); the graph stays")
    ap.add_argument("--near-hellos", type=int, default=None, metavar="M",
                    help="the service table's near-hello back-off: the M most similar training hellos "
                         "(default fingerprints.NEAR_M; 0: exact fingerprints only, as 0.7.0)")
    ap.add_argument("--hello-bytes", type=int, default=0, metavar="H",
                    help="read TLS hellos whole up to H bytes and add the fingerprint tables, service and app "
                         "(0: the forest alone)")
    a = ap.parse_args(argv)
    if a.near_hellos is not None and a.near_hellos < 0:
        print(f"error: --near-hellos {a.near_hellos} must be >= 0", file=sys.stderr)
        return 2
    try:
        if a.tables_only:
            m = retable_package(a.package, a.data, a.labels, a.pcap, version=a.version, near=a.near_hellos)
        else:
            m = hybrid_package(a.package, a.data, a.labels, a.pcap, version=a.version, name=a.name, seed=a.seed,
                               hello_bytes=a.hello_bytes, near=a.near_hellos)
    except (ValueError, OSError, ModelError, LabelsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.package}: {m['name']}@{m['version']}, " + (f"tables {m['parity']['tables']}" if a.tables_only
                                                         else f"hybrid {m['parity']['hybrid']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
