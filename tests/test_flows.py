"""Flow record contract v1: validation, JSON form, uids."""

from __future__ import annotations

import re

import pytest

from etool_sensor.flows import Chunk, FlowCollector, FlowError, FlowParams, FlowRecord, Packet, make_uid


def sample() -> FlowRecord:
    c = FlowCollector(100.0, FlowParams(packets=3, payload_bytes=4, payload_packets=1))
    assert not c.add(100.0, True, 60, b"", 0, 0x02)
    assert not c.add(100.1, False, 60, b"", 0, 0x12)
    assert c.add(100.2, True, 57, b"\x16\x03\x01\x00\xff", 5, 0x18)
    assert not c.add(100.3, False, 60, b"x", 1, 0x10)  # past N: ignored
    return c.record(make_uid("t", 1), "10.0.0.1", 40000, "2001:db8::1", 443, "tcp", final=False)


def test_collector_keeps_first_n_and_first_payload_bytes():
    r = sample().validate(FlowParams(packets=3, payload_bytes=4, payload_packets=1))
    assert [p.tcp_flags for p in r.packets] == [0x02, 0x12, 0x18]
    assert [round(p.dt, 6) for p in r.packets] == [0.0, 0.1, 0.2]
    assert r.payload == [Chunk(True, b"\x16\x03\x01\x00")]


def test_json_round_trip():
    r = sample()
    d = r.to_dict()
    assert d["payload"] == [[True, "16030100"]] and d["schema"] == 1
    assert FlowRecord.from_dict(d) == r


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d.update(proto="icmp"), "proto"),
    (lambda d: d.update(orig_p=70000), "orig_p"),
    (lambda d: d.update(packets=[]), "at least one packet"),
    (lambda d: d["packets"][1].__setitem__(0, float("nan")), "plausible offset"),
    (lambda d: d.update(packets=[[0, True, 60, 0, 999]]), "tcp_flags"),
])
def test_validate_rejects(mutate, msg):
    d = sample().to_dict()
    mutate(d)
    with pytest.raises(FlowError, match=msg):
        FlowRecord.from_dict(d).validate()


@pytest.mark.parametrize("bad", [{}, {"uid": "x"}, {**sample().to_dict(), "payload": [[True, "zz"]]},
                                 {**sample().to_dict(), "schema": 2}])
def test_from_dict_malformed_is_flow_error(bad):
    with pytest.raises(FlowError):
        FlowRecord.from_dict(bad)


def test_uid_zeek_format_and_deterministic():
    u = make_uid("capture-sha", 7)
    assert re.fullmatch(r"C[0-9A-Za-z]{17}", u)
    assert u == make_uid("capture-sha", 7) != make_uid("capture-sha", 8)


def test_verdict_alert_only_for_confident_listed_labels():
    from etool_sensor.flows import Verdict

    v = Verdict("C1", "VPN", "OperaVPN", 0.9, False, [], "m@1")
    assert v.alert(frozenset({"VPN"})) == "VPN"
    assert v.alert(frozenset({"OperaVPN"})) == "OperaVPN"
    assert v.alert(frozenset({"Chat"})) is None and v.alert(frozenset()) is None
    v.unknown = True
    assert v.alert(frozenset({"VPN"})) is None
    assert Verdict("C2", "", "", 0.0, False, [], "m@1", status="too_few_packets").alert({""}) is None


@pytest.mark.parametrize("compiled", [True, False])
def test_uid_maker_equals_make_uid(compiled, monkeypatch):
    """uid_maker (base-62 text in C when the extension is built, else in Python) == make_uid."""
    import random
    import sys

    from etool_sensor.flows import make_uid, uid_maker

    if not compiled:
        monkeypatch.setenv("ETOOL_PURE_PYTHON", "1")  # the one switch that turns every compiled twin off
        monkeypatch.setitem(sys.modules, "etool_sensor._fastpath", None)  # and an install without the build
    rnd = random.Random(0)
    for base in ("3f2a9c:0", "", "x" * 40 + ":7"):
        make = uid_maker(base)
        assert (make.__name__ == "fast") == (compiled and sys.modules.get("etool_sensor._fastpath") is not None)
        for n in list(range(300)) + [rnd.randrange(10**15) for _ in range(3000)]:
            assert make(n) == make_uid(base, n)


def test_within_gives_what_a_smaller_collection_records_on_real_captures():
    """FlowRecord.within(params) on a record collected with more packets, bytes and payload packets is the
    record a collection of `params` makes of the same connection: checked flow by flow against the reader run
    with each collection on real captures (TCP and UDP, flows that end early and flows cut at N)."""
    from tests.support import NDPI
    from etool_sensor.capture.reader import read_flows

    pcaps = [NDPI / "pcap" / n for n in ("443-chrome.pcap", "quic.pcap", "whatsapp_login_chat.pcap", "dns.pcap", "zoom.pcap", "teams.pcap",
                                          "telegram.pcap", "ssh.pcap", "youtube_quic.pcap")]
    pcaps = [p for p in pcaps if p.is_file()]
    if len(pcaps) < 3:
        pytest.skip("the nDPI captures are not present")
    small, big = FlowParams(32, 64, 3), FlowParams(64, 128, 5)
    for pairs in ((small, big), (FlowParams(8, 16, 1), small), (FlowParams(2, 0, 0), big)):
        lo, hi = pairs
        want = {r.uid: r for r in read_flows(pcaps, lo)}
        got = {r.uid: r.within(lo) for r in read_flows(pcaps, hi)}
        assert got.keys() == want.keys() and len(got) > 100
        assert got == want
        cut = sum(len(r.packets) > lo.packets for r in read_flows(pcaps, hi))
        assert cut > 20  # the comparison covered records that had to be cut
    r = next(iter(read_flows(pcaps[:1], small)))
    assert r.within(small) is r  # a record that fits is returned as it is
