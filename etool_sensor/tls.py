"""TLS handshake fields the model and the fingerprint tables read (cipher suites and extension types,
never names), parsed once here so features, fingerprints and eval agree on what a hello is."""

from __future__ import annotations

import struct


def parse_hello(data: bytes) -> tuple[int, int, list[int], list[int]] | None:
    """(handshake type 1/2, version, cipher suites, extension types) of a TLS ClientHello/ServerHello at the
    start of `data` (GREASE values dropped); None for anything else. A cut hello yields what it holds."""
    if len(data) < 44 or data[0] != 0x16 or data[1] != 3 or data[5] not in (1, 2):
        return None
    kind, n = data[5], len(data)
    version = (data[9] << 8) | data[10]
    p = 44 + data[43]
    ciphers: list[int] = []
    if kind == 1:
        if p + 2 > n:
            return kind, version, [], []
        end = p + 2 + ((data[p] << 8) | data[p + 1])
        ciphers = list(_unpack_u16(data, p + 2, (min(end, n) - p - 2) // 2))
        p = end + 1 + data[end] if end < n else n  # compression methods
    elif p + 3 <= n:
        ciphers = [(data[p] << 8) | data[p + 1]]
        p += 3
    else:
        p = n
    exts = []
    if p + 2 <= n:
        end = min(p + 2 + ((data[p] << 8) | data[p + 1]), n)
        p += 2
        while p + 4 <= end:
            exts.append((data[p] << 8) | data[p + 1])
            p += 4 + ((data[p + 2] << 8) | data[p + 3])
    return (kind, version, [c for c in ciphers if c & 0x0F0F != 0x0A0A],  # GREASE values dropped
            [e for e in exts if e & 0x0F0F != 0x0A0A])


def _unpack_u16(data: bytes, at: int, count: int) -> tuple[int, ...]:
    """`count` big-endian 16-bit values from data[at:] (the cipher suite list: one C call, not a loop)."""
    return struct.unpack_from(f">{count}H", data, at) if count > 0 else ()
