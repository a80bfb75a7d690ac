"""TLS hellos: whether a chunk starts one (hello_kind, hello_end) and the handshake fields the model and the
fingerprint tables read (cipher suites and extension types, never names: parse_hello). The one Python
definition of a hello: the collection (flows.chunk_length), masking, features, fingerprints and eval ask
here; the compiled twins in etool_sensor/_native/ test the same bytes and name these functions as their reference."""

from __future__ import annotations

import struct


HANDSHAKE = 0x16  # TLS record content type of handshake messages
CLIENT_HELLO, SERVER_HELLO = 1, 2  # handshake message types
HELLO_HEAD = 44  # bytes of a hello up to its session ID length: parse_hello reads no shorter chunk


def hello_kind(data: bytes | bytearray | memoryview) -> int:
    """CLIENT_HELLO or SERVER_HELLO when `data` starts a TLS 1.x handshake record whose first message is that
    hello, else 0 (also for fewer than the 6 bytes that tell). Callers that read further check the length
    they need themselves."""
    if len(data) < 6 or data[0] != HANDSHAKE or data[1] != 3:
        return 0
    k = data[5]
    return k if k == CLIENT_HELLO or k == SERVER_HELLO else 0


def hello_end(data: bytes | bytearray | memoryview) -> int:
    """Where the TLS ClientHello or ServerHello that `data` starts with ends (5-byte record header + 4-byte
    handshake header + its length), or 0 when `data` does not start one. Why: the cipher suites and
    extension types lie beyond any small B, and a hello is one message that the record header sizes."""
    if len(data) < 9 or not hello_kind(data):
        return 0
    return 9 + ((data[6] << 16) | (data[7] << 8) | data[8])


def parse_hello(data: bytes) -> tuple[int, int, list[int], list[int]] | None:
    """(handshake type 1/2, version, cipher suites, extension types) of a TLS ClientHello/ServerHello at the
    start of `data` (GREASE values dropped); None for anything else. A cut hello yields what it holds."""
    if len(data) < HELLO_HEAD or not hello_kind(data):
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
