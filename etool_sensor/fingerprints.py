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

Since 0.8.0 the service table also holds its distinct training hellos as token sets (NearHellos): a flow
whose hello the table lacks takes the services of the NEAR_M training hellos most like it (Jaccard over
version, suite and extension-type tokens, at least NEAR_TAU), the same kind of evidence. Only 13-14 % of the
test flows of a capture K-fold have their exact fingerprint in training (lab/headroom.py); a client's next build
usually adds or drops a suite or an extension and keeps the rest (docs/model-card.md, "Near hellos").
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
from .tls import parse_hello
from .flows import FlowRecord
from .masking import mask_chunk

# per model head, its table's key under the manifest's `hybrid` and its file in a package (app: 0.7.0 on)
TABLES = {"service": ("hello_table", "hello_table.json"), "app": ("app_table", "app_table.json")}
TABLE_VERSION = 3  # 3: + optional "near" (0.8.0); 2: sparse rows {label index: count}; 1 (0.6.0): dense lists
NEAR_TAU = 0.6  # a training hello at least this similar (Jaccard over hello_tokens) can be a neighbour
NEAR_M = 3  # the flow takes the services of its NEAR_M most similar distinct training hellos (ties kept)
NEAR_CACHE = 65536  # answers of the back-off kept per fingerprint (~100 bytes each), then forgotten at once
ALPHA = 1.0  # pseudo-count spread evenly over the labels: one flow with a fingerprint is weak evidence
WEIGHT = 1.0  # the table's log-probabilities are added to the hybrid logits at this weight
OPENING_BYTES = 2  # a flow with no hello is keyed by this many masked bytes of its first chunk each way (<= 2:
# fingerprint() packs them into 64 bits)


def _hellos(rec: FlowRecord, chunks: int, parse: Callable[[bytes], Any]) -> list:
    """parse(data) of the first ClientHello and ServerHello among the first `chunks` chunks ([client, server],
    None where absent); parse gives None for a chunk that does not start a hello (parse_hello asks
    tls.hello_kind; _hello_key is its twin) and otherwise something whose [0] is the handshake type. No test
    here before the call: the compiled _hello_key answers a chunk that is not a hello faster than one could."""
    got: list = [None, None]
    for ch in rec.payload[:chunks]:
        d = ch.data
        h = parse(d if type(d) is bytes else bytes(d))  # the compiled twin takes bytes only
        if h is not None and got[h[0] - 1] is None:
            got[h[0] - 1] = h
    return got


def _opening(rec: FlowRecord, chunks: int, masked: bytes = b"", at: int = 0, within: int = -1) -> list:
    """The first OPENING_BYTES of the first originator and responder chunk among the first `chunks`, masked
    and normalised (mask_chunk); [None, None] when the flow carries no payload. `masked` may hold them
    already: OPENING_BYTES per chunk slot from offset `at`, for chunks of at most `within` bytes (encode's
    masked window; flow_keys)."""
    got: list = [None, None]
    for c, ch in enumerate(rec.payload[:chunks]):
        k = 0 if ch.is_orig else 1
        if got[k] is None:
            d = ch.data
            if len(d) <= within:
                o = at + c * OPENING_BYTES
                got[k] = masked[o:o + min(len(d), OPENING_BYTES)]
            else:
                got[k] = mask_chunk(d, rec.proto, rec.orig_p, rec.resp_p)[:OPENING_BYTES]
            if got[1 - k] is not None:
                break
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


def _key(rec: FlowRecord, got: list, op: list | None) -> int:
    """fingerprint() from the flow's packed hellos `got` (_hellos with _hello_key), else its opening `op`."""
    if got[0] is not None or got[1] is not None:
        h = hashlib.blake2b((got[0] or b"-") + (got[1] or b"-"), digest_size=8)
        return int.from_bytes(h.digest(), "big") or 1
    if op is None:
        return 0
    a, b = op
    if a is None and b is None:
        return 0
    o = 0xFF0000 if a is None else len(a) << 16 | int.from_bytes(a.ljust(OPENING_BYTES, b"\0"), "big")
    s = 0xFF0000 if b is None else len(b) << 16 | int.from_bytes(b.ljust(OPENING_BYTES, b"\0"), "big")
    return 1 << 56 | _PROTO.get(rec.proto, 2) << 48 | o << 24 | s


def fingerprint(rec: FlowRecord, chunks: int = 3) -> int:
    """The content of canonical() as 64 bits: the hellos packed (_hello_key) and hashed (blake2b), or else the
    opening packed as it is, bytes 01, protocol (0 TCP, 1 UDP), then per side its length (ff: none) and its
    two bytes (a hash costs more than the rest of it; a hello hash equal to one of these 64-bit values is a
    1 in 2^64 chance); 0 when the flow carries no payload."""
    got = _hellos(rec, chunks, _hello_key)
    return _key(rec, got, None if got != [None, None] else _opening(rec, chunks))


def _tokens(got: list) -> np.ndarray | None:
    """hello_tokens() from a flow's packed hellos (_hellos with _hello_key)."""
    if got[0] is None and got[1] is None:
        return None
    toks: list[int] = []
    for side, key in enumerate(got):
        if key is None:
            continue
        _, version, ns = struct.unpack_from(">BHH", key)
        su = struct.unpack_from(f">{ns}H", key, 5)
        (ne,) = struct.unpack_from(">H", key, 5 + 2 * ns)
        ex = struct.unpack_from(f">{ne}H", key, 7 + 2 * ns)
        base = side << 18
        toks.append(base | version)
        toks.extend(base | 1 << 16 | v for v in su)
        toks.extend(base | 2 << 16 | v for v in ex)
    return np.unique(np.array(toks, np.uint32))


def hello_tokens(rec: FlowRecord, chunks: int = 3) -> np.ndarray | None:
    """The flow's hellos as a set of tokens (sorted uint32): per side (client 0, server 1) its legacy version,
    each cipher suite and each extension type, GREASE dropped; what fingerprint() hashes, kept apart so that
    two hellos can be compared. None when the flow shows no hello."""
    return _tokens(_hellos(rec, chunks, _hello_key))


@dataclass(frozen=True, slots=True)
class FlowKeys:
    """A batch's table keys, worked out once per flow (flow_keys; features.encode_keyed): `hfp`, each flow's
    fingerprint(); `hellos`, its packed hellos ([client, server] of _hello_key, None where absent), from which
    a table's near-hello back-off takes the flow's tokens without parsing the hellos again."""

    hfp: np.ndarray  # uint64 [B]
    hellos: list[list]

    def tokens(self, i: int) -> np.ndarray | None:
        """hello_tokens() of flow i."""
        return _tokens(self.hellos[i])


def flow_keys(records: Sequence[FlowRecord], chunks: int = 3, masked: bytes = b"", within: int = -1) -> FlowKeys:
    """FlowKeys of `records`. `masked`, when the caller has masked the chunks already (features.encode_keyed):
    the first OPENING_BYTES of every flow's first `chunks` chunk slots as mask_chunk gives them, flow by flow,
    valid for chunks of at most `within` bytes; longer chunks are masked here."""
    hfp: list[int] = []
    hellos: list[list] = []
    stride = chunks * OPENING_BYTES
    for i, r in enumerate(records):
        got = _hellos(r, chunks, _hello_key)
        hellos.append(got)
        hfp.append(_key(r, got, None if got != [None, None] else _opening(r, chunks, masked, i * stride, within)))
    return FlowKeys(np.fromiter(hfp, np.uint64, len(hfp)), hellos)


@dataclass
class NearHellos:
    """The distinct training hellos (hello_tokens) with their label counts, for flows whose exact fingerprint
    a HelloTable lacks: their evidence is the summed counts of the `m` most similar ones (every hello tied at
    the m-th similarity kept, so the answer does not depend on the order of the training flows), if at least
    `tau` similar."""

    tokens: list[np.ndarray]
    counts: np.ndarray  # float64 [hellos, labels]
    tau: float = NEAR_TAU
    m: int = NEAR_M
    _index: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, toks: Sequence[np.ndarray | None], y: Sequence[str], labels: Sequence[str], *,
            tau: float = NEAR_TAU, m: int = NEAR_M) -> "NearHellos":
        pos = {l: j for j, l in enumerate(labels)}
        rows: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        for t, l in zip(toks, y):
            j = pos.get(l)
            if t is not None and j is not None:
                rows.setdefault(t.tobytes(), (t, np.zeros(len(labels), np.float64)))[1][j] += 1
        keys = sorted(rows)  # a canonical order: the same flows give the same file
        return cls([rows[k][0] for k in keys],
                   np.array([rows[k][1] for k in keys], np.float64).reshape(len(keys), len(labels)), tau, m)

    def summed(self, t: np.ndarray) -> np.ndarray | None:
        """The summed label counts of the neighbours of token set `t`; None when no hello is tau-similar."""
        if self._index is None:
            vocab = np.unique(np.concatenate(self.tokens)) if self.tokens else np.zeros(0, np.uint32)
            member = np.zeros((len(self.tokens), len(vocab)), np.float32)
            for g, tt in enumerate(self.tokens):
                member[g, np.searchsorted(vocab, tt)] = 1.0
            self._index = (vocab, member, member.sum(1))
        vocab, member, sizes = self._index
        if not len(vocab):
            return None
        at = np.minimum(np.searchsorted(vocab, t), len(vocab) - 1)
        inter = member[:, at[vocab[at] == t]].sum(1)
        sim = inter / (len(t) + sizes - inter)
        levels = np.unique(sim)[::-1]
        cut = max(float(levels[min(self.m, len(levels)) - 1]), self.tau)
        sel = sim >= cut - 1e-9
        return self.counts[sel].sum(0) if sel.any() else None

    def to_json(self) -> dict[str, Any]:
        return {"tau": self.tau, "m": self.m, "hellos": [t.tolist() for t in self.tokens],
                "counts": [{str(j): int(c[j]) for j in np.flatnonzero(c)} for c in self.counts]}

    @classmethod
    def from_json(cls, d: dict[str, Any], n_labels: int) -> "NearHellos":
        hellos, rows = d["hellos"], d["counts"]
        if len(hellos) != len(rows):
            raise ValueError(f"near hellos: {len(hellos)} hellos but {len(rows)} count rows")
        counts = np.zeros((len(rows), n_labels), np.float64)
        for g, c in enumerate(rows):
            for j, v in c.items():
                if not 0 <= int(j) < n_labels or v < 0:
                    raise ValueError(f"near hellos row {g}: label index {j} or count {v} out of range")
                counts[g, int(j)] = v
        tokens = [np.unique(np.asarray(t, np.uint32)) for t in hellos]
        if any(len(t) == 0 for t in tokens):
            raise ValueError("near hellos: an empty hello")
        return cls(tokens, counts, float(d["tau"]), int(d["m"]))


def fingerprints(records: Sequence[FlowRecord], chunks: int = 3) -> np.ndarray:
    """fingerprint() of every record, as encode()'s hfp (uint64 [B])."""
    return flow_keys(records, chunks).hfp


def fit_tables(records: Sequence[FlowRecord], labels: dict[str, Sequence[str]],
               label_sets: dict[str, list[str]], chunks: int = 3, near: int | None = None) -> dict[str, "HelloTable"]:
    """A HelloTable per head of `labels` (the records' labels for that head) over a package's label_sets for
    it, from one fingerprints() pass: what `train` and export/hybrid.py join to a package. The service table
    gets the near-hello back-off (`near` = its m; 0: none, 0.7.0's tables); the app table does not (it
    moved app macro-F1 by +0.002 / 0.000 by capture: docs/model-card.md). near None: NEAR_M."""
    near = NEAR_M if near is None else near
    keys = fingerprints(records, chunks)
    toks = [hello_tokens(r, chunks) for r in records] if near and "service" in labels else None
    return {head: HelloTable.fit(keys, y, label_sets[head], near_tokens=toks if head == "service" else None,
                                 near_m=near)
            for head, y in labels.items()}


@dataclass
class HelloTable:
    """Counts per fingerprint over `labels` (a model head's labels, in its column order: the services, or
    the apps). Not changed after fit/load: log_proba precomputes its rows once."""

    labels: list[str]
    counts: dict[int, np.ndarray]
    alpha: float = ALPHA
    weight: float = WEIGHT
    near: NearHellos | None = None  # since 0.8.0, the service table's back-off for hellos it lacks
    _rows: Any = field(default=None, init=False, repr=False, compare=False)
    _near_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, keys: np.ndarray, y: Sequence[str], labels: Sequence[str], *, alpha: float = ALPHA,
            weight: float = WEIGHT, near_tokens: Sequence[np.ndarray | None] | None = None,
            near_m: int = NEAR_M) -> "HelloTable":
        """Count the labelled flows (`keys` from fingerprints(), `y` their services) per fingerprint; flows with
        no payload (key 0) or a label outside `labels` are left out. With `near_tokens` (hello_tokens of the
        same flows) and near_m > 0 the table also gets the near-hello back-off."""
        pos = {l: j for j, l in enumerate(labels)}
        counts: dict[int, np.ndarray] = {}
        for k, l in zip(np.asarray(keys, np.uint64).tolist(), y):
            j = pos.get(l)
            if k and j is not None:
                counts.setdefault(k, np.zeros(len(labels), np.float64))[j] += 1
        near = NearHellos.fit(near_tokens, y, labels, m=near_m) if near_tokens is not None and near_m > 0 else None
        return cls(list(labels), counts, alpha, weight, near)

    def log_proba(self, keys: np.ndarray, records: Sequence[FlowRecord] | None = None,
                  chunks: int = 3) -> np.ndarray:
        """[B, labels] weight * log((counts + alpha / K) / (n + alpha)) for flows whose fingerprint is in the
        table (and, with `records` and a near table, for flows whose hello has near neighbours, their summed
        counts); 0 (no evidence: the same shift for every label) for the others. Rows precomputed, looked up
        by binary search over the sorted fingerprints: most flows have one in the table since 0.7.0."""
        return self.add_to(np.zeros((len(keys), len(self.labels)), np.float32), keys, records, chunks)

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted fingerprints, their log-probability rows), computed once."""
        if self._rows is None:
            k = len(self.labels)
            fps = np.array(sorted(self.counts), np.uint64)
            c = np.array([self.counts[f] for f in fps.tolist()], np.float64).reshape(len(fps), k)
            self._rows = (fps, (self.weight * np.log((c + self.alpha / k) / (c.sum(1, keepdims=True)
                                                                              + self.alpha))).astype(np.float32))
        return self._rows

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(known, pos): whether each fingerprint (key 0: no payload) is in the table, and its row where it is."""
        fps = self._table()[0]
        keys = np.asarray(keys, np.uint64)
        if not (len(fps) and len(keys)):
            return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
        pos = np.minimum(np.searchsorted(fps, keys), len(fps) - 1)
        return (fps[pos] == keys) & (keys != 0), pos

    def add_to(self, logits: np.ndarray, keys: np.ndarray, records: Sequence[FlowRecord] | None = None,
               chunks: int = 3, found: tuple[np.ndarray, np.ndarray] | None = None,
               flows: FlowKeys | None = None) -> np.ndarray:
        """logits += log_proba(keys, records), in place (float32 [B, labels]); returns logits. The runtime's
        form: it touches only the rows of flows the table knows or finds near neighbours for. The near-hello
        back-off reads the hellos of flows with a fingerprint the table lacks from `flows` (FlowKeys of the same
        flows, as encode_keyed gave them: nothing parsed again), else from `records` (parsed again), else not
        at all. `found`: lookup(keys), when the caller has it already."""
        k = len(self.labels)
        rows = self._table()[1]
        keys = np.asarray(keys, np.uint64)
        known, pos = found if found is not None else self.lookup(keys)
        hit = np.flatnonzero(known)
        if len(hit):
            logits[hit] += rows[pos[hit]]
        if self.near is not None and (flows is not None or records is not None):
            n = len(flows.hellos) if flows is not None else len(records)  # type: ignore[arg-type]
            if n != len(keys):
                raise ValueError(f"{n} records for {len(keys)} fingerprints")
            cache = self._near_cache
            for i in np.flatnonzero(~known & (keys != 0)).tolist():
                fp = int(keys[i])  # the fingerprint hashes the same fields: one answer per fingerprint
                if fp in cache:
                    row = cache[fp]
                else:
                    t = flows.tokens(i) if flows is not None else hello_tokens(records[i], chunks)  # type: ignore
                    c = None if t is None else self.near.summed(t)
                    row = None if c is None else (self.weight * np.log((c + self.alpha / k) / (c.sum() + self.alpha))
                                                  ).astype(np.float32)
                    if len(cache) >= NEAR_CACHE:  # a sensor sees the same new client builds again and again
                        cache.clear()
                    cache[fp] = row
                if row is not None:
                    logits[i] += row
        return logits

    def to_json(self) -> dict[str, Any]:
        d = {"version": TABLE_VERSION, "labels": self.labels, "alpha": self.alpha, "weight": self.weight,
             "counts": {f"{k:016x}": {str(j): int(c[j]) for j in np.flatnonzero(c)}
                        for k, c in sorted(self.counts.items())}}
        if self.near is not None:
            d["near"] = self.near.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "HelloTable":
        """Inverse of to_json; ValueError on anything malformed."""
        try:
            if d["version"] not in (1, 2, TABLE_VERSION):
                raise ValueError(f"hello table version {d['version']!r}, this build reads 1 to {TABLE_VERSION}")
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
            near = NearHellos.from_json(d["near"], len(labels)) if d.get("near") is not None else None
            return cls(labels, counts, float(d["alpha"]), float(d["weight"]), near)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed hello table: {e!r}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "HelloTable":
        return cls.from_json(json.loads(Path(path).read_text()))
