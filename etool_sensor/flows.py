"""Flow record, contract v1: the one definition of what the Zeek script sends and the pcap reader yields.

Both paths build the same record so the model sees identical inputs online and offline. This module
holds data and validation only; it never does I/O. See docs/flow-record.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .tls import hello_end

SCHEMA_VERSION = 1

#: Defaults of the collection parameters (N, B, M in docs/flow-record.md).
DEFAULT_PACKETS = 32
DEFAULT_PAYLOAD_BYTES = 64
DEFAULT_PAYLOAD_PACKETS = 3
DEFAULT_HELLO_BYTES = 1024  # H: a whole TLS hello up to this; 0 = hello chunks are cut at B like any other

#: TCP header flag bits as they appear in the header (FIN=0x01 ... CWR=0x80).
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_PAIRS = [a + b for a in _B62 for b in _B62]


class FlowError(ValueError):
    """A flow record that violates contract v1."""


@dataclass(frozen=True, slots=True)
class FlowParams:
    """How much of each connection is collected (N packets, B bytes from each of M payload packets; a chunk
    that starts a TLS ClientHello or ServerHello keeps that whole message, up to H bytes: chunk_length)."""

    packets: int = DEFAULT_PACKETS
    payload_bytes: int = DEFAULT_PAYLOAD_BYTES
    payload_packets: int = DEFAULT_PAYLOAD_PACKETS
    hello_bytes: int = DEFAULT_HELLO_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.packets <= 1024:
            raise FlowError(f"packets must be in 1..1024, got {self.packets}")
        if not 0 <= self.payload_bytes <= 65535:
            raise FlowError(f"payload_bytes must be in 0..65535, got {self.payload_bytes}")
        if not 0 <= self.payload_packets <= 64:
            raise FlowError(f"payload_packets must be in 0..64, got {self.payload_packets}")
        if not 0 <= self.hello_bytes <= 65535:
            raise FlowError(f"hello_bytes must be in 0..65535, got {self.hello_bytes}")


def chunk_length(data: bytes | memoryview, payload_bytes: int, hello_bytes: int) -> int:
    """How many of a payload packet's first bytes (`data`: all that was captured) a chunk keeps: B, or for a
    chunk that starts a TLS hello, the whole hello up to H bytes when H > B. The Zeek script, the pcap
    reader (Python and C) and FlowRecord.within all cut by this rule."""
    n = len(data)
    if hello_bytes > payload_bytes:
        end = hello_end(data)
        if end:
            return min(n, max(payload_bytes, min(end, hello_bytes)))
    return min(n, payload_bytes)


@dataclass(slots=True)
class Packet:
    """One of the first N packets of a connection, as seen by Zeek."""

    dt: float  # seconds since the connection's first packet
    is_orig: bool  # sent by the originator
    ip_len: int  # IP total length (IPv6: payload length + 40)
    payload_len: int  # transport payload bytes
    tcp_flags: int = 0  # TCP header flag bits; 0 for UDP


@dataclass(slots=True)
class Chunk:
    """The first B payload bytes of one payload-carrying packet."""

    is_orig: bool
    data: bytes


@dataclass(slots=True)
class FlowRecord:
    """Contract v1: what the model may know about one connection."""

    uid: str
    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str  # "tcp" or "udp"
    packets: list[Packet] = field(default_factory=list)
    payload: list[Chunk] = field(default_factory=list)
    final: bool = False  # emitted at connection end with fewer than N packets

    def validate(self, params: FlowParams | None = None) -> "FlowRecord":
        """Raise FlowError when the record breaks contract v1; return self so calls chain."""
        p = params or FlowParams()
        if self.proto not in ("tcp", "udp"):
            raise FlowError(f"{self.uid}: proto must be tcp or udp, got {self.proto!r}")
        if not self.uid:
            raise FlowError("uid is empty")
        for name in ("orig_p", "resp_p"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= 65535:
                raise FlowError(f"{self.uid}: {name} must be a port number, got {v!r}")
        if not self.packets:
            raise FlowError(f"{self.uid}: a flow record needs at least one packet")
        if len(self.packets) > p.packets:
            raise FlowError(f"{self.uid}: {len(self.packets)} packets, more than N={p.packets}")
        if len(self.payload) > p.payload_packets:
            raise FlowError(f"{self.uid}: {len(self.payload)} payload chunks, more than M={p.payload_packets}")
        for i, pk in enumerate(self.packets):
            # Captures can step back in time (merged or reordered files); Zeek passes that on, so a
            # negative gap is legal. Non-finite or absurd offsets are not.
            if not -86400.0 <= pk.dt <= 86400.0 * 365:
                raise FlowError(f"{self.uid}: packet {i} dt {pk.dt} is not a plausible offset")
            if pk.ip_len < 0 or pk.payload_len < 0 or pk.payload_len > 65535 or pk.ip_len > 65535 + 40:
                raise FlowError(f"{self.uid}: packet {i} has impossible lengths")
            if not 0 <= pk.tcp_flags <= 0xFF:
                raise FlowError(f"{self.uid}: packet {i} tcp_flags out of range")
        for c in self.payload:
            if len(c.data) > p.payload_bytes and len(c.data) > chunk_length(c.data, p.payload_bytes, p.hello_bytes):
                raise FlowError(f"{self.uid}: payload chunk longer than B={p.payload_bytes}"
                                + (f" (a TLS hello: H={p.hello_bytes})" if p.hello_bytes > p.payload_bytes else ""))
        return self

    def within(self, params: FlowParams) -> "FlowRecord":
        """This record as a collection of `params` would have recorded it: the first N packets, the chunks of
        the payload packets among them (at most M), each cut to B bytes; `final` only if the connection
        ended before the N-th packet (at the N-th, the smaller collection would have sent it, not final).
        Returns self when the record already fits.

        The daemon cuts to the model's window when Zeek collects more than the model reads
        (ETooL::packets_per_flow redef'd up), and classify when flow.* is set above it: the model and the
        BURST context then read what a matching collection records. (Such flows still complete later, so
        possibly in another order, which can change their neighbours.)"""
        n, m, b, h = params.packets, params.payload_packets, params.payload_bytes, params.hello_bytes
        pk, ch = self.packets, self.payload
        if (len(pk) < n or len(pk) == n and not self.final) and len(ch) <= m:
            for c in ch:  # (a loop: the daemon calls this for every flow)
                if len(c.data) > b and len(c.data) > chunk_length(c.data, b, h):
                    break
            else:
                return self
        kept = pk[:n]
        m = min(m, sum(1 for p in kept if p.payload_len > 0))
        chunks = [c if len(c.data) <= b else Chunk(c.is_orig, c.data[:chunk_length(c.data, b, h)]) for c in ch[:m]]
        return FlowRecord(self.uid, self.ts, self.orig_h, self.orig_p, self.resp_h, self.resp_p, self.proto,
                          kept, chunks, self.final and len(pk) < n)

    # JSON form (docs/flow-record.md): bytes as hex so it survives any JSON encoder.
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "uid": self.uid,
            "ts": self.ts,
            "orig_h": self.orig_h,
            "orig_p": self.orig_p,
            "resp_h": self.resp_h,
            "resp_p": self.resp_p,
            "proto": self.proto,
            "packets": [[p.dt, p.is_orig, p.ip_len, p.payload_len, p.tcp_flags] for p in self.packets],
            "payload": [[c.is_orig, c.data.hex()] for c in self.payload],
            "final": self.final,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FlowRecord":
        """Inverse of to_dict; raises FlowError on any malformed field."""
        try:
            if d.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
                raise FlowError(f"unsupported flow schema {d.get('schema')!r}, this build reads {SCHEMA_VERSION}")
            return cls(
                uid=str(d["uid"]),
                ts=float(d["ts"]),
                orig_h=str(d["orig_h"]),
                orig_p=int(d["orig_p"]),
                resp_h=str(d["resp_h"]),
                resp_p=int(d["resp_p"]),
                proto=str(d["proto"]),
                packets=[Packet(float(a), bool(b), int(c), int(e), int(f)) for a, b, c, e, f in d["packets"]],
                payload=[Chunk(bool(a), bytes.fromhex(h)) for a, h in d["payload"]],
                final=bool(d.get("final", False)),
            )
        except FlowError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise FlowError(f"malformed flow record: {e!r}") from None

    @property
    def key(self) -> tuple[str, int, str, int, str]:
        return (self.orig_h, self.orig_p, self.resp_h, self.resp_p, self.proto)


class FlowCollector:
    """Accumulates one connection's packets into a FlowRecord, exactly as the Zeek script does.

    The pcap reader feeds every packet of a connection here; it stops recording after N packets,
    which is when the record is complete and can be emitted.
    """

    __slots__ = ("params", "ts0", "packets", "payload")

    def __init__(self, ts0: float, params: FlowParams) -> None:
        self.params = params
        self.ts0 = ts0
        self.packets: list[Packet] = []
        self.payload: list[Chunk] = []

    @property
    def full(self) -> bool:
        return len(self.packets) >= self.params.packets

    def add(self, ts: float, is_orig: bool, ip_len: int, payload: bytes | memoryview, payload_len: int,
            tcp_flags: int = 0) -> bool:
        """Record one packet; return True when the record has just become complete (N packets)."""
        if len(self.packets) >= self.params.packets:
            return False
        self.packets.append(Packet(max(0.0, ts - self.ts0), is_orig, ip_len, payload_len, tcp_flags))
        if payload_len > 0 and len(self.payload) < self.params.payload_packets:
            p = self.params
            self.payload.append(Chunk(is_orig, bytes(payload[: chunk_length(payload, p.payload_bytes, p.hello_bytes)])))
        return len(self.packets) >= self.params.packets

    def record(self, uid: str, orig_h: str, orig_p: int, resp_h: str, resp_p: int, proto: str,
               final: bool) -> FlowRecord:
        return FlowRecord(uid, self.ts0, orig_h, orig_p, resp_h, resp_p, proto, self.packets, self.payload, final)


def make_uid(*parts: object) -> str:
    """A Zeek-format uid ("C" + base62 of 96 bits), deterministic in its inputs.

    Offline, the inputs are the capture's identity and the connection's ordinal, so re-running
    classify on the same file gives the same uids and etool.log keeps joining conn.log.
    """
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).digest()
    n = int.from_bytes(h, "big")
    out = []
    while n:  # two base-62 digits per step
        n, r = divmod(n, 3844)
        out.append(_B62_PAIRS[r])
    return "C" + "".join(reversed(out)).lstrip("0").rjust(17, "0")


def uid_maker(base: object) -> "Callable[[int], str]":
    """``lambda n: make_uid(base, n)``, with the constant prefix hashed once (the reader's per-connection cost)."""
    h0 = hashlib.blake2b((str(base) + "\x1f").encode(), digest_size=12)
    pairs = _B62_PAIRS
    from .compiled import compiled

    uid_text = compiled("uid_text")  # the base-62 text in C (same text, tests/test_flows.py)
    if uid_text is not None:
        def fast(n: int) -> str:
            h = h0.copy()
            h.update(str(n).encode())
            return uid_text(h.digest())

        return fast

    def uid(n: int) -> str:
        h = h0.copy()
        h.update(str(n).encode())
        v = int.from_bytes(h.digest(), "big")
        out = []
        while v:
            v, r = divmod(v, 3844)
            out.append(pairs[r])
        return "C" + "".join(reversed(out)).lstrip("0").rjust(17, "0")

    return uid


@dataclass(slots=True)
class Verdict:
    """The answer for one flow; the fields of ETooL::Verdict plus the offline status."""

    uid: str
    service: str
    app: str
    confidence: float
    unknown: bool
    alternatives: list[str]
    model: str
    status: str = "ok"  # ok | too_few_packets | error | timeout
    # whether the flow's fingerprint is in the package's service fingerprint table (drift monitoring); None
    # when the package has no table or the flow got no inference. Not on the wire.
    table_hit: bool | None = field(default=None, compare=False)

    def alert(self, labels: "frozenset[str] | set[str]") -> str | None:
        """The label of `classify.alert_labels` this verdict raises, if any (service first, then app).

        Unknown verdicts never alert: a guess below the threshold must not page anyone. Zeek applies its
        own per-label thresholds on top before raising ETooL::Alert.
        """
        if self.status != "ok" or self.unknown or not labels:
            return None
        if self.service in labels:
            return self.service
        return self.app if self.app in labels else None
