"""features.encode against a plain per-flow reference on real captures.

encode() writes packet tokens, payload bytes and BURST neighbours with a few vector operations per batch
(docs/performance.md). The reference below is the straightforward per-packet definition of the same
arrays (docs/flow-record.md, features.py docstring); the two must agree bit for bit, or a model trained
on one would be served the other.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from etool_sensor.context import CONTEXT_SIZES, ContextTracker
from etool_sensor.features import FLAG_VOCAB, IAT_BUCKETS, SIZE_BUCKETS, FeatureSpec, encode, port_token
from etool_sensor.masking import mask_payload, normalize_random

SHARED = Path(__file__).resolve().parents[2] / "shared"
NDPI = SHARED / "data" / "ndpi" / "pcap"
TRACES = SHARED / "data" / "zeek-traces"


def reference(records, contexts, spec: FeatureSpec) -> dict[str, np.ndarray]:
    n, m, bb, k = spec.packets, spec.payload_packets, spec.payload_bytes, spec.context
    b = len(records)
    out = {"pkt": np.zeros((b, n, 4), np.int64), "byt": np.zeros((b, m * bb), np.int64),
           "seg": np.zeros((b, m * bb), np.int64), "ctx": np.zeros((b, k, 3 + CONTEXT_SIZES), np.float32),
           "meta": np.zeros((b, 4), np.float32)}
    for i, r in enumerate(records):
        prev = 0.0
        for j, p in enumerate(r.packets[:n]):
            gap = int((p.dt - prev) * 1e6)
            prev = p.dt
            out["pkt"][i, j] = (1 if p.is_orig else 2, min(p.payload_len // 16, SIZE_BUCKETS - 1),
                                min(gap.bit_length(), IAT_BUCKETS - 1) if gap > 0 else 0, p.tcp_flags % FLAG_VOCAB)
        for c, ch in enumerate(r.payload[:m]):
            data = ch.data[:bb]
            if data and spec.mask_names:
                data = mask_payload(data, r.proto, r.orig_p, r.resp_p)
                if spec.normalize_random:
                    data = normalize_random(data, r.proto, r.orig_p, r.resp_p)
            for t, byte in enumerate(data):
                out["byt"][i, c * bb + t] = byte + 1
                out["seg"][i, c * bb + t] = 1 + 2 * c + (0 if ch.is_orig else 1)
        cx = contexts[i] if contexts is not None else None
        for j, nb in enumerate(cx.neighbours[:k] if cx is not None else []):
            out["ctx"][i, j, 0] = math.copysign(math.log1p(abs(nb.dt)), nb.dt) if nb.dt else 0.0
            out["ctx"][i, j, 1] = nb.burst_gap
            out["ctx"][i, j, 2] = nb.proto == "udp"
            for t, v in enumerate(nb.sizes[:CONTEXT_SIZES]):
                out["ctx"][i, j, 3 + t] = np.float32(v) / np.float32(1500.0)
        out["meta"][i] = (r.proto == "udp", len(r.packets[:n]) / n, r.final,
                          math.log1p(cx.position) if cx is not None else 0.0)
    if spec.use_ports:
        out["port"] = np.array([port_token(r.resp_p) for r in records], np.int64)
    return out


def _real_flows():
    from etool_sensor.capture.reader import read_flows

    files = sorted(NDPI.glob("*.pcap*"))[::6] + sorted(TRACES.rglob("*.pcap"))[::25]
    recs, ctxs = [], []
    for f in files:
        tr = ContextTracker()
        try:
            for r in read_flows(f):
                recs.append(r)
                ctxs.append(tr.observe(r))
        except Exception:
            continue  # unreadable captures are the pcap tests' business
    return recs, ctxs


@pytest.mark.skipif(not NDPI.is_dir(), reason="shared/data not present")
@pytest.mark.parametrize("spec", [FeatureSpec(), FeatureSpec(mask_names=False, normalize_random=False),
                                  FeatureSpec(packets=8, payload_bytes=16, payload_packets=2, context=3,
                                              use_ports=True)], ids=["default", "raw", "small"])
def test_encode_equals_reference_on_real_flows(spec):
    recs, ctxs = _real_flows()
    assert len(recs) > 1000 and any(c.neighbours for c in ctxs) and any(r.payload for r in recs)
    for i in range(0, len(recs), 300):
        got = encode(recs[i:i + 300], ctxs[i:i + 300], spec)
        want = reference(recs[i:i + 300], ctxs[i:i + 300], spec)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key}, batch at {i}")
    # without contexts, and an empty batch
    got = encode(recs[:50], None, spec)
    np.testing.assert_array_equal(got["ctx"], 0)
    np.testing.assert_array_equal(got["pkt"], reference(recs[:50], None, spec)["pkt"])
    empty = encode([], None, spec)
    assert empty["pkt"].shape == (0, spec.packets, 4)
