"""The compiled name masking (_fastpath.mask_chunk) against masking.py's (mask_chunk_py).

Name masking is a privacy guarantee, so the C port must give the same bytes as the Python reference for
every input: checked on every payload chunk of the shared captures (whole, as collected, and as the model's
64-byte window), under every protocol and port rule, and on tens of thousands of randomly mutated chunks
(truncations, bit flips, inserted lengths and the markers the parsers look for).
"""

from __future__ import annotations

import os
import random

import pytest

from etool_sensor import masking
from etool_sensor.flows import FlowParams
from etool_sensor.capture.reader import read_flows
from tests.support import NDPI, ZEEK_TRACES

fast = pytest.importorskip("etool_sensor._fastpath")
if not hasattr(fast, "mask_chunk"):  # pragma: no cover - a build from before mask_chunk
    pytest.skip("_fastpath has no mask_chunk", allow_module_level=True)

CODES = {"tcp": 0, "udp": 1, "icmp": 2}
# port rules of mask_payload / normalize_random: DNS over UDP or TCP, mDNS/LLMNR, plain
PORTS = [(53, 40000), (40000, 53), (5353, 5353), (40000, 5355), (51000, 443), (51000, 80)]


def both(data: bytes, proto: str, orig_p: int, resp_p: int, normalize: bool) -> tuple[bytes, bytes]:
    return masking.mask_chunk_py(data, proto, orig_p, resp_p, normalize), fast.mask_chunk(
        data, CODES[proto], orig_p, resp_p, normalize)


@pytest.fixture(scope="module")
def chunks() -> list[tuple[bytes, str, int, int]]:
    """(data, proto, orig_p, resp_p) of every payload chunk (up to 4 per flow, up to 1,500 bytes each)."""
    caps = sorted((NDPI / "pcap").glob("*.pcap*")) + sorted(ZEEK_TRACES.rglob("*.pcap*"))[:200]
    if not caps:
        pytest.skip("shared/data not present")
    out = []
    for p in caps:
        for r in read_flows(p, FlowParams(packets=8, payload_bytes=1500, payload_packets=4)):
            out += [(c.data, r.proto, r.orig_p, r.resp_p) for c in r.payload]
    assert len(out) > 10_000
    return out


def test_every_real_chunk_masks_alike(chunks):
    masked = 0
    for data, proto, op, rp in chunks:
        for d in (data, data[:64]):
            for norm in (True, False):
                py, c = both(d, proto, op, rp, norm)
                assert py == c, (proto, op, rp, norm, d[:80])
                masked += py != d
    assert masked > 1000  # names and random fields were found, not just copied through


def test_every_rule_on_every_kind_of_chunk(chunks):
    """Each chunk under the other protocols' and ports' rules too (a TLS hello read as DNS, ...)."""
    rng = random.Random(7)
    for data, _, _, _ in rng.sample(chunks, 3000):
        for proto in CODES:
            for op, rp in PORTS:
                py, c = both(data[:256], proto, op, rp, True)
                assert py == c, (proto, op, rp, data[:80])


MARKERS = [b"\x16\x03\x01", b"\x16\x03\x03\x00\x40\x01", b"\x06\x03\x55\x04\x03", b"\x06\x03\x55\x1d\x11",
           b"\x04\x82", b"\x30\x81", b"\x82\x05", b"\nHost:", b"\nhOsT: ", b"\r", b"GET http://", b"CONNECT ",
           b"CHLO", b"SNI\x00", b"\xc0\x0c", b"\x00\x00", b"\xff\xff", b"\x3f", b"\xc3\x00\x00\x00\x01\x14",
           b".com", b"a.b", b".c0", b"x.y1", b"ab.", b"-.*_", b"pki.google.com/", b"5.3"]  # name runs


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randint(0, len(b))
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = rng.choice(MARKERS)
        elif op == 2:
            del b[i:]
        elif op == 3 and b:
            j = min(i, len(b) - 1)
            b[j] = rng.choice((0, 1, 0x16, 0x20, 0x7F, 0x80, 0xC0, 0xFF))
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    return bytes(b)


def test_mutated_chunks_mask_alike(chunks):
    rng = random.Random(11)
    pool = [c for c in chunks if c[0]]
    for _ in range(40_000):
        data, proto, op, rp = rng.choice(pool)
        d = mutate(rng, data[: rng.choice((16, 64, 200, 1500))])
        if rng.random() < 0.3:
            proto = rng.choice(list(CODES))
        if rng.random() < 0.3:
            op, rp = rng.choice(PORTS)
        py, c = both(d, proto, op, rp, rng.random() < 0.7)
        assert py == c, (proto, op, rp, d[:80])


def test_edge_inputs():
    for d in (b"", b"\x16", b"\x16\x03", b"\x16\x03\x01\x00\x05\x01", bytes(12), b"\x00" * 13, b"x"):
        for proto in CODES:
            for op, rp in PORTS:
                for norm in (True, False):
                    py, c = both(d, proto, op, rp, norm)
                    assert py == c
    one = b"*"
    assert fast.mask_chunk(one, 0, 1, 2, True) == b"*" and bytes([42]) == b"*"  # the shared 1-byte object intact
    with pytest.raises(TypeError):
        fast.mask_chunk(bytearray(b"x"), 0, 1, 2, True)


def test_features_use_the_compiled_port():
    if os.environ.get("ETOOL_PURE_PYTHON") == "1":
        assert masking._mask_chunk_c is None
    else:  # the extension is built (this module is not skipped): masking must call it
        assert masking._mask_chunk_c is fast.mask_chunk
    d = b"\x16\x03\x01\x00\x40\x01" + bytes(100)
    assert masking.mask_chunk(d, "tcp", 40000, 443) == masking.mask_chunk_py(d, "tcp", 40000, 443)
