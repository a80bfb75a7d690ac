"""The capture reader's public API: pcap/pcapng(.gz) -> Zeek-like connections -> FlowRecords (contract v1).

read_flows reads every connection of the captures; read_shard reads one shard of them for
``classify --workers``; check_capture says up front whether a file is a capture. Each file goes through the
compiled packet path (native) where it applies, else through the Python layers: formats -> linklayer ->
conntrack (ip, tcp), which follow Zeek's connection semantics closely enough that the uids line up 1:1 with
the connections Zeek would log for the same trace (docs/flow-record.md, tests/test_pcap_parity.py).

Design: files are read in large blocks; records are decoded with precompiled ``struct.Struct``
objects straight out of the block (no per-packet copies except the few header fields that form the
connection key, and payload bytes only while the FlowCollector still wants them). Connection state
is expired with Zeek's timers (evaluated lazily per connection plus a periodic sweep), so memory is
bounded by the number of live connections, not by the file size.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from pathlib import Path
from typing import Callable, Iterator, Sequence
from zlib import crc32

from ..flows import FlowParams, FlowRecord
from .conntrack import LIKELY_SERVER_PORTS, ConnSummary, _Tracker
from .formats import PcapError, _file_identity, _open_records, _progress_rest, _Source, check_header
from .linklayer import LT_EN10MB, _dispatch
from .native import _fast_header, _read_one_fast, _read_shard_fast
from .shard import EV_CONN, EV_NEW, EV_RECORD, EV_TICK, _finished_events
from .stats import ReadStats
from .tcp import ZeekTimeouts

__all__ = ["PcapError", "ConnSummary", "ReadStats", "read_flows", "read_shard", "check_capture",
           "capture_files", "select_captures", "CAPTURE_NAMES", "LIKELY_SERVER_PORTS", "ZeekTimeouts",
           "EV_NEW", "EV_RECORD", "EV_CONN", "EV_TICK"]


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


CAPTURE_NAMES = re.compile(r"\.(pcap|pcapng|cap|trace|dump)(\d+|\.\d+)?(\.gz)?$", re.IGNORECASE)
CAPTURE_NAMES_HELP = ("*.pcap, *.pcapng, *.cap, *.trace, *.dump, each also gzipped (.gz) or numbered as tcpdump -C "
                      "and ring buffers number them (ring.pcap00, x.pcap.1700000000)")


def capture_files(*roots: str | Path) -> list[Path]:
    """Every file under the given directories whose name reads as a capture's (CAPTURE_NAMES), sorted; names
    starting with '.' (editor and AppleDouble files, hidden folders) are left out and links to directories
    are not followed. PcapError (one line) for a directory that cannot be listed: a tree read in part would
    look whole."""
    def refuse(e: OSError) -> None:
        if isinstance(e, FileNotFoundError):  # a root that does not exist holds no captures: the caller says so
            return
        raise PcapError(f"{e.filename}: cannot list the directory: {e.strerror or e}")

    files: list[Path] = []
    for root in roots:
        for top, dirs, names in os.walk(root, onerror=refuse):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [Path(top, n) for n in names if not n.startswith(".") and CAPTURE_NAMES.search(n)
                      and os.path.isfile(os.path.join(top, n))]
    return sorted(files)


def select_captures(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """What `classify` and `label` read of their arguments, checked: (files, skipped). The files named must be
    captures (check_captures: PcapError, one line, for the first that is not); a directory stands for its
    capture files (capture_files), and one of those that does not start like a capture (a half-written one)
    is skipped, with "FILE: reason" in `skipped`, instead of stopping the run. A file reached twice (named and
    found, or through a link) is read once. PcapError for a directory without capture files, so that a
    mistyped directory is not a silent run over nothing."""
    out: list[str] = []
    skipped: list[str] = []
    named: list[str] = []
    seen: set[str] = set()

    def add(f: str) -> None:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            out.append(f)

    for p in paths:
        if not os.path.isdir(p):
            named.append(os.fspath(p))
            add(named[-1])
            continue
        found = capture_files(p)
        if not found:
            raise PcapError(f"{p}: a directory with no capture files in it (looked for {CAPTURE_NAMES_HELP})")
        for f in map(str, found):
            try:
                if not os.access(f, os.R_OK):
                    raise PcapError(f"{f}: permission denied")
                check_capture(f)
            except PcapError as e:
                skipped.append(str(e).splitlines()[0])
                continue
            add(f)
    check_captures(named)
    return out, skipped


def check_capture(path: str | os.PathLike) -> None:
    """Raise PcapError with read_flows' message unless `path` opens and starts with a whole pcap or pcapng
    file header (gzip-compressed or not). `classify` checks every capture this way before it reads any, so
    that a stray file in a long list stops the run at once instead of after the captures before it."""
    src = _Source(Path(path))
    try:
        check_header(src)
    finally:
        src.close()


def check_captures(paths: Sequence[str | os.PathLike]) -> None:
    """Check every capture before any is read: PcapError, one line, for the first that is missing, a directory,
    unreadable, or not a capture. A stray file in a long list then stops a run at once, not after the
    captures before it were read."""
    for p in paths:
        if not os.path.exists(p):
            raise PcapError(f"{p}: no such file")
        if os.path.isdir(p):
            raise PcapError(f"{p}: is a directory, not a capture")
        if not os.access(p, os.R_OK):
            raise PcapError(f"{p}: permission denied")
        if not stat.S_ISREG(os.stat(p).st_mode):
            raise PcapError(f"{p}: not a regular file (a pipe or a device); write the capture to a file first")
    for p in paths:
        try:
            check_capture(p)
        except PcapError as e:
            raise PcapError(str(e).splitlines()[0]) from None


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


#: Ethernet + IPv4 up to the ports: ethertype, vhl, total length, frag, proto, src, dst, sport, dport.
_eth_ip4_ports = struct.Struct(">12xHBxH2xHxB2x4s4sHH").unpack_from


def read_shard(paths: str | Path | Sequence[str | Path], shard: tuple[int, int], params: FlowParams = FlowParams(),
               *, stats: ReadStats | None = None, shard_stats: ReadStats | None = None,
               progress: Callable[[int], None] | None = None, checksums: bool = True,
               likely_server_ports: dict[str, set[int]] | None = None, tick: int = 8192) -> Iterator[tuple]:
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
