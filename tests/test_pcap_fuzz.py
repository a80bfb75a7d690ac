"""Property tests: malformed captures never crash the reader (PcapError or counted rejection)."""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import HealthCheck, given, settings, strategies as st

from etool_sensor.capture.reader import PcapError, ReadStats, read_flows
from tests.test_pcap import A, B, eth, ip4, pcap, tcp

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _run(tmp_path_factory, data: bytes) -> ReadStats:
    p = tmp_path_factory.mktemp("fz") / "f.pcap"
    p.write_bytes(data)
    stats = ReadStats()
    try:
        for r in read_flows(p, stats=stats, checksums=False):
            r.validate()
    except PcapError as e:
        assert "\n" not in str(e)
    return stats


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(tmp_path_factory, data):
    _run(tmp_path_factory, data)


@SETTINGS
@given(st.integers(0, 400), st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x0a\x0d\x0d\x0a",
                                             b"\x1f\x8b\x08\x00", b"\x00\x00\x00\x00"]))
def test_truncated_and_wrong_magic(tmp_path_factory, cut, magic):
    frames = [(1.0 + i, eth(ip4(A, B, 6, tcp(1000, 80, i, 0, 0x18, b"x" * 20)))) for i in range(5)]
    data = pcap(frames)
    _run(tmp_path_factory, magic + data[4:cut])


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_bogus_lengths_and_snaplen(tmp_path_factory, snap, incl, orig):
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snap, 1)
    rec = struct.pack("<IIII", 1, 0, incl, orig) + b"\x00" * 64
    tracemalloc.start()
    _run(tmp_path_factory, hdr + rec)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20


@SETTINGS
@given(st.lists(st.integers(0, 255), min_size=1, max_size=8), st.binary(max_size=64))
def test_odd_ipv6_header_chains(tmp_path_factory, chain, junk):
    body = b""
    for i, nh in enumerate(chain):
        body += bytes([nh, junk[i] if i < len(junk) else 0]) + b"\x00" * 6
    body += junk
    h = struct.pack(">IHBB16s16s", 6 << 28, len(body), chain[0], 64, b"\x01" * 16, b"\x02" * 16)
    _run(tmp_path_factory, pcap([(1.0, eth(h + body, et=0x86DD))]))


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 8191), st.booleans(), st.binary(max_size=40)), max_size=12))
def test_fragments(tmp_path_factory, frags):
    frames = []
    for i, (off, more, data) in enumerate(frags):
        frames.append((1.0 + i, eth(ip4(A, B, 17, data, ident=5, frag=(0x2000 if more else 0) | off))))
    _run(tmp_path_factory, pcap(frames))
