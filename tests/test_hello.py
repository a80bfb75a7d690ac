"""TLS handshake structure (tls.parse_hello): exact parsing of built hellos, cut hellos, real captures; and
the check that a student reads an optional input (student_reads_extra_input, used for flights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etool_sensor.features import FeatureSpec
from etool_sensor.flows import FlowParams
from etool_sensor.tls import parse_hello

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PCAPS = SHARED / "data" / "ndpi" / "pcap"


def _hello(kind: int, ciphers: list[int], exts: list[tuple[int, bytes]], sid: bytes = bytes(32)) -> bytes:
    body = b"\x03\x03" + bytes(range(32)) + bytes([len(sid)]) + sid
    if kind == 1:
        cs = b"".join(c.to_bytes(2, "big") for c in ciphers)
        body += len(cs).to_bytes(2, "big") + cs + b"\x01\x00"
    else:
        body += ciphers[0].to_bytes(2, "big") + b"\x00"
    ex = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in exts)
    body += len(ex).to_bytes(2, "big") + ex
    hs = bytes([kind]) + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


CH = _hello(1, [0x1A1A, 0x1301, 0x1302, 0xC02F], [(0x3A3A, b""), (0, b"\x00\x05\x00\x00\x02ab"), (16, b"\x00\x03\x02h2"),
                                                  (43, b"\x02\x03\x04")])
SH = _hello(2, [0x1301], [(43, b"\x03\x04"), (51, bytes(36))])


def test_parse_built_hellos_exactly():
    assert parse_hello(CH) == (1, 0x0303, [0x1301, 0x1302, 0xC02F], [0, 16, 43])  # GREASE dropped
    assert parse_hello(SH) == (2, 0x0303, [0x1301], [43, 51])
    assert parse_hello(b"\x17\x03\x03" + bytes(60)) is None  # application data
    assert parse_hello(CH[:43]) is None


def test_cut_hellos_yield_a_prefix_and_never_raise():
    for full in (CH, SH):
        want = parse_hello(full)
        for cut in range(44, len(full) + 1):
            got = parse_hello(full[:cut])
            assert got is not None and got[:2] == want[:2]
            assert got[2] == want[2][:len(got[2])] and got[3] == want[3][:len(got[3])]


@pytest.mark.skipif(not PCAPS.is_dir(), reason="shared data absent")
def test_real_hellos_parse():
    from etool_sensor.capture.reader import read_flows

    recs = []
    for p in sorted(PCAPS.glob("*.pcap"))[::4]:
        recs += [r for r in read_flows(p, FlowParams(payload_bytes=1024))]
    client = [h for r in recs for c in r.payload if c.is_orig and (h := parse_hello(c.data)) and h[0] == 1]
    server = [h for r in recs for c in r.payload if not c.is_orig and (h := parse_hello(c.data)) and h[0] == 2]
    assert len(client) >= 20 and len(server) >= 10
    # every complete ClientHello offers TLS 1.2/1.3 suites and names its extensions; a server picks one suite
    assert sum(bool(h[2]) and bool(h[3]) for h in client) >= 0.9 * len(client)
    assert all(len(h[2]) == 1 for h in server)


def student_reads_extra_input(spec: FeatureSpec, feats: dict, name: str, tmp_path: Path) -> None:
    """A student built for `spec` takes the optional input `name` last, exports to ONNX with torch's logits,
    and reads it: zeroing the input changes the logits."""
    torch = pytest.importorskip("torch")
    from etool_sensor.train.model import EncoderConfig, StudentClassifier, input_names
    from etool_sensor.export.onnx_export import export_onnx, torch_logits
    from etool_sensor.export.quantize import onnx_logits, parity

    torch.manual_seed(0)
    model = StudentClassifier(EncoderConfig.from_spec(spec), 5, 7).eval()
    assert input_names(model.encoder.c)[-1] == name
    ref = torch_logits(model, feats)
    p = parity(ref, onnx_logits(export_onnx(model, tmp_path / f"{name}.onnx"), feats))
    assert p["service_max_abs_logit_diff"] < 1e-3 and p["service_argmax_agreement"] == 1.0
    off = dict(feats, **{name: np.zeros_like(feats[name])})
    assert not np.allclose(torch_logits(model, off)[0], ref[0])
