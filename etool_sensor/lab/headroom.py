"""What a K-fold split leaves learnable: per class, how much of its test traffic has anything in training to
learn from, and what two reference answers score on the same folds.

Why: by capture file every method scores low, and a low score can mean a weak model or folds that hold
nothing to learn from. On the nDPI corpus most captures hold one or two apps, and an app's wire format can
change between captures (WhatsApp opens with `WA` in two captures and with `ED` in the third), so a class
can be present in training and still have no test flow that looks like its training flows. These numbers
separate the two. They need labels of the test flows, so they describe the data and the folds; they are
never a method and never reach a model.

- `label_in_training`: the class has training flows in the flow's fold.
- `app_with_label`: the flow's app (nDPI `app`) has training flows with this label: the same app in a new
  session, the paper's time and version shift.
- `fingerprint_with_label`: a training flow with this label has the flow's exact fingerprint (TLS hello
  structure, or the opening bytes: fingerprints.fingerprint): what an exact lookup table could get right.
- `app_oracle`: answer the training folds' majority label of the flow's app (it knows the app, which nDPI
  reads from the server name, so it is an upper reference, not a method); the training majority label for
  an app the folds lack.
- `fingerprint_lookup`: answer the training folds' majority label of the flow's fingerprint, the training
  majority label where the folds lack it (the hello table of the hybrid alone, without counts or experts).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from ..fingerprints import fingerprints
from .scoring import metrics


def _majority(c: Counter) -> str:
    # ties broken by name, so the answer does not depend on the order flows were read in
    return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def headroom(labels: Sequence[str], apps: Sequence[str], pcaps: Sequence[str], keys: np.ndarray,
             folds: Sequence[np.ndarray], min_support: int = 5) -> dict[str, Any]:
    """Per-class coverage of each test flow by its fold's training flows, and the two reference answers'
    pooled metrics, over `folds` (test index arrays that together cover every flow once, as run_kfold's)."""

    y, n = list(labels), len(labels)
    if not (len(apps) == len(pcaps) == len(keys) == n):
        raise ValueError("labels, apps, pcaps and keys must be parallel")
    covered = np.zeros((3, n), bool)  # label_in_training, app_with_label, fingerprint_with_label
    by_app: list[str | None] = [None] * n
    by_key: list[str | None] = [None] * n
    for te in folds:
        tr = np.setdiff1d(np.arange(n), te)
        if len(tr) == 0:
            raise ValueError("a fold leaves no training flows")
        overall = _majority(Counter(y[i] for i in tr))
        app_lab: dict[str, Counter] = defaultdict(Counter)
        key_lab: dict[int, Counter] = defaultdict(Counter)
        for i in tr:
            app_lab[apps[i]][y[i]] += 1
            if keys[i]:
                key_lab[int(keys[i])][y[i]] += 1
        in_train = set(y[i] for i in tr)
        for i in te:
            a, k = app_lab.get(apps[i]), key_lab.get(int(keys[i])) if keys[i] else None
            covered[:, i] = (y[i] in in_train, bool(a) and y[i] in a, bool(k) and y[i] in k)
            by_app[i] = _majority(a) if a else overall
            by_key[i] = _majority(k) if k else overall
    support = Counter(y)
    caps: dict[str, Counter] = defaultdict(Counter)
    for c, p in zip(y, pcaps):
        caps[c][p] += 1
    classes = {}
    for c, s in sorted(support.items(), key=lambda kv: (-kv[1], kv[0])):
        idx = np.array([i for i in range(n) if y[i] == c])
        classes[c] = {"support": s, "captures": len(caps[c]),
                      "largest_capture_share": round(max(caps[c].values()) / s, 3),
                      **{name: round(float(covered[j, idx].mean()), 3) for j, name in
                         enumerate(("label_in_training", "app_with_label", "fingerprint_with_label"))}}
    out: dict[str, Any] = {"min_support": min_support, "classes": classes}
    big = [i for i in range(n) if support[y[i]] >= min_support]
    out["flows_min5"] = len(big)
    for j, name in enumerate(("label_in_training", "app_with_label", "fingerprint_with_label")):
        out[name] = round(float(covered[j, big].mean()), 3) if big else None
    for name, pred in (("app_oracle", by_app), ("fingerprint_lookup", by_key)):
        r = metrics(y, pred, min_support=min_support)
        out[name] = {k: r[k] for k in ("macro_f1", "macro_f1_min5", "accuracy")}
    return out


def dataset_headroom(ds: Any, folds: Sequence[np.ndarray], min_support: int = 5) -> dict[str, Any]:
    """headroom() of a LabelledSet (its current labels, apps, captures and flow fingerprints)."""
    return headroom(ds.labels, ds.app, ds.pcap, fingerprints(ds.records), folds, min_support)


def headroom_lines(h: dict[str, Any]) -> list[str]:
    """The markdown section of eval's report."""
    ms = h["min_support"]
    lines = [f"What the folds leave learnable (classes with >= {ms} flows; needs the test labels, so it "
             "describes the folds, not a method; etool_sensor/lab/headroom.py). Share of each class's test flows "
             "whose class, app with this label, or exact fingerprint with this label is in their fold's training "
             "flows:", "",
             "| class | support | captures | largest capture | label in training | app with label | "
             "fingerprint with label |", "|---|---|---|---|---|---|---|"]
    for c, v in h["classes"].items():
        if v["support"] >= ms:
            lines.append(f"| {c} | {v['support']} | {v['captures']} | {v['largest_capture_share']:.2f} | "
                         f"{v['label_in_training']:.2f} | {v['app_with_label']:.2f} | "
                         f"{v['fingerprint_with_label']:.2f} |")
    lines.append(f"| all ({h['flows_min5']} flows) | | | | {h['label_in_training']:.2f} | {h['app_with_label']:.2f} "
                 f"| {h['fingerprint_with_label']:.2f} |")
    ao, fl = h["app_oracle"], h["fingerprint_lookup"]
    lines += ["", "References on the same folds (macro-F1 (>=5), accuracy): an oracle that knows each flow's app "
              f"(nDPI reads it from the server name) {ao['macro_f1_min5']:.3f}, {ao['accuracy']:.3f}; an exact "
              f"fingerprint lookup {fl['macro_f1_min5']:.3f}, {fl['accuracy']:.3f}.", ""]
    return lines
