"""Fit a hybrid model package to the traffic of the network it watches: `etool-sensor adapt`.

The base package (the bundled default unless --model) keeps its student graph bit for bit. Around it the adapted
package gets, from the local labelled flows (nDPI's weak labels, labeling.py):

* **the fingerprint tables** of both heads: the base's counts plus the local flows' (fingerprints.HelloTable),
  near hellos included;
* **a local shape forest** (train/forest.py's features and settings) beside the base's: the graph's forest output
  becomes (1 - a) * base forest + a * local forest;
* **new labels** that only the local network has: appended to the head's label set; the student gives them the
  score of an average label (its log-sum-exp minus log K), so the forest and the tables decide them;
* **a prior correction** of the service head: one bias per label added to the hybrid's logits, fitted by maximum
  likelihood on local flows the forest and tables did not see (2 folds by capture), with an L2 pull to 0. It moves
  the verdicts towards the local class mix: nDPI's corpus has few Web flows, real networks mostly Web. A Gaussian
  prior on the biases (BIAS_SD) keeps a handful of local flows from moving them far.

The forest weight `a` is chosen from FOREST_WEIGHTS by the same cross-fitted likelihood. Nothing here needs torch
or a GPU; sklearn, skl2onnx and onnx (the `adapt` extra) build and write the graph.

Before it writes, it holds back HOLDOUT of the local captures (by file), fits the same recipe on the others and
prints the base package's and the adapted one's scores on the held-back captures. The written package is then
fitted on every local capture. When the adapted recipe is not better on the held-back captures the command says
so on stderr and exits EXIT_NOT_BETTER (the package is still written, for inspection).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

EXIT_OK, EXIT_INPUT, EXIT_TRUNCATED, EXIT_NOT_BETTER = 0, 2, 3, 5

HOLDOUT = 0.25  # share of the local captures held back for the before/after check
FOREST_WEIGHTS = (0.25, 0.5, 0.75, 1.0)  # candidate weights of the local forest (1 - a: the base's)
# Gaussian prior N(0, BIAS_SD^2) on each prior-correction bias (MAP fit): a few local flows move the biases little,
# thousands as far as they say; a bias of 1 multiplies a label's odds by e
BIAS_SD = 1.0
BIAS_MIN_ENCRYPTED = 20  # the biases are fitted on encrypted local flows when there are this many
NEW_LABEL_MIN = 3  # a label the base lacks joins the label set with at least this many local flows
LOCAL_TREES = 50  # as the base forest (train/forest.TREES)
MIN_CLASS = 5  # before/after: macro-F1 over classes with at least this many held-back flows (the issue's)


class AdaptError(Exception):
    """A one-line user error (exit 2)."""


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))


def _neutral(z: np.ndarray, n_new: int) -> np.ndarray:
    """z [B, K] with n_new columns of log-sum-exp(z) - log K appended: a new label scores like an average one."""
    if not n_new:
        return z
    m = z.max(1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(1, keepdims=True))
    return np.hstack([z, np.repeat(lse - math.log(z.shape[1]), n_new, 1)]).astype(np.float32)


def _pad_cols(x: np.ndarray, k: int) -> np.ndarray:
    return np.hstack([x, np.zeros((len(x), k - x.shape[1]), x.dtype)]) if x.shape[1] < k else x


@dataclass
class LocalFlows:
    """Local labelled flows with what the base package computes for them (once)."""

    records: list
    contexts: list
    service: list[str]
    app: list[str]
    pcap: list[str]
    encrypted: np.ndarray
    student: np.ndarray  # base service logits [n, K]
    app_logits: np.ndarray  # base app logits [n, A]
    base_forest: np.ndarray  # base forest probabilities [n, K]
    x: np.ndarray  # forest inputs (train/forest.shape_matrix)
    keys: np.ndarray  # fingerprints (hfp)
    tokens: list  # hello tokens (near hellos)

    def __len__(self) -> int:
        return len(self.records)


def local_flows(model: Any, ds: Any) -> LocalFlows:
    """Run the base package's graph once over the labelled set `ds` (train/data.LabelledSet)."""
    from ..fingerprints import hello_tokens
    from ..runtime import run_graph
    from .forest import shape_matrix

    if not model.manifest.get("hybrid") or "forest" not in (model.manifest.get("outputs") or {}):
        raise AdaptError(f"{model.path}: adapt needs a hybrid package (student + shape forest + tables), "
                         "like the bundled default")
    feats = model.features(ds.records, ds.contexts)
    outs = [model._out["service"], model._out["app"], model.manifest["outputs"]["forest"]]
    s, a, f = run_graph(model.session, outs, feats, model._inputs, model._granules)
    chunks = model.spec.payload_packets
    return LocalFlows(list(ds.records), list(ds.contexts), list(ds.service), list(ds.app), list(ds.pcap),
                      np.asarray(ds.encrypted, bool), s, a, f, shape_matrix(feats), feats["hfp"],
                      [hello_tokens(r, chunks) for r in ds.records])


def merged_table(base: Any, labels: list[str], keys: np.ndarray, y: Sequence[str],
                 tokens: Sequence[Any] | None) -> Any:
    """The base HelloTable over `labels` (its own labels first) plus the counts of the local flows; with
    `tokens` and a base near table, the local hellos join the near table."""
    from ..fingerprints import HelloTable, NearHellos

    k = len(labels)
    local = HelloTable.fit(keys, y, labels, alpha=base.alpha, weight=base.weight)
    counts = {fp: _pad_cols(c[None, :], k)[0].copy() for fp, c in base.counts.items()}
    for fp, c in local.counts.items():
        counts[fp] = counts[fp] + c if fp in counts else c
    near = None
    if base.near is not None:
        rows: dict[bytes, list] = {}
        for t, c in zip(base.near.tokens, _pad_cols(base.near.counts, k)):
            rows[t.tobytes()] = [t, c.copy()]
        if tokens is not None:
            ln = NearHellos.fit(tokens, y, labels)
            for t, c in zip(ln.tokens, ln.counts):
                if t.tobytes() in rows:
                    rows[t.tobytes()][1] += c
                else:
                    rows[t.tobytes()] = [t, c]
        order = sorted(rows)
        near = NearHellos([rows[b][0] for b in order], np.array([rows[b][1] for b in order]).reshape(len(order), k),
                          base.near.tau, base.near.m)
    return HelloTable(list(labels), counts, base.alpha, base.weight, near)


@dataclass
class Parts:
    """What adapt fits: the local forest, the merged tables, the biases and the forest weight."""

    service_labels: list[str]
    app_labels: list[str]
    forest: Any  # sklearn RandomForestClassifier or None
    a: float
    tables: dict[str, Any]
    bias: np.ndarray
    mix: float
    eps: float
    info: dict[str, Any] = field(default_factory=dict)
    x_width: int = 0  # the forest's input columns (train/forest.shape_matrix)

    def forest_proba(self, lf: LocalFlows, idx: np.ndarray) -> np.ndarray:
        from .forest import column_map

        k = len(self.service_labels)
        base = _pad_cols(lf.base_forest[idx], k)
        if self.forest is None or self.a == 0:
            return base
        loc = self.forest.predict_proba(lf.x[idx]).astype(np.float32) @ column_map(
            [str(c) for c in self.forest.classes_], self.service_labels)
        return (1 - self.a) * base + self.a * loc

    def raw_logits(self, lf: LocalFlows, idx: np.ndarray) -> np.ndarray:
        """The adapted service head's logits without the biases (each row up to a constant)."""
        k = len(self.service_labels)
        s = _neutral(lf.student[idx], k - lf.student.shape[1])
        h = self.mix * _log_softmax(s) + (1 - self.mix) * np.log(self.forest_proba(lf, idx) + self.eps)
        t = self.tables.get("service")
        if t is not None:
            h = t.add_to(h.astype(np.float32), lf.keys[idx], [lf.records[i] for i in idx])
        return h

    def service_proba(self, lf: LocalFlows, idx: np.ndarray) -> np.ndarray:
        h = self.raw_logits(lf, idx) + self.bias
        return np.exp(_log_softmax(h))


def _fit_forest(x: np.ndarray, y: Sequence[str], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    from .forest import MIN_LEAF

    f = RandomForestClassifier(n_estimators=LOCAL_TREES, min_samples_leaf=MIN_LEAF, random_state=seed, n_jobs=2)
    return f.fit(x, list(y))


def fit_bias(h: np.ndarray, y: np.ndarray, sd: float = BIAS_SD) -> np.ndarray:
    """Per-label biases b maximising sum log softmax(h + b)[y] - |b|^2 / (2 sd^2), the posterior mode under a
    N(0, sd^2) prior (convex; L-BFGS)."""
    l2 = 1.0 / (2 * sd * sd * max(len(y), 1))  # per flow of the mean log-likelihood below
    from scipy.optimize import minimize

    n, k = h.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    h = h.astype(np.float64)

    def f(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = h + b
        m = z.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
        p = np.exp(z - (m + np.log(np.exp(z - m).sum(1, keepdims=True))))
        loss = (lse - z[np.arange(n), y]).mean() + l2 * (b @ b)
        grad = (p - onehot).mean(0) + 2 * l2 * b
        return loss, grad

    r = minimize(f, np.zeros(k), jac=True, method="L-BFGS-B")
    return r.x.astype(np.float32)


def _capture_folds(pcaps: Sequence[str], idx: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    caps = sorted({pcaps[i] for i in idx})
    rng = np.random.default_rng(seed)
    order = [caps[j] for j in rng.permutation(len(caps))]
    fold_of = {c: j % folds for j, c in enumerate(order)}
    return [np.array([i for i in idx if fold_of[pcaps[i]] == f], np.int64) for f in range(folds)]


def fit_parts(model: Any, lf: LocalFlows, idx: np.ndarray, *, seed: int = 0,
              log: Callable[[str], None] = lambda s: None) -> Parts:
    """Fit the adapted parts on the local flows `idx`: forest, tables, label sets, forest weight and biases."""
    from ..fingerprints import TABLES

    hyb = model.manifest["hybrid"]
    base_s, base_a = model.label_sets["service"], model.label_sets["app"]
    ys = [lf.service[i] for i in idx]
    ya = [lf.app[i] for i in idx]

    def new_labels(base: list[str], y: list[str]) -> list[str]:
        have = set(base)
        cnt: dict[str, int] = {}
        for l in y:
            if l and l not in have:
                cnt[l] = cnt.get(l, 0) + 1
        return sorted(l for l, n in cnt.items() if n >= NEW_LABEL_MIN)

    s_labels = base_s + new_labels(base_s, ys)
    a_labels = base_a + new_labels(base_a, ya)

    def build(sub: np.ndarray, a: float) -> Parts:
        y_s = [lf.service[i] for i in sub]
        y_a = [lf.app[i] for i in sub]
        keep = [j for j, l in enumerate(y_s) if l in s_labels]
        forest = _fit_forest(lf.x[sub[keep]], [y_s[j] for j in keep], seed) if keep else None
        tables = {}
        for head, (key, _) in TABLES.items():
            if head in model._tables:
                labels, y = (s_labels, y_s) if head == "service" else (a_labels, y_a)
                toks = [lf.tokens[i] for i in sub] if head == "service" else None
                tables[head] = merged_table(model._tables[head], labels, lf.keys[sub], y, toks)
        return Parts(s_labels, a_labels, forest, a, tables, np.zeros(len(s_labels), np.float32),
                     float(hyb["mix"]), float(hyb["eps"]), x_width=lf.x.shape[1])

    pos = {l: j for j, l in enumerate(s_labels)}
    folds = _capture_folds(lf.pcap, idx, 2, seed)
    best = (None, 0.5, np.zeros(len(s_labels), np.float32))
    if all(len(f) for f in folds):
        # cross-fitted logits: the forest and tables of one fold score the other, so the biases see flows
        # neither has memorised (a forest's votes on its own training flows are near certain)
        fitted = [(build(folds[1 - j], 1.0), folds[j]) for j in range(2)]
        ev = np.concatenate(folds)
        y = np.array([pos.get(lf.service[i], -1) for i in ev])
        ok = y >= 0
        if lf.encrypted[ev].sum() >= BIAS_MIN_ENCRYPTED:  # the priors of the flows the model is for
            ok &= lf.encrypted[ev]
        scores = {}
        for a in FOREST_WEIGHTS:
            h = []
            for p, te in fitted:
                p.a = a
                h.append(p.raw_logits(lf, te))
            h = np.concatenate(h)[ok]
            b = fit_bias(h, y[ok])
            z = _log_softmax(h + b)
            scores[a] = float(-z[np.arange(len(z)), y[ok]].mean())
            if best[0] is None or scores[a] < best[0]:
                best = (scores[a], a, b)
        log(f"adapt: {len(idx)} flows, cross-fitted log-loss by local forest weight "
            + ", ".join(f"{a} {v:.3f}" for a, v in scores.items()) + f": {best[1]}")
    else:
        log("adapt: fewer than 2 local captures to cross-fit on: no prior correction, local forest weight 0.5")
    parts = build(idx, best[1])
    parts.bias = best[2]
    parts.info = {"seed": seed, "flows": int(len(idx)), "captures": len({lf.pcap[i] for i in idx}),
                  "new_service_labels": s_labels[len(base_s):], "new_app_labels": len(a_labels) - len(base_a),
                  "local_forest_weight": best[1], "cross_fit_log_loss": best[0]}
    return parts


# ------------------------------------------------------------------------------------------- scoring
def score(y: Sequence[str], pred: Sequence[str], min_class: int = MIN_CLASS) -> dict[str, Any]:
    """Service macro-F1 over the classes with >= min_class flows, and accuracy."""
    y, pred = list(y), list(pred)
    if not y:
        return {"flows": 0, "macro_f1_min5": 0.0, "accuracy": 0.0, "classes_min5": 0}
    cls = sorted({c for c in y if y.count(c) >= min_class})
    f1s = []
    for c in cls:
        tp = sum(1 for a, b in zip(y, pred) if a == c and b == c)
        fp = sum(1 for a, b in zip(y, pred) if a != c and b == c)
        fn = sum(1 for a, b in zip(y, pred) if a == c and b != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"flows": len(y), "macro_f1_min5": float(np.mean(f1s)) if f1s else 0.0,
            "accuracy": sum(a == b for a, b in zip(y, pred)) / len(y), "classes_min5": len(cls)}


def _row(name: str, s: dict[str, Any]) -> str:
    return f"  {name:<9} macro-F1 {s['macro_f1_min5']:.3f} ({s['classes_min5']} classes >= {MIN_CLASS} flows), " \
           f"accuracy {s['accuracy']:.3f}, {s['flows']} flows"


def split_captures(pcaps: Sequence[str], share: float, seed: int, weight: Sequence[bool] | None = None
                   ) -> tuple[set[str], set[str]]:
    """(kept, held back): whole captures, in an order chosen by `seed`, held back until they hold about `share`
    of the flows (of the flows where `weight` is true, e.g. the encrypted ones, when any is); a capture that
    would take the held-back part past 2 * share is skipped, so one big capture does not end up held back
    alone. At least one capture is kept and, with two or more, one held back."""
    caps = sorted(set(pcaps))
    if len(caps) < 2 or share <= 0:
        return set(caps), set()
    w = np.asarray(weight if weight is not None and any(weight) else [True] * len(pcaps), bool)
    per: dict[str, int] = {c: 0 for c in caps}
    for p, x in zip(pcaps, w):
        per[p] += int(x)
    total = sum(per.values()) or 1
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    got = 0
    for j in rng.permutation(len(caps)):
        c = caps[j]
        if len(held) == len(caps) - 1:
            break
        if not per[c]:  # a capture without such flows: held back with probability `share`
            if rng.random() < share:
                held.add(c)
            continue
        if got >= share * total or got + per[c] > 2 * share * total:
            continue
        held.add(c)
        got += per[c]
    if not held:
        held = {caps[int(rng.integers(len(caps)))]}
    return set(caps) - held, held


# ------------------------------------------------------------------------------------------- package
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


# ------------------------------------------------------------------------------------------- the command
@dataclass
class Report:
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    scope: str
    held_captures: int
    better: bool | None
    manifest: dict[str, Any]


def held_scores(model: Any, lf: LocalFlows, kept: np.ndarray, held: np.ndarray, seed: int,
                log: Callable[[str], None]) -> tuple[dict, dict, str]:
    """Base and adapted (fitted on `kept`) scores on the `held` flows: encrypted flows when at least 20 are
    held back, else all."""
    enc = held[lf.encrypted[held]]
    sel, scope = (enc, "encrypted flows") if len(enc) >= 20 else (held, "all flows")
    parts = fit_parts(model, lf, kept, seed=seed, log=log)
    y = [lf.service[i] for i in sel]
    before = [model.label_sets["service"][j] for j in model.predict_proba(
        [lf.records[i] for i in sel], [lf.contexts[i] for i in sel]).argmax(1)]
    after = [parts.service_labels[j] for j in parts.service_proba(lf, sel).argmax(1)]
    return score(y, before), score(y, after), scope


def adapt(base: str | Path | None, data_dir: str | Path, labels_csv: str | Path, out: str | Path, *,
          holdout: float = HOLDOUT, seed: int = 0, name: str | None = None, version: str | None = None,
          progress: bool = False, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Report:
    """Adapt `base` to the labelled local flows of `data_dir`/`labels_csv` and write the package `out`."""
    from ..runtime import ModelError, load_model, model_window
    from .data import LabelsError, load_labelled

    out = Path(out)
    if not out.resolve().parent.is_dir():
        raise AdaptError(f"{out.parent}: no such directory (it holds the new package -o {out})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdaptError(f"{out}: exists and is not an empty directory (give a new one)")
    try:
        model = load_model(base, threads=2)
    except ModelError as e:
        raise AdaptError(str(e)) from None
    errors: list[str] = []
    try:
        ds = load_labelled(data_dir, labels_csv, label_column="category", params=model_window(model.spec),
                           progress=progress, on_error=lambda n, e: errors.append(f"{n}: {e}"))
    except LabelsError as e:
        raise AdaptError(str(e)) from None
    for e in errors:
        log(f"etool-sensor: warning: skipped {e}")
    if len(ds) < 10:
        raise AdaptError(f"{labels_csv}: only {len(ds)} labelled flows matched captures under {data_dir}; "
                         "adapt needs local flows (is --data the --root the labels were written with?)")
    lf = local_flows(model, ds)
    log(f"adapt: {len(lf)} labelled local flows ({int(lf.encrypted.sum())} encrypted) from "
        f"{len(set(lf.pcap))} captures; base {model.id}")
    kept_caps, held_caps = split_captures(lf.pcap, holdout, seed, lf.encrypted.tolist())
    before = after = None
    scope = ""
    if held_caps:
        kept = np.array([i for i, p in enumerate(lf.pcap) if p in kept_caps], np.int64)
        held = np.array([i for i, p in enumerate(lf.pcap) if p in held_caps], np.int64)
        before, after, scope = held_scores(model, lf, kept, held, seed, log)
    else:
        log("adapt: warning: a single local capture: nothing to hold back, no before/after")
    parts = fit_parts(model, lf, np.arange(len(lf)), seed=seed, log=log)
    lineage = {"base": model.id, "base_sha256": model.manifest["sha256"],
               "local_sha256": digest(labels_csv, data_dir, ds.pcap), "local_labels": str(labels_csv),
               "flows": len(lf), "captures": len(set(lf.pcap)),
               "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
    if before is not None:
        lineage["held_back"] = {"captures": len(held_caps), "scope": scope, "before": before, "after": after}
    man = write_package(model, parts, lf, out, lineage=lineage, name=name, version=version)
    better = None
    if before is not None:
        better = (after["macro_f1_min5"] > before["macro_f1_min5"] and after["accuracy"] >= before["accuracy"]) or \
                 (after["macro_f1_min5"] >= before["macro_f1_min5"] and after["accuracy"] > before["accuracy"])
    return Report(before, after, scope, len(held_caps), better, man)


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="*", metavar="CAPTURE",
                   help="captures to label with nDPI (labeling.py) and adapt to; or give --data and --labels")
    p.add_argument("--data", metavar="DIR", help="directory the labels CSV's `pcap` paths are relative to")
    p.add_argument("--labels", metavar="CSV", help="labels CSV (docs/labels.md), e.g. from `etool-sensor label`")
    p.add_argument("-o", "--output", required=True, metavar="PKG", help="new model package directory")
    p.add_argument("--model", metavar="BASE", help="base model package (default: the bundled default)")
    p.add_argument("--holdout", type=float, default=HOLDOUT, metavar="SHARE",
                   help=f"share of the local captures held back for the before/after check (default {HOLDOUT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-back captures and the forest")
    p.add_argument("--name", help="package name (default: the base's)")
    p.add_argument("--version", help="package version (default: BASE_VERSION+local.DIGEST)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no report (warnings stay)")


def adapt_main(args: argparse.Namespace) -> int:
    prog = "etool-sensor"
    quiet = args.quiet
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    progress = not quiet and sys.stderr.isatty()
    tmpdir = None
    truncated = False
    try:
        if args.captures and (args.data or args.labels):
            raise AdaptError("give captures, or --data and --labels, not both")
        if not args.captures and not (args.data and args.labels):
            raise AdaptError("give captures to label, or --data DIR and --labels CSV")
        if not 0 <= args.holdout < 1:
            raise AdaptError(f"--holdout {args.holdout}: must be in [0, 1)")
        if args.captures:
            from ..labeling import LabelError, default_root, write_labels

            tmpdir = tempfile.mkdtemp(prefix="etool-adapt-")
            data, labels = default_root(args.captures), Path(tmpdir) / "labels.csv"
            try:
                st = write_labels(args.captures, labels, data, progress=progress)
            except LabelError as e:
                raise AdaptError(str(e)) from None
            truncated = bool(st.truncated)
            if truncated:
                print(f"{prog}: warning: truncated capture(s) ({', '.join(st.truncated)}): labelled up to the cut",
                      file=sys.stderr)
            log(f"adapt: labelled {st.flows} flows of {st.captures} captures ({st.encrypted} encrypted)")
        else:
            data, labels = Path(args.data), Path(args.labels)
        rep = adapt(args.model, data, labels, args.output, holdout=args.holdout, seed=args.seed, name=args.name,
                    version=args.version, progress=progress, log=log)
    except AdaptError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ImportError as e:
        print(f"{prog}: error: adapt needs the Python module {e.name!r}: pip install 'etool-sensor[adapt]'",
              file=sys.stderr)
        return EXIT_INPUT
    except OSError as e:
        print(f"{prog}: error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    m = rep.manifest
    if rep.before is not None and not quiet:
        print(f"held-back captures: {rep.held_captures}, {rep.scope}:\n{_row('before', rep.before)}\n"
              f"{_row('after', rep.after)}", file=sys.stderr)
    if not quiet:
        new = m["adapt"]["new_service_labels"]
        print(f"{prog}: wrote {args.output}: {m['name']}@{m['version']} from {m['lineage']['base']}, "
              f"{m['lineage']['flows']} local flows"
              + (f", new service labels {', '.join(new)}" if new else ""), file=sys.stderr)
    if rep.better is False:
        print(f"{prog}: WARNING: the adapted package is NOT better than {m['lineage']['base']} on the held-back "
              f"captures (macro-F1 {rep.before['macro_f1_min5']:.3f} -> {rep.after['macro_f1_min5']:.3f}, accuracy "
              f"{rep.before['accuracy']:.3f} -> {rep.after['accuracy']:.3f}); check before deploying it",
              file=sys.stderr)
        return EXIT_NOT_BETTER
    return EXIT_TRUNCATED if truncated else EXIT_OK
