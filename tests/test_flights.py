"""Flights (features.flights): direction-run totals that do not move with how the path cuts a flight into
packets; their encoding, a student that reads them (ONNX export), and the rf_shape forest in eval."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from etool_sensor.features import FLIGHT_SCALE, FeatureSpec, encode, flights
from etool_sensor.flows import FlowParams, FlowRecord, Packet

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NDPI = SHARED / "data" / "ndpi"


def _rec(sizes: list[int]) -> FlowRecord:
    """A TCP flow from signed payload sizes (+ originator, - responder, 0 = a pure ACK from the originator)."""
    pk = [Packet(0.01 * i, s >= 0, 40 + abs(s), abs(s), 0x18 if s else 0x10) for i, s in enumerate(sizes)]
    return FlowRecord("C1", 0.0, "10.0.0.1", 50000, "10.0.0.2", 443, "tcp", pk)


def test_flights_sum_runs_and_skip_pure_acks():
    r = _rec([0, 517, 0, -1448, -1448, 0, -900, 0, 80, 64, -300, 0, 120])
    assert flights(r, 8) == [(517, 1), (-3796, 3), (144, 2), (-300, 1), (120, 1)]
    assert flights(r, 2) == [(517, 1), (-3796, 3)]  # the second run is complete even when n stops there
    assert flights(_rec([0, 0, 0]), 4) == []


def test_encoded_flights_scale_and_pad():
    r = _rec([0, 517, -3000, 0, -796])
    f = encode([r, _rec([0])], None, FeatureSpec(flights=3))["flt"]
    assert f.shape == (2, 6) and f.dtype == np.float32
    want = [math.log1p(517) / FLIGHT_SCALE, math.log1p(1) / math.log1p(32),
            -math.log1p(3796) / FLIGHT_SCALE, math.log1p(2) / math.log1p(32), 0.0, 0.0]
    assert np.allclose(f[0], want) and not f[1].any()
    assert "flt" not in encode([r], None, FeatureSpec())  # off: the shipped inputs only


def _resegment(r: FlowRecord, mss: int) -> FlowRecord:
    """The same flow through a path with a smaller MSS: every payload packet cut into segments of <= mss."""
    out: list[Packet] = []
    for p in r.packets:
        left = p.payload_len
        if left <= mss:
            out.append(p)
            continue
        while left > 0:
            n = min(mss, left)
            out.append(dataclasses.replace(p, ip_len=p.ip_len - p.payload_len + n, payload_len=n))
            left -= n
    return dataclasses.replace(r, packets=out)


@pytest.mark.skipif(not NDPI.is_dir(), reason="shared data absent")
def test_flights_do_not_move_with_the_mss_on_real_tls_flows():
    """On real TLS flows, a smaller MSS changes the packet sizes the size forest reads but not the flights'
    bytes (as far as the re-cut packets stay inside the record)."""
    from etool_sensor.lab.baselines import signed_sizes
    from etool_sensor.capture.reader import read_flows

    checked = moved = 0
    for name in ("tls_verylong_certificate.pcap", "long_tls_certificate.pcap", "tls_long_cert.pcap", "chrome.pcap"):
        path = NDPI / "pcap" / name
        if not path.exists():
            continue
        for r in read_flows(path, FlowParams(packets=1024)):
            if r.proto != "tcp" or r.resp_p != 443 or not any(p.payload_len > 600 for p in r.packets):
                continue
            small = _resegment(r, 536)
            f, k = flights(r, 4), 4
            while k and sum(c for _, c in flights(small, k)) > 32:  # flights whose packets the record holds
                k -= 1
            if k < 2:
                continue
            a = dataclasses.replace(r, packets=r.packets[:32])
            b = dataclasses.replace(small, packets=small.packets[:32])
            size = lambda fl: [s for s, _ in fl]  # noqa: E731 (the packet counts do follow the MSS)
            assert size(flights(b, k)) == size(f[:k]) == size(flights(a, k))
            moved += not np.array_equal(signed_sizes([a]), signed_sizes([b]))
            checked += 1
    assert checked >= 5 and moved == checked


@pytest.mark.skipif(not NDPI.is_dir(), reason="shared data absent")
def test_a_student_with_flights_exports_and_reads_them(tmp_path):
    pytest.importorskip("onnx")
    from etool_sensor.capture.reader import read_flows
    from tests.test_hello import student_reads_extra_input

    recs = list(read_flows(NDPI / "pcap" / "tls_verylong_certificate.pcap", FlowParams()))
    recs += list(read_flows(NDPI / "pcap" / "quic.pcap", FlowParams()))
    spec = FeatureSpec(flights=6)
    feats = encode(recs, None, spec)
    assert feats["flt"].any(axis=1).sum() >= len(recs) - 1
    student_reads_extra_input(spec, feats, "flt", tmp_path)


@pytest.mark.skipif(not NDPI.is_dir(), reason="shared data absent")
def test_eval_rf_shape_and_student_flights(tmp_path, capsys):
    """rf_shape runs beside rf; --flights reaches the students' features and is bounded by the record."""
    from etool_sensor.lab.cli import main

    out = tmp_path / "s.json"
    args = ["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
            "--no-model", "--splits", "iid", "--encrypted-only", "--quick"]
    assert main(args + ["--methods", "rf", "--flights", "33"]) == 2
    assert "--flights 33" in capsys.readouterr().err
    assert main(args + ["--methods", "rf,rf_shape,student_no_llm", "--flights", "8",
                        "--pcaps", "tls_verylong_certificate.pcap,chrome.pcap,quic.pcap,dnscrypt-v2.pcap,"
                                   "signal.pcap,teams.pcap,1kxun.pcap,openvpn-tlscrypt.pcap"]) == 0
    res = json.loads(out.read_text())
    assert res["features"]["flights"] == 8
    m = res["splits"]["iid"]["methods"]
    assert all("error" not in m[k] and 0.0 < m[k]["accuracy"] <= 1.0 for k in ("rf", "rf_shape", "student_no_llm"))


@pytest.mark.skipif(not NDPI.is_dir(), reason="shared data absent")
def test_encoded_flights_are_flights_scaled_on_real_flows():
    """encode()'s vectorised flt equals flights() scaled one element at a time, on every flow of 60 captures
    (the numbers the bundled forest was trained on)."""
    from etool_sensor.capture.reader import read_flows

    recs = [r for p in sorted((NDPI / "pcap").glob("*.pcap*"))[::8] for r in read_flows(p)]
    assert len(recs) > 300
    got = encode(recs, None, FeatureSpec(flights=12))["flt"]
    want = np.zeros_like(got)
    for i, r in enumerate(recs):
        for j, (size, count) in enumerate(flights(r, 12)):
            want[i, 2 * j] = math.copysign(math.log1p(abs(size)) / FLIGHT_SCALE, size)
            want[i, 2 * j + 1] = math.log1p(count) / math.log1p(32)
    assert np.array_equal(got, want) and (got[:, 2] != 0).sum() > 100  # most flows have a second flight
