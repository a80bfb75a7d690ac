"""The compiled encoder (_fastpath.encode_arrays, features._arrays_c) against features._arrays_py.

The model must see the same numbers whichever path encoded a flow, so both are compared array by array,
bit for bit: on every flow of the shared captures with its real BURST context, under each feature spec the
encoder supports (masking on and off, random fields kept, other windows), in batches, and on odd records
built by hand (no packets, empty chunks, more neighbours than slots, gaps that overflow, bools and floats
where ints are expected). Where the C path declines (a record it cannot read plainly) the Python one runs:
checked too, including that errors are the Python path's.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from etool_sensor import features
from etool_sensor.context import ContextTracker, Neighbour
from etool_sensor.features import FeatureSpec, _arrays_c, _arrays_py, encode
from etool_sensor.flows import Chunk, FlowParams, FlowRecord, Packet
from etool_sensor.capture.reader import read_flows
from tests.support import NDPI, ZEEK_TRACES

fast = pytest.importorskip("etool_sensor._fastpath")
if not hasattr(fast, "encode_arrays"):  # pragma: no cover - a build from before encode_arrays
    pytest.skip("_fastpath has no encode_arrays", allow_module_level=True)

SPECS = [
    FeatureSpec(),
    FeatureSpec(mask_names=False),
    FeatureSpec(normalize_random=False),
    FeatureSpec(packets=8, payload_bytes=16, payload_packets=2, context=3),
    FeatureSpec(packets=48, payload_bytes=200, payload_packets=5, context=12),
    FeatureSpec(flights=12),  # the hybrid's flt (records of 48 packets: flights over all of them)
    FeatureSpec(packets=8, flights=3),
]


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        # bit for bit (also NaN where both have NaN)
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), (k, np.argwhere(a[k] != b[k])[:5])


@pytest.fixture(scope="module")
def flows() -> tuple[list, list]:
    """Every flow of the nDPI captures and 150 Zeek traces, with its context, in read order."""
    caps = sorted((NDPI / "pcap").glob("*.pcap*")) + sorted(ZEEK_TRACES.rglob("*.pcap*"))[:150]
    if not caps:
        pytest.skip("shared/data not present")
    recs, ctxs = [], []
    for p in caps:
        tr = ContextTracker()
        for r in read_flows(p, FlowParams(packets=48, payload_bytes=200, payload_packets=5)):
            recs.append(r)
            ctxs.append(tr.observe(r))
    assert len(recs) > 5000
    return recs, ctxs


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"n{s.packets}b{s.payload_bytes}m{s.mask_names}"
                                                    f"r{s.normalize_random}f{s.flights}")
def test_every_real_flow_encodes_alike(flows, spec):
    recs, ctxs = flows
    for i in range(0, len(recs), 500):
        r, c = recs[i:i + 500], ctxs[i:i + 500]
        got = _arrays_c(r, c, spec, spec.mask_names)
        assert got is not None  # real records are plain: the C path must take them
        same(got, _arrays_py(r, c, spec, spec.mask_names))
    nonzero = _arrays_c(recs[:2000], ctxs[:2000], spec, spec.mask_names)
    # the comparison is over real content: packets, bytes and neighbours were written
    assert (nonzero["pkt"] != 0).sum() > 10_000 and (nonzero["byt"] != 0).sum() > 10_000
    assert (nonzero["ctx"] != 0).sum() > 1_000 and (nonzero["meta"][:, 3] != 0).sum() > 100
    if spec.flights:
        assert (nonzero["flt"][:, 2 * spec.flights - 2] != 0).sum() > 50  # flows that reach the last flight


def test_batching_and_missing_contexts(flows):
    recs, ctxs = flows
    spec = FeatureSpec()
    rng = random.Random(7)
    idx = rng.sample(range(len(recs)), 300)
    r = [recs[i] for i in idx]
    c = [ctxs[i] if i % 3 else None for i in idx]  # some flows without a context
    same(_arrays_c(r, c, spec, True), _arrays_py(r, c, spec, True))
    same(_arrays_c(r, None, spec, True), _arrays_py(r, None, spec, True))
    same(_arrays_c(tuple(r), tuple(c), spec, True), _arrays_py(r, c, spec, True))
    # one flow alone gives the rows it gets in a batch
    one = _arrays_c(r[5:6], c[5:6], spec, True)
    batch = _arrays_c(r, c, spec, True)
    for k in one:
        assert np.array_equal(one[k][0], batch[k][5])
    empty = _arrays_c([], [], spec, True)
    same(empty, _arrays_py([], [], spec, True))


def rec(packets, payload, proto="tcp", final=True, orig_p=51000, resp_p=443):
    return FlowRecord("C1", 1.0, "10.0.0.1", orig_p, "10.0.0.2", resp_p, proto, packets, payload, final)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # numpy on the 1e300 gaps
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # and on 1e300 sizes
def test_odd_records_encode_alike():
    spec = FeatureSpec()
    huge = 1e300
    odd = [
        rec([], []),
        rec([Packet(0.0, True, 40, 0, 2)], [Chunk(True, b"")]),
        rec([Packet(0.0, True, 1540, 1500, 0x18), Packet(0.5, False, 2000, 4000, 0x10)],
            [Chunk(False, b"\x16\x03\x01" + bytes(range(200)))], proto="udp", final=False),
        # gaps: zero, negative (out of order), huge (int64 overflow), sub-microsecond
        rec([Packet(5.0, True, 60, 20, 0), Packet(4.0, False, 60, 20, 0), Packet(huge, True, 60, 20, 0),
             Packet(huge + 1, True, 60, 20, 0), Packet(huge, False, 60, 0, 0)], []),
        rec([Packet(0.0, 1, 60, 20.7, 300), Packet(1e-7, 0, 60, -5, -1), Packet(2.5e-6, 2, 60, 0, 0)], []),
        rec([Packet(float(i), i % 2 == 0, 100, i * 37, i) for i in range(40)],
            [Chunk(bool(i % 2), bytes([i]) * 70) for i in range(5)], proto="icmp"),
        rec([Packet(0.0, True, 60, 20, 0)], [Chunk(True, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")],
            resp_p=80),
        rec([Packet(0.0, True, 60, 20, 0)], [Chunk(True, bytes(12) + b"\x07example\x03com\x00")], proto="udp",
            resp_p=53),
    ]
    nbs = [Neighbour(-0.5, 0, "tcp", (100, -200)), Neighbour(0.0, 1, "udp", ()),
           Neighbour(2.0, 2, "tcp", tuple(range(-600, 600, 100))), Neighbour(-1e9, 3, "quic", (1, 2, 3)),
           # an int 0 is negated before float(): -log1p(0) = -0.0 in Python, not +0.0 (found by fuzzing)
           Neighbour(0, 0, "tcp", (7,)), Neighbour(-0.0, 0, "tcp", ()), Neighbour(False, 1, "udp", (2**40, 1e300))]
    ctxs = [None, features.Context(0, 0, []), features.Context(3, 7, nbs * 3), features.Context(1, 1, nbs[:2]),
            features.Context(0, 2, nbs), features.Context(9, 100, nbs[::-1]), None, features.Context(0, 1, nbs)]
    for mask in (True, False):
        for sp in (spec, dataclasses.replace(spec, packets=4, payload_bytes=8, payload_packets=1, context=2)):
            got = _arrays_c(odd, ctxs, sp, mask)
            assert got is not None
            same(got, _arrays_py(odd, ctxs, sp, mask))


def test_declines_and_errors_are_the_python_paths():
    spec = FeatureSpec()
    ok = rec([Packet(0.0, True, 60, 20, 0)], [Chunk(True, b"abc")])
    # shapes the C path does not read: it declines, encode() falls back and gives the Python result
    for r in (rec([Packet(0.0, True, 60, 20, 0)], [Chunk(True, bytearray(b"abc"))]),
              rec(iter([Packet(0.0, True, 60, 20, 0)]), [])):
        assert _arrays_c([ok, r], None, spec, True) is None
    r = rec([Packet(0.0, True, 60, 20, 0)], [Chunk(True, bytearray(b"GET / HTTP/1.1\r\nHost: a.b\r\n"))], resp_p=80)
    same(encode([ok, r], None, spec), _arrays_py([ok, r], None, spec, True))
    assert _arrays_c([ok], [None, None], spec, True) is not None  # more contexts than records: as Python
    assert _arrays_c([ok, ok], [None], spec, True) is None  # fewer: Python raises IndexError
    with pytest.raises(IndexError):
        encode([ok, ok], [None], spec)
    bad = rec([Packet(0.0, True, 60, "x", 0)], [])
    assert _arrays_c([bad], None, spec, True) is None
    with pytest.raises(ValueError):
        encode([bad], None, spec)


def test_encode_uses_the_compiled_path(monkeypatch, flows):
    """encode() gives _arrays_py's arrays with the C path on and off (and the extras on top)."""
    recs, ctxs = flows
    for spec in (FeatureSpec(), FeatureSpec(use_ports=True, flights=4)):
        a = encode(recs[:400], ctxs[:400], spec)
        monkeypatch.setattr(features, "_encode_c", None)
        b = encode(recs[:400], ctxs[:400], spec)
        monkeypatch.undo()
        same(a, b)


def test_pure_python_switch_turns_the_compiled_encoder_off():
    import os
    import subprocess
    import sys

    code = "import etool_sensor.features as f; print(f._encode_c is None)"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        env={k: v for k, v in os.environ.items() if k != "ETOOL_PURE_PYTHON"})
    off = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, ETOOL_PURE_PYTHON="1"),
                         capture_output=True, text=True, check=True)
    assert (on.stdout.strip(), off.stdout.strip()) == ("False", "True")
