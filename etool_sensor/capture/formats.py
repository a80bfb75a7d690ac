"""Capture files: classic pcap (micro- or nanosecond timestamps, either byte order) and pcapng (sections,
interfaces, enhanced/simple/obsolete packet blocks), either gzip-compressed; read in large blocks and walked
record by record. Each record's frame goes on to linklayer; PcapError says why a file is not a capture."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .linklayer import SUPPORTED_LINKTYPES

if TYPE_CHECKING:
    from .stats import ReadStats


class PcapError(Exception):
    """The input cannot be read as a capture (missing file, not a capture). One-line message."""


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
        """Up to n bytes; fewer at the end of the file. A gzip stream that is cut short or corrupt sets
        `error` and still returns what decompressed before the damage (GzipFile.read would drop it: up to a
        whole block of good packets)."""
        if not self.gz:
            try:
                return self.stream.read(n)
            except OSError:
                self.error = True
                return b""
        parts: list[bytes] = []
        got = 0
        try:
            while got < n:
                b = self.stream.read1(n - got)
                if not b:
                    break
                parts.append(b)
                got += len(b)
        except (EOFError, OSError, zlib.error):
            self.error = True
        return b"".join(parts)

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


def _file_identity(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(65536)
        size = os.fstat(f.fileno()).st_size
    return hashlib.blake2b(head + str(size).encode(), digest_size=12).hexdigest()


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


_PCAPNG_BOMS = (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d")


def check_header(src: _Source) -> None:
    """PcapError unless an opened capture starts with a whole pcap file header (24 bytes) or a pcapng
    section header's type, length and byte-order magic: what the readers need before the first packet."""
    path = src.path
    head = _magic(src)
    if head in _PCAP_MAGIC:
        if len(src.read(20)) < 20:
            raise PcapError(f"{path}: not a capture file (truncated pcap header)")
        return
    rest = src.read(8)
    if len(rest) < 8:
        raise PcapError(f"{path}: not a capture file (truncated pcapng header)")
    if rest[4:8] not in _PCAPNG_BOMS:
        raise PcapError(f"{path}: not a pcapng file (bad byte-order magic)")


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


def copy_decompressed(path: Path, out: BinaryIO) -> bool:
    """Copy a capture's bytes to `out`, gzip decompressed (for tools that read no gzip); True when the gzip
    stream is cut short or corrupt: what decompressed before the damage is copied all the same."""
    src = _Source(path)
    try:
        while block := src.read(_BLOCK):
            out.write(block)
        return src.error
    finally:
        src.close()


def _progress_rest(src: _Source, progress) -> None:
    if progress is not None:
        d = src.size - src.reported if not src.gz else src.consumed()
        if d > 0:
            progress(d)
