"""The connection table with Zeek's TCP/UDP session semantics: packets -> connections -> FlowRecords (contract
v1) and ConnSummaries (conn.log).

The tracker follows Zeek's connection semantics (who is the originator, when a connection ends, what conn.log
counts) closely enough that the uids it hands out line up 1:1 with the connections Zeek would log for the same
trace; see docs/flow-record.md and tests/test_pcap_parity.py. Connection state is expired with Zeek's timers
(evaluated lazily per connection plus a periodic sweep), so memory is bounded by the number of live
connections, not by the file size. _Tracker = ip._IPLayer (IPv4/IPv6, fragments) + tcp._TCPEndpoints (the
endpoint state machine) + this module's connection lifecycle, timers and transport headers."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..flows import ACK, SYN, FlowCollector, FlowParams, FlowRecord, make_uid
from .ip import _IPLayer
from .stats import ReadStats
from .tcp import _STATE_CLOSE_FLAGS, _TO, INACTIVE, RESET, SYN_ACK_SENT, SYN_SENT, _Conn, _TCPEndpoints


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


def zeek_flips(tcp: bool, flags: int, sp: int, dp: int, lsp: frozenset) -> bool:
    """Whether Zeek makes the receiver of a connection's first packet (from port `sp` to `dp`, TCP `flags`) its
    originator: only when the sender uses a likely server port (`lsp`) and, for TCP, the packet is not a
    plain SYN (Zeek's WantConnection / flip rule)."""
    if tcp:
        if flags & SYN and not flags & ACK:
            return False
        return sp in lsp and ((not flags & SYN and sp < dp) if dp in lsp else True)
    return sp in lsp and dp not in lsp


def _ip_str(b: bytes) -> str:
    if len(b) == 4:
        return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"
    return ipaddress.IPv6Address(b).compressed


_u16 = struct.Struct(">H").unpack_from
_ports = struct.Struct(">HH").unpack_from
_tcp_seq = struct.Struct(">HHIIBB").unpack_from  # sport dport seq ack off flags


class _Tracker(_IPLayer, _TCPEndpoints):
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
        c.hist = ["^"] if flip else []  # Zeek creates it flipped (FlipRoles), which writes '^' to history
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
                c = self._new(key, rkey, "tcp", ts, src, sp, dst, dp, zeek_flips(True, flags, sp, dp, self.lsp_tcp))
            else:
                c = self._new(key, rkey, "udp", ts, src, sp, dst, dp, zeek_flips(False, 0, sp, dp, self.lsp_udp))
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
