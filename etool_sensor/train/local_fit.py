"""What `etool-sensor adapt` fits to a network's labelled flows (train/adapt.py says why each part): the merged
fingerprint tables, a local shape forest and its weight, new labels, and the prior-correction biases; and the
scores it compares before and after."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

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


def score_line(name: str, s: dict[str, Any]) -> str:
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
