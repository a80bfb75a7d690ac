"""Model packages at run time: manifest checks, onnxruntime sessions, batching, verdicts.

numpy + onnxruntime only (never torch): this is what the sensor daemon and `classify` load.

A model package is a directory with `model.onnx` and `manifest.json`. The manifest names the flow
record schema and feature preprocessing it was trained for, the label sets of its two heads (service =
nDPI category, app), and the sha256 of model.onnx. A package whose contract does not match this build,
or whose model file does not match its checksum, is refused with a ModelError; nothing is unpickled.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .context import Context
from .features import FEATURES_VERSION, RETIRED, FeatureSpec, encode_keyed
from .fingerprints import FlowKeys
from .flows import SCHEMA_VERSION, FlowRecord, Verdict

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_DIR = BUNDLED_DIR / "default"
# Bundled packages, selectable by name (model.path: fast): "default" is the accurate one, "fast" the
# 1-layer variant at about half the CPU per flow and lower accuracy on unseen captures (docs/model-card.md).
BUNDLED = ("default", "fast")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: taskset, systemd's CPUAffinity, cpusets), not
    the host's: what sizes classify's worker processes and serve's onnxruntime threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
BATCH = 256  # flows per onnxruntime call: activations stay in cache (faster than 1024 on 2 cores)
HEADS = ("service", "app")
SMALL_BATCH = 64  # token_groups groups batches up to this size in a dict (one numpy call fewer per input)


class ModelError(RuntimeError):
    """A model package that cannot be used by this build (missing, corrupt, incompatible)."""


@dataclass
class Thresholds:
    """Confidence below the threshold of the predicted service label makes a verdict `unknown`."""

    default: float = 0.5
    per_label: dict[str, float] = field(default_factory=dict)

    def for_label(self, label: str) -> float:
        return self.per_label.get(label, self.default)


@functools.lru_cache(maxsize=64)
def _cut_levels(granule: int, length: int) -> np.ndarray:
    """The lengths a token input of `length` may be cut to: power-of-two multiples of its granule, and length."""
    return np.asarray([granule << i for i in range(length.bit_length()) if granule << i < length] + [length])


def _used_length(a: np.ndarray) -> np.ndarray:
    """Per flow, 1 + the index of its last token with any non-zero value (0 for none)."""
    used = a.reshape(len(a), a.shape[1], -1).any(-1)
    return (used * np.arange(1, a.shape[1] + 1)).max(1)


def token_groups(feats: dict[str, np.ndarray], granules: dict[str, int], batch: int | None = None
                 ) -> tuple[np.ndarray, list[tuple[np.ndarray, dict[str, int]]]]:
    """Flows grouped by how far their token inputs can be cut: the order, and runs of at most `batch`
    (default BATCH) flows with the length each token input is cut to.

    A flow's cut is the smallest power-of-two multiple of the input's granule that holds everything but
    padding (at most the full length), so it depends on the flow alone: with static int8, a flow's scores
    do not depend on the rest of its batch, in `classify`, `classify --workers` and the daemon alike.
    Powers of two keep the number of runs small (~30 per 512 flows) at most 2x the padding of an exact cut.
    Padding is zero in every token input (features.encode), so nothing else is ever cut off.

    Groups come in the order of their cuts (first input most significant), flows in input order within a
    group. The daemon calls this for every batch of a few flows, so it keeps numpy calls few: each flow's
    cut levels are folded into one integer key, and small batches are grouped in a dict."""
    batch = batch or BATCH
    names = list(granules)
    used = {k: _used_length(feats[k]) for k in names}
    if "byt" in granules and "seg" in granules:  # two views of the same units: one length
        used["byt"] = used["seg"] = np.maximum(used["byt"], used["seg"])
    levels = [_cut_levels(granules[k], feats[k].shape[1]) for k in names]
    key = np.zeros(len(feats[names[0]]), np.int64)
    for k, lv in zip(names, levels):  # mixed radix: sorting keys sorts the cuts lexicographically
        key = key * len(lv) + np.searchsorted(lv, used[k])
    if len(key) <= SMALL_BATCH:
        by_key: dict[int, list[int]] = {}
        for row, kk in enumerate(key.tolist()):
            by_key.setdefault(kk, []).append(row)
        keys = sorted(by_key)
        rows_of = [np.asarray(by_key[kk], np.int64) for kk in keys]
        order = np.concatenate(rows_of) if rows_of else np.zeros(0, np.int64)
    else:
        uniq, which = np.unique(key, return_inverse=True)
        keys = uniq.tolist()
        order = np.argsort(which.reshape(-1), kind="stable")
        rows_of = np.split(order, np.cumsum(np.bincount(which.reshape(-1), minlength=len(keys)))[:-1])
    runs = []
    for kk, rows in zip(keys, rows_of):
        lengths = []
        for lv in reversed(levels):  # the key's digits, last input first
            kk, i = divmod(kk, len(lv))
            lengths.append(int(lv[i]))
        cut = dict(zip(names, reversed(lengths)))
        runs += [(rows[i:i + batch], cut) for i in range(0, len(rows), batch)]
    return order, runs


def run_graph(session: Any, outputs: Sequence[str], feats: dict[str, np.ndarray], inputs: Sequence[str],
              granules: dict[str, int]) -> list[np.ndarray | None]:
    """The graph's `outputs` for every flow of `feats`, in input order (None for an output when there are no
    flows): each flow's padding cut off to its input's `granules` and equal cuts run together (token_groups).
    Model._run and the export's parity checks both run graphs this way."""
    order, runs = token_groups(feats, granules)
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for rows, cut in runs:
        feed = {k: (feats[k][rows, :cut[k]] if k in cut else feats[k][rows]) for k in inputs}
        for p, r in zip(parts, session.run(list(outputs), feed)):
            p.append(np.asarray(r, np.float32))
    out: list[np.ndarray | None] = []
    for p in parts:
        x = np.concatenate(p) if p else None
        if x is not None:
            x[order] = x.copy()  # back to input order
        out.append(x)
    return out


def model_window(spec: Any) -> Any:
    """What a model reads of a flow, as the collection (flows.FlowParams) that records exactly that; None for a
    model without a feature spec. Records collected beyond it are cut to it (FlowRecord.within) before their
    BURST context is taken, so the model never reads packets or bytes it was not trained on."""
    from .flows import FlowParams

    packets = int(getattr(spec, "packets", 0) or 0)
    if not packets:
        return None
    return FlowParams(packets, int(getattr(spec, "payload_bytes", 0)),
                      int(getattr(spec, "payload_packets", 0)), int(getattr(spec, "hello_bytes", 0) or 0))


def exceeds(params: Any, window: Any) -> bool:
    """True when a collection of `params` can record more than `window` holds (then records need cutting)."""
    return window is not None and any(getattr(params, k) > getattr(window, k)
                                      for k in ("packets", "payload_bytes", "payload_packets", "hello_bytes"))


def collection_shortfalls(spec: FeatureSpec, params: Any) -> list[str]:
    """Where the flow collection (flows.FlowParams) keeps less than the model reads: one sentence each, for a
    warning. The model still runs, on less than it was trained and measured on."""
    need = (("packets", spec.packets, "packets"),
            ("payload_bytes", spec.payload_bytes, "payload bytes per payload packet"),
            ("payload_packets", spec.payload_packets, "payload packets"),
            ("hello_bytes", spec.hello_bytes, "bytes of a TLS hello (its cipher suites and extensions)"))
    return [f"flow.{key} is {getattr(params, key)}, below the {want} {what} the model reads"
            for key, want, what in need if getattr(params, key) < want]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hybrid_logits(student_logits: np.ndarray, forest_proba: np.ndarray, w: float, eps: float) -> np.ndarray:
    """A hybrid package's service logits: w * log_softmax(student) + (1 - w) * log(forest + eps); their
    softmax is the normalised product p_student^w * (p_forest + eps)^(1 - w) (train/forest.py). Computed here
    in numpy, not in the graph: numpy's exp/log give every element the same bits wherever it sits in the
    batch, onnxruntime's vectorised ones do not (a last-bit change in 6 of 744 flows between batch sizes),
    and a flow's scores must not depend on its batch."""
    z = student_logits - student_logits.max(axis=1, keepdims=True)
    log_s = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_f = np.log(forest_proba + np.float32(eps))
    return (np.float32(w) * log_s + np.float32(1.0 - w) * log_f).astype(np.float32)


def hybrid_head(x: np.ndarray, forest_proba: np.ndarray | None = None, w: float = 0.5, eps: float = 1e-4, *,
                table: Any = None, keys: np.ndarray | None = None, found: Any = None, flows: Any = None,
                records: Sequence[FlowRecord] | None = None, chunks: int = 3, shift: np.ndarray | None = None,
                logits: bool = True) -> np.ndarray:
    """A head's probabilities as a hybrid package computes them, in this order: the student's output `x` times
    the shape forest (hybrid_logits, when `forest_proba` is given), plus the fingerprint table's evidence for
    the flows' fingerprint `keys` (HelloTable.add_to; `found`, `flows` and `records` as it takes them), plus a
    class-prior `shift`, normalised. `logits`: x is logits (else probabilities). The runtime and eval's hybrids
    (train/forest.py) both call it, so eval scores what a package computes. `x` may be changed in place."""
    if forest_proba is not None:
        x = hybrid_logits(x, forest_proba, w, eps)
    if table is not None and len(x):
        x = table.add_to(x, keys, records, chunks, found=found, flows=flows)
    if logits:
        return softmax(x if shift is None else x + shift)
    return x if shift is None else softmax(np.log(np.maximum(x, 1e-30)) + shift)


def agreement_confidence(p_label: np.ndarray, forest_label: np.ndarray) -> np.ndarray:
    """A hybrid's "agreement" confidence (manifest hybrid.confidence): the geometric mean of the head's
    probability of each flow's label and the shape forest's vote share for that label (train/forest.py's
    Hybrid scores the same in eval)."""
    return np.sqrt(p_label * forest_label)


PRIOR_FLOOR = 1e-4  # a share below this counts as this: a label no training flow had is not vetoed


def _shares(where: Any, what: str, value: Any, labels: list[str]) -> np.ndarray:
    """A {label: share} object over `labels` as a vector summing to 1 (absent labels 0); ModelError if bad."""
    if not isinstance(value, dict) or not value:
        raise ModelError(f"{where}: {what} must be a non-empty object of label shares")
    pos = {l: j for j, l in enumerate(labels)}
    v = np.zeros(len(labels), np.float64)
    for k, x in value.items():
        if k not in pos:
            raise ModelError(f"{where}: {what} names {k!r}, which is not a label of the head")
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x < 0:
            raise ModelError(f"{where}: {what}[{k!r}] must be a share >= 0, got {x!r}")
        v[pos[k]] = float(x)
    if v.sum() <= 0:
        raise ModelError(f"{where}: {what} has no positive share")
    return v / v.sum()


def prior_shift(train: np.ndarray, deploy: np.ndarray | None) -> np.ndarray | None:
    """Per label, log(deploy / train) (shares floored at PRIOR_FLOOR): added to a head's logits it turns
    p(y | x) into p(y | x) * deploy(y) / train(y), renormalised (Saerens et al. 2002); None without a deploy."""
    if deploy is None:
        return None
    return (np.log(np.maximum(deploy, PRIOR_FLOOR)) - np.log(np.maximum(train, PRIOR_FLOOR))).astype(np.float32)


def _load_table(path: Path, key: str, entry: Any, spec: FeatureSpec, labels: list[str], head: str) -> Any:
    """A hybrid package's fingerprint table for `head` (manifest hybrid.`key`: file, sha256; fingerprints.TABLES),
    checked against the package."""
    from .fingerprints import HelloTable

    try:
        f = path / str(entry["file"])
        want = str(entry["sha256"])
    except (KeyError, TypeError):
        raise ModelError(f"{path}: manifest hybrid.{key} needs file and sha256") from None
    if not f.is_file():
        raise ModelError(f"{path}: no {f.name} (manifest hybrid.{key})")
    if sha256_file(f) != want:
        raise ModelError(f"{f}: sha256 does not match the manifest; the package is corrupt or was edited")
    try:
        table = HelloTable.load(f)
    except ValueError as e:
        raise ModelError(f"{f}: {e}") from None
    if table.labels != labels:
        raise ModelError(f"{f}: its labels are not the {head} head's")
    if not spec.hello_bytes:
        raise ModelError(f"{path}: a hello table needs features.hello_bytes (flows read with TLS hellos whole)")
    return table


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(package dir, manifest) for a package directory, its manifest.json or its model.onnx."""
    p = Path(path)
    d = p.parent if p.is_file() or p.suffix in (".json", ".onnx") else p
    mf = d / MANIFEST
    if not d.exists():
        raise ModelError(f"model package {d} does not exist")
    if not mf.is_file():
        raise ModelError(f"{d} is not a model package: no {MANIFEST}")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{mf}: manifest is not a JSON object")
    return d, manifest


def check_manifest(d: Path, manifest: dict[str, Any], *, verify_checksum: bool = True) -> FeatureSpec:
    """Raise ModelError unless the package fits this build; return its FeatureSpec."""
    where = d / MANIFEST
    for key in ("name", "version", "schema_version", "features", "label_sets", "sha256"):
        if key not in manifest:
            raise ModelError(f"{where}: manifest has no {key!r}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ModelError(f"{where}: model expects flow record schema v{manifest['schema_version']}, "
                         f"this build produces v{SCHEMA_VERSION}; use a model trained for v{SCHEMA_VERSION}")
    feats = manifest["features"]
    if not isinstance(feats, dict):
        raise ModelError(f"{where}: 'features' is not an object")
    if feats.get("version") != FEATURES_VERSION:
        raise ModelError(f"{where}: model expects feature encoding v{feats.get('version')}, "
                         f"this build has v{FEATURES_VERSION}")
    gran = manifest.get("token_granules")
    if not isinstance(gran, dict) or "pkt" not in gran or not all(isinstance(v, int) and v > 0 for v in gran.values()):
        raise ModelError(f"{where}: no 'token_granules' (token axes not dynamic: a package exported before that step); "
                         f"export it again with this build (`etool-sensor export`)")
    known = {f.name for f in fields(FeatureSpec)} | set(RETIRED)
    unknown = set(feats) - known
    if unknown:
        raise ModelError(f"{where}: unknown feature settings {sorted(unknown)}")
    try:
        spec = FeatureSpec.from_dict(feats)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{where}: bad feature settings ({e})") from None
    ls = manifest["label_sets"]
    if not isinstance(ls, dict) or not all(isinstance(ls.get(h), list) and ls.get(h) for h in HEADS):
        raise ModelError(f"{where}: label_sets must hold non-empty 'service' and 'app' lists")
    onnx_path = d / MODEL_FILE
    if not onnx_path.is_file():
        raise ModelError(f"{d}: no {MODEL_FILE}")
    if verify_checksum:
        got = sha256_file(onnx_path)
        if got != manifest["sha256"]:
            raise ModelError(f"{onnx_path}: sha256 {got[:16]}... does not match the manifest "
                             f"({str(manifest['sha256'])[:16]}...); the package is corrupt or was edited")
    return spec


CONFIDENCE_KINDS = ("probability", "agreement")  # manifest hybrid.confidence
FOREST = "forest"  # Model._run's key for a hybrid's forest probabilities
TABLE_HIT = "table_hit"  # Model._run's key for whether each flow's fingerprint is in the service table (drift.py)


class Model:
    """A loaded model package. Thread-safe for concurrent classify() calls (onnxruntime sessions are)."""

    def __init__(self, path: Path, manifest: dict[str, Any], spec: FeatureSpec, session: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.spec = spec
        self.session = session
        self.name: str = str(manifest["name"])
        self.version: str = str(manifest["version"])
        self.label_sets: dict[str, list[str]] = {h: list(manifest["label_sets"][h]) for h in HEADS}
        outs = manifest.get("outputs") or {}
        self._out = {h: outs.get(h, f"{h}_logits") for h in HEADS}
        self._out_kind = outs.get("kind", "logits")
        hyb = manifest.get("hybrid") or {}
        self._hybrid: tuple[str, str, float, float] | None = None
        if hyb:  # a hybrid package: the graph also gives the shape forest's probabilities for this head's labels
            try:
                self._hybrid = (str(hyb["head"]), str(outs["forest"]), float(hyb["mix"]), float(hyb["eps"]))
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"{path}: manifest 'hybrid' needs head, mix, eps and outputs.forest") from None
        # what a verdict's confidence is (docs/model-card.md, "What the confidence means on new captures"):
        # "probability", the service head's probability of its label; "agreement" (a hybrid only), the
        # geometric mean of that probability and the shape forest's vote share for the same label
        self._confidence = str(hyb.get("confidence", "probability")) if hyb else "probability"
        if self._confidence not in CONFIDENCE_KINDS:
            raise ModelError(f"{path}: manifest hybrid.confidence must be one of {CONFIDENCE_KINDS}, "
                             f"got {self._confidence!r}")
        self._inputs = [i.name for i in session.get_inputs()]
        self._granules: dict[str, int] = {k: int(v) for k, v in manifest["token_granules"].items() if k in self._inputs}
        if "pkt" not in self._granules:
            raise ModelError(f"{path}: model.onnx has no input 'pkt' (token_granules names {sorted(manifest['token_granules'])})")
        names = {o.name for o in session.get_outputs()}
        if self._hybrid and (self._hybrid[0] not in HEADS or self._hybrid[1] not in names
                             or self._out_kind != "logits"):
            raise ModelError(f"{path}: manifest 'hybrid' needs a logits head and the graph output "
                             f"{self._hybrid[1]!r} (outputs.forest)")
        for h, o in self._out.items():
            if o not in names:
                raise ModelError(f"{path}: model.onnx has no output {o!r} for the {h} head")
            n = session.get_outputs()[[x.name for x in session.get_outputs()].index(o)].shape[-1]
            if isinstance(n, int) and n != len(self.label_sets[h]):
                raise ModelError(f"{path}: {h} head has {n} outputs but the manifest lists "
                                 f"{len(self.label_sets[h])} labels")
        # the hybrid's fingerprint tables (fingerprints.py): evidence per flow fingerprint, by head
        from .fingerprints import TABLES

        self._tables: dict[str, Any] = {
            head: _load_table(path, key, hyb[key], spec, self.label_sets[head], head)
            for head, (key, _) in TABLES.items() if hyb.get(key)}
        # class priors (manifest `priors`): the label shares the head's probabilities assume (train) and those
        # of the network it runs on (deploy); with both the head's probabilities are rescaled by deploy / train
        pri = manifest.get("priors")
        self._prior_head: str | None = None
        self._prior_train: np.ndarray | None = None
        self._shift: np.ndarray | None = None
        if pri is not None:
            where = path / MANIFEST
            if not isinstance(pri, dict) or pri.get("head") not in HEADS:
                raise ModelError(f"{where}: priors needs head (one of {HEADS}) and train")
            self._prior_head = str(pri["head"])
            labels = self.label_sets[self._prior_head]
            self._prior_train = _shares(where, "priors.train", pri.get("train"), labels)
            deploy = pri.get("deploy")
            self._shift = prior_shift(self._prior_train, None if deploy is None else
                                      _shares(where, "priors.deploy", deploy, labels))

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def set_prior(self, deploy: dict[str, float] | None) -> None:
        """Use `deploy` ({label: share} of the prior head's labels, normalised here) as the deployment prior
        instead of the manifest's; None: no correction. Needs a package whose manifest has `priors`."""
        if self._prior_train is None or self._prior_head is None:
            raise ModelError(f"{self.path}: the package has no training prior (manifest priors)")
        labels = self.label_sets[self._prior_head]
        self._shift = prior_shift(self._prior_train, None if deploy is None else
                                  _shares("deploy prior", "deploy", deploy, labels))

    def features(self, records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None,
                 mask_names: bool | None = None) -> dict[str, np.ndarray]:
        return encode_keyed(records, contexts, self.spec, mask_names)[0]

    def _run(self, feats: dict[str, np.ndarray], heads: Sequence[str],
             keys: FlowKeys | None = None) -> dict[str, np.ndarray]:
        """The heads' probabilities for encoded flows; `keys` (encode_keyed's table keys of the same flows) let a
        table with near hellos (fingerprints.NearHellos) read the hellos it does not know. A hybrid's forest
        probabilities (in the mixed head's label columns) come along under FOREST; with a service table, whether
        each flow's fingerprint is in it under TABLE_HIT (the lookup the table does anyway)."""
        outs = [self._out[h] for h in heads]
        mixed = self._hybrid is not None and self._hybrid[0] in heads
        if mixed:
            outs.append(self._hybrid[1])
        res = run_graph(self.session, outs, feats, self._inputs, self._granules)
        probs = {}
        for h, x in zip(heads, res):
            x = x if x is not None else np.zeros((0, len(self.label_sets[h])), np.float32)
            forest = res[-1] if mixed and h == self._hybrid[0] and len(x) else None
            table = self._tables.get(h) if len(x) else None
            found = table.lookup(feats["hfp"]) if table is not None else None
            if found is not None and h == "service":
                probs[TABLE_HIT] = found[0]
            shift = self._shift if h == self._prior_head and len(x) else None  # one read: set_prior may swap it
            probs[h] = hybrid_head(x, forest, *(self._hybrid[2:4] if forest is not None else ()), table=table,
                                   keys=feats["hfp"] if table is not None else None, found=found, flows=keys,
                                   shift=shift, logits=self._out_kind == "logits")  # x: fresh (run_graph)
        if mixed:
            probs[FOREST] = res[-1]
        return probs

    def _confidence_of(self, probs: dict[str, np.ndarray], head: str, arg: np.ndarray) -> np.ndarray:
        """Each flow's confidence in label `arg` of `head` (self._confidence; probs from _run)."""
        conf = np.take_along_axis(probs[head], arg[:, None], 1)[:, 0]
        if self._confidence == "agreement" and head == self._hybrid[0]:  # "agreement" only loads on a hybrid
            conf = agreement_confidence(conf, np.take_along_axis(probs[FOREST], arg[:, None], 1)[:, 0])
        return conf

    def predict_with_confidence(self, records: Sequence[FlowRecord],
                                contexts: Sequence[Context | None] | None = None, head: str = "service", *,
                                mask_names: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """predict_proba and each flow's confidence in its top label, the one its verdict carries."""
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not records:
            return np.zeros((0, len(self.label_sets[head])), np.float32), np.zeros(0, np.float32)
        feats, keys = encode_keyed(records, contexts, self.spec, mask_names)
        probs = self._run(feats, [head], keys)
        return probs[head], self._confidence_of(probs, head, probs[head].argmax(1))

    def predict_proba(self, records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None = None,
                      head: str = "service", *, mask_names: bool | None = None) -> np.ndarray:
        """Class probabilities [n, len(label_sets[head])] for every record (no packet-count filter)."""
        return self.predict_with_confidence(records, contexts, head, mask_names=mask_names)[0]

    def classify(self, records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None = None,
                 thresholds: Thresholds | None = None, *, mask_names: bool = True, min_packets: int = 2,
                 top_k: int = 3) -> list[Verdict]:
        """One Verdict per record, in order. Flows with fewer than `min_packets` packets get no inference."""
        th = thresholds or Thresholds()
        mid = self.id
        if contexts is not None and len(contexts) != len(records):
            raise ValueError(f"{len(records)} records but {len(contexts)} contexts")
        out: list[Verdict | None] = [None] * len(records)
        idx = []
        for i, r in enumerate(records):
            if len(r.packets) < min_packets:
                out[i] = Verdict(r.uid, "", "", 0.0, True, [], mid, "too_few_packets")
            else:
                idx.append(i)
        if idx:
            recs = [records[i] for i in idx]
            ctxs = [contexts[i] for i in idx] if contexts is not None else None
            feats, keys = encode_keyed(recs, ctxs, self.spec, mask_names)
            probs = self._run(feats, HEADS, keys)
            ps, pa = probs["service"], probs["app"]
            s_lab, a_lab = self.label_sets["service"], self.label_sets["app"]
            k = max(0, min(top_k, ps.shape[1]))
            top = np.argsort(-ps, axis=1)[:, :k] if k else np.zeros((len(idx), 0), np.int64)
            s_arg = ps.argmax(1)
            # Plain Python lists before the per-flow loop: numpy scalar indexing costs more than the rest.
            confs = self._confidence_of(probs, "service", s_arg).tolist()
            tops, top_p = top.tolist(), np.take_along_axis(ps, top, 1).tolist()
            s_args, a_args = s_arg.tolist(), pa.argmax(1).tolist()
            hits = probs[TABLE_HIT].tolist() if TABLE_HIT in probs else [None] * len(idx)
            for j, i in enumerate(idx):
                s = s_lab[s_args[j]]
                conf = confs[j]
                alts = [f"{s_lab[t]}:{v:.3f}" for t, v in zip(tops[j], top_p[j])]
                out[i] = Verdict(records[i].uid, s, a_lab[a_args[j]], conf, conf < th.for_label(s),
                                 alts, mid, "ok", hits[j])
        return out  # type: ignore[return-value]


def session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    # No busy-waiting between operators: this graph is many small ops, and spinning worker threads
    # take the core that the reader thread (classify's pipeline, the daemon's event loop) or another
    # process needs. Measured on 2 loaded cores: 2 threads spinning 2.4k flows/s, not spinning 4.5k,
    # 1 thread 5k (bench/bench_classify.py, docs/performance.md).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


#: The GIL switch interval of processes where inference threads run beside a busy Python thread (the daemon's
#: event loop, classify's reader; CPython's default is 5 ms). An inference thread gives the GIL up at every
#: onnxruntime run and needs it back to go on; at 5 ms it waited that long several times per batch. At 0.2 ms
#: the daemon's p99 at 2,000-3,000 flows/s fell (e.g. 70 -> 51 and 441 -> 313 ms, the same CPU per flow;
#: docs/performance.md, "Fixed runtime settings and why") and one-process classify ran 1.1x faster.
GIL_SWITCH_S = 0.0002

#: The cyclic garbage collector's thresholds for classify and serve (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Run the cyclic garbage collector less often in a classify or serve process.

    Every flow allocates a few hundred short-lived objects (packets, context, rows, verdicts) that reference
    counting frees; with the default thresholds the collector runs every 700 allocations and mostly rescans
    live data: 10-15 % of `classify`'s CPU (docs/performance.md, "Fixed runtime settings and why"). What is
    alive now (modules, the model) is frozen out of the scans; call it after loading, before forking workers."""
    global _gc_tuned
    if not _gc_tuned:  # once per process (tests call classify many times in one)
        gc.freeze()
        _gc_tuned = True
    gc.set_threshold(*GC_THRESHOLDS)


_gc_tuned = False


def resolve_model_path(path: str | Path | None) -> Path:
    """None = the bundled default; a bundled name ("fast") unless a directory of that name exists here."""
    if path is None:
        return DEFAULT_MODEL_DIR
    p = Path(os.fspath(path))
    if str(path) in BUNDLED and not p.exists():
        return BUNDLED_DIR / str(path)
    return p


def load_model(path: str | Path | None = None, *, threads: int | None = None,
               providers: Sequence[str] | None = None, verify_checksum: bool = True) -> Model:
    """Load a model package (None = the bundled default; "default"/"fast" = a bundled package by name).
    Raises ModelError with the reason on refusal.

    `threads`: onnxruntime intra-op threads (None = onnxruntime's default, all cores). `providers`:
    onnxruntime execution providers (default CPU; pass ["CUDAExecutionProvider", "CPUExecutionProvider"]
    where onnxruntime-gpu is installed).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover
        raise ModelError(f"onnxruntime is not installed: {e}") from None
    d, manifest = read_manifest(resolve_model_path(path))
    spec = check_manifest(d, manifest, verify_checksum=verify_checksum)
    prov = list(providers) if providers else ["CPUExecutionProvider"]
    avail = set(ort.get_available_providers())
    prov = [p for p in prov if p in avail] or ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(d / MODEL_FILE), session_options(threads), providers=prov)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"{d / MODEL_FILE}: onnxruntime cannot load it ({e})") from None
    return Model(d, manifest, spec, sess)
