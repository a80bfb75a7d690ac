"""Flow record (+ context) -> model input arrays. numpy only: the runtime and training share it.

ETooL's two token streams: packet tokens (direction, size, timing, flags) and datagram tokens (the
first payload bytes, which the model reads in 2-byte units). Names are masked first (masking.py).
IP addresses are never a feature; the responder port only when `use_ports` is set (an ablation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .context import CONTEXT_SIZES, Context
from .flows import FlowParams, FlowRecord
from .masking import mask_payload

FEATURES_VERSION = 1

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
    version: int = FEATURES_VERSION

    @classmethod
    def from_params(cls, params: FlowParams, **kw: object) -> "FeatureSpec":
        return cls(packets=params.packets, payload_bytes=params.payload_bytes,
                   payload_packets=params.payload_packets, **kw)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)


def size_bucket(n: int) -> int:
    return min(n // 16, SIZE_BUCKETS - 1)


def iat_bucket(gap_s: float) -> int:
    us = int(gap_s * 1e6)
    return min(us.bit_length(), IAT_BUCKETS - 1)


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
    for i, r in enumerate(records):
        prev = 0.0
        for j, p in enumerate(r.packets[:n]):
            pkt[i, j, 0] = 1 if p.is_orig else 2
            pkt[i, j, 1] = size_bucket(p.payload_len)
            pkt[i, j, 2] = iat_bucket(p.dt - prev)
            pkt[i, j, 3] = p.tcp_flags & 0xFF
            prev = p.dt
        for c, ch in enumerate(r.payload[:m]):
            data = ch.data[:bb]
            if mask:
                data = mask_payload(data, r.proto, r.orig_p, r.resp_p)
            off = c * bb
            byt[i, off:off + len(data)] = np.frombuffer(data, np.uint8).astype(np.int64) + 1
            seg[i, off:off + len(data)] = 1 + 2 * c + (0 if ch.is_orig else 1)
        cx = contexts[i] if contexts is not None else None
        if cx is not None:
            for j, nb in enumerate(cx.neighbours[:k]):
                ctx[i, j, 0] = -np.log1p(-min(nb.dt, 0.0)) if nb.dt <= 0 else np.log1p(nb.dt)
                ctx[i, j, 1] = nb.burst_gap
                ctx[i, j, 2] = nb.proto == "udp"
                s = nb.sizes[:CONTEXT_SIZES]
                ctx[i, j, 3:3 + len(s)] = np.asarray(s, np.float32) / 1500.0
            meta[i, 3] = np.log1p(cx.position)
        meta[i, 0] = r.proto == "udp"
        meta[i, 1] = min(len(r.packets), n) / n
        meta[i, 2] = r.final
    out = {"pkt": pkt, "byt": byt, "seg": seg, "ctx": ctx, "meta": meta}
    if spec.use_ports:
        out["port"] = np.array([port_token(r.resp_p) for r in records], np.int64)
    return out
