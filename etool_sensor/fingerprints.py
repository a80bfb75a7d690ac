"""Flow fingerprints (TLS hellos, else the opening bytes), and the tables that turn them into evidence about
a flow's service and app.

Why: a client's TLS stack writes the same ClientHello (cipher suites, extension types) wherever its app runs,
and a server stack answers with the same ServerHello, so the services of training flows whose hellos match a
new flow's exactly are evidence that survives a new capture, where packet sizes and timing do not (the
pooled capture K-fold: docs/model-card.md, "Hello fingerprints"). The fingerprint is JA4/JA4S material
without the names: legacy version, cipher suites and extension types of both hellos, GREASE dropped, suites
and types sorted (browsers shuffle their extension order). A server name never enters it.

A flow that shows no hello (a non-TLS protocol: a VPN, a messenger's own framing, STUN, RTP, a game) is
keyed by its opening instead: the protocol and the first OPENING_BYTES of the first payload chunk each way,
masked and normalised as the model reads them (masking.mask_chunk), e.g. WhatsApp's 'ED' routing header or
a WireGuard message type. Two bytes: more splits one app's flows apart, fewer merges protocols
(docs/model-card.md, "Opening bytes and the app table").

The table holds, per fingerprint, how many labelled training flows had each service; a hybrid package
carries it as hello_table.json and the runtime adds its log-probabilities to the service head
(runtime.Model), the way eval's hybrids (train/forest.Hybrid) do. A second table over the app labels
(app_table.json) does the same for the app head, which has no forest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .compiled import compiled
from .features import parse_hello
from .flows import FlowRecord
from .masking import mask_chunk

# per model head, its table's key under the manifest's `hybrid` and its file in a package (app: 0.7.0 on)
TABLES = {"service": ("hello_table", "hello_table.json"), "app": ("app_table", "app_table.json")}
TABLE_VERSION = 2  # 2: sparse rows {label index: count}; 1 (0.6.0's tables): dense lists, still read
ALPHA = 1.0  # pseudo-count spread evenly over the labels: one flow with a fingerprint is weak evidence
WEIGHT = 1.0  # the table's log-probabilities are added to the hybrid logits at this weight
OPENING_BYTES = 2  # a flow with no hello is keyed by this many masked bytes of its first chunk each way (<= 2:
# fingerprint() packs them into 64 bits)


def _hellos(rec: FlowRecord, chunks: int, parse: Callable[[bytes], Any]) -> list:
    """parse(data) of the first ClientHello and ServerHello among the first `chunks` chunks ([client, server],
    None where absent); parse gives None or something whose [0] is the handshake type (parse_hello, _hello_key).
    Chunks that cannot start a hello are skipped without a call: most flows have none."""
    got: list = [None, None]
    for ch in rec.payload[:chunks]:
        d = ch.data
        if len(d) < 44 or d[0] != 0x16 or d[1] != 0x03:
            continue
        h = parse(d)
        if h is not None and got[h[0] - 1] is None:
            got[h[0] - 1] = h
    return got


def _opening(rec: FlowRecord, chunks: int) -> list:
    """The first OPENING_BYTES of the first originator and responder chunk among the first `chunks`, masked
    and normalised (mask_chunk); [None, None] when the flow carries no payload."""
    got: list = [None, None]
    for ch in rec.payload[:chunks]:
        k = 0 if ch.is_orig else 1
        if got[k] is None:
            got[k] = mask_chunk(ch.data, rec.proto, rec.orig_p, rec.resp_p)[:OPENING_BYTES]
    return got


def canonical(rec: FlowRecord, chunks: int = 3) -> str | None:
    """The readable fingerprint of a flow's first ClientHello and ServerHello among its first `chunks`
    payload chunks, e.g. 'c771:002f,c02b:0,10,43|s771:c02b:43'; for a flow without a hello its opening,
    e.g. 'o:tcp:4544|-' (protocol, then the first bytes each way in hex, '-' for a side that sent none); None
    when the flow carries no payload. fingerprint() keys the same content."""
    got = _hellos(rec, chunks, parse_hello)
    if got == [None, None]:
        op = _opening(rec, chunks)
        if op == [None, None]:
            return None
        return f"o:{rec.proto}:" + "|".join("-" if b is None else b.hex() for b in op)
    return "|".join("" if h is None else f"{'cs'[k]}{h[1]}:{','.join(f'{v:04x}' for v in sorted(h[2]))}:"
                    f"{','.join(str(v) for v in sorted(h[3]))}" for k, h in enumerate(got))


def _hello_key_py(data: bytes) -> bytes | None:
    """One hello's part of the fingerprint: parse_hello's kind and version, then its cipher suites and extension
    types sorted, packed big-endian with their counts; None when `data` does not start a hello. The reference of
    _fastpath.hello_key."""
    h = parse_hello(data)
    if h is None:
        return None
    su, ex = sorted(h[2]), sorted(h[3])
    return struct.pack(f">BHH{len(su)}HH{len(ex)}H", h[0], h[1], len(su), *su, len(ex), *ex)


_hello_key = compiled("hello_key") or _hello_key_py


_PROTO = {"tcp": 0, "udp": 1}


def fingerprint(rec: FlowRecord, chunks: int = 3) -> int:
    """The content of canonical() as 64 bits: the hellos packed (_hello_key) and hashed (blake2b), or else the
    opening packed as it is, bytes 01, protocol (0 TCP, 1 UDP), then per side its length (ff: none) and its
    two bytes (a hash costs more than the rest of it; a hello hash equal to one of these 64-bit values is a
    1 in 2^64 chance); 0 when the flow carries no payload."""
    got = _hellos(rec, chunks, _hello_key)
    if got[0] is not None or got[1] is not None:
        h = hashlib.blake2b((got[0] or b"-") + (got[1] or b"-"), digest_size=8)
        return int.from_bytes(h.digest(), "big") or 1
    op = _opening(rec, chunks)
    if op == [None, None]:
        return 0
    o, s = (0xFF0000 if b is None else len(b) << 16 | int.from_bytes(b.ljust(OPENING_BYTES, b"\0"), "big") for b in op)
    return 1 << 56 | _PROTO.get(rec.proto, 2) << 48 | o << 24 | s


def fingerprints(records: Sequence[FlowRecord], chunks: int = 3) -> np.ndarray:
    """fingerprint() of every record, as encode()'s hfp (uint64 [B])."""
    return np.fromiter((fingerprint(r, chunks) for r in records), np.uint64, len(records))


def fit_tables(records: Sequence[FlowRecord], labels: dict[str, Sequence[str]],
               label_sets: dict[str, list[str]], chunks: int = 3) -> dict[str, "HelloTable"]:
    """A HelloTable per head of `labels` (the records' labels for that head) over a package's label_sets for
    it, from one fingerprints() pass: what `train` and export/hybrid.py join to a package."""
    keys = fingerprints(records, chunks)
    return {head: HelloTable.fit(keys, y, label_sets[head]) for head, y in labels.items()}


@dataclass
class HelloTable:
    """Counts per fingerprint over `labels` (a model head's labels, in its column order: the services, or
    the apps). Not changed after fit/load: log_proba precomputes its rows once."""

    labels: list[str]
    counts: dict[int, np.ndarray]
    alpha: float = ALPHA
    weight: float = WEIGHT
    _rows: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, keys: np.ndarray, y: Sequence[str], labels: Sequence[str], *, alpha: float = ALPHA,
            weight: float = WEIGHT) -> "HelloTable":
        """Count the labelled flows (`keys` from fingerprints(), `y` their services) per fingerprint; flows with
        no payload (key 0) or a label outside `labels` are left out."""
        pos = {l: j for j, l in enumerate(labels)}
        counts: dict[int, np.ndarray] = {}
        for k, l in zip(np.asarray(keys, np.uint64).tolist(), y):
            j = pos.get(l)
            if k and j is not None:
                counts.setdefault(k, np.zeros(len(labels), np.float64))[j] += 1
        return cls(list(labels), counts, alpha, weight)

    def log_proba(self, keys: np.ndarray) -> np.ndarray:
        """[B, labels] weight * log((counts + alpha / K) / (n + alpha)) for flows whose fingerprint is in the
        table; 0 (no evidence: the same shift for every label) for the others. Rows precomputed, looked up
        by binary search over the sorted fingerprints: most flows have one in the table since 0.7.0."""
        return self.add_to(np.zeros((len(keys), len(self.labels)), np.float32), keys)

    def add_to(self, logits: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """logits += log_proba(keys), in place (float32 [B, labels]); returns logits. The runtime's form: it
        touches only the rows of flows the table knows."""
        k = len(self.labels)
        if self._rows is None:
            fps = np.array(sorted(self.counts), np.uint64)
            c = np.array([self.counts[f] for f in fps.tolist()], np.float64).reshape(len(fps), k)
            self._rows = (fps, (self.weight * np.log((c + self.alpha / k) / (c.sum(1, keepdims=True)
                                                                              + self.alpha))).astype(np.float32))
        fps, rows = self._rows
        keys = np.asarray(keys, np.uint64)
        if len(fps) and len(keys):
            pos = np.minimum(np.searchsorted(fps, keys), len(fps) - 1)
            hit = np.flatnonzero((fps[pos] == keys) & (keys != 0))
            logits[hit] += rows[pos[hit]]
        return logits

    def to_json(self) -> dict[str, Any]:
        return {"version": TABLE_VERSION, "labels": self.labels, "alpha": self.alpha, "weight": self.weight,
                "counts": {f"{k:016x}": {str(j): int(c[j]) for j in np.flatnonzero(c)}
                           for k, c in sorted(self.counts.items())}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "HelloTable":
        """Inverse of to_json; ValueError on anything malformed."""
        try:
            if d["version"] not in (1, TABLE_VERSION):
                raise ValueError(f"hello table version {d['version']!r}, this build reads 1 and {TABLE_VERSION}")
            labels = [str(x) for x in d["labels"]]
            counts = {}
            for k, c in d["counts"].items():
                if d["version"] == 1:
                    if len(c) != len(labels):
                        raise ValueError(f"hello table row {k}: {len(c)} counts for {len(labels)} labels")
                    row = np.asarray(c, np.float64)
                else:
                    row = np.zeros(len(labels), np.float64)
                    for j, v in c.items():
                        if not 0 <= int(j) < len(labels):
                            raise ValueError(f"hello table row {k}: label index {j} of {len(labels)} labels")
                        row[int(j)] = v
                if row.min(initial=0) < 0:
                    raise ValueError(f"hello table row {k}: a negative count")
                counts[int(k, 16)] = row
            return cls(labels, counts, float(d["alpha"]), float(d["weight"]))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed hello table: {e!r}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "HelloTable":
        return cls.from_json(json.loads(Path(path).read_text()))
