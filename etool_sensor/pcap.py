"""Streaming pcap/pcapng reader: packets -> Zeek-like connections -> FlowRecords (contract v1).

The reader follows Zeek's connection semantics (who is the originator, when a connection ends, what
conn.log counts) closely enough that the uids it hands out line up 1:1 with the connections Zeek
would log for the same trace; see docs/flow-record.md and tests/test_pcap_parity.py.

Design: files are read in large blocks; records are decoded with precompiled ``struct.Struct``
objects straight out of the block (no per-packet copies except the few header fields that form the
connection key, and payload bytes only while the FlowCollector still wants them). Connection state
is expired with Zeek's timers (evaluated lazily per connection plus a periodic sweep), so memory is
bounded by the number of live connections, not by the file size.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import os
import struct
import zlib
from zlib import crc32
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .flows import ACK, FIN, RST, SYN, Chunk, FlowCollector, FlowParams, FlowRecord, Packet, make_uid, uid_maker

try:  # the compiled packet path (setup.py builds it when a C compiler is there); see _read_one_fast
    from . import _fastpath
except ImportError:  # pragma: no cover - depends on the build
    _fastpath = None
_FASTPATH_ABI = 7  # the engine interface this module speaks (_fastpath.ABI)
if _fastpath is not None and getattr(_fastpath, "ABI", None) != _FASTPATH_ABI:  # pragma: no cover - stale build
    _fastpath = None

__all__ = ["PcapError", "ConnSummary", "ReadStats", "read_flows", "read_shard", "LIKELY_SERVER_PORTS",
           "ZeekTimeouts"]


class PcapError(Exception):
    """The input cannot be read as a capture (missing file, not a capture). One-line message."""


@dataclass(slots=True)
class ConnSummary:
    """What Zeek's conn.log would say about a connection (as close as this reader gets)."""

    uid: str
    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    duration: float
    orig_bytes: int
    resp_bytes: int
    conn_state: str
    history: str
    orig_pkts: int
    orig_ip_bytes: int
    resp_pkts: int
    resp_ip_bytes: int


@dataclass(slots=True)
class ReadStats:
    """Counters over one read_flows call (all files)."""

    files: int = 0
    packets: int = 0  # capture records read
    bytes: int = 0  # captured bytes of those records
    flows: int = 0  # connections (uids) created
    truncated: bool = False  # any file ended inside a record / corrupt tail
    skipped_linktypes: dict[int, int] = field(default_factory=dict)  # link type -> packets skipped
    non_ip: int = 0  # link layer fine but no IPv4/IPv6 inside (ARP, LLDP, ...)
    non_tcp_udp: int = 0  # IP but neither TCP nor UDP (ICMP, ESP, SCTP, ...)
    malformed: int = 0  # headers that do not parse (too short, bad lengths)
    fragments: int = 0  # IP fragments seen (reassembled when complete)
    bad_checksums: int = 0  # IP/TCP/UDP checksum failures (dropped, as Zeek does)
    truncated_files: list[str] = field(default_factory=list)

    def skip_linktype(self, linktype: int) -> None:
        self.skipped_linktypes[linktype] = self.skipped_linktypes.get(linktype, 0) + 1

    def mark_truncated(self, path: object) -> None:
        """A file ended inside a record or had a corrupt record header: reading it stopped there."""
        self.truncated = True
        self.truncated_files.append(str(path))

    def add_counts(self, other: "ReadStats") -> None:
        """Add other's per-packet counters (not files/packets/bytes/truncation: see read_shard)."""
        self.flows += other.flows
        self.non_ip += other.non_ip
        self.non_tcp_udp += other.non_tcp_udp
        self.malformed += other.malformed
        self.fragments += other.fragments
        self.bad_checksums += other.bad_checksums
        for lt, n in other.skipped_linktypes.items():
            self.skipped_linktypes[lt] = self.skipped_linktypes.get(lt, 0) + n


#: Zeek's default well-known ports (``likely_server_ports`` as filled by the base scripts).
#: Used like Zeek to pick the responder when a connection does not start with a SYN (TCP) and for
#: every UDP connection.
_LSP_TCP = {
    21, 22, 23, 25, 53, 79, 80, 81, 88, 102, 110, 111, 135, 139, 143, 389, 443, 445, 502, 563, 585, 587, 614,
    631, 636, 750, 989, 990, 992, 993, 995, 1080, 1434, 1883, 2811, 3128, 3268, 3306, 3389, 5222, 5223, 5269,
    5432, 6379, 6666, 6667, 6668, 6669, 8000, 8080, 8888, 20000,
}
_LSP_UDP = {
    53, 67, 69, 88, 123, 137, 161, 162, 389, 443, 500, 514, 750, 1812, 2123, 2152, 3389, 3544, 4500,
    4789, 5060, 5072, 5353, 5355, 6081, 20000,
}
LIKELY_SERVER_PORTS = {"tcp": frozenset(_LSP_TCP), "udp": frozenset(_LSP_UDP)}


@dataclass(frozen=True, slots=True)
class ZeekTimeouts:
    """Zeek's defaults (base/init-bare.zeek), seconds."""

    tcp_inactivity: float = 300.0
    udp_inactivity: float = 60.0
    tcp_attempt_delay: float = 5.0
    tcp_close_delay: float = 5.0
    tcp_SYN_timeout: float = 5.0
    tcp_session_timer: float = 6.0
    tcp_connection_linger: float = 5.0


_TO = ZeekTimeouts()

# ---------------------------------------------------------------------------------------------
# capture formats

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP = b"\x1f\x8b"
_BLOCK = 1 << 20
_MAX_RECORD = 1 << 24  # 16 MiB: larger record lengths are corrupt
_MAX_FRAG_BUFFERS = 4096

# link types
LT_NULL, LT_EN10MB, LT_PPP, LT_RAW1, LT_RAW2, LT_PPP_SERIAL, LT_RAW, LT_LOOP = 0, 1, 9, 12, 14, 50, 101, 108
LT_IEEE802_11, LT_SLL, LT_RADIOTAP, LT_IPV4, LT_IPV6, LT_SLL2 = 105, 113, 127, 228, 229, 276
SUPPORTED_LINKTYPES = frozenset(
    {LT_NULL, LT_EN10MB, LT_PPP, LT_RAW1, LT_RAW2, LT_PPP_SERIAL, LT_RAW, LT_LOOP, LT_IEEE802_11, LT_SLL,
     LT_RADIOTAP, LT_IPV4, LT_IPV6, LT_SLL2}
)

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u16le = struct.Struct("<H").unpack_from
_u32le = struct.Struct("<I").unpack_from
_ip4hdr = struct.Struct(">BBHHHBBH4s4s").unpack_from  # vhl tos len id frag ttl proto csum src dst
_ports = struct.Struct(">HH").unpack_from
_tcp_seq = struct.Struct(">HHIIBB").unpack_from  # sport dport seq ack off flags


class _Source:
    """A file (optionally gzip-compressed) read in large blocks; counts raw bytes for progress."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.raw = open(path, "rb")
        except FileNotFoundError:
            raise PcapError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise PcapError(f"{path}: is a directory, not a capture file") from None
        except OSError as e:
            raise PcapError(f"{path}: cannot open: {e.strerror or e}") from None
        head = self.raw.read(2)
        self.raw.seek(0)
        self.gz = head == _GZIP
        self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gz else self.raw
        self.size = os.fstat(self.raw.fileno()).st_size
        self.reported = 0
        self.error = False  # decompression error: treated as truncation

    def read(self, n: int) -> bytes:
        try:
            return self.stream.read(n)
        except (EOFError, OSError, zlib.error):
            self.error = True
            return b""

    def consumed(self) -> int:
        """Raw bytes consumed since the last call (for the progress callback)."""
        try:
            pos = self.raw.tell()
        except (OSError, ValueError):
            return 0
        d = pos - self.reported
        self.reported = pos
        return d

    def close(self) -> None:
        try:
            if self.gz:
                self.stream.close()
        finally:
            self.raw.close()


def _file_identity(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(65536)
        size = os.fstat(f.fileno()).st_size
    return hashlib.blake2b(head + str(size).encode(), digest_size=12).hexdigest()


# ---------------------------------------------------------------------------------------------
# TCP endpoint states (analyzer::tcp::TCP_Endpoint)
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_STATE_CLOSE_FLAGS = SYN | FIN | RST


class _Conn:
    __slots__ = (
        "uid", "proto", "ts0", "last", "pkt_t", "okey", "oh", "op", "rh", "rp", "o_pkts", "o_ipb", "r_pkts",
        "r_ipb", "o_pl", "r_pl", "hist", "hist_o", "hist_r", "coll", "emitted", "o_state", "r_state", "o_prev",
        "r_prev", "o_start", "r_start", "o_last", "r_last", "o_ack", "r_ack", "o_fin", "r_fin", "o_closed",
        "r_closed", "o_seen", "r_seen", "active", "attempt_at", "expire_at", "delete_at", "timeout", "keys",
    )


def _ip_str(b: bytes) -> str:
    if len(b) == 4:
        return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"
    return ipaddress.IPv6Address(b).compressed


def _seq_delta(a: int, b: int) -> int:
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


class _Tracker:
    """Connection table with Zeek's TCP/UDP session semantics."""

    def __init__(self, params: FlowParams, stats: ReadStats, on_conn, uid_base: str, checksums: bool,
                 lsp=None, shard: tuple[int, int] | None = None, shard_stats: ReadStats | None = None):
        lsp = LIKELY_SERVER_PORTS if lsp is None else lsp
        self.lsp_tcp = frozenset(lsp.get("tcp", ()))
        self.lsp_udp = frozenset(lsp.get("udp", ()))
        self.params = params
        self.stats = stats
        self.on_conn = on_conn
        self.uid_base = uid_base
        self.ordinal = 0
        self.conns: dict[bytes, _Conn] = {}
        self.out: list[FlowRecord] = []
        self.checksums = checksums
        self.frags: dict[tuple, list] = {}
        self.next_sweep = None
        self.now = 0.0
        # Sharded reading (read_shard): (n, i) = keep only the connections whose shard key hashes to i mod n.
        # Counters up to the shard decision go to `stats` (identical in every shard), counters after it to
        # `sstats` (this shard's packets only); unsharded, both are the same object. A connection's uid is
        # then the global index of the packet that created it (`gi`); the caller turns it into Zeek's uid.
        self.shard = shard
        self.sstats = stats if shard_stats is None else shard_stats
        self.gi = 0
        self.created: list[int] = []

    # -- connection lifecycle -------------------------------------------------------------
    def _new(self, key: bytes, rkey: bytes, proto: str, ts: float, src: bytes, sp: int, dst: bytes, dp: int,
             flip: bool) -> _Conn:
        c = _Conn()
        self.ordinal += 1
        self.sstats.flows += 1
        if self.shard is None:
            c.uid = make_uid(self.uid_base, self.ordinal)
        else:
            if self.created and self.created[-1] == self.gi:  # pragma: no cover - one connection per packet
                raise RuntimeError("two connections created by one packet")
            c.uid = self.gi
            self.created.append(self.gi)
        c.proto = proto
        c.ts0 = c.last = c.pkt_t = ts
        if flip:
            c.okey = rkey
            c.oh, c.op, c.rh, c.rp = _ip_str(dst), dp, _ip_str(src), sp
        else:
            c.okey = key
            c.oh, c.op, c.rh, c.rp = _ip_str(src), sp, _ip_str(dst), dp
        c.o_pkts = c.o_ipb = c.r_pkts = c.r_ipb = c.o_pl = c.r_pl = 0
        c.hist = []
        c.hist_o = c.hist_r = 0
        c.coll = FlowCollector(ts, self.params)
        c.emitted = False
        c.o_state = c.r_state = c.o_prev = c.r_prev = INACTIVE
        c.o_start = c.r_start = c.o_last = c.r_last = c.o_ack = c.r_ack = 0
        c.o_fin = c.r_fin = 0
        c.o_closed = c.r_closed = False
        c.o_seen = c.r_seen = False
        c.active = True
        c.attempt_at = None
        c.expire_at = ts + _TO.tcp_SYN_timeout if proto == "tcp" else None
        c.delete_at = None
        c.timeout = _TO.tcp_inactivity if proto == "tcp" else _TO.udp_inactivity
        c.keys = (key, rkey)
        self.conns[key] = c
        self.conns[rkey] = c
        return c

    def _finish(self, c: _Conn) -> None:
        conns = self.conns
        for k in c.keys:
            if conns.get(k) is c:
                del conns[k]
        if not c.emitted:
            if c.coll.packets:
                self.out.append(c.coll.record(c.uid, c.oh, c.op, c.rh, c.rp, c.proto, True))
            c.emitted = True
        if self.on_conn is not None:
            self.on_conn(self._summary(c))

    def _summary(self, c: _Conn) -> ConnSummary:
        if c.proto == "tcp":
            ob, rb = self._tcp_size(c, True), self._tcp_size(c, False)
            state = self._conn_state(c)
        else:
            ob, rb = c.o_pl, c.r_pl
            if c.o_pkts and c.r_pkts:
                state = "SF"
            elif c.o_pkts:
                state = "S0"
            elif c.r_pkts:
                state = "SHR"
            else:
                state = "OTH"
        return ConnSummary(c.uid, c.ts0, c.oh, c.op, c.rh, c.rp, c.proto, max(0.0, c.last - c.ts0), ob, rb, state,
                           "".join(c.hist), c.o_pkts, c.o_ipb, c.r_pkts, c.r_ipb)

    @staticmethod
    def _tcp_size(c: _Conn, orig: bool) -> int:
        if orig:
            state, start, last, ack, fin = c.o_state, c.o_start, c.o_last, c.o_ack, c.o_fin
            prev, peer = c.o_prev, c.r_state
        else:
            state, start, last, ack, fin = c.r_state, c.r_start, c.r_last, c.r_ack, c.r_fin
            prev, peer = c.r_prev, c.o_state
        if state == INACTIVE:
            return 0
        if prev == SYN_SENT and state == RESET and peer == INACTIVE:
            return 0
        size = max(_seq_delta(last, start), _seq_delta(ack, start))
        if size > 0:
            size -= 1
        if fin and size > 0:
            size -= 1
        return max(size, 0)

    @staticmethod
    def _conn_state(c: _Conn) -> str:
        # base/protocols/conn/main.zeek conn_state()
        os_, rs = c.o_state, c.r_state
        hist = "".join(c.hist)
        if os_ == INACTIVE:
            if rs == INACTIVE:
                return "OTH"
            return "SHR" if rs in (SYN_SENT, SYN_ACK_SENT) else "OTH" if rs != RESET else "RSTRH"
        if rs == INACTIVE:
            if os_ == SYN_SENT:
                return "S0"
            if os_ == RESET:
                return "RSTOS0" if "S" in hist or "H" in hist else "OTH"
            if os_ == CLOSED:
                return "SH"
            return "OTH"
        if os_ == RESET:
            if rs in (SYN_SENT, SYN_ACK_SENT) and "h" not in hist:
                return "RSTOS0"
            return "RSTO"
        if rs == RESET:
            if os_ == SYN_SENT:
                return "REJ"
            return "RSTR"
        if os_ == CLOSED and rs == CLOSED:
            return "SF"
        if os_ == CLOSED:
            return "S2"
        if rs == CLOSED:
            return "S3"
        if os_ == SYN_SENT and rs == SYN_ACK_SENT or rs == ESTABLISHED and os_ == ESTABLISHED:
            return "S1"
        return "OTH"

    def _due(self, c: _Conn, t: float) -> bool:
        """Whether one of Zeek's timers would have removed c by network time t (state frozen since c.pkt_t)."""
        if c.delete_at is not None and c.delete_at <= t:
            return True
        if c.last + c.timeout <= t:
            return True
        if c.proto != "tcp":
            return False
        if c.attempt_at is not None and c.attempt_at <= t:
            c.attempt_at = None
            if c.active and c.o_state in (SYN_SENT, SYN_ACK_SENT) and c.r_state == INACTIVE:
                return True
        f = c.expire_at
        if f is not None and f <= t and c.active:
            # ExpireTimer fires at f, f+6, ...; it removes at the first firing after last+linger when the
            # (frozen) endpoint states say the connection is over.
            over = False
            if c.o_closed or c.r_closed:
                if (c.o_closed and c.r_closed) or c.o_state == RESET or c.r_state == RESET \
                        or c.o_state == INACTIVE or c.r_state == INACTIVE:
                    over = True
            if c.o_state == INACTIVE and c.r_state == INACTIVE:
                over = True
            per = _TO.tcp_session_timer
            if over:
                lim = c.last + _TO.tcp_connection_linger
                if f <= lim:
                    f += per * (int((lim - f) / per) + 1)
                    while f <= lim:
                        f += per
                if f <= t:
                    return True
            # advance to the first firing after t
            if f <= t:
                f += per * (int((t - f) / per) + 1)
            c.expire_at = f
        return False

    def sweep(self, t: float) -> None:
        seen = set()
        for c in list(self.conns.values()):
            if id(c) in seen:
                continue
            seen.add(id(c))
            if self._due(c, t):
                self._finish(c)

    def flush(self) -> None:
        seen = set()
        for c in list(self.conns.values()):
            if id(c) not in seen:
                seen.add(id(c))
                self._finish(c)
        self.frags.clear()

    # -- packets ----------------------------------------------------------------------------
    def ip4(self, ts: float, buf, o: int, end: int, wirelen_rem: int, reassembled: bool = False,
            owned: bool = False) -> None:
        """IPv4 packet at buf[o:end]; wirelen_rem = bytes of the packet on the wire from o.

        owned: sharded reading has already decided that this packet belongs to this shard."""
        st = self.stats
        if end - o < 20:
            st.malformed += 1
            return
        vhl, _tos, tot, ident, frag, _ttl, proto, _cs, src, dst = _ip4hdr(buf, o)
        ihl = (vhl & 15) << 2
        if vhl >> 4 != 4 or ihl < 20 or tot < ihl or end - o < ihl:
            st.malformed += 1
            return
        ip_end = o + tot
        if ip_end > end:
            cap_end = end  # snaplen cut the packet: no payload checksum
        else:
            cap_end = ip_end
        if frag & 0x3FFF:
            # Fragments are reassembled in every shard; the shard key applies to the reassembled packet.
            if self.checksums and not reassembled and int.from_bytes(buf[o:o + ihl], "big") % 65535 != 0:
                st.bad_checksums += 1
                return
            st.fragments += 1
            self._frag4(ts, buf, o, ihl, tot, cap_end, ident, frag, proto, src, dst)
            return
        t = o + ihl
        if self.shard is not None:
            if not owned and not self._mine(proto, src, dst, buf, t, cap_end):
                return
            st = self.sstats
        if self.checksums and not reassembled and int.from_bytes(buf[o:o + ihl], "big") % 65535 != 0:
            st.bad_checksums += 1
            return
        if proto == 6 or proto == 17:
            self.transport(ts, buf, t, cap_end, ip_end, proto, src, dst, tot, 4)
        else:
            st.non_tcp_udp += 1

    def _frag4(self, ts, buf, o, ihl, tot, cap_end, ident, frag, proto, src, dst) -> None:
        if cap_end < o + tot:
            self.stats.malformed += 1
            return
        key = (src, dst, ident, proto)
        off = (frag & 0x1FFF) << 3
        more = bool(frag & 0x2000)
        ent = self._frag_entry(key, ts)
        if ent is None:
            return
        if off == 0:
            ent[0] = bytes(buf[o:o + ihl])
        self._frag_add(key, ent, off, bytes(buf[o + ihl:o + tot]), more, ts, 4)

    def _frag_entry(self, key, ts):
        ent = self.frags.get(key)
        if ent is None:
            if len(self.frags) >= _MAX_FRAG_BUFFERS:
                self.frags.pop(next(iter(self.frags)))
            ent = self.frags[key] = [None, {}, None, 0]  # header, {off: data}, total, bytes
        return ent

    def _frag_add(self, key, ent, off, data, more, ts, ver) -> None:
        pieces = ent[1]
        if off not in pieces:
            pieces[off] = data
            ent[3] += len(data)
        if ent[3] > 65535 + 65535:
            del self.frags[key]
            self.stats.malformed += 1
            return
        if not more:
            ent[2] = off + len(data)
        if ent[0] is None or ent[2] is None:
            return
        # complete?
        pos = 0
        for po in sorted(pieces):
            if po > pos:
                return
            pos = max(pos, po + len(pieces[po]))
        if pos < ent[2]:
            return
        del self.frags[key]
        payload = bytearray(ent[2])
        for po in sorted(pieces):
            d = pieces[po]
            payload[po:po + len(d)] = d[: max(0, ent[2] - po)]
        hdr = ent[0]
        if ver == 4:
            n = len(hdr) + len(payload)
            if n > 65535:
                self.stats.malformed += 1
                return
            pkt = bytearray(hdr) + payload
            struct.pack_into(">H", pkt, 2, n)
            struct.pack_into(">H", pkt, 6, 0)
            self.ip4(ts, bytes(pkt), 0, n, n, reassembled=True)
        else:
            hdr, nxt = hdr
            pkt = bytes(hdr) + bytes(payload)
            self._ip6_upper(ts, pkt, len(hdr), len(pkt), len(pkt), nxt, pkt[8:24], pkt[24:40],
                            len(pkt) - 40 if len(pkt) >= 40 else 0)

    def ip6(self, ts: float, buf, o: int, end: int, wirelen_rem: int) -> None:
        st = self.stats
        if end - o < 40:
            st.malformed += 1
            return
        if buf[o] >> 4 != 6:
            st.malformed += 1
            return
        plen = _u16(buf, o + 4)[0]
        nxt = buf[o + 6]
        src = bytes(buf[o + 8:o + 24])
        dst = bytes(buf[o + 24:o + 40])
        ip_end = o + 40 + plen
        cap_end = ip_end if ip_end <= end else end
        p = o + 40
        # extension header chain
        for _ in range(16):
            if nxt == 6 or nxt == 17:
                if self.shard is None or self._mine(nxt, src, dst, buf, p, cap_end):
                    self.transport(ts, buf, p, cap_end, ip_end, nxt, src, dst, plen + 40, 6)
                return
            if nxt in (0, 43, 60, 135, 139, 140, 253, 254):
                if p + 2 > cap_end:
                    st.malformed += 1
                    return
                nn = buf[p]
                p += (buf[p + 1] + 1) << 3
                nxt = nn
            elif nxt == 51:  # AH
                if p + 2 > cap_end:
                    st.malformed += 1
                    return
                nn = buf[p]
                p += (buf[p + 1] + 2) << 2
                nxt = nn
            elif nxt == 44:  # fragment
                if p + 8 > cap_end:
                    st.malformed += 1
                    return
                st.fragments += 1
                nn = buf[p]
                fo = _u16(buf, p + 2)[0]
                ident = _u32(buf, p + 4)[0]
                off = fo & 0xFFF8
                more = bool(fo & 1)
                if off == 0 and not more:  # atomic fragment
                    nxt = nn
                    p += 8
                    continue
                if cap_end < ip_end:
                    st.malformed += 1
                    return
                key = (src, dst, ident, 6)
                ent = self._frag_entry(key, ts)
                if off == 0:
                    # unfragmentable part = everything before the fragment header
                    h = bytearray(buf[o:p])
                    ent[0] = (h, nn)
                self._frag_add(key, ent, off, bytes(buf[p + 8:ip_end]), more, ts, 6)
                return
            else:
                if self.shard is None:
                    st.non_tcp_udp += 1  # ESP (50), ICMPv6 (58), no next header (59), ...
                elif self._mine(nxt, src, dst, buf, p, cap_end):
                    self.sstats.non_tcp_udp += 1
                return
            if p > cap_end:
                st.malformed += 1
                return
        st.malformed += 1

    def _ip6_upper(self, ts, pkt, p, cap_end, ip_end, nxt, src, dst, _plen) -> None:
        # after IPv6 reassembly: the reassembled packet's IP length is its full length
        if self.shard is not None and not self._mine(nxt, src, dst, pkt, p, cap_end):
            return
        if nxt == 6 or nxt == 17:
            self.transport(ts, pkt, p, cap_end, ip_end, nxt, src, dst, ip_end, 6)
        else:
            self.sstats.non_tcp_udp += 1

    def _mine(self, proto: int, src: bytes, dst: bytes, buf, t: int, cap_end: int) -> bool:
        """Whether a packet belongs to this shard (sharded reading only); see shard_owner."""
        n, me = self.shard
        if (proto == 6 or proto == 17) and cap_end - t >= 4:
            sp, dp = _ports(buf, t)
            return shard_owner(src, dst, sp, dp, self.lsp_tcp if proto == 6 else self.lsp_udp, n) == me
        return shard_owner(src, dst, -1, -1, (), n) == me

    def transport(self, ts: float, buf, t: int, cap_end: int, ip_end: int, proto: int, src: bytes, dst: bytes,
                  ip_len: int, ver: int) -> None:
        st = self.sstats
        seg_len = ip_end - t  # transport length per the IP header
        if proto == 6:
            if cap_end - t < 20 or seg_len < 20:
                st.malformed += 1
                return
            sp, dp, seq, ack, off, flags = _tcp_seq(buf, t)
            hl = (off >> 4) << 2
            plen = seg_len - hl
        else:
            if cap_end - t < 8 or seg_len < 8:
                st.malformed += 1
                return
            sp, dp = _ports(buf, t)
            ulen = _u16(buf, t + 4)[0]
            if ulen < 8 or ulen > seg_len:
                # Zeek: bad_UDP_len; it still uses the IP length
                if ulen < 8:
                    st.malformed += 1
                    return
            hl = 8
            plen = seg_len - 8
            flags = 0
        key = src + dst + buf[t:t + 4] + (b"t" if proto == 6 else b"u")  # ports as in the header: sport dport
        self.now = ts
        c = self.conns.get(key)
        if c is not None:
            # No timer of c can be due (the common case, checked inline; _due decides otherwise).
            if c.delete_at is None and c.attempt_at is None and c.last + c.timeout > ts \
                    and (c.expire_at is None or c.expire_at > ts):
                due = False
            else:
                due = self._due(c, ts)
            if due or (proto == 6 and flags & SYN and self._is_reuse(c, key, flags, seq)):
                self._finish(c)
                c = None
        if c is None:
            rkey = dst + src + dp.to_bytes(2, "big") + sp.to_bytes(2, "big") + key[-1:]
            if proto == 6:
                lsp_tcp = self.lsp_tcp
                flip = False
                if not (flags & SYN) or flags & ACK:
                    if sp in lsp_tcp:
                        flip = (not (flags & SYN) and sp < dp) if dp in lsp_tcp else True
                c = self._new(key, rkey, "tcp", ts, src, sp, dst, dp, flip)
            else:
                c = self._new(key, rkey, "udp", ts, src, sp, dst, dp, sp in self.lsp_udp and dp not in self.lsp_udp)
        is_orig = key == c.okey
        if proto == 6 and (hl < 20 or hl > seg_len or t + hl > cap_end):
            st.malformed += 1  # bad_TCP_header_len / truncated_header: connection exists, packet not counted
            c.pkt_t = ts
            return
        # checksum (only when the whole segment was captured)
        if self.checksums and cap_end >= ip_end:
            if ver == 4:
                if proto == 17 and _u16(buf, t + 6)[0] == 0:
                    pass
                else:
                    s = int.from_bytes(buf[t:ip_end], "big")
                    if seg_len & 1:
                        s <<= 8
                    s += int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + seg_len
                    if s % 65535:
                        self._bad_checksum(c, is_orig, ts)
                        return
            else:
                s = int.from_bytes(buf[t:ip_end], "big")
                if seg_len & 1:
                    s <<= 8
                s += int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + seg_len
                if s % 65535 or (proto == 17 and _u16(buf, t + 6)[0] == 0):
                    self._bad_checksum(c, is_orig, ts)
                    return
        if proto == 6:
            if flags & _STATE_CLOSE_FLAGS or (c.o_state if is_orig else c.r_state) == INACTIVE:
                self._tcp(c, is_orig, ts, flags, seq, ack, plen)
            else:
                self._tcp_plain(c, is_orig, ts, flags, seq, ack, plen)
        else:
            c.last = ts
            if is_orig:
                if not c.hist_o & 1:
                    c.hist_o |= 1
                    c.hist.append("D")
                c.o_pl += plen
            else:
                if not c.hist_r & 1:
                    c.hist_r |= 1
                    c.hist.append("d")
                c.r_pl += plen
        c.pkt_t = ts
        if is_orig:
            c.o_pkts += 1
            c.o_ipb += ip_len
        else:
            c.r_pkts += 1
            c.r_ipb += ip_len
        if not c.emitted:
            pstart = t + hl
            pe = cap_end if cap_end < ip_end else ip_end
            if c.coll.add(ts, key == c.okey, ip_len, buf[pstart:pe] if plen else b"", plen, flags):
                c.emitted = True
                self.out.append(c.coll.record(c.uid, c.oh, c.op, c.rh, c.rp, c.proto, False))

    def _bad_checksum(self, c: _Conn, is_orig: bool, ts: float) -> None:
        self.sstats.bad_checksums += 1
        bit = 1 << 10
        if is_orig:
            if not c.hist_o & bit:
                c.hist_o |= bit
                c.hist.append("C")
        elif not c.hist_r & bit:
            c.hist_r |= bit
            c.hist.append("c")
        c.pkt_t = ts

    def _is_reuse(self, c: _Conn, key: bytes, flags: int, seq: int) -> bool:
        # TCPSessionAdapter::IsReuse (called for SYN packets only)
        o_state, o_start = c.o_state, c.o_start
        if flags & ACK:
            if c.o_state != INACTIVE:
                return False
            o_state, o_start = c.r_state, c.r_start
        if not (c.o_closed or c.r_closed):
            if seq == o_start:
                return False
            if not flags & ACK and o_state == SYN_ACK_SENT and c.r_state == INACTIVE and seq == c.r_start:
                return False
        return True

    def _flip(self, c: _Conn) -> None:
        c.okey = c.keys[1] if c.okey == c.keys[0] else c.keys[0]
        c.oh, c.op, c.rh, c.rp = c.rh, c.rp, c.oh, c.op
        c.o_pkts, c.r_pkts = c.r_pkts, c.o_pkts
        c.o_ipb, c.r_ipb = c.r_ipb, c.o_ipb
        c.o_pl, c.r_pl = c.r_pl, c.o_pl
        for a, b in (("o_state", "r_state"), ("o_prev", "r_prev"), ("o_start", "r_start"), ("o_last", "r_last"),
                     ("o_ack", "r_ack"), ("o_fin", "r_fin"), ("o_closed", "r_closed"), ("o_seen", "r_seen"),
                     ("hist_o", "hist_r")):
            x, y = getattr(c, a), getattr(c, b)
            setattr(c, a, y)
            setattr(c, b, x)
        c.hist.append("^")
        if not c.emitted:
            for p in c.coll.packets:
                p.is_orig = not p.is_orig
            for ch in c.coll.payload:
                ch.is_orig = not ch.is_orig

    def _hist(self, c: _Conn, is_orig: bool, bit: int, code: str) -> None:
        if is_orig:
            if not c.hist_o & bit:
                c.hist_o |= bit
                c.hist.append(code)
        elif not c.hist_r & bit:
            c.hist_r |= bit
            c.hist.append(code.lower())

    def _tcp(self, c: _Conn, is_orig: bool, ts: float, flags: int, seq: int, ack: int, plen: int) -> None:
        syn, fin, rst = flags & SYN, flags & FIN, flags & RST
        seg = plen + (1 if syn else 0) + (1 if fin else 0) - (plen if rst else 0)
        if is_orig:
            state, prev, peer = c.o_state, c.o_prev, c.r_state
        else:
            state, prev, peer = c.r_state, c.r_prev, c.o_state
        last_seq_new = (seq + seg) & 0xFFFFFFFF
        # init_endpoint
        if state == INACTIVE:
            start = seq if syn else (seq - 1) & 0xFFFFFFFF
            lastv = last_seq_new if syn else seq
            self._set(c, is_orig, start=start, last=lastv, ack=start)
        elif syn and state in (SYN_SENT, SYN_ACK_SENT, ESTABLISHED, PARTIAL):
            if state in (ESTABLISHED, PARTIAL) or seq != (c.o_start if is_orig else c.r_start):
                self._set(c, is_orig, start=seq, last=last_seq_new, ack=seq)
        elif syn and state == RESET and prev == INACTIVE:
            self._set(c, is_orig, start=seq, last=last_seq_new, ack=seq)
        # history
        nbits = (1 if syn else 0) + (1 if fin else 0) + (1 if rst else 0)
        if nbits > 1:
            if fin and rst:
                self._hist(c, is_orig, 1 << 8, "I")
            else:
                self._hist(c, is_orig, 1 << 9, "Q")
        elif nbits == 1:
            if syn:
                self._hist(c, is_orig, 1 << 1 if not flags & ACK else 1 << 2, "H" if flags & ACK else "S")
            if fin:
                self._hist(c, is_orig, 1 << 3, "F")
            if rst:
                self._hist(c, is_orig, 1 << 4, "R")
        elif plen:
            self._hist(c, is_orig, 1, "D")
        elif flags & ACK:
            self._hist(c, is_orig, 1 << 5, "A")
        if not (c.o_closed and c.r_closed):
            c.last = ts
        if fin:
            if is_orig:
                c.o_fin += 1
            else:
                c.r_fin += 1
        if flags & ACK:
            if peer == INACTIVE:
                v = (ack - 1) & 0xFFFFFFFF
                self._set(c, not is_orig, start=v, last=v, ack=v)
            elif not rst:
                pa = c.r_ack if is_orig else c.o_ack
                d = _seq_delta(ack, pa)
                if d > 0 and not (ack == 0 and d > 1048576):
                    if is_orig:
                        c.r_ack = ack
                    else:
                        c.o_ack = ack
        # update_last_seq
        cur_last = c.o_last if is_orig else c.r_last
        dl = _seq_delta(last_seq_new, cur_last)
        cur_state = c.o_state if is_orig else c.r_state
        cur_start = c.o_start if is_orig else c.r_start
        if (syn or rst) and (dl > 1048576 or dl < -1048576):
            pass
        elif fin and cur_last == (cur_start + 1) & 0xFFFFFFFF:
            self._set(c, is_orig, last=last_seq_new)
        elif cur_state == RESET:
            pass
        elif dl > 0:
            self._set(c, is_orig, last=last_seq_new)
        if flags & _STATE_CLOSE_FLAGS or state == INACTIVE:
            self._state_machine(c, is_orig, ts, flags, seq, ack, plen, dl)

    @staticmethod
    def _tcp_plain(c: _Conn, is_orig: bool, ts: float, flags: int, seq: int, ack: int, plen: int) -> None:
        """_tcp for a segment without SYN/FIN/RST from an endpoint that is not INACTIVE (most packets).

        Same effects as _tcp for that case, inlined: no endpoint (re)initialisation, no state-machine
        step; history D/A, last activity, the peer's ACK and this endpoint's last sequence number."""
        if plen:
            bit, code = 1, "D"
        elif flags & ACK:
            bit, code = 32, "A"
        else:
            bit = 0
        if bit:
            if is_orig:
                if not c.hist_o & bit:
                    c.hist_o |= bit
                    c.hist.append(code)
            elif not c.hist_r & bit:
                c.hist_r |= bit
                c.hist.append(code.lower())
        if not (c.o_closed and c.r_closed):
            c.last = ts
        if flags & ACK:
            if is_orig:
                if c.r_state == INACTIVE:
                    c.r_start = c.r_last = c.r_ack = (ack - 1) & 0xFFFFFFFF
                else:
                    d = (ack - c.r_ack) & 0xFFFFFFFF
                    if 0 < d < 0x80000000 and not (ack == 0 and d > 1048576):
                        c.r_ack = ack
            else:
                if c.o_state == INACTIVE:
                    c.o_start = c.o_last = c.o_ack = (ack - 1) & 0xFFFFFFFF
                else:
                    d = (ack - c.o_ack) & 0xFFFFFFFF
                    if 0 < d < 0x80000000 and not (ack == 0 and d > 1048576):
                        c.o_ack = ack
        last_seq_new = (seq + plen) & 0xFFFFFFFF
        if is_orig:
            if c.o_state != RESET:
                d = (last_seq_new - c.o_last) & 0xFFFFFFFF
                if 0 < d < 0x80000000:
                    c.o_last = last_seq_new
        elif c.r_state != RESET:
            d = (last_seq_new - c.r_last) & 0xFFFFFFFF
            if 0 < d < 0x80000000:
                c.r_last = last_seq_new

    @staticmethod
    def _set(c: _Conn, is_orig: bool, start=None, last=None, ack=None) -> None:
        if is_orig:
            if start is not None:
                c.o_start = start
            if last is not None:
                c.o_last = last
            if ack is not None:
                c.o_ack = ack
        else:
            if start is not None:
                c.r_start = start
            if last is not None:
                c.r_last = last
            if ack is not None:
                c.r_ack = ack

    @staticmethod
    def _setstate(c: _Conn, is_orig: bool, s: int) -> None:
        if is_orig:
            c.o_prev, c.o_state = c.o_state, s
        else:
            c.r_prev, c.r_state = c.r_state, s

    def _state_machine(self, c: _Conn, is_orig: bool, ts: float, flags: int, seq: int, ack: int, plen: int,
                       delta_last: int) -> None:
        syn, fin, rst, ackf = flags & SYN, flags & FIN, flags & RST, flags & ACK
        st = self._setstate
        state = c.o_state if is_orig else c.r_state
        peer = c.r_state if is_orig else c.o_state
        do_close = False
        if state == INACTIVE:
            if syn:
                if is_orig:
                    st(c, True, SYN_ACK_SENT if ackf else SYN_SENT)
                    if c.attempt_at is None:
                        c.attempt_at = ts + _TO.tcp_attempt_delay
                else:
                    if ackf:
                        pass
                    elif peer == SYN_ACK_SENT and seq == c.r_start:
                        # SYN/SYN-ACK reversal: flip the endpoints and establish
                        self._flip(c)
                        is_orig = True
                        st(c, False, ESTABLISHED)
                        c.r_seen = True
                        peer = c.r_state
                    if peer == SYN_SENT:
                        st(c, not is_orig, ESTABLISHED)
                    st(c, is_orig, ESTABLISHED)
            if fin:
                st(c, is_orig, CLOSED)
                do_close = True
            if rst:
                st(c, is_orig, RESET)
                do_close = True
            if (c.o_state if is_orig else c.r_state) == INACTIVE:
                if not is_orig and plen == 0 and c.o_state == SYN_SENT:
                    pass
                elif ackf and peer == ESTABLISHED:
                    st(c, is_orig, ESTABLISHED)
                else:
                    st(c, is_orig, PARTIAL)
        elif state in (SYN_SENT, SYN_ACK_SENT):
            if fin:
                st(c, is_orig, CLOSED)
                do_close = True
            if rst:
                st(c, is_orig, RESET)
                do_close = True
        elif state in (ESTABLISHED, PARTIAL):
            if syn and state == PARTIAL and peer == INACTIVE and not ackf:
                st(c, is_orig, SYN_SENT)
            if fin and not rst:
                st(c, is_orig, CLOSED)
                pprev = c.r_prev if is_orig else c.o_prev
                if peer == RESET and pprev == CLOSED:
                    st(c, not is_orig, CLOSED)
                do_close = True
            if rst:
                st(c, is_orig, RESET)
                do_close = True
        elif state == CLOSED:
            if rst and peer != CLOSED:
                st(c, is_orig, RESET)
                if not (c.o_closed if is_orig else c.r_closed):
                    do_close = True
        if do_close:
            self._closed(c, is_orig)

    def _closed(self, c: _Conn, is_orig: bool) -> None:
        if is_orig:
            if c.o_closed:
                return
            c.o_closed = True
            state, peer_closed, peer = c.o_state, c.r_closed, c.r_state
            prev = c.o_prev
        else:
            if c.r_closed:
                return
            c.r_closed = True
            state, peer_closed, peer = c.r_state, c.o_closed, c.o_state
            prev = c.r_prev
        if state == RESET or peer_closed or peer == INACTIVE:
            if prev != INACTIVE or peer != INACTIVE:
                c.active = False  # connection_finished / half_finished
            # CancelTimers(); ConnDeleteTimer at LastTime + tcp_close_delay
            c.attempt_at = None
            c.expire_at = None
            c.delete_at = c.last + _TO.tcp_close_delay
        elif prev != INACTIVE:
            nf = c.last + _TO.tcp_session_timer
            if c.expire_at is None or nf < c.expire_at:
                c.expire_at = nf
        if state == RESET:
            c.active = False


# ---------------------------------------------------------------------------------------------
# record iteration per format


def _refill(src: "_Source", buf: bytes, pos: int, size: int, progress) -> bytes | None:
    """The unread rest of `buf` plus the next `size` bytes of the file; None at end of file."""
    more = src.read(size)
    if progress is not None:
        progress(src.consumed())
    return buf[pos:] + more if more else None


def _iter_pcap(src: _Source, head: bytes, stats: ReadStats, progress):
    endian, scale = _PCAP_MAGIC[head[:4]]
    hdr = src.read(20)
    if len(hdr) < 20:
        raise PcapError(f"{src.path}: truncated pcap header")
    _vmaj, _vmin, _tz, _sig, snaplen, linktype = struct.unpack(endian + "HHiIII", hdr)
    linktype &= 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII").unpack_from
    limit = max(snaplen, 262144)
    if limit > _MAX_RECORD:
        limit = _MAX_RECORD
    buf = b""
    pos = 0
    supported = linktype in SUPPORTED_LINKTYPES
    while True:
        if len(buf) - pos < 16:
            nbuf = _refill(src, buf, pos, _BLOCK, progress)
            if nbuf is None:
                if len(buf) - pos or src.error:
                    stats.mark_truncated(src.path)
                return
            buf, pos = nbuf, 0
            continue
        sec, frac, incl, orig = rec(buf, pos)
        if incl > limit:
            stats.mark_truncated(src.path)  # corrupt record header: stop reading this file
            stats.malformed += 1
            return
        end = pos + 16 + incl
        if end > len(buf):
            nbuf = _refill(src, buf, pos, max(_BLOCK, incl + 16), progress)
            if nbuf is None:
                stats.mark_truncated(src.path)
                return
            buf, pos = nbuf, 0
            continue
        stats.packets += 1
        stats.bytes += incl
        if supported:
            yield linktype, sec + frac * scale, buf, pos + 16, end, orig if orig >= incl else incl
        else:
            stats.skip_linktype(linktype)
        pos = end


def _iter_pcapng(src: _Source, stats: ReadStats, progress):
    buf = b""
    pos = 0
    endian = None
    ifaces: list[tuple[int, float, float, int]] = []  # linktype, scale, offset, snaplen
    u32 = None
    while True:
        if len(buf) - pos < 12:
            nbuf = _refill(src, buf, pos, _BLOCK, progress)
            if nbuf is None:
                if len(buf) - pos or src.error:
                    stats.mark_truncated(src.path)
                return
            buf, pos = nbuf, 0
            continue
        btype_raw = buf[pos:pos + 4]
        if btype_raw == _PCAPNG_SHB:
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                if endian is None:
                    raise PcapError(f"{src.path}: not a pcapng file (bad byte-order magic)")
                stats.mark_truncated(src.path)
                return
            u32 = struct.Struct(endian + "I").unpack_from
            ifaces = []
        if u32 is None:
            raise PcapError(f"{src.path}: not a pcapng file")
        btype = u32(buf, pos)[0]
        blen = u32(buf, pos + 4)[0]
        if blen < 12 or blen & 3 or blen > _MAX_RECORD:
            stats.mark_truncated(src.path)
            stats.malformed += 1
            return
        end = pos + blen
        if end > len(buf):
            nbuf = _refill(src, buf, pos, max(_BLOCK, blen), progress)
            if nbuf is None:
                stats.mark_truncated(src.path)
                return
            buf, pos = nbuf, 0
            continue
        body = pos + 8
        bend = end - 4
        if btype == 6 or btype == 2:  # EPB / obsolete PB
            if bend - body >= 20:
                if btype == 6:
                    iface, hi, lo, caplen, olen = struct.unpack_from(endian + "IIIII", buf, body)
                else:
                    iface, _drops, hi, lo, caplen, olen = struct.unpack_from(endian + "HHIIII", buf, body)
                d = body + 20
                stats.packets += 1
                if iface < len(ifaces) and d + caplen <= bend:
                    lt, scale, toff, _snap = ifaces[iface]
                    stats.bytes += caplen
                    if lt in SUPPORTED_LINKTYPES:
                        yield lt, ((hi << 32) | lo) * scale + toff, buf, d, d + caplen, max(olen, caplen)
                    else:
                        stats.skip_linktype(lt)
                else:
                    stats.malformed += 1
            else:
                stats.malformed += 1
        elif btype == 3:  # SPB
            if ifaces and bend - body >= 4:
                olen = u32(buf, body)[0]
                lt, scale, toff, snap = ifaces[0]
                caplen = min(olen, bend - body - 4, snap or olen)
                stats.packets += 1
                stats.bytes += caplen
                if lt in SUPPORTED_LINKTYPES:
                    yield lt, None, buf, body + 4, body + 4 + caplen, max(olen, caplen)
                else:
                    stats.skip_linktype(lt)
            else:
                stats.malformed += 1
        elif btype == 1:  # IDB
            if bend - body >= 8:
                lt, _res, snap = struct.unpack_from(endian + "HHI", buf, body)
                scale, toff = 1e-6, 0.0
                p = body + 8
                while p + 4 <= bend:
                    code, olen = struct.unpack_from(endian + "HH", buf, p)
                    if code == 0:
                        break
                    v = p + 4
                    if code == 9 and olen >= 1:
                        r = buf[v]
                        scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
                    elif code == 14 and olen >= 8:
                        toff = float(struct.unpack_from(endian + "q", buf, v)[0])
                    p = v + ((olen + 3) & ~3)
                ifaces.append((lt, scale, toff, snap))
            else:
                stats.malformed += 1
        pos = end


# ---------------------------------------------------------------------------------------------
# link layers


def _dispatch(tr: _Tracker, lt: int, ts: float, buf, o: int, end: int, wire: int) -> None:
    """Decode the link layer and hand IPv4/IPv6 to the tracker. wire = original length of the frame."""
    st = tr.stats
    base = o
    if lt == LT_EN10MB:
        if end - o < 14:
            st.malformed += 1
            return
        et = (buf[o + 12] << 8) | buf[o + 13]
        if et == 0x8903:  # Cisco FabricPath: 16-byte outer header, then a full Ethernet frame
            if end - o < 30:
                st.malformed += 1
                return
            o += 16
            base = o
            wire -= 16
            et = (buf[o + 12] << 8) | buf[o + 13]
        o += 14
        while True:
            if et == 0x0800:
                tr.ip4(ts, buf, o, end, wire - (o - base))
                return
            if et == 0x86DD:
                tr.ip6(ts, buf, o, end, wire - (o - base))
                return
            if et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200:
                if end - o < 4:
                    st.malformed += 1
                    return
                et = (buf[o + 2] << 8) | buf[o + 3]
                o += 4
                continue
            if et == 0x8847 or et == 0x8848:  # MPLS
                while True:
                    if end - o < 4:
                        st.malformed += 1
                        return
                    bos = buf[o + 2] & 1
                    o += 4
                    if bos:
                        break
                if o >= end:
                    st.malformed += 1
                    return
                v = buf[o] >> 4
                if v == 4:
                    tr.ip4(ts, buf, o, end, wire - (o - base))
                elif v == 6:
                    tr.ip6(ts, buf, o, end, wire - (o - base))
                else:
                    st.non_ip += 1
                return
            if et == 0x8864:  # PPPoE session
                if end - o < 8:
                    st.malformed += 1
                    return
                pp = (buf[o + 6] << 8) | buf[o + 7]
                o += 8
                if pp == 0x0021:
                    et = 0x0800
                elif pp == 0x0057:
                    et = 0x86DD
                else:
                    st.non_ip += 1
                    return
                continue
            if et == 0x8926:  # VN-Tag
                if end - o < 6:
                    st.malformed += 1
                    return
                et = (buf[o + 4] << 8) | buf[o + 5]
                o += 6
                continue
            if et == 0x88E7:  # 802.1ah PBB: I-TAG (4) + inner Ethernet header (14)
                if end - o < 18:
                    st.malformed += 1
                    return
                et = (buf[o + 16] << 8) | buf[o + 17]
                o += 18
                continue
            if et == 0x8903:  # Cisco FabricPath is below Ethernet; handled at frame start
                st.non_ip += 1
                return
            st.non_ip += 1
            return
    if lt == LT_SLL or lt == LT_SLL2:
        hl = 16 if lt == LT_SLL else 20
        if end - o < hl:
            st.malformed += 1
            return
        et = (buf[o + 14] << 8) | buf[o + 15] if lt == LT_SLL else (buf[o] << 8) | buf[o + 1]
        o += hl
        if et == 0x0800:
            tr.ip4(ts, buf, o, end, wire - hl)
        elif et == 0x86DD:
            tr.ip6(ts, buf, o, end, wire - hl)
        elif et == 0x8100 and end - o >= 4:
            et = (buf[o + 2] << 8) | buf[o + 3]
            if et == 0x0800:
                tr.ip4(ts, buf, o + 4, end, wire - hl - 4)
            elif et == 0x86DD:
                tr.ip6(ts, buf, o + 4, end, wire - hl - 4)
            else:
                st.non_ip += 1
        else:
            st.non_ip += 1
        return
    if lt in (LT_RAW, LT_RAW1, LT_RAW2, LT_IPV4, LT_IPV6):
        if end <= o:
            st.malformed += 1
            return
        v = buf[o] >> 4
        if v == 4 and lt != LT_IPV6:
            tr.ip4(ts, buf, o, end, wire)
        elif v == 6 and lt != LT_IPV4:
            tr.ip6(ts, buf, o, end, wire)
        else:
            st.non_ip += 1
        return
    if lt == LT_NULL or lt == LT_LOOP:
        if end - o < 4:
            st.malformed += 1
            return
        fam = _u32(buf, o)[0] if lt == LT_LOOP else _u32le(buf, o)[0]
        if fam > 0xFFFF:
            fam = _u32(buf, o)[0] if lt != LT_LOOP else _u32le(buf, o)[0]
        o += 4
        if fam == 2:
            tr.ip4(ts, buf, o, end, wire - 4)
        elif fam in (10, 24, 28, 30):
            tr.ip6(ts, buf, o, end, wire - 4)
        else:
            st.non_ip += 1
        return
    if lt == LT_PPP or lt == LT_PPP_SERIAL:
        if end - o < 2:
            st.malformed += 1
            return
        if buf[o] == 0xFF and end - o >= 4:
            o += 2
        pp = (buf[o] << 8) | buf[o + 1]
        o += 2
        if pp == 0x0021:
            tr.ip4(ts, buf, o, end, wire - (o - base))
        elif pp == 0x0057:
            tr.ip6(ts, buf, o, end, wire - (o - base))
        else:
            st.non_ip += 1
        return
    if lt == LT_RADIOTAP or lt == LT_IEEE802_11:
        if lt == LT_RADIOTAP:
            if end - o < 4:
                st.malformed += 1
                return
            o += _u16le(buf, o + 2)[0]
        if end - o < 24:
            st.malformed += 1
            return
        fc0, fc1 = buf[o], buf[o + 1]
        if (fc0 >> 2) & 3 != 2:  # not a data frame
            st.non_ip += 1
            return
        if fc1 & 0x40:  # protected
            st.non_ip += 1
            return
        hl = 30 if (fc1 & 3) == 3 else 24
        if fc0 & 0x80:  # QoS data
            hl += 2
            if fc1 & 0x80:
                hl += 4
        o += hl
        if end - o < 8 or buf[o] != 0xAA or buf[o + 1] != 0xAA or buf[o + 2] != 3:
            st.non_ip += 1
            return
        et = (buf[o + 6] << 8) | buf[o + 7]
        o += 8
        if et == 0x0800:
            tr.ip4(ts, buf, o, end, wire - (o - base))
        elif et == 0x86DD:
            tr.ip6(ts, buf, o, end, wire - (o - base))
        else:
            st.non_ip += 1
        return
    st.skip_linktype(lt)


# ---------------------------------------------------------------------------------------------


def read_flows(paths: str | Path | Sequence[str | Path], params: FlowParams = FlowParams(), *,
               stats: ReadStats | None = None, on_conn: Callable[[ConnSummary], None] | None = None,
               progress: Callable[[int], None] | None = None, checksums: bool = True,
               likely_server_ports: dict[str, set[int]] | None = None) -> Iterator[FlowRecord]:
    """Yield a FlowRecord for every TCP/UDP connection in the capture(s).

    A record is yielded as soon as its connection has N packets (final=False), otherwise when the
    connection ends (final=True). on_conn gets the ConnSummary of every connection when it ends (also
    at end of input). progress(delta) is called with raw file bytes consumed. Each file is its own
    Zeek run: connection state does not carry over between files. checksums=False skips Zeek's
    checksum validation (Zeek's ignore_checksums=T / zeek -C). likely_server_ports overrides Zeek's
    default well-known ports ({"tcp": {...}, "udp": {...}}), e.g. {} to mimic a bare-mode (-b) Zeek.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    st = stats if stats is not None else ReadStats()
    for idx, p in enumerate(paths):
        head = _fast_header(Path(p))
        if head is not None:
            yield from _read_one_fast(Path(p), idx, head, params, st, on_conn, progress, checksums,
                                      likely_server_ports)
        else:
            yield from _read_one(Path(p), idx, params, st, on_conn, progress, checksums, likely_server_ports)


def _magic(src: _Source) -> bytes:
    """The first 4 bytes of an opened capture, which say pcap or pcapng; PcapError when they say neither."""
    path = src.path
    head = src.read(4)
    if src.gz and src.error:
        raise PcapError(f"{path}: corrupt gzip data")
    if len(head) < 4:
        raise PcapError(f"{path}: not a capture file (too short)")
    if head not in _PCAP_MAGIC and head != _PCAPNG_SHB:
        raise PcapError(f"{path}: not a pcap or pcapng capture (magic {head.hex()})")
    return head


def check_capture(path: str | os.PathLike) -> None:
    """Raise PcapError with read_flows' message unless `path` opens and starts as a pcap or pcapng capture
    (gzip-compressed or not). `classify` checks every capture this way before it reads any, so that a
    stray file in a long list stops the run at once instead of after the captures before it."""
    src = _Source(Path(path))
    try:
        _magic(src)
    finally:
        src.close()


def _open_records(src: _Source, st: ReadStats, progress):
    """The record iterator of an opened capture (pcap or pcapng); PcapError when it is neither."""
    path = src.path
    head = _magic(src)
    if head in _PCAP_MAGIC:
        it = _iter_pcap(src, head, st, progress)
    elif head == _PCAPNG_SHB:
        rest = src.read(8)
        if len(rest) < 8:
            raise PcapError(f"{path}: not a capture file (truncated pcapng header)")
        it = _iter_pcapng(_Prefixed(src, head + rest), st, progress)
    st.files += 1
    return it


def _progress_rest(src: _Source, progress) -> None:
    if progress is not None:
        d = src.size - src.reported if not src.gz else src.consumed()
        if d > 0:
            progress(d)


def _read_one(path: Path, idx: int, params: FlowParams, st: ReadStats, on_conn, progress, checksums, lsp=None):
    src = _Source(path)
    try:
        it = _open_records(src, st, progress)
        uid_base = f"{_file_identity(path)}:{idx}"
        tr = _Tracker(params, st, on_conn, uid_base, checksums, lsp)
        out = tr.out
        dispatch = _dispatch
        next_sweep = None
        last_ts = 0.0
        for lt, ts, buf, o, end, wire in it:
            if ts is None:  # pcapng SPB: no timestamp
                ts = last_ts
            last_ts = ts
            if lt == LT_EN10MB and end - o >= 14 and buf[o + 12] == 8 and buf[o + 13] == 0:
                tr.ip4(ts, buf, o + 14, end, wire - 14)  # Ethernet + IPv4: _dispatch's first case, inline
            else:
                dispatch(tr, lt, ts, buf, o, end, wire)
            if out:
                yield from out
                out.clear()
            if next_sweep is None:
                next_sweep = ts + 10.0
            elif ts >= next_sweep:
                tr.sweep(ts)
                next_sweep = ts + 10.0
                if out:
                    yield from out
                    out.clear()
        tr.flush()
        if out:
            yield from out
            out.clear()
        _progress_rest(src, progress)
    finally:
        src.close()


# ---------------------------------------------------------------------------------------------
# the compiled packet path (_fastpath.c): the same reader for pcap and pcapng, in C


def fast_path_available() -> bool:
    """Whether read_flows uses the compiled reader where it applies (built, and ETOOL_PURE_PYTHON unset)."""
    return _fastpath is not None and not os.environ.get("ETOOL_PURE_PYTHON")


def _fast_header(path: Path) -> bytes | None:
    """What the compiled reader starts from when it applies to this file, else None: the 24-byte file header
    of a classic pcap of a link type pcap.py reads, or b"" for a pcapng file whose interfaces all are
    (a scan of its blocks in C decides; anything it would not read exactly as pcap.py does stays with pcap.py)."""
    if not fast_path_available():
        return None
    try:
        src = _Source(path)
    except PcapError:
        return None  # the Python path raises the error with its message
    try:
        head = src.read(24)
        if head[:4] == _PCAPNG_SHB:
            eng = _fastpath.Engine(b"", 1, 0, 0, False, False, *_portmaps(None), Packet, Chunk, pcapng=True,
                                   scan=True)
            data = head
            while data:
                eng.feed(data)
                data = src.read(_BLOCK)
            return b"" if eng.stats()["scan_ok"] and not src.error else None
    finally:
        src.close()
    if len(head) < 24 or head[:4] not in _PCAP_MAGIC:
        return None
    endian = _PCAP_MAGIC[head[:4]][0]
    return head if struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF in SUPPORTED_LINKTYPES else None



_PORTMAPS: dict[tuple, tuple[bytes, bytes]] = {}


def _portmaps(lsp) -> tuple[bytes, bytes]:
    """likely_server_ports as two 65536-bit maps (tcp, udp) for the engine."""
    lsp = LIKELY_SERVER_PORTS if lsp is None else lsp
    key = (frozenset(lsp.get("tcp", ())), frozenset(lsp.get("udp", ())))
    maps = _PORTMAPS.get(key)
    if maps is None:
        out = []
        for ports in key:
            m = bytearray(8192)
            for port in ports:
                m[port >> 3] |= 1 << (port & 7)
            out.append(bytes(m))
        maps = _PORTMAPS[key] = (out[0], out[1])
    return maps


class _FragShim(_Tracker):
    """pcap.py's IP reassembly for the compiled reader: fragments come back from the engine, complete
    packets go back into it (the engine keeps all connection state)."""

    def __init__(self, engine, params: FlowParams, stats: ReadStats, checksums: bool):
        super().__init__(params, stats, None, "", checksums)
        self.engine = engine
        self.events: list = []

    def ip4(self, ts, buf, o, end, wirelen_rem, reassembled=False, owned=False) -> None:
        self.events.extend(self.engine.inject(4, ts, bytes(buf[o:end])))

    def _ip6_upper(self, ts, pkt, p, cap_end, ip_end, nxt, src, dst, _plen) -> None:
        self.events.extend(self.engine.inject(6, ts, bytes(pkt), p, nxt))

    def handle(self, frag: tuple) -> list:
        if frag[0] == 4:
            _, ts, ipb, ihl, tot, cap_end, ident, fl, proto, src, dst = frag
            self._frag4(ts, ipb, 0, ihl, tot, cap_end, ident, fl, proto, src, dst)
        else:  # the rest of Tracker.ip6's fragment branch
            _, ts, hdr, src, dst, nxt, ident, off, more, data = frag
            key = (src, dst, ident, 6)
            ent = self._frag_entry(key, ts)
            if off == 0:
                ent[0] = (bytearray(hdr), nxt)
            self._frag_add(key, ent, off, data, bool(more), ts, 6)
        events, self.events = self.events, []
        return events


#: ReadStats counter -> the engine's counters that add up to it (shared ones, then this shard's ones).
_SHARED = {"packets": "packets", "bytes": "bytes", "non_ip": "non_ip", "malformed": "malformed",
           "fragments": "fragments", "bad_checksums": "bad_checksums"}
_SHARDED = {"flows": "s_flows", "malformed": "s_malformed", "bad_checksums": "s_bad_checksums",
            "non_tcp_udp": "s_non_tcp_udp"}


class _Counters:
    """Moves the engine's counters into ReadStats as they grow (shared -> st, this shard's -> sst)."""

    def __init__(self, eng, st: ReadStats, sst: ReadStats) -> None:
        self.eng, self.st, self.sst = eng, st, sst
        self.seen: dict[str, int] = {}

    def __call__(self) -> dict:
        now = self.eng.stats()
        for target, names in ((self.st, _SHARED), (self.sst, _SHARDED)):
            for field_, k in names.items():
                d = now[k] - self.seen.get(k, 0)
                if d:
                    setattr(target, field_, getattr(target, field_) + d)
                    self.seen[k] = now[k]
        return now


def _ip_cache() -> Callable[[bytes], str]:
    """_ip_str with a bounded cache: a capture's flows share few addresses."""
    ips: dict[bytes, str] = {}

    def ip(b: bytes) -> str:
        s = ips.get(b)
        if s is None:
            if len(ips) > 65536:
                ips.clear()
            s = ips[b] = _ip_str(b)
        return s

    return ip


def _record(e: tuple, uid, ip) -> FlowRecord:
    """FlowRecord of an engine record event (0, n, final, tcp, ts0, orig_h, orig_p, resp_h, resp_p, packets,
    payload, gi, phase)."""
    return FlowRecord(uid, e[4], ip(e[5]), e[6], ip(e[7]), e[8], "tcp" if e[3] else "udp", e[9], e[10], bool(e[2]))


def _summary(e: tuple, uid, ip) -> ConnSummary:
    """ConnSummary of an engine summary event (1, n, ts0, orig_h, orig_p, resp_h, resp_p, tcp, duration,
    orig_bytes, resp_bytes, conn_state, history, orig_pkts, orig_ip_bytes, resp_pkts, resp_ip_bytes, gi, phase)."""
    return ConnSummary(uid, e[2], ip(e[3]), e[4], ip(e[5]), e[6], "tcp" if e[7] else "udp", *e[8:17])


def _drive(eng, src: _Source, params: FlowParams, st: ReadStats, checksums: bool, progress, counters):
    """Feed one file to the engine block by block; yield its event lists, and None after each block (every
    event up to the block's last packet and that packet's sweep is out by then). IP fragments go through
    pcap.py's reassembly (_FragShim). At the end of the file: flush, truncation, progress."""
    shim = None
    while True:
        data = src.read(_BLOCK)
        if progress is not None:
            progress(src.consumed())
        if not data:
            break
        events, frag = eng.feed(data)
        while True:
            if events:
                yield events
            if frag is None:
                break
            if shim is None:
                shim = _FragShim(eng, params, st, checksums)
            events = shim.handle(frag)
            if events:
                yield events
            events, frag = eng.feed(b"")
        truncated = counters()["truncated"]
        yield None
        if truncated:
            break  # corrupt record header: stop reading this file, as _iter_pcap does
    events, leftover = eng.close()
    now = counters()
    if now["truncated"] or leftover or src.error:
        st.mark_truncated(src.path)
    if events:
        yield events
    counters()
    _progress_rest(src, progress)


def _read_one_fast(path: Path, idx: int, head: bytes, params: FlowParams, st: ReadStats, on_conn, progress,
                   checksums, lsp=None):
    """_read_one through the compiled engine: same records, summaries, counters and order of records.

    The engine buffers 1 MiB blocks and returns events (finished records, ended connections) per block;
    Python only builds the objects (uid, address strings) once per connection. on_conn of a connection
    is called right after its final record is yielded, not before it as in _read_one."""
    src = _Source(path)
    try:
        lt, lu = _portmaps(lsp)
        eng = _fastpath.Engine(src.read(len(head)), params.packets, params.payload_bytes, params.payload_packets,
                               checksums, on_conn is not None, lt, lu, Packet, Chunk, pcapng=not head,
                               hello_bytes=params.hello_bytes)
        st.files += 1
        make = uid_maker(f"{_file_identity(path)}:{idx}")
        counters = _Counters(eng, st, st)
        uids: dict[int, str] = {}
        ip = _ip_cache()

        def convert(events: list):
            for e in events:
                n = e[1]
                if e[0] == 0:
                    uid = make(n)
                    if on_conn is not None:
                        uids[n] = uid
                    yield _record(e, uid, ip)
                else:
                    on_conn(_summary(e, uids.pop(n, None) or make(n), ip))

        for events in _drive(eng, src, params, st, checksums, progress, counters):
            if events:
                yield from convert(events)
    finally:
        src.close()


# ---------------------------------------------------------------------------------------------
# sharded reading: n processes each read the whole capture and keep one shard of the connections


def _private(a: bytes) -> bool:
    """RFC 1918 IPv4, IPv6 unique-local (fc00::/7) or link-local (fe80::/10)."""
    if len(a) == 4:
        return a[0] == 10 or (a[0] == 192 and a[1] == 168) or (a[0] == 172 and 16 <= a[1] <= 31)
    return a[0] & 0xFE == 0xFC or (a[0] == 0xFE and a[1] & 0xC0 == 0x80)


def shard_owner(src: bytes, dst: bytes, sp: int, dp: int, lsp, n: int) -> int:
    """The shard (0..n-1) of a packet; the same for both directions of a connection.

    TCP/UDP: the address of the client-looking endpoint, so that a client's connections stay together
    (the BURST context groups flows by originator): the private address (RFC 1918, fc00::/7, fe80::/10)
    when exactly one is; else the side whose port is not one of Zeek's likely server ports `lsp` when
    exactly one is; else the side with the higher (ephemeral) port; else (equal ports) the smaller
    address. Anything without ports (sp < 0): the unordered address pair. The hash is crc32, stable
    across processes and runs (Python's hash() of bytes is salted per process)."""
    if sp < 0:
        return crc32(src + dst if src < dst else dst + src) % n
    s = _private(src)
    if s != _private(dst):
        return crc32(src if s else dst) % n
    s = sp in lsp
    if s != (dp in lsp):
        return crc32(dst if s else src) % n
    if sp != dp:
        return crc32(src if sp > dp else dst) % n
    return crc32(src if src < dst else dst) % n


def _finished_events(out: list, conns: list, gi: int, phase: int):
    """Events of a sweep or the end-of-file flush: connections in creation order (read_flows' order: its
    connection table is a dict filled at creation), each one's final record before its summary, so
    the keys do not decrease. Empties both lists."""
    i, n = 0, len(out)
    for c in conns:
        while i < n and out[i].uid <= c.uid:
            r = out[i]
            yield (gi, phase, r.uid), EV_RECORD, r
            i += 1
        yield (gi, phase, c.uid), EV_CONN, c
    for r in out[i:]:  # pragma: no cover - every finished connection has a summary
        yield (gi, phase, r.uid), EV_RECORD, r
    out.clear()
    conns.clear()


#: Ethernet + IPv4 up to the ports: ethertype, vhl, total length, frag, proto, src, dst, sport, dport.
_eth_ip4_ports = struct.Struct(">12xHBxH2xHxB2x4s4sHH").unpack_from

#: Event kinds yielded by read_shard.
EV_NEW, EV_RECORD, EV_CONN, EV_TICK = 0, 1, 2, 3


def read_shard(paths: str | Path | Sequence[str | Path], shard: tuple[int, int], params: FlowParams = FlowParams(),
               *, stats: ReadStats | None = None, shard_stats: ReadStats | None = None,
               progress: Callable[[int], None] | None = None, checksums: bool = True,
               likely_server_ports: dict[str, set[int]] | None = None, tick: int = 8192):
    """read_flows for shard i of n (shard=(n, i)), as ordered events; for `classify --workers`.

    Every shard reads every packet of every file. A packet whose shard key (shard_owner) belongs to
    another shard costs a record header and one header unpack on the Ethernet+IPv4 path (other link
    layers, and IP fragments, are decoded in full before the key is known; fragments are reassembled
    in every shard and the key applies to the reassembled packet), and still advances the network
    clock, so Zeek's timers (the periodic sweep of inactive connections) fire at the same packets in
    every shard as in read_flows: a connection ends at the same packet, with the same content.

    Yields (key, kind, obj), keys never decreasing (a connection's final record and its summary share
    one); ``key = (gi, phase, sub)`` where gi is the global
    index of the packet (over all files) during which read_flows would produce the event, phase 0 =
    the packet itself, 1 = the timer sweep after it, 2 = the end of the file, so merging the events of
    all n shards by key gives read_flows' order exactly:

    * EV_NEW: obj = (cid, uid_base): a connection was created; cid (its creating packet's gi) is what
      FlowRecord.uid / ConnSummary.uid hold in this mode. Its Zeek uid is ``make_uid(uid_base, k)``
      where k counts the connections of that file (all shards) created at or before cid.
    * EV_RECORD: obj = FlowRecord; EV_CONN: obj = ConnSummary (what on_conn gets from read_flows).
    * EV_TICK: obj = None; every event with a key below this one has been yielded.

    `stats` gets the counters of what every shard sees alike (files, packets, bytes, truncation,
    link-layer and IP-header problems, fragments); `shard_stats` those of this shard's packets only
    (flows, transport-level malformed, bad checksums, non-TCP/UDP). Summing shard_stats over the shards
    and adding one shard's stats gives read_flows' ReadStats.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    n, me = shard
    if not 0 <= me < n:
        raise ValueError(f"bad shard {shard}")
    st = stats if stats is not None else ReadStats()
    sst = shard_stats if shard_stats is not None else ReadStats()
    lsp = LIKELY_SERVER_PORTS if likely_server_ports is None else likely_server_ports
    lsp_tcp = frozenset(lsp.get("tcp", ()))
    lsp_udp = frozenset(lsp.get("udp", ()))
    gi = -1
    next_tick = tick
    for idx, p in enumerate(paths):
        path = Path(p)
        head = _fast_header(path)
        if head is not None:
            gi = yield from _read_shard_fast(path, idx, head, shard, params, st, sst, progress, checksums,
                                             likely_server_ports, gi)
            yield (gi + 1, 0, 0), EV_TICK, None
            continue
        src = _Source(path)
        try:
            it = _open_records(src, st, progress)
            uid_base = f"{_file_identity(path)}:{idx}"
            conns: list[ConnSummary] = []
            tr = _Tracker(params, st, conns.append, uid_base, checksums, lsp, shard=shard, shard_stats=sst)
            out = tr.out
            created = tr.created
            dispatch = _dispatch
            ip4 = tr.ip4
            eth_ip4 = _eth_ip4_ports
            next_sweep = None
            last_ts = 0.0
            for lt, ts, buf, o, end, wire in it:
                gi += 1
                if gi >= next_tick:  # everything before this packet has been yielded
                    next_tick = gi + tick
                    yield (gi, 0, 0), EV_TICK, None
                if ts is None:  # pcapng SPB: no timestamp
                    ts = last_ts
                last_ts = ts
                if lt == LT_EN10MB and end - o >= 38:
                    et, vhl, tot, frag, proto, a, b, sp, dp = eth_ip4(buf, o)
                    if et == 0x0800 and vhl == 0x45 and not frag & 0x3FFF and tot >= 24 \
                            and (proto == 6 or proto == 17):
                        # shard_owner, inline: this path decides for most packets
                        x = a[0]
                        s = x == 10 or (x == 192 and a[1] == 168) or (x == 172 and 16 <= a[1] <= 31)
                        x = b[0]
                        if s != (x == 10 or (x == 192 and b[1] == 168) or (x == 172 and 16 <= b[1] <= 31)):
                            k = a if s else b
                        elif (s := sp in (ls := lsp_tcp if proto == 6 else lsp_udp)) != (dp in ls):
                            k = b if s else a
                        elif sp != dp:
                            k = a if sp > dp else b
                        else:
                            k = a if a < b else b
                        if crc32(k) % n == me:
                            tr.gi = gi
                            ip4(ts, buf, o + 14, end, wire - 14, False, True)
                    else:
                        tr.gi = gi
                        dispatch(tr, lt, ts, buf, o, end, wire)
                else:
                    tr.gi = gi
                    dispatch(tr, lt, ts, buf, o, end, wire)
                if created or out or conns:
                    for cid in created:
                        yield (cid, 0, 0), EV_NEW, (cid, uid_base)
                    created.clear()
                    seq = 0
                    for r in out:
                        seq += 1
                        yield (gi, 0, seq), EV_RECORD, r
                    out.clear()
                    for c in conns:
                        seq += 1
                        yield (gi, 0, seq), EV_CONN, c
                    conns.clear()
                if next_sweep is None:
                    next_sweep = ts + 10.0
                elif ts >= next_sweep:
                    tr.sweep(ts)
                    next_sweep = ts + 10.0
                    if out or conns:
                        yield from _finished_events(out, conns, gi, 1)
            tr.flush()
            if out or conns:
                yield from _finished_events(out, conns, gi, 2)
            _progress_rest(src, progress)
        finally:
            src.close()
        yield (gi + 1, 0, 0), EV_TICK, None


def _read_shard_fast(path: Path, idx: int, head: bytes, shard: tuple[int, int], params: FlowParams, st: ReadStats,
                     sst: ReadStats, progress, checksums, lsp, gi: int):
    """One file of read_shard through the compiled engine; same events and keys. Returns the last gi.

    The engine tags every event with the packet index and phase it belongs to; per packet, read_shard's
    order is: connections created (EV_NEW), then records, then summaries; a sweep's and the end of file's
    events come connection by connection (record before summary), which is the engine's order already.
    A tick follows every block: everything up to the block's last packet and its sweep is out."""
    src = _Source(path)
    try:
        lt, lu = _portmaps(lsp)
        eng = _fastpath.Engine(src.read(len(head)), params.packets, params.payload_bytes, params.payload_packets,
                               checksums, True, lt, lu, Packet, Chunk, shard[0], shard[1], gi, pcapng=not head,
                               hello_bytes=params.hello_bytes)
        st.files += 1
        uid_base = f"{_file_identity(path)}:{idx}"
        counters = _Counters(eng, st, sst)
        ip = _ip_cache()

        def obj(e):  # in this mode a connection's uid is its creating packet's index
            return (EV_RECORD, _record(e, e[1], ip)) if e[0] == 0 else (EV_CONN, _summary(e, e[1], ip))

        def convert(events: list):
            i, n = 0, len(events)
            while i < n:
                g, ph = events[i][-2:]
                j = i
                while j < n and tuple(events[j][-2:]) == (g, ph):
                    j += 1
                group = events[i:j]
                i = j
                if ph == 0:
                    recs, conns = [], []
                    for e in group:
                        if e[0] == 2:
                            yield (e[1], 0, 0), EV_NEW, (e[1], uid_base)
                        else:
                            (recs if e[0] == 0 else conns).append(e)
                    seq = 0
                    for e in recs + conns:
                        seq += 1
                        kind, o = obj(e)
                        yield (g, 0, seq), kind, o
                else:
                    for e in group:
                        kind, o = obj(e)
                        yield (g, ph, e[1]), kind, o

        gi0 = gi
        for events in _drive(eng, src, params, st, checksums, progress, counters):
            if events is None:
                # below the end-of-file events of the last packet read, (gi, 2, uid), which may still follow;
                # before this file's first packet: the previous file's closing tick
                g = counters()["gi"]
                yield ((g, 2, 0) if g > gi0 else (gi0 + 1, 0, 0)), EV_TICK, None
            else:
                yield from convert(events)
        return counters()["gi"]
    finally:
        src.close()


class _Prefixed:
    """A _Source with some bytes already read put back in front."""

    def __init__(self, src: _Source, prefix: bytes):
        self.src = src
        self.prefix = prefix
        self.path = src.path

    @property
    def error(self):
        return self.src.error

    def read(self, n: int) -> bytes:
        if self.prefix:
            p, self.prefix = self.prefix, b""
            return p + self.src.read(max(0, n - len(p)))
        return self.src.read(n)

    def consumed(self) -> int:
        return self.src.consumed()
