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
from typing import Sequence

import numpy as np

from .context import CONTEXT_SIZES, Context
from .flows import FlowParams, FlowRecord
from .masking import mask_payload, normalize_random

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

    @classmethod
    def from_params(cls, params: FlowParams, **kw: object) -> "FeatureSpec":
        return cls(packets=params.packets, payload_bytes=params.payload_bytes,
                   payload_packets=params.payload_packets, **kw)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)


def port_token(port: int) -> int:
    return port if port < 1024 else (1024 if port < 49152 else 1025)


def encode(records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None, spec: FeatureSpec,
           mask_names: bool | None = None) -> dict[str, np.ndarray]:
    """Encode a batch. Arrays (B = batch):

    - pkt   int64 [B, N, 4]: direction (0 pad, 1 orig, 2 resp), size bucket, gap bucket, TCP flags
    - byt   int64 [B, M*Bb]: payload byte + 1 (0 pad)
    - seg   int64 [B, M*Bb]: 0 pad, else 1 + 2*chunk + (1 if from the responder)
    - ctx   float32 [B, K, 3 + S]: neighbour (log dt, burst gap, is_udp, S signed sizes / 1500); zeros pad
    - meta  float32 [B, 4]: is_udp, packets/N, final, position in BURST (log)
    - port  int64 [B]: responder port token (only when spec.use_ports)
    """
    n, m, bb, k = spec.packets, spec.payload_packets, spec.payload_bytes, spec.context
    mask = spec.mask_names if mask_names is None else mask_names
    bsz = len(records)
    pkt = np.zeros((bsz, n, 4), np.int64)
    byt = np.zeros((bsz, m * bb), np.int64)
    seg = np.zeros((bsz, m * bb), np.int64)
    ctx = np.zeros((bsz, k, 3 + CONTEXT_SIZES), np.float32)
    meta = np.zeros((bsz, 4), np.float32)
    sb, ib = SIZE_BUCKETS - 1, IAT_BUCKETS - 1
    rows: list[tuple[int, int, int, int]] = []
    row_idx: list[int] = []
    for i, r in enumerate(records):
        # Packet tokens are gathered as Python tuples and written with one numpy assignment per batch:
        # per-element numpy writes cost more than the whole encoding.
        prev = 0.0
        ps = r.packets[:n]
        for p in ps:
            gap = int((p.dt - prev) * 1e6)
            prev = p.dt
            rows.append((1 if p.is_orig else 2, min(p.payload_len >> 4, sb),
                         min(gap.bit_length(), ib) if gap > 0 else 0, p.tcp_flags & 0xFF))
        row_idx.append(len(ps))
        for c, ch in enumerate(r.payload[:m]):
            data = ch.data[:bb]
            if not data:
                continue
            if mask:
                data = mask_payload(data, r.proto, r.orig_p, r.resp_p)
                if spec.normalize_random:
                    data = normalize_random(data, r.proto, r.orig_p, r.resp_p)
            off = c * bb
            byt[i, off:off + len(data)] = np.frombuffer(data, np.uint8)
            byt[i, off:off + len(data)] += 1
            seg[i, off:off + len(data)] = 1 + 2 * c + (0 if ch.is_orig else 1)
        cx = contexts[i] if contexts is not None else None
        if cx is not None and cx.neighbours:
            for j, nb in enumerate(cx.neighbours[:k]):
                row = ctx[i, j]
                row[0] = -math.log1p(-nb.dt) if nb.dt <= 0 else math.log1p(nb.dt)
                row[1] = nb.burst_gap
                row[2] = nb.proto == "udp"
                sz = nb.sizes[:CONTEXT_SIZES]
                if sz:
                    row[3:3 + len(sz)] = sz
            ctx[i, :, 3:] /= 1500.0
        if cx is not None:
            meta[i, 3] = math.log1p(cx.position)
        meta[i, 0] = r.proto == "udp"
        meta[i, 1] = len(ps) / n
        meta[i, 2] = r.final
    if rows:
        counts = np.asarray(row_idx)
        flat_i = np.repeat(np.arange(bsz), counts)
        flat_j = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        pkt[flat_i, flat_j] = np.asarray(rows, np.int64)
    out = {"pkt": pkt, "byt": byt, "seg": seg, "ctx": ctx, "meta": meta}
    if spec.use_ports:
        out["port"] = np.array([port_token(r.resp_p) for r in records], np.int64)
    return out
