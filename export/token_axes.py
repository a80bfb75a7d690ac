"""Make a student graph's token axes dynamic, so the runtime can leave padding out.

The exporter writes every stream at its full length: 32 packets, 3 x 64 payload bytes, 8 BURST neighbours.
Most flows fill a fraction of that (on the bench capture 23 of 38 tokens on average), and the rest is padding
that attention masks out but the graph still computes. After this rewrite the graph takes each stream cut
to any multiple of its merge stride (`granules`), and `runtime.Model` runs groups of flows cut to their
longest member. In fp32 a cut flow's outputs equal the padded run's to float rounding; with static int8 the
different summation order at another length can tip a rounding by one step, which moves a few flows'
scores a little (not the padding's exp(-20) of attention, which is below float32's resolution of the
scores; see docs/performance.md, "Fixed runtime settings and why"). tests/test_token_axes.py compares both on real flows.

Three edits; a graph without a position table raises ValueError, and with the granules given the result
must run with every token input one granule long:
- the token axis (1) of pkt, byt, seg and ctx (where present) becomes symbolic;
- a learned position table added to a stream ([1, L, d] initializer) is sliced to the stream's length;
- a Reshape to [batch, tokens, width] with a constant token count (the packet merge, the datagram
  validity fold) takes -1 there instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .graph import Graph

TOKEN_INPUTS = ("pkt", "byt", "seg", "ctx")


def granules(config: dict[str, Any]) -> dict[str, int]:
    """Per input, the multiple its axis 1 may be cut to (from the encoder config in the manifest). A stream
    the encoder pads up to a whole token (length not a multiple of its stride) is never cut: the granule
    is then its full length."""
    n, s = int(config["packets"]), int(config["pkt_stride"])
    nb, ds = int(config["payload_packets"]) * int(config["payload_bytes"]), int(config["dgram_stride"])
    byt = 2 * ds if nb % (2 * ds) == 0 else max(nb, 1)
    return {"pkt": s if n % s == 0 else n, "byt": byt, "seg": byt, "ctx": 1}


def make_token_axes_dynamic(src: str | Path, dst: str | Path, granules_: dict[str, int] | None = None) -> Path:
    """Rewrite the graph at `src` (fp32 or int8) to `dst`; ValueError if it does not have the exporter's shape
    or, given the granules, if onnxruntime cannot run it with every token input one granule long."""
    import onnx
    from onnx import helper, numpy_helper

    G = Graph(onnx.load(str(src)))
    m, g, producer, const = G.m, G.g, G.producer, G.const
    inputs = {i.name: i for i in g.input}
    missing = [n for n in ("pkt", "ctx") if n not in inputs]  # byt/seg are pruned from a model without payload
    if missing:
        raise ValueError(f"{src}: no graph input {missing}")
    for n in TOKEN_INPUTS:
        if n in inputs:
            inputs[n].type.tensor_type.shape.dim[1].dim_param = f"{n}_len"
    inits = G.inits
    new_nodes: list[Any] = []
    positions = reshapes = 0
    minus_one = numpy_helper.from_array(np.array([-1], np.int64), "etool_token_axes_minus_one")
    g.initializer.append(minus_one)
    for i, n in enumerate(g.node):
        if n.op_type == "Add":
            for k, name in enumerate(n.input):
                arr = inits.get(name)
                shape = list(arr.dims) if arr is not None else []
                if len(shape) == 3 and shape[0] == 1 and shape[1] > 1:
                    other = n.input[1 - k]
                    tag = f"etool_token_axes_pos{positions}"
                    new_nodes += [
                        (i, helper.make_node("Shape", [other], [tag + "_shape"], start=1, end=2, name=tag + "_shape")),
                        (i, helper.make_node("Slice", [name, tag + "_zero", tag + "_shape", tag + "_one"],
                                             [tag + "_sliced"], name=tag + "_slice")),
                    ]
                    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), tag + "_zero"),
                                          numpy_helper.from_array(np.array([1], np.int64), tag + "_one")])
                    n.input[k] = tag + "_sliced"
                    positions += 1
        elif n.op_type == "Reshape":
            cat = producer.get(n.input[1])
            if cat is None or cat.op_type != "Concat" or len(cat.input) != 3:
                continue
            mid = const(cat.input[1])
            if mid is not None and mid.shape == (1,) and int(mid[0]) > 1 and const(cat.input[2]) is not None:
                cat.input[1] = minus_one.name
                reshapes += 1
    if positions < 1:
        raise ValueError(f"{src}: not the exporter's graph (no position table added to a token stream)")
    for at, node in reversed(new_nodes):  # keep topological order: each new node right before its user
        g.node.insert(at, node)
    del g.value_info[:]  # inferred shapes with the old fixed lengths; onnxruntime infers them again
    onnx.checker.check_model(m)
    dst = Path(dst)
    onnx.save(m, str(dst))
    if granules_:
        _smoke(dst, granules_)
    return dst


def _smoke(path: Path, granules_: dict[str, int]) -> None:
    """Run the rewritten graph once with every token input cut to one granule (batch 2)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {}
    for i in s.get_inputs():
        dims = [2] + [d if isinstance(d, int) else granules_.get(i.name, 1) for d in i.shape[1:]]
        dtype = np.float32 if i.type == "tensor(float)" else np.int64
        feed[i.name] = np.ones(dims, dtype)
    try:
        s.run(None, feed)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: the rewritten graph does not run cut to one granule ({e})") from None


def graph_outputs(path: str | Path, feats: dict[str, np.ndarray], granules_: dict[str, int],
                  names: Sequence[str] | None = None) -> list[np.ndarray]:
    """The graph's outputs `names` (default: all, in the graph's order) run as the runtime runs it
    (runtime.run_graph: padding cut, one thread), in input order."""
    import onnxruntime as ort

    from etool_sensor.runtime import run_graph, session_options

    s = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    names = list(names) if names is not None else [o.name for o in s.get_outputs()]
    return run_graph(s, names, feats, [i.name for i in s.get_inputs()], granules_)


def cut_logits(path: str | Path, feats: dict[str, np.ndarray], granules_: dict[str, int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the rewritten graph run as the runtime runs it (runtime.run_graph), in input order."""
    service, app = graph_outputs(path, feats, granules_, ["service_logits", "app_logits"])
    return service, app


def real_features(pcaps: Sequence[str | Path], spec: Any) -> tuple[dict[str, np.ndarray], int]:
    """The encoded flows of `pcaps` that Model.classify runs (>= 2 packets), with their BURST context, and
    how many; ValueError if there are none. The check set of a package rewrite."""
    from etool_sensor.context import ContextTracker
    from etool_sensor.features import encode
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.runtime import model_window

    recs, ctxs = [], []
    params = model_window(spec)  # what the runtime reads for this spec (TLS hellos whole for a hello forest)
    for p in pcaps:
        tr = ContextTracker()
        for r in read_flows(p, params):
            ctx = tr.observe(r)
            if len(r.packets) >= 2:
                recs.append(r)
                ctxs.append(ctx)
    if not recs:
        raise ValueError("no flows with >= 2 packets in the given captures")
    return encode(recs, ctxs, spec), len(recs)


Rewrite = tuple[Path, dict[str, Any], dict[str, int] | None, dict[str, np.ndarray], int, Path, Path]


def open_rewrite(pkg: str | Path, pcaps: Sequence[str | Path], done: tuple[str, str],
                 needs: Sequence[tuple[str, str]], suffix: str) -> Rewrite:
    """The start every package rewrite shares (simplify_package, fuse_package): (directory,
    manifest, token granules, the check flows' features and count, the model file, a path beside it for the
    new graph). ValueError if the manifest says the rewrite was made (`done`: manifest key and what to say), or
    lacks a step it builds on (`needs`: manifest key and what to do about it)."""
    from etool_sensor.runtime import MODEL_FILE, check_manifest, read_manifest

    d, manifest = read_manifest(pkg)
    spec = check_manifest(d, manifest)
    if manifest.get(done[0]):
        raise ValueError(f"{d}: {done[1]} ({done[0]}: {manifest[done[0]]})")
    for key, fix in needs:
        if not manifest.get(key):
            raise ValueError(f"{d}: {fix}")
    feats, n = real_features(pcaps, spec)
    return d, manifest, manifest.get("token_granules"), feats, n, d / MODEL_FILE, d / (MODEL_FILE + suffix)


def commit_rewrite(d: Path, manifest: dict[str, Any], new_graph: Path, version: str | None, parity_key: str,
                   par: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Put a checked, rewritten graph in place of a package's model.onnx and update its manifest: `fields`,
    sha256, parity[parity_key], version. The graph goes first, so a failure leaves the old manifest's
    checksum refusing the package rather than a manifest describing a graph that is not there."""
    from etool_sensor.runtime import MANIFEST, MODEL_FILE, sha256_file

    new_graph.replace(d / MODEL_FILE)
    manifest.update(fields)
    manifest["sha256"] = sha256_file(d / MODEL_FILE)
    manifest.setdefault("parity", {})[parity_key] = par
    if version:
        manifest["version"] = version
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def rewrite_main(argv: Sequence[str] | None, prog: str, rewrite: Any, summary: Any) -> int:
    """The command line of a package rewrite (simplify.simplify_package, fuse.fuse_package):
    PACKAGE --pcap CAPTURE... [--version V]; exit 2 with the reason when the package is refused."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=rewrite.__doc__)
    ap.add_argument("package", help="model package directory (rewritten in place)")
    ap.add_argument("--pcap", nargs="+", required=True, help="captures whose flows check the rewrite")
    ap.add_argument("--version", help="new package version (the graph changes, so its sha256 does)")
    a = ap.parse_args(argv)
    from etool_sensor.runtime import ModelError

    try:
        m = rewrite(a.package, a.pcap, version=a.version)
    except (ValueError, OSError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.package}: {m['name']}@{m['version']}, {summary(m)}")
    return 0
