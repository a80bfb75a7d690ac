"""Name masking on real captures: no server name survives, everything else does."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest

from etool_sensor.flows import FlowParams
from etool_sensor.masking import mask_dns, mask_payload, mask_tls_client_hello
from etool_sensor.train.data import flow_key

from conftest import NDPI

WIDE = FlowParams(packets=32, payload_bytes=1500, payload_packets=3)


def _sni_flows(limit_pcaps: int = 60):
    """(record, sni) for flows whose nDPI row names an SNI, from the first captures that have any."""
    from etool_sensor.pcap import read_flows

    rows = defaultdict(dict)
    with open(NDPI / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            sni = row["sni"]
            if sni and "." in sni and not sni.startswith("[") and ":" not in sni and len(sni) >= 6:
                rows[row["pcap"]][flow_key(row["l4"], row["src"], row["sport"], row["dst"], row["dport"])] = sni
    out = []
    for name in sorted(rows)[:limit_pcaps]:
        for r in read_flows(NDPI / "pcap" / name, WIDE):
            sni = rows[name].get(flow_key(r.proto, r.orig_h, r.orig_p, r.resp_h, r.resp_p))
            if sni:
                out.append((r, sni.encode()))
    return out


@pytest.fixture(scope="module")
def sni_flows(shared):
    flows = _sni_flows()
    assert len(flows) > 100, "expected many flows with a server name in the nDPI corpus"
    return flows


def test_names_visible_before_masking_gone_after(sni_flows):
    visible = hidden_after = 0
    for r, sni in sni_flows:
        raw = b"".join(c.data for c in r.payload)
        if sni not in raw:
            continue  # e.g. QUIC v1 (SNI encrypted) or a name nDPI took from elsewhere
        visible += 1
        masked = b"".join(mask_payload(c.data, r.proto, r.orig_p, r.resp_p) for c in r.payload)
        assert len(masked) == len(raw), "masking must keep lengths"
        if sni not in masked:
            hidden_after += 1
        else:
            pytest.fail(f"{r.uid} {r.orig_h}->{r.resp_h}:{r.resp_p}/{r.proto}: {sni!r} survives masking")
    assert visible > 100
    assert hidden_after == visible
    print(f"\nname masking: {hidden_after}/{visible} visible server names masked")


def test_masking_leaves_other_bytes_alone(sni_flows):
    changed = total = 0
    for r, _ in sni_flows[:300]:
        for c in r.payload:
            m = mask_payload(c.data, r.proto, r.orig_p, r.resp_p)
            diff = sum(a != b for a, b in zip(m, c.data))
            changed += diff
            total += len(c.data)
            assert all(b == 0x2A for a, b in zip(c.data, m) if a != b), "only '*' may be written"
    assert 0 < changed < total * 0.2


def test_truncated_client_hello_is_tolerated():
    hello = bytearray.fromhex("16030100c8010000c40303") + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    ext = b"\x00\x00" + (18).to_bytes(2, "big") + (16).to_bytes(2, "big") + b"\x00" + (13).to_bytes(2, "big") + b"www.etool.test"
    hello += len(ext).to_bytes(2, "big") + ext
    for cut in range(len(hello) + 1):
        buf = bytearray(hello[:cut])
        mask_tls_client_hello(buf)  # must never raise
        assert b"etool.test" not in bytes(buf) or cut < len(hello) - 10
    full = bytearray(hello)
    assert mask_tls_client_hello(full) and b"www.etool.test" not in full and b"*" * 14 in full


def test_dns_query_name_masked_keeps_label_lengths():
    q = bytearray.fromhex("abcd01000001000000000000") + b"\x03www\x05etool\x04test\x00" + b"\x00\x01\x00\x01"
    assert mask_dns(q)
    assert bytes(q[12:]) == b"\x03***\x05*****\x04****\x00\x00\x01\x00\x01"
