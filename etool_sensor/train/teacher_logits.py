"""Teacher logits computed once (e.g. on an accelerator by `python -m etool_sensor.lab.teacher_cache`) and
reused by `eval --teacher-cache DIR` and `train --teacher-cache`: an npz per split of logits on every flow,
keyed by flow identity, with a digest of the teacher's training flows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # for annotations only
    from .data import LabelledSet


def flow_id(ds: LabelledSet, i: int) -> str:
    r = ds.records[i]
    return f"{ds.pcap[i]}|{r.proto}|{r.orig_h}|{r.orig_p}|{r.resp_h}|{r.resp_p}|{r.ts:.6f}"


class CachedTeacher:
    """Teacher logits computed elsewhere (e.g. the GPU run), looked up by flow identity."""

    def __init__(self, labels: list[str], table: dict[str, np.ndarray], pcap_of: dict[int, str]) -> None:
        self.labels = labels
        self.table = table
        self._pcap_of = pcap_of  # id(record) -> capture name

    def predict_logits(self, records: Sequence[Any], contexts: Sequence[Any] | None = None) -> np.ndarray:
        out = np.zeros((len(records), len(self.labels)), np.float32)
        for i, r in enumerate(records):
            key = f"{self._pcap_of.get(id(r), '')}|{r.proto}|{r.orig_h}|{r.orig_p}|{r.resp_h}|{r.resp_p}|{r.ts:.6f}"
            out[i] = self.table[key]
        return out

    def predict_proba(self, records: Sequence[Any], contexts: Sequence[Any] | None = None) -> np.ndarray:
        z = self.predict_logits(records, contexts)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def teacher_cache_path(cache_dir: str | Path, split: str, column: str, variant: str = "teacher") -> Path:
    return Path(cache_dir) / f"{variant}_{column}_{split}.npz"


def training_key(ds: LabelledSet, unlabelled: Sequence | None = None) -> str:
    """A digest of the flows a teacher was trained on: a cached teacher is reused only for the same ones
    (folds of another seed share the file names, not the training flows). `unlabelled`: the records its
    self-supervised stage also read (eval --unlabelled), which change the teacher too."""
    import hashlib

    ids = sorted(flow_id(ds, i) for i in range(len(ds)))
    if unlabelled:
        ids += ["unlabelled"] + sorted(r.uid for r in unlabelled)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def load_cached_teacher(ds: LabelledSet, path: Path, train_key: str | None = None) -> CachedTeacher | None:
    """The cached logits at `path` if they cover every flow of `ds` and, when `train_key` is given and the
    file records one, came from a teacher trained on those flows; else None (retrain rather than guess)."""
    if not path.exists():
        return None
    z = np.load(path, allow_pickle=False)
    if train_key is not None and "train_key" in z.files and str(z["train_key"]) != train_key:
        return None
    table = dict(zip(z["ids"].tolist(), z["logits"]))
    ids = [flow_id(ds, i) for i in range(len(ds))]
    if any(k not in table for k in ids):
        return None  # another data set: retrain rather than guess
    return CachedTeacher([str(x) for x in z["labels"]], table, {id(r): p for r, p in zip(ds.records, ds.pcap)})


def save_teacher_logits(path: Path, ds: LabelledSet, teacher: Any, train_key: str | None = None) -> None:
    """Logits of `teacher` on every flow of `ds` (train and test), keyed by flow identity; `train_key`
    (training_key of its training flows) is stored when given."""
    logits = teacher.predict_logits(ds.records, ds.contexts)
    extra = {} if train_key is None else {"train_key": np.array(train_key)}
    np.savez_compressed(path, ids=np.array([flow_id(ds, i) for i in range(len(ds))]), logits=logits.astype(np.float16),
                        labels=np.array(teacher.labels), **extra)
