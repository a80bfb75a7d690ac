"""Glue to the compiled packet path (etool_sensor/_native/capture.c): the same reader for pcap and pcapng, in C.

The engine is a port of formats, linklayer, ip (all but fragment reassembly) and conntrack; this module decides
where it applies (_fast_header), feeds it blocks, hands IP fragments to ip.py's reassembly (_FragShim) and turns
its events into FlowRecords and ConnSummaries. The Python reader stays the reference: tests/test_fastpath.py
checks identical output on every shared capture."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Callable

from ..flows import Chunk, FlowParams, FlowRecord, Packet, uid_maker
from .conntrack import LIKELY_SERVER_PORTS, ConnSummary, _ip_str, _Tracker
from .formats import _BLOCK, _PCAP_MAGIC, _PCAPNG_SHB, PcapError, _file_identity, _progress_rest, _Source
from .linklayer import SUPPORTED_LINKTYPES
from .shard import EV_CONN, EV_NEW, EV_RECORD, EV_TICK
from .stats import ReadStats


try:  # the compiled packet path (setup.py builds it when a C compiler is there); see _read_one_fast
    from .. import _fastpath
except ImportError:  # pragma: no cover - depends on the build
    _fastpath = None
_FASTPATH_ABI = 7  # the engine interface this module speaks (_fastpath.ABI)
if _fastpath is not None and getattr(_fastpath, "ABI", None) != _FASTPATH_ABI:  # pragma: no cover - stale build
    _fastpath = None


def fast_path_available() -> bool:
    """Whether read_flows uses the compiled reader where it applies (built, and ETOOL_PURE_PYTHON unset)."""
    return _fastpath is not None and not os.environ.get("ETOOL_PURE_PYTHON")


def _fast_header(path: Path) -> bytes | None:
    """What the compiled reader starts from when it applies to this file, else None: the 24-byte file header
    of a classic pcap of a link type the Python reader reads, or b"" for a pcapng file whose interfaces all are
    (a scan of its blocks in C decides; anything it would not read exactly as the Python reader does stays
    with it)."""
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
    """ip.py's reassembly for the compiled reader: fragments come back from the engine, complete
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
    ip.py's reassembly (_FragShim). At the end of the file: flush, truncation, progress."""
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
