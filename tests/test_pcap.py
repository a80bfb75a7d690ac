"""read_flows: formats, link types, bad input, streaming."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from etool_sensor.capture import native
from etool_sensor.flows import FlowParams
from etool_sensor.capture.reader import PcapError, ReadStats, read_flows

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NDPI = SHARED / "data" / "ndpi" / "pcap"
ZT = SHARED / "data" / "zeek-traces"


def ip4(src, dst, proto, payload, ident=1, frag=0):
    tot = 20 + len(payload)
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, tot, ident, frag, 64, proto, 0, bytes(src), bytes(dst))
    s = sum(struct.unpack(">10H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return h[:10] + struct.pack(">H", ~s & 0xFFFF) + h[12:] + payload


def udp(sp, dp, data):
    return struct.pack(">HHHH", sp, dp, 8 + len(data), 0) + data


def tcp(sp, dp, seq, ack, flags, data=b""):
    return struct.pack(">HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, 65535, 0, 0) + data


def eth(payload, et=0x0800, vlans=()):
    h = b"\x00" * 12
    for v in vlans:
        h += struct.pack(">HH", 0x8100, v)
    return h + struct.pack(">H", et) + payload


def pcap(frames, linktype=1, nano=False, be=False):
    e = ">" if be else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, (ts, f) in enumerate(frames):
        sec = int(ts)
        frac = int(round((ts - sec) * (1e9 if nano else 1e6)))
        out += struct.pack(e + "IIII", sec, frac, len(f), len(f)) + f
    return out


A, B = (10, 0, 0, 1), (10, 0, 0, 2)


@pytest.fixture(autouse=True, params=["engine", "python"])
def reader(request, monkeypatch):
    """Every test reads through the compiled engine (Ethernet classic pcap) and the pure-Python reader."""
    if request.param == "python":
        monkeypatch.setenv("ETOOL_PURE_PYTHON", "1")
    else:
        if native._fastpath is None:
            pytest.skip("C extension not built")
        monkeypatch.delenv("ETOOL_PURE_PYTHON", raising=False)
    return request.param


def _read(tmp_path, data, name="x.pcap", **kw):
    p = tmp_path / name
    p.write_bytes(data)
    st = ReadStats()
    conns = []
    recs = list(read_flows(p, stats=st, on_conn=conns.append, checksums=False, **kw))
    return recs, conns, st


def test_missing_file_and_not_a_capture(tmp_path):
    with pytest.raises(PcapError):
        list(read_flows(tmp_path / "nope.pcap"))
    (tmp_path / "t.txt").write_text("hello world, not a capture")
    with pytest.raises(PcapError) as e:
        list(read_flows(tmp_path / "t.txt"))
    assert "\n" not in str(e.value)
    (tmp_path / "e.pcap").write_bytes(b"")
    with pytest.raises(PcapError):
        list(read_flows(tmp_path / "e.pcap"))


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("be", [False, True])
def test_pcap_variants_and_udp(tmp_path, nano, be):
    frames = [(1000.5, eth(ip4(A, B, 17, udp(5555, 53, b"q" * 10)))),
              (1000.75, eth(ip4(B, A, 17, udp(53, 5555, b"r" * 30))))]
    recs, conns, st = _read(tmp_path, pcap(frames, nano=nano, be=be))
    assert len(recs) == 1 and recs[0].final and len(recs[0].packets) == 2
    r = recs[0]
    assert (r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.proto) == ("10.0.0.1", 5555, "10.0.0.2", 53, "udp")
    assert abs(r.ts - 1000.5) < 1e-6 and abs(r.packets[1].dt - 0.25) < 1e-6
    c = conns[0]
    assert (c.orig_pkts, c.orig_ip_bytes, c.resp_pkts, c.resp_ip_bytes) == (1, 38, 1, 58)
    assert c.uid == r.uid


def test_udp_server_port_flip_and_gzip(tmp_path):
    frames = [(1.0, eth(ip4(B, A, 17, udp(53, 40000, b"x"))))]
    data = gzip.compress(pcap(frames))
    recs, conns, st = _read(tmp_path, data, name="cap.bin")
    assert recs[0].orig_h == "10.0.0.1" and recs[0].resp_p == 53
    assert recs[0].packets[0].is_orig is False


def test_tcp_n_packets_then_close_and_port_reuse(tmp_path):
    p = FlowParams(packets=4, payload_bytes=4, payload_packets=2)
    f = [(1.0, tcp(1234, 443, 100, 0, 0x02)), (1.1, tcp(443, 1234, 500, 101, 0x12)),
         (1.2, tcp(1234, 443, 101, 501, 0x10)), (1.3, tcp(1234, 443, 101, 501, 0x18, b"hello")),
         (1.4, tcp(443, 1234, 501, 106, 0x18, b"world!")), (1.5, tcp(1234, 443, 106, 507, 0x11)),
         (1.6, tcp(443, 1234, 507, 107, 0x11)), (1.7, tcp(1234, 443, 107, 508, 0x10)),
         # new SYN with a different ISN on the same 4-tuple -> new connection
         (2.0, tcp(1234, 443, 9000, 0, 0x02))]
    frames = [(t, eth(ip4(A, B, 6, seg) if seg[:2] == b"\x04\xd2" else ip4(B, A, 6, seg))) for t, seg in f]
    recs, conns, st = _read(tmp_path, pcap(frames), params=p)
    assert [r.final for r in recs] == [False, True]
    assert recs[0].payload[0].data == b"hell" and recs[0].payload[0].is_orig
    assert len(conns) == 2 and conns[0].conn_state == "SF" and conns[0].orig_pkts == 5 and conns[0].resp_pkts == 3
    assert conns[0].uid != conns[1].uid and conns[0].history.startswith("ShAD")


def test_vlan_qinq_sll_raw_null(tmp_path):
    pkt = ip4(A, B, 17, udp(1000, 2000, b"z"))
    for lt, frame in [(1, eth(pkt, vlans=(10, 20))), (101, pkt), (228, pkt), (0, struct.pack("<I", 2) + pkt),
                      (113, b"\x00" * 14 + b"\x08\x00" + pkt), (276, b"\x08\x00" + b"\x00" * 18 + pkt)]:
        recs, conns, st = _read(tmp_path, pcap([(1.0, frame)], linktype=lt))
        assert len(recs) == 1, lt


def test_unsupported_linktype_is_skipped(tmp_path):
    recs, conns, st = _read(tmp_path, pcap([(1.0, b"\x00" * 40)], linktype=147))
    assert recs == [] and st.skipped_linktypes == {147: 1}


def test_ipv6_extension_headers(tmp_path):
    pl = udp(1000, 2000, b"abc")
    hbh = bytes([60, 0]) + b"\x00" * 6  # hop-by-hop -> dest opts
    dst = bytes([17, 0]) + b"\x00" * 6  # dest opts -> UDP
    body = hbh + dst + pl
    h = struct.pack(">IHBB16s16s", 6 << 28, len(body), 0, 64, b"\x20\x01" + b"\x00" * 13 + b"\x01",
                    b"\x20\x01" + b"\x00" * 13 + b"\x02")
    recs, conns, st = _read(tmp_path, pcap([(1.0, eth(h + body, et=0x86DD))]))
    assert len(recs) == 1 and recs[0].orig_h == "2001::1" and conns[0].orig_ip_bytes == 40 + len(body)
    # ESP stops
    h2 = struct.pack(">IHBB16s16s", 6 << 28, 8, 50, 64, b"\x00" * 16, b"\x00" * 16)
    recs, conns, st = _read(tmp_path, pcap([(1.0, eth(h2 + b"\x00" * 8, et=0x86DD))]))
    assert recs == [] and st.non_tcp_udp == 1


def test_ipv4_fragments_reassembled(tmp_path):
    data = udp(1000, 2000, b"A" * 100)
    f1 = ip4(A, B, 17, data[:64], ident=7, frag=0x2000)
    f2 = ip4(A, B, 17, data[64:], ident=7, frag=8)
    recs, conns, st = _read(tmp_path, pcap([(1.0, eth(f1)), (1.1, eth(f2))]))
    assert st.fragments == 2 and len(conns) == 1
    assert conns[0].orig_pkts == 1 and conns[0].orig_ip_bytes == 20 + len(data)


def test_truncated_capture(tmp_path):
    frames = [(1.0, eth(ip4(A, B, 17, udp(1, 2, b"x")))), (2.0, eth(ip4(A, B, 17, udp(1, 3, b"y"))))]
    data = pcap(frames)[:-5]
    recs, conns, st = _read(tmp_path, data)
    assert st.truncated and len(recs) == 1


def test_pcapng_multi_interface():
    if not (ZT / "pcapng-multi-interface.pcapng").exists():
        pytest.skip("shared data absent")
    st = ReadStats()
    recs = list(read_flows(ZT / "pcapng-multi-interface.pcapng", stats=st, checksums=False))
    assert len(recs) == 3 and all(len(r.packets) == 2 for r in recs)


def test_streaming_yields_before_end(tmp_path):
    frames = [(1.0 + i, eth(ip4(A, B, 17, udp(1000 + i, 53, b"x")))) for i in range(200)]
    p = tmp_path / "s.pcap"
    p.write_bytes(pcap(frames))
    it = read_flows(p, FlowParams(packets=1), checksums=False)
    first = next(it)
    assert first.orig_p == 1000 and not first.final


def test_uids_distinct_across_files_and_deterministic(tmp_path):
    frames = [(1.0, eth(ip4(A, B, 17, udp(1, 2, b"x"))))]
    (tmp_path / "a.pcap").write_bytes(pcap(frames))
    (tmp_path / "b.pcap").write_bytes(pcap(frames))
    u1 = [r.uid for r in read_flows([tmp_path / "a.pcap", tmp_path / "b.pcap"])]
    u2 = [r.uid for r in read_flows([tmp_path / "a.pcap", tmp_path / "b.pcap"])]
    assert u1 == u2 and len(set(u1)) == 2


def test_progress_sums_to_file_size(tmp_path):
    frames = [(1.0 + i, eth(ip4(A, B, 17, udp(1000 + i, 53, b"x")))) for i in range(50)]
    p = tmp_path / "p.pcap"
    p.write_bytes(pcap(frames))
    got = []
    list(read_flows(p, progress=got.append))
    assert sum(got) == p.stat().st_size


@pytest.mark.skipif(not NDPI.exists(), reason="shared data absent")
def test_read_all_ndpi_captures():
    st = ReadStats()
    n = 0
    for f in sorted(NDPI.iterdir()):
        try:
            for _ in read_flows(f, stats=st):
                n += 1
        except PcapError:
            pass  # a few files there are deliberately not captures
    print(f"nDPI captures: {st.files} files, {st.packets} packets, {n} flow records, {st.flows} connections")
    assert st.files > 400 and n > 5000
