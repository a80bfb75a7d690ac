"""Flow record (+ context) -> model input arrays. numpy only: the runtime and training share it.

ETooL's two token streams: packet tokens (direction, size, timing, flags) and datagram tokens (the
first payload bytes, which the model reads in 2-byte units). Names are masked first (masking.py), then
per-session random fields (TLS hello Random and session ID, QUIC connection IDs, DNS transaction ID) are
set to zero (`normalize_random`, feature encoding v2): they differ on every connection, so a model can only
memorise them, which costs accuracy on captures it has not seen.
IP addresses are never a feature; the responder port only when `use_ports` is set (an ablation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import Sequence

import numpy as np

from .compiled import compiled
from .context import CONTEXT_SIZES, Context
from .fingerprints import OPENING_BYTES, FlowKeys, flow_keys
from .flows import FlowParams, FlowRecord
from .masking import mask_chunk

_encode_c = compiled("encode_arrays")  # the compiled port of _arrays_py, or None

FEATURES_VERSION = 2  # 2: per-session random fields normalised (masking.normalize_random)

SIZE_BUCKETS = 96  # payload sizes in 16-byte steps up to 1520; the last bucket holds everything larger
IAT_BUCKETS = 32  # log2 buckets of the gap to the previous packet in microseconds
FLAG_VOCAB = 256
PORT_VOCAB = 1026  # 0..1023 as is, 1024 = registered, 1025 = ephemeral


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Preprocessing parameters; recorded in a model's manifest and checked at load time."""

    packets: int = 32
    payload_bytes: int = 64
    payload_packets: int = 3
    context: int = 8
    mask_names: bool = True
    use_ports: bool = False
    normalize_random: bool = True  # zero per-session random fields (masking.normalize_random)
    version: int = FEATURES_VERSION
    # The first `flights` direction runs of payload packets as (signed bytes, packets) pairs (flights()):
    # sums over TCP segments, so they do not move with the path's MSS as single packet sizes do. 0 = off.
    flights: int = 0
    # Chunks that start a TLS ClientHello/ServerHello are collected whole up to this many bytes
    # (flows.chunk_length; 0 = off); encode() then also gives each flow's fingerprint (hfp: its hellos,
    # else its opening bytes; fingerprints.py), which a hybrid package's hello table reads.
    hello_bytes: int = 0

    @classmethod
    def from_params(cls, params: FlowParams, **kw: object) -> "FeatureSpec":
        return cls(packets=params.packets, payload_bytes=params.payload_bytes,
                   payload_packets=params.payload_packets, **kw)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        """The spec a manifest or checkpoint records. Settings of experiments this build no longer runs
        (RETIRED) are accepted at their default only, which older manifests carry; TypeError on unknown keys."""
        for k, default in RETIRED.items():
            if k in d and d[k] != default:
                raise ValueError(f"{k}={d[k]!r} is an experiment this build no longer runs (only {default!r})")
        return cls(**{k: v for k, v in d.items() if k not in RETIRED})


#: feature settings of retired experiments, with the value that meant "off" (older manifests record them)
RETIRED = {"compact_hello": False, "collect_payload_bytes": 0, "hello_tokens": 0}


_PACKET_COLS = attrgetter("dt", "is_orig", "payload_len", "tcp_flags")


def port_token(port: int) -> int:
    return port if port < 1024 else (1024 if port < 49152 else 1025)


FLIGHT_SCALE = math.log1p(65535.0)


def flights(rec: FlowRecord, n: int) -> list[tuple[int, int]]:
    """The first n flights of a flow: runs of consecutive payload-carrying packets in one direction, as
    (payload bytes, + from the originator and - from the responder; packets). Pure ACKs neither end nor
    join a run. Why: a TLS server's first flight (hello, certificate chain) is one size wherever it is
    captured, but the path's MSS and offloads cut it into different packets (the packet counts do follow
    the MSS; the byte totals do not)."""
    out: list[list[int]] = []
    for p in rec.packets:
        if p.payload_len <= 0:
            continue
        s = p.payload_len if p.is_orig else -p.payload_len
        if out and (out[-1][0] > 0) == p.is_orig:
            out[-1][0] += s
            out[-1][1] += 1
        elif len(out) < n:
            out.append([s, 1])
        else:
            break
    return [(a, b) for a, b in out]


def _flight_array(records: Sequence[FlowRecord], n: int, packets: int) -> np.ndarray:
    """encode()'s flt: flights() of every record, scaled with a few vector operations per batch."""
    size = np.zeros((len(records), n), np.float64)
    count = np.zeros((len(records), n), np.float64)
    for i, r in enumerate(records):
        row_s, row_c = size[i], count[i]
        j, last = -1, None
        for p in r.packets:
            b = p.payload_len
            if b <= 0:
                continue
            o = p.is_orig
            if o is not last:
                if j == n - 1:
                    break
                j, last = j + 1, o
            row_s[j] += b if o else -b
            row_c[j] += 1
    flt = np.empty((len(records), 2 * n), np.float32)
    flt[:, 0::2] = np.copysign(np.log1p(np.abs(size)) / FLIGHT_SCALE, size)
    flt[:, 1::2] = np.log1p(count) / math.log1p(packets)
    return flt


def encode(records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None, spec: FeatureSpec,
           mask_names: bool | None = None) -> dict[str, np.ndarray]:
    """Encode a batch. Arrays (B = batch):

    - pkt   int64 [B, N, 4]: direction (0 pad, 1 orig, 2 resp), size bucket, gap bucket, TCP flags
    - byt   int64 [B, M*Bb]: payload byte + 1 (0 pad)
    - seg   int64 [B, M*Bb]: 0 pad, else 1 + 2*chunk + (1 if from the responder)
    - ctx   float32 [B, K, 3 + S]: neighbour (log dt, burst gap, is_udp, S signed sizes / 1500); zeros pad
    - meta  float32 [B, 4]: is_udp, packets/N, final, position in BURST (log)
    - flt   float32 [B, 2F]: per flight (flights()) signed log bytes / log 65536, log packets / log (N+1)
            (only when spec.flights)
    - hfp   uint64 [B]: flow fingerprint (TLS hellos, else opening bytes), 0 without payload
            (fingerprints.fingerprint; only when spec.hello_bytes;
            not a graph input)
    - port  int64 [B]: responder port token (only when spec.use_ports)
    """
    return encode_keyed(records, contexts, spec, mask_names)[0]


def encode_keyed(records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None, spec: FeatureSpec,
                 mask_names: bool | None = None) -> tuple[dict[str, np.ndarray], FlowKeys | None]:
    """encode(), and with spec.hello_bytes the batch's fingerprint-table keys (fingerprints.FlowKeys, whose hfp
    is the arrays' hfp): each flow's hellos are parsed once, for hfp and for a table's near-hello back-off, and
    a flow without hellos takes its opening bytes from the chunks masked here for byt (masked once) where
    those hold it whole."""
    mask = spec.mask_names if mask_names is None else mask_names
    out = None
    if _encode_c is not None:
        out = _arrays_c(records, contexts, spec, mask)
    if out is None:
        out = _arrays_py(records, contexts, spec, mask)
    keys = None
    if spec.hello_bytes:
        m, bb = spec.payload_packets, spec.payload_bytes
        masked, within = b"", -1
        # byt holds every chunk's first bytes as fingerprints._opening masks them (mask_chunk, names and random
        # fields) when encode masks and normalises too: the same bytes in, for chunks that fit the window whole
        if mask and spec.normalize_random and bb >= OPENING_BYTES and m and records:
            masked = (out["byt"].reshape(len(records), m, bb)[:, :, :OPENING_BYTES] - 1).astype(np.uint8).tobytes()
            within = bb
        keys = flow_keys(records, m, masked, within)
        out["hfp"] = keys.hfp
    if spec.use_ports:
        out["port"] = np.array([port_token(r.resp_p) for r in records], np.int64)
    return out, keys


def _zeros(bsz: int, spec: FeatureSpec) -> dict[str, np.ndarray]:
    n, m, bb, k = spec.packets, spec.payload_packets, spec.payload_bytes, spec.context
    out = {"pkt": np.zeros((bsz, n, 4), np.int64), "byt": np.zeros((bsz, m * bb), np.int64),
           "seg": np.zeros((bsz, m * bb), np.int64), "ctx": np.zeros((bsz, k, 3 + CONTEXT_SIZES), np.float32),
           "meta": np.zeros((bsz, 4), np.float32)}
    if spec.flights:
        out["flt"] = np.zeros((bsz, 2 * spec.flights), np.float32)
    return out


def _arrays_c(records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None, spec: FeatureSpec,
              mask: bool) -> dict[str, np.ndarray] | None:
    """_arrays_py in C (_fastpath.encode_arrays, ~5x faster); None where it declines (anything but plain
    lists/tuples, bytes and numbers), and the caller runs _arrays_py. tests/test_features_fast.py checks that
    both give the same arrays on every flow of the shared captures and on odd records."""
    out = _zeros(len(records), spec)
    extra = (spec.flights, out["flt"], FLIGHT_SCALE, math.log1p(spec.packets)) if spec.flights else ()
    if _encode_c(records, contexts, spec.packets, spec.payload_packets, spec.payload_bytes, spec.context,
                 CONTEXT_SIZES, mask, spec.normalize_random, out["pkt"], out["byt"], out["seg"], out["ctx"],
                 out["meta"], *extra):
        return out
    return None


def _arrays_py(records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None, spec: FeatureSpec,
               mask: bool) -> dict[str, np.ndarray]:
    """pkt, byt, seg, ctx, meta (and flt) of encode(); the reference for _arrays_c."""
    n, m, bb, k = spec.packets, spec.payload_packets, spec.payload_bytes, spec.context
    norm = spec.normalize_random
    bsz = len(records)
    arrays = _zeros(bsz, spec)
    pkt, byt, seg, ctx, meta = (arrays[x] for x in ("pkt", "byt", "seg", "ctx", "meta"))
    stride = m * bb
    flat: list = []  # the first n packets of every record, in order
    counts: list[int] = []
    pieces: list[bytes] = []  # payload prefixes (masked), with their flat offset and segment id
    piece_at: list[int] = []
    piece_seg: list[int] = []
    nb_at: list[int] = []  # BURST neighbours: flat (record, slot) index and feature row
    nb_rows: list[tuple] = []
    meta_rows: list[tuple] = []
    pad = (0,) * CONTEXT_SIZES
    for i, r in enumerate(records):
        ps = r.packets[:n]
        flat += ps
        counts.append(len(ps))
        for c, ch in enumerate(r.payload[:m]):
            data = ch.data[:bb]
            if not data:
                continue
            if mask:
                data = mask_chunk(data, r.proto, r.orig_p, r.resp_p, norm)
            pieces.append(data)
            piece_at.append(i * stride + c * bb)
            piece_seg.append(1 + 2 * c + (0 if ch.is_orig else 1))
        cx = contexts[i] if contexts is not None else None
        if cx is not None:
            for j, nb in enumerate(cx.neighbours[:k]):
                sz = nb.sizes[:CONTEXT_SIZES]
                nb_at.append(i * k + j)
                nb_rows.append((-math.log1p(-nb.dt) if nb.dt <= 0 else math.log1p(nb.dt), nb.burst_gap,
                                nb.proto == "udp", *sz, *pad[len(sz):]))
            position = math.log1p(cx.position)
        else:
            position = 0.0
        meta_rows.append((r.proto == "udp", len(ps) / n, r.final, position))
    if nb_rows:
        rows = np.array(nb_rows, np.float64).astype(np.float32)
        rows[:, 3:] /= np.float32(1500.0)
        ctx.reshape(bsz * k, -1)[nb_at] = rows
    if meta_rows:
        meta[:] = np.array(meta_rows, np.float64)
    # Packet tokens and payload bytes are written with a few vector operations per batch: per-packet
    # Python arithmetic and per-chunk numpy writes cost more than everything else in encode().
    if flat:
        cnt = np.asarray(counts)
        first = np.cumsum(cnt) - cnt  # index in `flat` of each record's first packet
        cols = np.array(list(map(_PACKET_COLS, flat)), np.float64)
        dt = cols[:, 0]
        prev = np.empty_like(dt)
        prev[1:] = dt[:-1]
        prev[first[cnt > 0]] = 0.0
        gap = np.trunc((dt - prev) * 1e6).astype(np.int64)  # int((dt - prev) * 1e6), as in Python
        gap_b = np.where(gap > 0, np.minimum(np.frexp(np.maximum(gap, 1).astype(np.float64))[1], IAT_BUCKETS - 1), 0)
        flat_i = np.repeat(np.arange(bsz), cnt)
        flat_j = np.arange(len(flat)) - np.repeat(first, cnt)
        pkt[flat_i, flat_j] = np.stack([np.where(cols[:, 1] > 0, 1, 2),
                                        np.minimum(cols[:, 2].astype(np.int64) >> 4, SIZE_BUCKETS - 1),
                                        gap_b, cols[:, 3].astype(np.int64) & 0xFF], axis=1)
    if pieces:
        lens = np.fromiter(map(len, pieces), np.int64, len(pieces))
        pos = np.repeat(np.asarray(piece_at) - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        byt.reshape(-1)[pos] = np.frombuffer(b"".join(pieces), np.uint8).astype(np.int64) + 1
        seg.reshape(-1)[pos] = np.repeat(np.asarray(piece_seg, np.int64), lens)
    if spec.flights:
        arrays["flt"] = _flight_array(records, spec.flights, spec.packets)
    return arrays
