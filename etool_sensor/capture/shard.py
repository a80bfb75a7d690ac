"""Sharded reading for ``classify --workers``: n processes each read the whole capture and keep one shard of
the connections. Which shard owns a packet (shard_owner), the kinds of read_shard's events, and the order of
the events a timer sweep or the end of a file finishes."""

from __future__ import annotations

from typing import Container
from zlib import crc32


#: Event kinds yielded by read_shard.
EV_NEW, EV_RECORD, EV_CONN, EV_TICK = 0, 1, 2, 3


def _private(a: bytes) -> bool:
    """RFC 1918 IPv4, IPv6 unique-local (fc00::/7) or link-local (fe80::/10)."""
    if len(a) == 4:
        return a[0] == 10 or (a[0] == 192 and a[1] == 168) or (a[0] == 172 and 16 <= a[1] <= 31)
    return a[0] & 0xFE == 0xFC or (a[0] == 0xFE and a[1] & 0xC0 == 0x80)


def shard_owner(src: bytes, dst: bytes, sp: int, dp: int, lsp: Container[int], n: int) -> int:
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
