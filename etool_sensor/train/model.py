"""The student traffic encoder (nanoGPT-style, pre-LN) and its classification heads.

One sequence per flow, built from features.encode() arrays:

    [CLS] [META(+port)] [PKT x N] [DGRAM x U/stride] [CTX x K]

- packet tokens: emb(direction) + emb(size bucket) + emb(gap bucket) + emb(TCP flags) + pos per packet;
  `pkt_stride` consecutive packets are concatenated and merged by a Linear into one token
- datagram tokens: the payload prefix read as 2-byte units, emb(hi byte) + emb(lo byte) + emb(segment)
  + pos, then a strided Conv1d that merges `dgram_stride` units into one token (keeps the sequence short)
- context tokens: the BURST neighbours (features.encode `ctx`), Linear -> d
- meta token: Linear(meta) (+ emb(responder port) when use_ports)

Padding tokens (direction 0, no payload, all-zero neighbour) are masked out of attention with an additive
bias; CLS and META are always present, so no attention row is empty. Attention is written out with plain
matmuls so the graph exports to ONNX (opset 17) and quantises to int8 (static by default) without custom ops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from etool_sensor.context import CONTEXT_SIZES
from etool_sensor.features import FLAG_VOCAB, IAT_BUCKETS, PORT_VOCAB, SIZE_BUCKETS, FeatureSpec

NEG = -1e4  # additive attention bias for padding (finite: safe in fp16/int8 graphs)


MAX_DGRAM_TOKENS = 24


@dataclass
class EncoderConfig:
    d: int = 64
    layers: int = 2
    heads: int = 2
    mlp: int = 2  # MLP hidden = mlp * d
    dropout: float = 0.1
    packets: int = 32
    payload_bytes: int = 64
    payload_packets: int = 3
    context: int = 8
    pkt_stride: int = 2  # consecutive packets merged per packet token
    dgram_stride: int = 8  # 2-byte units merged per datagram token
    use_payload: bool = True
    use_ports: bool = False
    flights: int = 0  # direction-run totals (features.flights), added to the meta token

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **kw) -> "EncoderConfig":
        """The encoder for `spec`. Unless given, dgram_stride grows with the payload window so that the
        datagram stream stays at most MAX_DGRAM_TOKENS tokens (8 at the B=64 window)."""
        if "dgram_stride" not in kw:
            units = (spec.payload_packets * spec.payload_bytes + 1) // 2
            kw["dgram_stride"] = max(8, math.ceil(units / MAX_DGRAM_TOKENS))
        return cls(packets=spec.packets, payload_bytes=spec.payload_bytes, payload_packets=spec.payload_packets,
                   context=spec.context, use_ports=spec.use_ports, flights=spec.flights, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def units(self) -> int:
        """2-byte units in the datagram stream (payload_packets * payload_bytes bytes, rounded up)."""
        return (self.payload_packets * self.payload_bytes + 1) // 2

    @property
    def dgram_tokens(self) -> int:
        return math.ceil(self.units / self.dgram_stride) if self.use_payload and self.units else 0

    @property
    def pkt_tokens(self) -> int:
        return math.ceil(self.packets / self.pkt_stride)

    @property
    def tokens(self) -> int:
        return 2 + self.pkt_tokens + self.dgram_tokens + self.context


SHAPE_KEYS = ("d", "layers", "heads", "mlp", "dropout", "pkt_stride", "dgram_stride")


def parse_shape(text: str) -> dict:
    """A student shape from the command line ('{"layers": 1, "pkt_stride": 4}'); ValueError says why not."""
    import json

    try:
        shape = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(shape, dict) or set(shape) - set(SHAPE_KEYS):
        raise ValueError(f"must be an object with keys from {list(SHAPE_KEYS)}")
    for k, v in shape.items():
        if k == "dropout":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"dropout must be a number in [0, 1), got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
    return shape


class SelfAttention(nn.Module):
    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        assert c.d % c.heads == 0
        self.h, self.hd = c.heads, c.d // c.heads
        self.qkv = nn.Linear(c.d, 3 * c.d)
        self.proj = nn.Linear(c.d, c.d)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, self.h, self.hd).transpose(1, 2)
        v = v.view(b, t, self.h, self.hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd)) + bias  # bias [B,1,1,T]
        # Clamp before the softmax: exp() of very negative inputs (the padding bias) takes a slow path in
        # onnxruntime's vectorised kernel (~8x slower). exp(-20) ~ 2e-9 is still "no attention" to padding.
        att = torch.clamp(att - att.amax(dim=-1, keepdim=True), min=-20.0)
        att = self.drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d)
        self.attn = SelfAttention(c)
        self.ln2 = nn.LayerNorm(c.d)
        self.mlp = nn.Sequential(nn.Linear(c.d, c.mlp * c.d), nn.GELU(), nn.Linear(c.mlp * c.d, c.d),
                                 nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class TrafficEncoder(nn.Module):
    """Flow arrays -> (pooled embedding [B, d], token states [B, T, d], valid mask [B, T])."""

    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.c = c
        d = c.d
        # packet stream
        self.p_dir = nn.Embedding(3, d)
        self.p_size = nn.Embedding(SIZE_BUCKETS, d)
        self.p_gap = nn.Embedding(IAT_BUCKETS, d)
        self.p_flags = nn.Embedding(FLAG_VOCAB, d)
        self.p_pos = nn.Parameter(torch.zeros(1, c.packets, d))
        self.p_mask = nn.Parameter(torch.zeros(d))  # replaces a masked packet's content (SSL)
        self.p_merge = nn.Linear(c.pkt_stride * d, d) if c.pkt_stride > 1 else None
        # datagram stream (2-byte units)
        if c.dgram_tokens:
            self.u_hi = nn.Embedding(257, d)
            self.u_lo = nn.Embedding(257, d)
            self.u_seg = nn.Embedding(1 + 2 * c.payload_packets, d)
            self.u_pos = nn.Parameter(torch.zeros(1, c.units, d))
            self.u_mask = nn.Parameter(torch.zeros(d))
            self.u_conv = nn.Conv1d(d, d, kernel_size=c.dgram_stride, stride=c.dgram_stride)
        # context, meta, ports, CLS
        self.c_in = nn.Linear(3 + CONTEXT_SIZES, d)
        self.m_in = nn.Linear(4, d)
        self.port = nn.Embedding(PORT_VOCAB, d) if c.use_ports else None
        self.flt = nn.Sequential(nn.Linear(2 * c.flights, d), nn.GELU(), nn.Linear(d, d)) if c.flights else None
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.tok_type = nn.Parameter(torch.zeros(5, d))  # cls, meta, pkt, dgram, ctx
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(self._init)
        for p in (self.p_pos, self.cls, self.tok_type):
            nn.init.normal_(p, std=0.02)
        if c.dgram_tokens:
            nn.init.normal_(self.u_pos, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, pkt: torch.Tensor, byt: torch.Tensor, seg: torch.Tensor, ctx: torch.Tensor,
                meta: torch.Tensor, *extra: torch.Tensor, port: torch.Tensor | None = None,
                flt: torch.Tensor | None = None,
                pkt_masked: torch.Tensor | None = None, unit_masked: torch.Tensor | None = None):
        """extra: the optional inputs in input_names() order (port, flt), or by keyword.
        pkt_masked [B,N] / unit_masked [B,U] (bool, SSL only): positions whose content is hidden."""
        c = self.c
        opt = dict(zip(input_names(c)[5:], extra))
        port = opt.get("port", port)
        flt = opt.get("flt", flt)
        b = pkt.shape[0]
        # packets
        pv = pkt[:, :, 0] > 0
        pe = self.p_dir(pkt[:, :, 0]) + self.p_size(pkt[:, :, 1]) + self.p_gap(pkt[:, :, 2]) + self.p_flags(pkt[:, :, 3])
        if pkt_masked is not None:
            pe = torch.where(pkt_masked.unsqueeze(-1), self.p_mask.expand_as(pe), pe)
        pe = pe + self.p_pos
        if self.p_merge is not None:
            s, nt = c.pkt_stride, c.pkt_tokens
            pad = nt * s - c.packets
            if pad:
                pe = F.pad(pe, (0, 0, 0, pad))
                pv = F.pad(pv, (0, pad))
            pe = self.p_merge(pe.reshape(b, nt, s * c.d))
            pv = pv.view(b, nt, s).any(-1)
        pe = pe + self.tok_type[2]
        toks, valid = [pe], [pv]
        # datagram units
        if c.dgram_tokens:
            nb = byt.shape[1]
            if nb % 2:
                byt = F.pad(byt, (0, 1))
                seg = F.pad(seg, (0, 1))
            hi, lo = byt[:, 0::2], byt[:, 1::2]
            ue = self.u_hi(hi) + self.u_lo(lo) + self.u_seg(seg[:, 0::2])
            if unit_masked is not None:
                ue = torch.where(unit_masked.unsqueeze(-1), self.u_mask.expand_as(ue), ue)
            ue = ue + self.u_pos
            uv = (hi > 0).float()
            pad = c.dgram_tokens * c.dgram_stride - c.units
            if pad:
                ue = F.pad(ue, (0, 0, 0, pad))
                uv = F.pad(uv, (0, pad))
            ue = ue * uv.unsqueeze(-1)  # padding units contribute nothing to the merged token
            de = self.u_conv(ue.transpose(1, 2)).transpose(1, 2) + self.tok_type[3]
            dv = uv.view(b, c.dgram_tokens, c.dgram_stride).amax(-1) > 0
            toks.append(de)
            valid.append(dv)
        # context neighbours
        ce = self.c_in(ctx) + self.tok_type[4]
        toks.append(ce)
        valid.append(ctx.abs().sum(-1) > 0)
        # meta (+ port), CLS
        me = self.m_in(meta)
        if self.port is not None and port is not None:
            me = me + self.port(port)
        if self.flt is not None and flt is not None:
            me = me + self.flt(flt)
        me = (me + self.tok_type[1]).unsqueeze(1)
        ones = torch.ones(b, 1, dtype=torch.bool, device=pkt.device)
        x = torch.cat([self.cls.expand(b, -1, -1) + self.tok_type[0], me] + toks, dim=1)
        mask = torch.cat([ones, ones] + valid, dim=1)
        bias = (~mask).float().mul(NEG).view(b, 1, 1, -1)
        x = self.drop(x)
        for blk in self.blocks:
            x = blk(x, bias)
        x = self.ln_f(x)
        m = mask.unsqueeze(-1).float()
        pooled = 0.5 * (x[:, 0] + (x * m).sum(1) / m.sum(1))
        return pooled, x, mask

    # token layout, for SSL heads that read states back
    def slices(self) -> dict[str, slice]:
        c = self.c
        p0 = 2
        d0 = p0 + c.pkt_tokens
        c0 = d0 + c.dgram_tokens
        return {"cls": slice(0, 1), "meta": slice(1, 2), "pkt": slice(p0, d0), "dgram": slice(d0, c0),
                "ctx": slice(c0, c0 + c.context)}


class StudentClassifier(nn.Module):
    """Encoder + service (nDPI category) and app heads."""

    def __init__(self, c: EncoderConfig, n_service: int, n_app: int) -> None:
        super().__init__()
        self.encoder = TrafficEncoder(c)
        self.service = nn.Linear(c.d, n_service)
        self.app = nn.Linear(c.d, n_app)

    def forward(self, pkt, byt, seg, ctx, meta, *extra, port=None, flt=None):
        z, _, _ = self.encoder(pkt, byt, seg, ctx, meta, *extra, port=port, flt=flt)
        return self.service(z), self.app(z)


class StudentEnsemble(nn.Module):
    """Students of one shape trained with different seeds; answers the mean of their log-softmaxes (a
    normalised geometric mean of their probabilities). One student's verdicts on new captures move with its
    seeds; the mean of a few moves less. Same inputs and outputs as one StudentClassifier, so the export and
    the runtime see one graph."""

    def __init__(self, members: list[StudentClassifier]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def encoder(self) -> TrafficEncoder:  # the shape every member shares (input_names, export)
        return self.members[0].encoder

    def forward(self, pkt, byt, seg, ctx, meta, *extra, port=None, flt=None):
        outs = [m(pkt, byt, seg, ctx, meta, *extra, port=port, flt=flt) for m in self.members]
        s = torch.stack([torch.log_softmax(o[0], -1) for o in outs]).mean(0)
        a = torch.stack([torch.log_softmax(o[1], -1) for o in outs]).mean(0)
        return s, a


def input_names(c: EncoderConfig) -> list[str]:
    names = ["pkt", "byt", "seg", "ctx", "meta"]
    return names + (["port"] if c.use_ports else []) + (["flt"] if c.flights else [])


def flops_per_flow(c: EncoderConfig, n_service: int = 25, n_app: int = 200) -> dict[str, int]:
    """Multiply-accumulates per flow of the dense parts (embedding lookups and adds excluded).

    FLOPs = 2 * MACs. Counted with the full (padded) sequence, which is what the ONNX graph computes.
    """
    d, t = c.d, c.tokens
    macs = c.packets * d * d if c.pkt_stride > 1 else 0  # packet merge
    if c.dgram_tokens:
        macs += c.dgram_tokens * c.dgram_stride * d * d  # strided conv
    macs += c.context * (3 + CONTEXT_SIZES) * d + 4 * d  # ctx, meta linears
    per_layer = t * (3 * d * d + d * d + 2 * c.mlp * d * d) + 2 * t * t * d  # qkv, proj, mlp, QK^T and AV
    macs += c.layers * per_layer
    macs += d * (n_service + n_app)
    return {"tokens": t, "macs": macs, "flops": 2 * macs}
