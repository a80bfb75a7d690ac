"""The shape forest and the hybrid: a random forest on what a new network path leaves alone, multiplied
with the student.

Why: on captures a model never saw, the student and the forest of the baselines score about alike, but they
err differently. A forest on the flights (features.flights: direction-run byte totals, which do not move with
the path's MSS, and their packet counts) and TCP/UDP, combined with the student as a product of experts
(weighted geometric mean of their class probabilities), scores well above either alone by capture file
(docs/model-card.md, "The hybrid"). The package's graph gives the student's logits and the forest's
probabilities; the runtime mixes them (runtime.hybrid_logits). The forest reads encode()'s own arrays (flt
and meta's is_udp), so the runtime, the exported graph and training see the same numbers; a forest splits
on order only, so the log scaling of flt costs it nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from etool_sensor.features import FeatureSpec, encode
from etool_sensor.runtime import agreement_confidence, hybrid_head, hybrid_logits

FLIGHTS = 12  # flights the forest reads
MIX = 0.5  # weight of the student's log-probabilities; the forest's is 1 - MIX
EPS = 1e-4  # added to the forest's probabilities before the log: a class no tree votes for is unlikely, not vetoed
TREES = 50  # 100 scored the same by capture (seed 0) at twice the inference cost
MIN_LEAF = 2  # leaves of one flow make the exported graph 1.7x larger (100 trees on 1,930 flows)
# A verdict's confidence (manifest hybrid.confidence, runtime.CONFIDENCE_KINDS): "agreement", the geometric mean
# of the hybrid's probability of its label and the forest's vote share for it. On new captures the hybrid's own
# probability hardly ranks its verdicts (AUROC 0.57-0.61, ECE 0.19-0.27); the agreement does better (0.66-0.70,
# ECE 0.07-0.11) and on random folds too (docs/model-card.md, "What the confidence means on new captures").
CONFIDENCE = "agreement"


def shape_matrix(feats: dict[str, np.ndarray]) -> np.ndarray:
    """The forest's inputs from encode() arrays: flt (2 * FLIGHTS) then is_udp."""
    return np.hstack([feats["flt"], feats["meta"][:, :1]]).astype(np.float32)


def mix(student_logits: np.ndarray, forest_proba: np.ndarray, w: float = MIX, eps: float = EPS) -> np.ndarray:
    """Hybrid logits (runtime.hybrid_logits, which a hybrid package's runtime runs)."""
    return hybrid_logits(student_logits, forest_proba, w, eps)


def spread(proba: np.ndarray, classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Forest probabilities over its own classes -> columns of `labels` (0 where it never saw a label)."""
    return proba @ column_map(classes, labels)


def column_map(classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """[len(classes), len(labels)] 0/1 matrix that moves each forest class to its label's column (a class
    not in `labels` is dropped). Exported as a MatMul, so graph and Python agree."""
    pos = {l: j for j, l in enumerate(labels)}
    m = np.zeros((len(classes), len(labels)), np.float32)
    for i, c in enumerate(classes):
        if c in pos:
            m[i, pos[c]] = 1.0
    return m


@dataclass
class ShapeForest:
    """A fitted forest and the feature settings it reads (FeatureSpec with flights = FLIGHTS)."""

    forest: Any  # sklearn.ensemble.RandomForestClassifier
    spec: FeatureSpec
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.forest.classes_]

    def proba(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self.forest.predict_proba(shape_matrix(feats)).astype(np.float32)


def forest_spec(spec: FeatureSpec | None = None) -> FeatureSpec:
    return dataclasses.replace(spec or FeatureSpec(), flights=FLIGHTS)


def train_forest(records: Sequence[Any], contexts: Sequence[Any] | None, labels: Sequence[str], *,
                 spec: FeatureSpec | None = None, seed: int = 0, quick: bool = False,
                 trees: int = TREES, min_leaf: int = MIN_LEAF) -> ShapeForest:
    """Fit the shape forest on labelled flows (empty labels are left out)."""
    from sklearn.ensemble import RandomForestClassifier

    spec = forest_spec(spec)
    keep = [i for i, l in enumerate(labels) if l]
    if not keep:
        raise ValueError("no labelled flow to train the shape forest on")
    recs = [records[i] for i in keep]
    ctxs = [contexts[i] for i in keep] if contexts is not None else None
    x = shape_matrix(encode(recs, ctxs, spec))
    y = np.array([labels[i] for i in keep])
    n_trees = 20 if quick else trees
    f = RandomForestClassifier(n_estimators=n_trees, min_samples_leaf=min_leaf, random_state=seed, n_jobs=2)
    f.fit(x, y)
    return ShapeForest(f, spec, {"flows": len(keep), "trees": n_trees, "min_samples_leaf": min_leaf,
                                 "flights": spec.flights, "seed": seed})


class Hybrid:
    """The student's head for `label_column` times the shape forest (None: the student's logits alone, as a
    package's app head), and with a hello table its evidence (fingerprints.HelloTable, as a package's runtime
    adds it); eval methods `hybrid`, `hybrid_no_llm`."""

    def __init__(self, student: Any, forest: ShapeForest | None, w: float = MIX, eps: float = EPS,
                 table: Any = None, chunks: int = 3, confidence: str = CONFIDENCE) -> None:
        self.student, self.forest, self.w, self.eps = student, forest, w, eps
        self.table, self.chunks, self.confidence = table, chunks, confidence
        self.labels = list(student.labels)

    def predict_proba(self, records: Sequence[Any], contexts: Sequence[Any] | None) -> np.ndarray:
        return self.predict_with_confidence(records, contexts)[0]

    def predict_with_confidence(self, records: Sequence[Any], contexts: Sequence[Any] | None
                                ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and each flow's confidence in its top label, as a package's verdicts give it."""
        s, a = self.student.logits(records, contexts)
        z = s if self.student.head == "service" else a
        pf = None
        if self.forest is not None:
            pf = spread(self.forest.proba(encode(records, contexts, self.forest.spec)), self.forest.classes,
                        self.labels)
        keys = None
        if self.table is not None:
            from etool_sensor.fingerprints import fingerprints

            keys = fingerprints(records, self.chunks)
        p = hybrid_head(np.array(z, np.float32), pf, self.w, self.eps, table=self.table, keys=keys, records=records,
                        chunks=self.chunks)
        conf = p.max(1)
        if pf is not None and self.confidence == "agreement":
            conf = agreement_confidence(conf, pf[np.arange(len(p)), p.argmax(1)])
        return p, conf
