"""`etool-sensor eval`: the shipped model on labelled captures, and every method on every split.

    etool-sensor eval [--model DIR] --data DIR --labels CSV --label-column {category,app} --json OUT.json
                      [--encrypted-only] [--report OUT.md] [--splits iid,capture,unseen_app,shifted]
                      [--methods ...] [--quick] [--seed 0] [--teacher-cache DIR]

Splits (all from --seed, over the matched flows):
  iid         random flows, stratified 70/30
  capture     group split on capture groups (~30% of flows in test): the main non-IID split. A capture group
              is the captures linked by a shared server endpoint or a client address recorded the same day
              (capture_groups): nDPI's files were cut from shared recordings, so file names leak sessions
  unseen_app  for each service with >= 2 apps, about a third of its apps (at least one) held out
              entirely; the test asks for the *service* (category) of those unseen apps
  shifted     per-class test fractions from 0.6 (rarest class) down to 0.1 (commonest): train and test
              have different class priors (NETD-1/2 style)
  capture_kfold  (only when named; --folds K, default 5) K group folds on capture groups: every flow is
              tested once, by a model that never saw its capture nor its servers. Metrics over the pooled out-of-fold
              predictions, plus each fold's macro-F1 (>=5) with mean and standard deviation. One
              `capture` partition holds ~70 captures in test, and which ones decides much of the score
              (macro-F1 (>=5) of the same method moves by 2x between seeds); the pooled K-fold number is
              the one to compare methods by.
  iid_kfold   (only when named; --folds K) the same with random folds stratified by label: the IID
              reference for the capture K-fold, so that the IID -> by-capture drop is measured on pooled
              predictions of every flow rather than on one partition of each.
  On both K-fold splits, when rf runs, every other method also gets `vs_rf`: the ratio and difference of
  its pooled macro-F1 (>=5) to the forest's with 95 % intervals from 1,000 bootstrap resamples of whole
  capture groups (capture_kfold) or files (the by-capture target is a ratio to the forest). Each K-fold result also holds
  `headroom` (headroom.py): per class, the share of its test flows whose class, app with that label, or
  exact fingerprint with that label is in their fold's training flows, and the macro-F1 of an oracle that
  knows each flow's app and of an exact fingerprint lookup: how much of a low score the folds themselves
  explain.

Methods: rf and knn on the first 20 signed packet sizes (AppScanner/CUMUL-like), rf_shape (the forest on
what the hybrid reads: flights, TCP/UDP and TLS hello bits, SizeBaseline; the feature-matched baseline), etool (student distilled
from the LLM teacher), student_no_llm (no teacher), student_no_payload, student_ports, teacher (the LLM
teacher itself) and encoder_only (the teacher's encoder + projector with the LLM removed: what the LLM adds).
The model and torch imports happen only for the methods that need them.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .flows import DEFAULT_HELLO_BYTES
from .scoring import bootstrap_vs, confusion, confusion_png, metrics

SPLITS = ("iid", "capture", "unseen_app", "shifted")
EXTRA_SPLITS = ("capture_kfold", "iid_kfold")  # run only when named: K trainings per method
METHODS = ("rf", "rf_shape", "knn", "etool", "hybrid", "student_no_llm", "hybrid_no_llm", "student_no_payload",
           "student_ports", "teacher", "encoder_only")
HYBRIDS = {"hybrid": "etool", "hybrid_no_llm": "student_no_llm"}  # student times the shape forest (train/forest.py)
EXTRA_METHODS = ("rf_hello", "student_capbal")  # only when named (experiments, docs/model-card.md)
N_SIZES = 20
N_FLIGHTS = 12  # rf_shape

# -------------------------------------------------------------------------------------------- splits


def _label_of(ds, column: str) -> list[str]:
    return list(ds.service) if column == "category" else list(ds.app) if column == "app" else list(ds.labels)


def make_splits(ds, names: Sequence[str], seed: int = 0, test_size: float = 0.3) -> dict[str, dict]:
    """{split: {"train": idx, "test": idx, "label": column or None}} (label None: the run's label column)."""
    rng = np.random.default_rng(seed)
    n = len(ds)
    ys = list(ds.labels)
    out: dict[str, dict] = {}
    for name in names:
        r = np.random.default_rng([seed, SPLITS.index(name) if name in SPLITS else 99])
        if name == "iid":
            from sklearn.model_selection import train_test_split

            idx = np.arange(n)
            counts = {c: ys.count(c) for c in set(ys)}
            strat_ok = np.array([counts[y] >= 2 for y in ys])
            tr, te = train_test_split(idx[strat_ok], test_size=test_size, random_state=seed,
                                      stratify=[ys[i] for i in idx[strat_ok]])
            tr = np.concatenate([tr, idx[~strat_ok]])  # singletons can only be learnt, never tested
            out[name] = {"train": np.sort(tr), "test": np.sort(te), "label": None}
        elif name == "capture":
            group = capture_groups(ds)
            pcaps = sorted(set(group))
            r.shuffle(pcaps)
            size = {p: 0 for p in pcaps}
            for p in group:
                size[p] += 1
            test, got = set(), 0
            for p in pcaps:
                if got >= test_size * n:
                    break
                if got + size[p] > 1.5 * test_size * n and got > 0:
                    continue  # a huge group would swamp the test set
                test.add(p)
                got += size[p]
            te = np.array([i for i in range(n) if group[i] in test], int)
            tr = np.array([i for i in range(n) if group[i] not in test], int)
            out[name] = {"train": tr, "test": te, "label": None}
        elif name == "unseen_app":
            apps_of: dict[str, list[str]] = {}
            for s, a in zip(ds.service, ds.app):
                apps_of.setdefault(s, [])
                if a not in apps_of[s]:
                    apps_of[s].append(a)
            services_of: dict[str, set[str]] = {}
            for sv, a in zip(ds.service, ds.app):
                services_of.setdefault(a, set()).add(sv)
            held: set[str] = set()  # an app is held out entirely, under every service it appears in

            def still_seen(a: str) -> bool:
                return all(any(b not in held and b != a for b in apps_of[sv]) for sv in services_of[a])

            for sv in sorted(apps_of):
                apps = sorted(a for a in apps_of[sv] if a not in held)
                if len(apps_of[sv]) < 2 or len(apps) < 2:
                    continue
                want = max(1, len(apps_of[sv]) // 3)
                for a in r.permutation(apps):
                    if want and still_seen(str(a)):
                        held.add(str(a))
                        want -= 1
            te = np.array([i for i in range(n) if ds.app[i] in held], int)
            tr = np.array([i for i in range(n) if ds.app[i] not in held], int)
            out[name] = {"train": tr, "test": te, "label": "category",
                         "held_out_apps": sorted(held)}
        elif name == "shifted":
            classes = sorted(set(ys), key=lambda c: (ys.count(c), c))  # rarest first
            frac = {c: 0.6 - 0.5 * k / max(len(classes) - 1, 1) for k, c in enumerate(classes)}
            te_l, tr_l = [], []
            for c in classes:
                members = [i for i in range(n) if ys[i] == c]
                r.shuffle(members)
                k = int(round(frac[c] * len(members))) if len(members) >= 2 else 0
                k = min(k, len(members) - 1)
                te_l += members[:k]
                tr_l += members[k:]
            out[name] = {"train": np.sort(np.array(tr_l, int)), "test": np.sort(np.array(te_l, int)), "label": None}
        else:
            raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    del rng
    return out


# ----------------------------------------------------------------------------------------- baselines


def signed_sizes(records, n: int = N_SIZES) -> np.ndarray:
    """First n packets' IP lengths, + from the originator, - from the responder, 0 padded."""
    x = np.zeros((len(records), n), np.float32)
    for i, r in enumerate(records):
        for j, p in enumerate(r.packets[:n]):
            x[i, j] = p.ip_len if p.is_orig else -p.ip_len
    return x


class SizeBaseline:
    """rf / knn on the first 20 signed packet sizes. rf_hello: the forest with the TLS handshake structure too
    (hello version, cipher suites and extension types present, as bits over the training flows' most common
    values; features.parse_hello): how much of that signal survives the capture shift (needs flows read with
    the whole hello, eval --hello-tokens COLLECT). rf_shape: the forest on what does not move with the path:
    the first flights (features.flights: direction-run byte and packet totals), TCP or UDP, and the
    handshake bits of rf_hello, without the single packet sizes."""

    def __init__(self, kind: str, seed: int = 0, quick: bool = False) -> None:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.kind = kind
        if kind in ("rf", "rf_hello", "rf_shape"):
            self.m = RandomForestClassifier(n_estimators=50 if quick else 300, random_state=seed, n_jobs=2)
        else:
            self.m = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5, weights="distance"))

    def _x(self, records) -> np.ndarray:
        if self.kind == "rf_shape":
            from .features import flights

            x = np.zeros((len(records), 2 * N_FLIGHTS + 1), np.float32)
            for i, r in enumerate(records):
                x[i, -1] = r.proto == "tcp"
                for j, (size, count) in enumerate(flights(r, N_FLIGHTS)):
                    x[i, j], x[i, N_FLIGHTS + j] = size, count
        else:
            x = signed_sizes(records)
        if self.kind not in ("rf_hello", "rf_shape"):
            return x
        from .tls import parse_hello

        h = np.zeros((len(records), 4 + len(self.vocab)), np.float32)
        for i, r in enumerate(records):
            for c in r.payload[:3]:
                p = parse_hello(c.data)
                if p is None:
                    continue
                o = 0 if p[0] == 1 else 2
                h[i, o], h[i, o + 1] = 1.0, p[1]
                for key in ((p[0], "c", v) for v in p[2]):
                    j = self.vocab.get(key)
                    if j is not None:
                        h[i, 4 + j] = 1.0
                for key in ((p[0], "e", v) for v in p[3]):
                    j = self.vocab.get(key)
                    if j is not None:
                        h[i, 4 + j] = 1.0
        return np.hstack([x, h])

    def fit(self, records, labels) -> "SizeBaseline":
        if self.kind in ("rf_hello", "rf_shape"):
            from collections import Counter

            from .tls import parse_hello

            cnt: Counter = Counter()
            for r in records:
                for c in r.payload[:3]:
                    p = parse_hello(c.data)
                    if p is not None:
                        cnt.update({(p[0], "c", v) for v in p[2]} | {(p[0], "e", v) for v in p[3]})
            # ties broken by the key, not by set order (str hashing is salted per process): reproducible
            top = sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:100]
            self.vocab = {k: j for j, (k, _) in enumerate(top)}
        self.m.fit(self._x(records), labels)
        self.labels = [str(c) for c in self.m.classes_]
        return self

    def predict_proba(self, records, contexts=None) -> np.ndarray:
        return self.m.predict_proba(self._x(records))


# ------------------------------------------------------------------------------------ teacher cache


def flow_id(ds, i: int) -> str:
    r = ds.records[i]
    return f"{ds.pcap[i]}|{r.proto}|{r.orig_h}|{r.orig_p}|{r.resp_h}|{r.resp_p}|{r.ts:.6f}"


class CachedTeacher:
    """Teacher logits computed elsewhere (e.g. the GPU run), looked up by flow identity."""

    def __init__(self, labels: list[str], table: dict[str, np.ndarray], pcap_of: dict[int, str]) -> None:
        self.labels = labels
        self.table = table
        self._pcap_of = pcap_of  # id(record) -> capture name

    def predict_logits(self, records, contexts=None) -> np.ndarray:
        out = np.zeros((len(records), len(self.labels)), np.float32)
        for i, r in enumerate(records):
            key = f"{self._pcap_of.get(id(r), '')}|{r.proto}|{r.orig_h}|{r.orig_p}|{r.resp_h}|{r.resp_p}|{r.ts:.6f}"
            out[i] = self.table[key]
        return out

    def predict_proba(self, records, contexts=None) -> np.ndarray:
        z = self.predict_logits(records, contexts)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def teacher_cache_path(cache_dir: str | Path, split: str, column: str, variant: str = "teacher") -> Path:
    return Path(cache_dir) / f"{variant}_{column}_{split}.npz"


def training_key(ds) -> str:
    """A digest of the flows a teacher was trained on: a cached teacher is reused only for the same ones
    (folds of another seed share the file names, not the training flows)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(flow_id(ds, i) for i in range(len(ds)))).encode()).hexdigest()


def load_cached_teacher(ds, path: Path, train_key: str | None = None) -> CachedTeacher | None:
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


def save_teacher_logits(path: Path, ds, teacher, train_key: str | None = None) -> None:
    """Logits of `teacher` on every flow of `ds` (train and test), keyed by flow identity; `train_key`
    (training_key of its training flows) is stored when given."""
    logits = teacher.predict_logits(ds.records, ds.contexts)
    extra = {} if train_key is None else {"train_key": np.array(train_key)}
    np.savez_compressed(path, ids=np.array([flow_id(ds, i) for i in range(len(ds))]), logits=logits.astype(np.float16),
                        labels=np.array(teacher.labels), **extra)


# --------------------------------------------------------------------------------------------- runner


def _relabel(ds, column: str):
    sub = ds.subset(range(len(ds)))
    sub.labels = _label_of(ds, column)
    sub.label_column = column
    return sub


def _predict(model, records, contexts, labels_attr: list[str]) -> tuple[list[str], np.ndarray]:
    """Labels and confidences; a hybrid gives the confidence its package's verdicts would carry."""
    if hasattr(model, "predict_with_confidence"):
        p, conf = model.predict_with_confidence(records, contexts)
    else:
        p = np.asarray(model.predict_proba(records, contexts))
        conf = p.max(1) if p.shape[0] else np.zeros(0)
    if p.shape[0] == 0:
        return [], np.zeros(0)
    return [labels_attr[i] for i in p.argmax(1)], np.asarray(conf)


def run_split(ds, split: dict, column: str, methods: Sequence[str], *, seed: int, quick: bool,
              teacher_cache: str | None, device: str, log: Callable[[str], None], png_dir: Path | None,
              split_name: str, unlabelled=None, spec=None, keep_predictions: bool = False,
              student_config: dict | None = None, capture_balance: float = 0.5, hello_bytes: int = 0,
              model_seed: int | None = None, teachers: dict | None = None, near_hellos: int | None = None) -> dict:
    """Every method trained on split["train"] and scored on split["test"]. `seed` seeds the teachers,
    `model_seed` (default `seed`) everything else: a repeat with another model seed keeps the teacher.
    `teachers` (variant -> teacher) is filled and reused, so repeats of one split train each teacher once."""
    col = split["label"] or column
    mseed = seed if model_seed is None else model_seed
    teachers = {} if teachers is None else teachers
    full = _relabel(ds, col)
    tr, te = full.subset(split["train"]), full.subset(split["test"])
    res: dict = {"label": col, "train_flows": len(tr), "test_flows": len(te),
                 "train_pcaps": len(set(tr.pcap)), "test_pcaps": len(set(te.pcap)), "methods": {}}
    if "held_out_apps" in split:
        res["held_out_apps"] = split["held_out_apps"]

    def get_teacher(variant: str = "teacher"):
        if variant in teachers:
            return teachers[variant]
        t = None
        key = training_key(tr) if teacher_cache else None
        if teacher_cache:
            t = load_cached_teacher(full, teacher_cache_path(teacher_cache, split_name, col, variant), key)
            if t is not None:
                log(f"eval[{split_name}]: {variant} logits from {teacher_cache}")
        if t is None:
            from .train.teacher import train_teacher

            t = train_teacher(tr, label_column=col, quick=quick, device=device, seed=seed,
                              use_llm=variant == "teacher", unlabelled=unlabelled, log=log)
            if teacher_cache and not quick:  # write-through: the next run with this cache skips the training
                path = teacher_cache_path(teacher_cache, split_name, col, variant)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_teacher_logits(path, full, t, key)
                log(f"eval[{split_name}]: {variant} logits saved to {path}")
        teachers[variant] = t
        return t

    students: dict = {}

    def student_for(m: str):
        from .train.student import train_student

        kw = {"etool": {}, "student_no_llm": {}, "student_no_payload": dict(use_payload=False),
              "student_ports": dict(use_ports=True), "student_capbal": dict(capture_balance=capture_balance)}[m]
        # ablations change one thing from etool: they keep its teacher (built only when needed)
        t = None if m in ("student_no_llm", "student_capbal") else get_teacher()
        # SSL on the training flows plus the extra unlabelled ones, as the teacher's stage 1 does
        ssl = None if unlabelled is None else (list(tr.records) + list(unlabelled[0]),
                                               list(tr.contexts) + list(unlabelled[1]))
        return train_student(tr, label_column=col, quick=quick, seed=mseed, teacher=t, log=log, spec=spec,
                             config=student_config, unlabelled=ssl, **kw)

    for m in methods:
        t0 = time.time()
        try:
            if m in ("rf", "knn", "rf_hello", "rf_shape"):
                model = SizeBaseline(m, mseed, quick).fit(tr.records, tr.labels)
            elif m in ("teacher", "encoder_only"):
                model = get_teacher(m)
            elif m in HYBRIDS:  # the student of the named method (trained once per split) times the forest
                from .train.forest import Hybrid, train_forest

                base = HYBRIDS[m]
                if base not in students:
                    students[base] = student_for(base)
                from .features import FeatureSpec

                st = students[base]
                table, n_chunks = None, (spec or FeatureSpec()).payload_packets
                if hello_bytes:  # flows read with TLS hellos whole: the hello table too, as the default has
                    from .fingerprints import fit_tables

                    head = "app" if col == "app" else "service"  # near hellos for the service head, as a package
                    table = fit_tables(tr.records, {head: tr.labels}, {head: st.labels}, n_chunks, near_hellos)[head]
                # as a package: the forest joins the service head only, the tables both heads
                forest = None if col == "app" else train_forest(tr.records, tr.contexts, tr.labels, spec=spec,
                                                                seed=mseed, quick=quick)
                model = Hybrid(st, forest, table=table, chunks=n_chunks)
            else:
                model = students[m] = student_for(m)
            fit_s = time.time() - t0
            pred, conf = _predict(model, te.records, te.contexts, list(model.labels))
            r = metrics(te.labels, pred, conf)
            r["fit_s"] = round(fit_s, 1)
            if keep_predictions:
                r["_pred"], r["_conf"] = list(pred), [float(c) for c in conf]
            res["methods"][m] = r
            if png_dir is not None and m in ("etool", "hybrid", "teacher", "rf") and len(te):
                png = png_dir / f"confusion_{col}_{split_name}_{m}.png"
                if confusion_png(te.labels, pred, png, f"{m}, {split_name} split, {col}"):
                    r["confusion_png"] = png.name
            log(f"eval[{split_name}] {m:18s} macroF1 {r['macro_f1']:.3f} min5 {r['macro_f1_min5']:.3f} "
                f"acc {r['accuracy']:.3f} ECE {r.get('ece', 0):.3f} ({fit_s:.0f}s)")
        except Exception as e:  # one broken method must not hide the others' numbers
            res["methods"][m] = {"error": f"{type(e).__name__}: {e}"}
            log(f"eval[{split_name}] {m}: FAILED {type(e).__name__}: {e}")
    return res


def app_seen_breakdown(y: Sequence[str], pred: Sequence[str], seen: np.ndarray) -> dict[str, dict]:
    """Metrics on the test flows whose app had flows in training ("seen": the same apps in new sessions,
    the paper's time and version shift) and on the others ("unseen": the service of a new app). On the nDPI
    corpus most captures hold one or two apps, so a capture split is partly an unseen-app split; this says
    how much of each a score is made of."""
    out: dict[str, dict] = {}
    for name, mask in (("seen", seen), ("unseen", ~seen)):
        idx = np.flatnonzero(mask)
        r = metrics([y[i] for i in idx], [pred[i] for i in idx]) if len(idx) else {}
        out[name] = {"flows": int(len(idx)), **{k: r.get(k) for k in ("macro_f1", "macro_f1_min5", "accuracy")}}
    return out


CLIENT_WINDOW = 86400.0  # captures sharing a client address are one group when recorded this close (s)
_CLOCK_SET = 946684800.0  # 2000-01-01: a capture starting before it has no usable clock
_CLOCK_SPAN = 30 * 86400.0  # nor has one whose flows spread over more than this (clocks mixed in one file)


def _identifies(addr: str) -> bool:
    """Whether an address names one host: not loopback, unspecified, multicast, link-local or broadcast
    (those are the same string on every network)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local
                or addr == "255.255.255.255")


def capture_groups(ds, client_window: float = CLIENT_WINDOW) -> list[str]:
    """Per flow, its capture group: the connected component of captures linked by a shared server endpoint
    (address, port, protocol) or by a shared client address recorded within `client_window` seconds (both
    captures' clocks usable: starting after 2000, within 30 days; two captures without a usable clock that
    share a client are linked too). Named by its first capture; a capture without endpoint data is its own.

    Why: file names do not separate sessions. nDPI's captures were cut from shared recordings (reddit and
    tumblr share 11 identical 5-tuples, one client spans pinterest, reddit and tumblr; the openvpn variants and
    dnscrypt v1/v2 share clients and servers), so folds by file leak sessions and servers into training. A
    client address alone is not linked across years: a home network's 192.168.x.y recurs in captures years
    apart, and linking on it makes one component of 62 % of the encrypted flows."""
    pcaps = list(ds.pcap)
    parent = {p: p for p in pcaps}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    span: dict[str, tuple[float, float]] = {}
    servers: dict[tuple, str] = {}
    clients: dict[str, set[str]] = {}
    for r, p in zip(ds.records, pcaps):
        if r is None:
            continue
        lo, hi = span.get(p, (r.ts, r.ts))
        span[p] = (min(lo, r.ts), max(hi, r.ts))
        if _identifies(r.resp_h):
            join(p, servers.setdefault((r.resp_h, r.resp_p, r.proto), p))
        if _identifies(r.orig_h):
            clients.setdefault(r.orig_h, set()).add(p)

    def clock(p: str) -> bool:
        lo, hi = span[p]
        return lo >= _CLOCK_SET and hi - lo <= _CLOCK_SPAN

    for caps in clients.values():
        caps_s = sorted(caps)
        for i, a in enumerate(caps_s):
            for b in caps_s[i + 1:]:
                if clock(a) and clock(b):
                    gap = max(span[a][0], span[b][0]) - min(span[a][1], span[b][1])
                    if gap <= client_window:
                        join(a, b)
                elif not clock(a) and not clock(b):
                    join(a, b)
    return [root(p) for p in pcaps]


def capture_folds(ds, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Test indices of `folds` group folds on capture groups (capture_groups: captures that share a server
    or a client stay together), balanced by flow count (greedy, biggest group first, ties broken by a
    seeded shuffle)."""
    if folds < 2:
        raise ValueError("capture_kfold needs --folds >= 2")
    group = capture_groups(ds)
    names = sorted(set(group))
    if len(names) < folds:
        raise ValueError(f"{len(names)} capture groups cannot make {folds} capture folds")
    rng = np.random.default_rng([seed, 7])
    rng.shuffle(names)
    size = {g: 0 for g in names}
    for g in group:
        size[g] += 1
    load = [0] * folds
    fold_of: dict[str, int] = {}
    for g in sorted(names, key=lambda g: -size[g]):  # stable: equal sizes keep the shuffled order
        k = min(range(folds), key=lambda j: (load[j], j))
        fold_of[g] = k
        load[k] += size[g]
    return [np.array([i for i in range(len(ds)) if fold_of[group[i]] == k], int) for k in range(folds)]


def iid_folds(ds, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Test indices of `folds` random folds stratified by label (the IID twin of capture_folds)."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError("iid_kfold needs --folds >= 2")
    y = np.asarray(ds.labels)
    with warnings.catch_warnings():  # classes with fewer flows than folds: some folds lack them, as in any split
        warnings.simplefilter("ignore", UserWarning)
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [te for _, te in skf.split(np.zeros(len(y)), y)]


KFOLDS = {"capture_kfold": capture_folds, "iid_kfold": iid_folds}


def run_kfold(ds, column: str, methods: Sequence[str], *, folds: int, seed: int, log: Callable[[str], None],
              png_dir: Path | None, kind: str = "capture_kfold", repeats: int = 1, **kw) -> dict:
    """Every method trained `folds` times (one per fold of `kind`); metrics over the pooled predictions.
    With `repeats` R > 1 the same folds are trained R times with model seeds seed + 100 r (teachers are
    trained once per fold and shared): the main numbers are repeat 0's, and "repeats" holds each method's
    pooled macro-F1 (>=5) per repeat, its mean and sd, because one student init moves the score by several
    points (docs/model-card.md, "Results": the seed spread)."""
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    n = len(ds)
    parts = KFOLDS[kind](ds, folds, seed)
    seeds = [seed + 100 * r for r in range(repeats)]
    preds: list[dict[str, list]] = [{m: [None] * n for m in methods} for _ in seeds]
    conf: dict[str, list] = {m: [0.0] * n for m in methods}
    per_fold: dict[str, list] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    fit_s: dict[str, float] = {m: 0.0 for m in methods}
    seen = np.zeros(n, bool)  # the flow's app has flows in its fold's training part
    apps = list(ds.app)
    for k, te in enumerate(parts):
        tr = np.setdiff1d(np.arange(n), te)
        train_apps = {apps[i] for i in tr}
        seen[te] = [apps[i] in train_apps for i in te]
        teachers: dict = {}  # one teacher per fold, whatever the repeat
        for r, mseed in enumerate(seeds):
            rep = f", model seed {mseed} (repeat {r + 1}/{repeats})" if repeats > 1 else ""
            log(f"eval[{kind}]: fold {k + 1}/{folds}: train {len(tr)} / test {len(te)} flows{rep}")
            res = run_split(ds, {"train": tr, "test": te, "label": None}, column, methods, seed=seed, log=log,
                            png_dir=None, split_name=f"{kind}{k}_seed{seed}", keep_predictions=True,
                            model_seed=mseed, teachers=teachers, **kw)
            for m, rm in res["methods"].items():
                if "error" in rm:
                    errors.setdefault(m, rm["error"])
                    continue
                for j, i in enumerate(te):
                    preds[r][m][i] = rm["_pred"][j]
                    if r == 0:
                        conf[m][i] = rm["_conf"][j]
                if r == 0:
                    per_fold[m].append(rm["macro_f1_min5"])
                    fit_s[m] += rm["fit_s"]
    pred = preds[0]
    y = list(ds.labels)
    out: dict = {"label": column, "folds": folds, "train_flows": n - min(map(len, parts)), "test_flows": n,
                 "train_pcaps": len(set(ds.pcap)) - min(len({ds.pcap[i] for i in p}) for p in parts),
                 "test_pcaps": len(set(ds.pcap)), "methods": {}}
    if kind == "capture_kfold":
        groups, unit = capture_groups(ds), "capture group"
        out["groups"] = len(set(groups))
    else:
        groups, unit = list(ds.pcap), "capture file"
    from .headroom import dataset_headroom

    out["headroom"] = dataset_headroom(ds, parts)  # what the folds leave learnable, per class (no model)
    for m in methods:
        if m in errors:
            out["methods"][m] = {"error": errors[m]}
            continue
        r = metrics(y, pred[m], conf[m])
        f = np.array(per_fold[m])
        r.update(fold_macro_f1_min5=[round(float(v), 4) for v in f], fold_mean=float(f.mean()),
                 fold_sd=float(f.std(ddof=1)) if len(f) > 1 else 0.0, fit_s=round(fit_s[m], 1),
                 by_app_seen=app_seen_breakdown(y, pred[m], seen))
        out["methods"][m] = r
        if png_dir is not None and m in ("etool", "hybrid", "hybrid_no_llm", "rf", "student_no_llm"):
            png = png_dir / f"confusion_{column}_{kind}_{m}.png"
            if confusion_png(y, pred[m], png, f"{m}, {kind} (pooled), {column}"):
                r["confusion_png"] = png.name
        b = r["by_app_seen"]
        log(f"eval[{kind}] {m:18s} pooled macroF1 {r['macro_f1']:.3f} min5 {r['macro_f1_min5']:.3f} "
            f"acc {r['accuracy']:.3f}; folds min5 {r['fold_mean']:.3f} +- {r['fold_sd']:.3f}; "
            f"min5 on apps seen in training {_fmt(b['seen']['macro_f1_min5'])}, unseen {_fmt(b['unseen']['macro_f1_min5'])}")
    if "rf" in methods and "rf" not in errors:  # the by-capture target is "at least 2x the forest": how sure?
        for m in methods:
            if m != "rf" and m not in errors:
                v = out["methods"][m]["vs_rf"] = bootstrap_vs(y, pred[m], pred["rf"], groups, seed=seed,
                                                              unit=unit)
                log(f"eval[{kind}] {m:18s} vs rf macroF1(>=5) ratio {v['ratio']} (95% CI {v['ratio_ci95']}), "
                    f"difference {v['diff']} ({v['diff_ci95']}), {v['groups']} {v['unit']}s resampled")
    if repeats > 1:
        out["repeats"] = repeat_summary(y, preds, seeds, [m for m in methods if m not in errors], log, kind)
    return out


def repeat_summary(y: Sequence[str], preds: list[dict[str, list]], seeds: Sequence[int], methods: Sequence[str],
                   log: Callable[[str], None] = lambda s: None, kind: str = "capture_kfold") -> dict:
    """Pooled macro-F1 (>=5) and accuracy of every method in every repeat, their mean and sd, and the
    ratio of the means to the forest's (the by-capture target's reference)."""
    out: dict = {"model_seeds": list(seeds), "methods": {}}
    for m in methods:
        rs = [metrics(y, p[m]) for p in preds]
        f = np.array([r["macro_f1_min5"] for r in rs])
        out["methods"][m] = {"macro_f1_min5": [round(float(v), 4) for v in f],
                             "accuracy": [round(float(r["accuracy"]), 4) for r in rs],
                             "mean": round(float(f.mean()), 4), "sd": round(float(f.std(ddof=1)), 4)}
    rf = out["methods"].get("rf")
    for m, v in out["methods"].items():
        if rf and m != "rf" and rf["mean"] > 0:
            v["ratio_of_means_to_rf"] = round(v["mean"] / rf["mean"], 3)
        log(f"eval[{kind}] {m:18s} over {len(seeds)} model seeds: pooled min5 {v['mean']:.3f} +- {v['sd']:.3f} "
            f"({', '.join(f'{x:.3f}' for x in v['macro_f1_min5'])})"
            + (f"; ratio of means to rf {v['ratio_of_means_to_rf']}" if "ratio_of_means_to_rf" in v else ""))
    return out


def evaluate_model(ds, model_path: str | None, column: str) -> dict:
    """The shipped (or given) model on every matched flow."""
    from .runtime import load_model

    model = load_model(model_path)
    head = "service" if column == "category" else "app"
    sets = model.label_sets
    labels = list(sets[head] if isinstance(sets, dict) else sets)
    p, conf = model.predict_with_confidence(ds.records, ds.contexts, head=head)
    pred = [labels[i] for i in p.argmax(1)] if len(p) else []
    y = _label_of(ds, column)
    r = metrics(y, pred, conf)
    r["unknown_labels"] = sorted(set(y) - set(labels))
    r["_pred"] = pred
    return r


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "n/a" if v is None else str(v)


def coverage_lines(methods: dict[str, dict]) -> list[str]:
    """The report's table of confidence_coverage per method ("share / accuracy" per threshold)."""
    cov = {m: r["by_confidence"] for m, r in methods.items() if r.get("by_confidence")}
    if not cov:
        return []
    ts = [row["threshold"] for row in next(iter(cov.values()))["thresholds"]]
    lines = ["What a confidence threshold buys: the share of test flows at or above it / their accuracy "
             "(AUROC: the confidence as a score for a right label; 0.5 = no better than chance):", "",
             "| method | AUROC | " + " | ".join(f">= {t:g}" for t in ts) + " |", "|---|---|" + "---|" * len(ts)]
    for m, c in cov.items():
        cells = [f"{row['share']:.2f} / {_fmt(row['accuracy'])}" for row in c["thresholds"]]
        lines.append(f"| {m} | {_fmt(c['auroc'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(res: dict, path: Path) -> None:
    keys = ("macro_f1", "macro_f1_min5", "weighted_f1", "accuracy", "ece", "fit_s")
    lines = [f"# etool evaluation: label column `{res['label_column']}`", "",
             f"Data: {res['data']} ({res['flows']} matched flows, encrypted_only={res['encrypted_only']}, "
             f"names masked), seed {res['seed']}, quick={res['quick']}.", ""]
    if "model" in res:
        m = res["model"]
        if "error" in m:
            lines += ["## Shipped model", "", f"not evaluated: {m['error']}", ""]
        else:
            lines += ["## Shipped model on all matched flows", "", "| " + " | ".join(keys[:5]) + " |",
                      "|" + "---|" * 5, "| " + " | ".join(_fmt(m.get(k, "")) for k in keys[:5]) + " |", ""]
            lines += coverage_lines({"model": m})
    for sname, s in res.get("splits", {}).items():
        lines += [f"## Split `{sname}` (label {s['label']}; train {s['train_flows']} flows / {s['train_pcaps']} "
                  f"captures, test {s['test_flows']} flows / {s['test_pcaps']} captures)", "",
                  "| method | macro-F1 | macro-F1 (>=5) | weighted-F1 | accuracy | ECE | fit s |",
                  "|---|---|---|---|---|---|---|"]
        for mname, r in s["methods"].items():
            if "error" in r:
                lines.append(f"| {mname} | error: {r['error'][:80]} | | | | | |")
            else:
                lines.append(f"| {mname} | " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |")
        lines.append("")
        if "folds" in s:
            how = "capture" if sname == "capture_kfold" else "random stratified"
            lines += [f"{s['folds']} {how} folds; the table is over the pooled out-of-fold predictions. "
                      "Per fold, macro-F1 (>=5):", ""]
            for mname, r in s["methods"].items():
                if "fold_macro_f1_min5" in r:
                    vals = ", ".join(f"{v:.3f}" for v in r["fold_macro_f1_min5"])
                    lines.append(f"- {mname}: {r['fold_mean']:.3f} +- {r['fold_sd']:.3f} ({vals})")
            lines.append("")
            vs = {m: r["vs_rf"] for m, r in s["methods"].items() if "vs_rf" in r}
            if vs:
                any_vs = next(iter(vs.values()))
                lines += [f"Against the forest, pooled macro-F1 (>=5), {any_vs['boot']} bootstrap resamples of the "
                          f"{any_vs['groups']} {any_vs.get('unit', 'capture file')}s (95 % intervals):", "",
                          "| method | ratio to rf | 95 % CI | difference | 95 % CI |", "|---|---|---|---|---|"]
                for m, v in vs.items():
                    lines.append(f"| {m} | {_fmt(v['ratio'])} | {v['ratio_ci95']} | {_fmt(v['diff'])} | {v['diff_ci95']} |")
                lines.append("")
            if "repeats" in s:
                rp = s["repeats"]
                lines += [f"Trained {len(rp['model_seeds'])} times on the same folds (model seeds "
                          f"{', '.join(map(str, rp['model_seeds']))}; teachers shared), pooled macro-F1 (>=5):", "",
                          "| method | per repeat | mean | sd | ratio of means to rf |", "|---|---|---|---|---|"]
                for m, v in rp["methods"].items():
                    lines.append(f"| {m} | {', '.join(f'{x:.3f}' for x in v['macro_f1_min5'])} | {v['mean']:.3f} | "
                                 f"{v['sd']:.3f} | {_fmt(v.get('ratio_of_means_to_rf'))} |")
                lines.append("")
            seen = {m: r["by_app_seen"] for m, r in s["methods"].items() if "by_app_seen" in r}
            if seen:
                b = next(iter(seen.values()))
                lines += [f"Test flows whose app has flows in the training folds (seen: {b['seen']['flows']} flows, "
                          f"the same apps in new sessions) and the others (unseen: {b['unseen']['flows']} flows):", "",
                          "| method | seen macro-F1 (>=5) | seen accuracy | unseen macro-F1 (>=5) | unseen accuracy |",
                          "|---|---|---|---|---|"]
                for m, b in seen.items():
                    lines.append(f"| {m} | {_fmt(b['seen']['macro_f1_min5'])} | {_fmt(b['seen']['accuracy'])} | "
                                 f"{_fmt(b['unseen']['macro_f1_min5'])} | {_fmt(b['unseen']['accuracy'])} |")
                lines.append("")
            if "headroom" in s:
                from .headroom import headroom_lines

                lines += headroom_lines(s["headroom"])
        lines += coverage_lines(s["methods"])
        main = s["methods"].get("etool") or next((r for r in s["methods"].values() if "per_class" in r), None)
        if main and "per_class" in main:
            which = "etool" if "etool" in s["methods"] and "per_class" in s["methods"]["etool"] else "first method"
            lines += [f"Per class ({which}):", "", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
            for c, v in sorted(main["per_class"].items(), key=lambda kv: -kv[1]["support"]):
                lines.append(f"| {c} | {v['support']} | {v['precision']:.2f} | {v['recall']:.2f} | {v['f1']:.2f} |")
            lines.append("")
            if main.get("confusion_png"):
                lines += [f"![confusion]({main['confusion_png']})", ""]
    path.write_text("\n".join(lines))


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model package directory (default: the bundled model)")
    p.add_argument("--data", required=True, help="directory holding the captures named in the CSV")
    p.add_argument("--labels", required=True, help="labels CSV (columns of nDPI labels.csv)")
    p.add_argument("--label-column", default="category", choices=["category", "app"])
    p.add_argument("--json", required=True, help="write the metrics here")
    p.add_argument("--encrypted-only", action="store_true")
    p.add_argument("--report", default=None, help="markdown report (confusion PNGs beside it)")
    p.add_argument("--splits", default=None,
                   help=f"comma list of {','.join(SPLITS + EXTRA_SPLITS)} ('all' = {','.join(SPLITS)})")
    p.add_argument("--folds", type=int, default=5, help="folds of the capture_kfold and iid_kfold splits (default 5)")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="K-fold splits: train every method R times on the same folds with model seeds "
                        "seed + 100 r (teachers shared) and report the spread (default 1)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--quick", action="store_true", help="small, fast training (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pcaps", default=None, help="comma list: restrict to these captures")
    p.add_argument("--teacher-cache", default=None,
                   help="directory of precomputed teacher logits (teacher_<column>_<split>.npz)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--unlabelled", action="append", default=None, metavar="DIR",
                   help="captures (repeatable) added to every split's training flows for the self-supervised "
                        "stage of the students and the teacher; keep them apart from --data (e.g. the output of "
                        "python -m etool_sensor.train.capture)")
    p.add_argument("--no-model", action="store_true", help="skip the shipped model (splits only)")
    p.add_argument("--payload-bytes", type=int, default=None,
                   help="B for the students' features (default: the flow record default)")
    p.add_argument("--student-config", default=None, metavar="JSON",
                   help='encoder shape of every student method, e.g. \'{"layers": 1, "pkt_stride": 4, '
                        '"dgram_stride": 16}\' (the bundled fast model); default: train/model.py EncoderConfig')
    p.add_argument("--compact-hello", type=int, default=None, metavar="COLLECT",
                   help="students drop the TLS hello Random/session ID before their payload window "
                        "(features.compact_hello); flows are read with COLLECT payload bytes per chunk")
    p.add_argument("--hello-tokens", type=int, default=None, metavar="COLLECT",
                   help="students also get the TLS handshake structure as hashed tokens (features.hello_tokens); "
                        "flows are read with COLLECT payload bytes per chunk, the datagram window stays B")
    p.add_argument("--hello-bytes", type=int, default=DEFAULT_HELLO_BYTES, metavar="H",
                   help="flows are read with TLS hellos whole up to H bytes (flow.hello_bytes) and the hybrids "
                        "add a fingerprint table (fingerprints.py) trained on the same flows, as the default model "
                        f"does (default {DEFAULT_HELLO_BYTES}; 0: no table, as 0.5.0)")
    p.add_argument("--near-hellos", type=int, default=None, metavar="M",
                   help="the hybrids' service table backs off to the M most similar training hellos for a hello "
                        "it lacks (fingerprints.NearHellos), as the default model does since 0.8.0 (default "
                        "fingerprints.NEAR_M; 0: exact fingerprints only, as 0.7.0)")
    p.add_argument("--flights", type=int, default=0, metavar="F",
                   help="students also get the first F flights (direction-run byte and packet totals, "
                        "features.flights) in their meta token; 0 = off (the shipped features)")
    p.add_argument("--capture-balance", type=float, default=0.5, metavar="POWER",
                   help="method student_capbal draws training flows with probability (flows of their capture) "
                        "** -POWER (default 0.5; 1 = every capture equally often)")
    p.add_argument("--no-normalize-random", action="store_true",
                   help="students keep per-session random fields (TLS Random/session ID, QUIC CIDs): an ablation")


def eval_main(args: argparse.Namespace) -> int:
    from .features import FeatureSpec
    from .fingerprints import NEAR_M
    from .flows import FlowParams
    from .train.data import LabelsError, load_labelled

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    pcaps = args.pcaps.split(",") if args.pcaps else None
    params = FlowParams(payload_bytes=args.payload_bytes) if getattr(args, "payload_bytes", None) else FlowParams()
    hello = getattr(args, "hello_bytes", DEFAULT_HELLO_BYTES)
    if not 0 <= hello <= 65535:
        log(f"eval: --hello-bytes {hello} must be in 0..65535")
        return 2
    params = dataclasses.replace(params, hello_bytes=hello)
    spec = FeatureSpec.from_params(params, normalize_random=not getattr(args, "no_normalize_random", False))
    # experiments that read more of each payload chunk than the students' window (docs/model-card.md)
    for flag, extra in (("hello_tokens", {"hello_tokens": 48}), ("compact_hello", {"compact_hello": True})):
        collect = getattr(args, flag, None)
        if not collect:
            continue
        if collect < spec.payload_bytes:
            log(f"eval: --{flag.replace('_', '-')} {collect} is below the payload window {spec.payload_bytes}")
            return 2
        collect = max(collect, spec.collect_payload_bytes)
        spec = dataclasses.replace(spec, collect_payload_bytes=collect, **extra)
        params = dataclasses.replace(params, payload_bytes=collect)
    if getattr(args, "flights", 0):
        if args.flights < 0 or args.flights > params.packets:
            log(f"eval: --flights {args.flights} must be between 0 and the {params.packets} packets read")
            return 2
        spec = dataclasses.replace(spec, flights=args.flights)
    student_config = None
    if getattr(args, "student_config", None):
        from .train.model import parse_shape
        try:
            student_config = parse_shape(args.student_config)
        except ValueError as e:
            log(f"eval: --student-config {e}")
            return 2
    near = getattr(args, "near_hellos", None)
    args.near_hellos = NEAR_M if near is None else near
    if args.near_hellos < 0:
        log(f"eval: --near-hellos {args.near_hellos} must be >= 0")
        return 2
    repeats = getattr(args, "repeats", 1)
    if repeats < 1:
        log(f"eval: --repeats {repeats} must be >= 1")
        return 2
    if args.splits:
        lacking = []
        for mod in ("torch", "sklearn"):
            try:
                __import__(mod)
            except ImportError:
                lacking.append(mod)
        if lacking:
            log(f"eval: --splits trains models and needs {' and '.join(lacking)}: install the train extra "
                "(pip install '.[train]' in a checkout); without --splits eval scores the model on the base install")
            return 2
    if args.no_model and not args.splits:
        log("eval: nothing to evaluate: --no-model skips the shipped model, so name --splits (e.g. all)")
        return 2
    try:  # load_labelled checks --data and --labels before it reads any capture
        ds = load_labelled(args.data, args.labels, label_column=args.label_column,
                           encrypted_only=args.encrypted_only, pcaps=pcaps, params=params)
    except LabelsError as e:
        log(f"eval: {e}")
        return 2
    log(f"eval: {len(ds)} matched flows from {len(set(ds.pcap))} captures ({time.time() - t0:.1f}s)")
    if len(ds) == 0:
        log("eval: no flow matched the labels")
        return 2
    unlabelled = None
    if getattr(args, "unlabelled", None):
        from .train.data import capture_files, load_unlabelled

        files = capture_files(*args.unlabelled)
        recs, ctxs, names = load_unlabelled(files, params)
        if not recs:
            log(f"eval: --unlabelled {', '.join(args.unlabelled)}: no flows in {len(files)} capture files")
            return 2
        unlabelled = (recs, ctxs)
        log(f"eval: {len(recs)} unlabelled flows from {len(set(names))} captures for self-supervised training")
    res: dict = {"features": spec.to_dict(), "data": str(args.data), "labels": str(args.labels), "label_column": args.label_column,
                 "encrypted_only": bool(args.encrypted_only), "seed": args.seed, "repeats": repeats, "quick": bool(args.quick),
                 "student_config": student_config, "capture_balance": args.capture_balance,
                 "near_hellos": args.near_hellos,
                 "unlabelled": None if unlabelled is None else {"dirs": list(args.unlabelled),
                                                                "flows": len(unlabelled[0])}}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_dir = Path(args.report).parent if args.report else out.parent
    png_dir.mkdir(parents=True, exist_ok=True)
    # The head metrics are the shipped model's; null (not 0.0) when it was skipped or failed, so a reader
    # of OUT.json cannot take "not measured" for "scored zero".
    head: dict = {"macro_f1": None, "macro_f1_min5": None, "weighted_f1": None, "accuracy": None, "flows": len(ds)}
    if not args.no_model:
        from .runtime import ModelError

        try:
            m = evaluate_model(ds, args.model, args.label_column)
        except ModelError as e:
            log(f"eval: {e}")
            return 2
        pred = m.pop("_pred")
        labels, cm = confusion(_label_of(ds, args.label_column), pred)
        m["confusion"] = {"labels": labels, "counts": cm.tolist()}
        if confusion_png(_label_of(ds, args.label_column), pred, png_dir / f"confusion_{args.label_column}_model.png",
                         f"shipped model, all flows, {args.label_column}"):
            m["confusion_png"] = f"confusion_{args.label_column}_model.png"
        res["model"] = m
        head = {k: m[k] for k in head}
        log(f"eval: model macroF1 {m['macro_f1']:.3f} min5 {m['macro_f1_min5']:.3f} acc {m['accuracy']:.3f}")
    res.update(head)
    res["flows"] = len(ds)
    if args.splits:
        names = list(SPLITS) if args.splits == "all" else [s.strip() for s in args.splits.split(",") if s.strip()]
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS + EXTRA_METHODS]
        if bad:
            log(f"eval: unknown methods {bad}; choose from {', '.join(METHODS + EXTRA_METHODS)}")
            return 2
        ds.labels = _label_of(ds, args.label_column)
        bad = [s for s in names if s not in SPLITS + EXTRA_SPLITS]
        if bad:
            log(f"eval: unknown splits {bad}; choose from {', '.join(SPLITS + EXTRA_SPLITS)}")
            return 2
        splits = make_splits(ds, [s for s in names if s in SPLITS], args.seed)
        res["splits"] = {}
        for name in names:
            if name in KFOLDS:
                try:
                    KFOLDS[name](ds, args.folds, args.seed)
                except ValueError as e:
                    log(f"eval: {e}")
                    return 2
        for name in names:
            if name in KFOLDS:
                res["splits"][name] = run_kfold(ds, args.label_column, methods, folds=args.folds, seed=args.seed,
                                                log=log, png_dir=png_dir, quick=args.quick, kind=name,
                                                teacher_cache=args.teacher_cache, device=args.device, spec=spec,
                                                student_config=student_config, unlabelled=unlabelled,
                                                capture_balance=args.capture_balance, hello_bytes=hello,
                                                repeats=repeats, near_hellos=args.near_hellos)
                out.write_text(json.dumps(res, indent=1))
                continue
            sp = splits[name]
            log(f"eval: split {name}: train {len(sp['train'])} / test {len(sp['test'])} flows")
            res["splits"][name] = run_split(ds, sp, args.label_column, methods, seed=args.seed, quick=args.quick,
                                            teacher_cache=args.teacher_cache, device=args.device, log=log,
                                            png_dir=png_dir, split_name=name, spec=spec,
                                            student_config=student_config, unlabelled=unlabelled,
                                            capture_balance=args.capture_balance, hello_bytes=hello,
                                            near_hellos=args.near_hellos)
            out.write_text(json.dumps(res, indent=1))  # partial results survive an interrupted run
    res["elapsed_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(res, indent=1))
    if args.report:
        write_report(res, Path(args.report))
    log(f"eval: wrote {out} ({res['elapsed_s']}s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="etool-sensor eval")
    add_eval_arguments(p)
    return eval_main(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
