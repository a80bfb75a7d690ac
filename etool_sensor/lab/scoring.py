"""Scores of predicted labels against true ones: F1 (macro, weighted, over classes with enough flows), accuracy,
calibration (ECE), what a confidence threshold buys, confusion counts and a bootstrap ratio between methods.
numpy only, so `eval` scores a model on the base install; matplotlib draws the confusion PNG when present."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np



def expected_calibration_error(conf: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """ECE of top-label confidences: sum over equal-width bins of |bin|/n * |accuracy - mean confidence|."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, np.float64)
    if conf.size == 0:
        return 0.0
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # (lo, hi] bins; 0 joins the first
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


#: Confidence thresholds whose coverage eval reports: etool.yaml's classify.threshold default (0.5) and
#: the steps above it.
COVERAGE_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.99)


def confidence_coverage(conf: Sequence[float], correct: Sequence[bool],
                        thresholds: Sequence[float] = COVERAGE_THRESHOLDS) -> dict:
    """What a confidence threshold buys: for each threshold t, the share of flows with confidence >= t (the
    verdicts a sensor with classify.threshold t reports as known) and their accuracy, plus the AUROC of the
    confidence as a score for "the label is right". Why: ECE says whether confidence is right on average;
    a SOC engineer tuning thresholds needs to know whether a higher threshold gives fewer, better verdicts on
    traffic like theirs (docs/model-card.md, "What the confidence means on new captures")."""
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, bool)
    rows = []
    for t in thresholds:
        m = conf >= t
        rows.append({"threshold": float(t), "flows": int(m.sum()), "share": float(m.mean()) if conf.size else 0.0,
                     "accuracy": float(correct[m].mean()) if m.any() else None})
    both = 0 < correct.sum() < correct.size  # AUROC needs right and wrong verdicts
    return {"auroc": auroc(conf, correct) if both else None, "thresholds": rows}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, tied scores at their average rank)."""
    score = np.asarray(score, np.float64)
    positive = np.asarray(positive, bool)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = avg_rank[inverse]
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def confusion(y_true: Sequence[str], y_pred: Sequence[str],
              labels: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(labels, counts) with counts[i, j] = flows of true labels[i] predicted as labels[j]."""
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    index = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return labels, cm


def _f1_per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, F1 and support per row of a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0).astype(np.float64), cm.sum(1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(predicted + support > 0, 2 * tp / (predicted + support), 0.0)
    return precision, recall, f1, support


def metrics(y_true: Sequence[str], y_pred: Sequence[str], conf: Sequence[float] | None = None,
            min_support: int = 5) -> dict:
    """macro/weighted F1, accuracy, macro-F1 over classes with >= min_support test flows, per class; with
    `conf` (the top label's confidence per flow) also ECE and confidence_coverage ("by_confidence").
    numpy only, so `eval` scores a model on the base install (tests check it against scikit-learn)."""
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        return {"flows": 0, "macro_f1": 0.0, "macro_f1_min5": 0.0, "weighted_f1": 0.0, "accuracy": 0.0,
                "ece": 0.0, "per_class": {}}
    true_labels = sorted(set(y_true))
    # macro over the classes present in the test set (a predicted-only class cannot be "macro-averaged in");
    # flows predicted as such a class still count as false negatives of their true class
    labels = true_labels + sorted(set(y_pred) - set(true_labels))
    _, cm = confusion(y_true, y_pred, labels)
    p, r, f, s = (a[:len(true_labels)] for a in _f1_per_class(cm))
    big = s >= min_support
    out = {
        "flows": len(y_true),
        "classes": len(true_labels),
        "macro_f1": float(f.mean()),
        "macro_f1_min5": float(f[big].mean()) if big.any() else 0.0,
        "classes_min5": int(big.sum()),
        "weighted_f1": float((f * s).sum() / s.sum()),
        "accuracy": float(np.mean([a == b for a, b in zip(y_true, y_pred)])),
    }
    out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                        for i, c in enumerate(true_labels)}
    if conf is not None:
        correct = [a == b for a, b in zip(y_true, y_pred)]
        out["ece"] = expected_calibration_error(conf, correct)
        out["by_confidence"] = confidence_coverage(conf, correct)
    return out


def _macro_f1_min5_codes(t: np.ndarray, p: np.ndarray, k: int, min_support: int = 5) -> float:
    """metrics()'s macro_f1_min5 on integer-coded labels (0..k-1): the bootstrap's inner loop."""
    support = np.bincount(t, minlength=k)
    big = support >= min_support
    if not big.any():
        return 0.0
    tp = np.bincount(t[t == p], minlength=k)
    pred = np.bincount(p, minlength=k)
    denom = support + pred
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1[big].mean())


def bootstrap_vs(y: Sequence[str], pred: Sequence[str], ref: Sequence[str], groups: Sequence[str], *,
                 boot: int = 1000, seed: int = 0, unit: str = "capture group") -> dict:
    """How sure is "method vs reference" on pooled predictions? Resample whole groups (capture groups) with
    replacement `boot` times and recompute both methods' macro-F1 (classes >= 5 flows in the resample):
    95 % percentile intervals of the ratio and the difference. The unit is the capture because flows of one
    capture succeed or fail together; resampling flows would make the intervals far too narrow."""
    labels = sorted(set(y) | set(pred) | set(ref))
    code = {c: i for i, c in enumerate(labels)}
    t, a, b = (np.array([code[v] for v in x]) for x in (y, pred, ref))
    gnames, gi = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.nonzero(gi == g)[0] for g in range(len(gnames))]
    k = len(labels)
    fa, fb = _macro_f1_min5_codes(t, a, k), _macro_f1_min5_codes(t, b, k)
    rng = np.random.default_rng(seed)
    ratios, diffs = [], []
    for _ in range(boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        x, r = _macro_f1_min5_codes(t[idx], a[idx], k), _macro_f1_min5_codes(t[idx], b[idx], k)
        diffs.append(x - r)
        if r > 0:
            ratios.append(x / r)
    q = lambda v: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]  # noqa: E731
    return {"ratio": round(fa / fb, 4) if fb > 0 else None, "ratio_ci95": q(ratios) if ratios else None,
            "diff": round(fa - fb, 4), "diff_ci95": q(diffs), "boot": boot, "groups": len(members),
            "unit": unit}


def confusion_png(y_true: Sequence[str], y_pred: Sequence[str], path: str | Path, title: str) -> bool:
    """Draw the row-normalised confusion matrix; False (nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cm = confusion(y_true, y_pred)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.32 * n, 1.5 + 0.32 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=5,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
