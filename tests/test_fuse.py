"""export/fuse.py: integer products with float outputs and int8 attention. The fused graph must be at least
as close to the trained function as the graph it replaces, and keep a flow's scores independent of its batch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.test_model import PCAPS
from tests.test_token_axes import needs_data, real_flows  # noqa: F401 (fixture)


def _static_int8(model, feats, tmp_path):
    """The exporter's static-int8 graph of `model` before fusing: (simplified graph, granules)."""
    from etool_sensor.export.onnx_export import export_onnx
    from etool_sensor.export.quantize import quantize_static_int8
    from etool_sensor.export.simplify import simplify_graph
    from etool_sensor.export.token_axes import granules, make_token_axes_dynamic

    gran = granules(model.encoder.c.to_dict())
    q = quantize_static_int8(export_onnx(model, tmp_path / "fp32.onnx"), tmp_path / "int8.onnx", feats)
    cut = make_token_axes_dynamic(q, tmp_path / "cut.onnx", gran)
    simplify_graph(cut, tmp_path / "simple.onnx")
    return tmp_path / "simple.onnx", gran


def _ops(path):
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


@needs_data
@pytest.mark.parametrize("shape", [
    {},  # the default shape
    {"layers": 1, "pkt_stride": 4, "dgram_stride": 16},  # the fast one
    {"pkt_stride": 1, "use_payload": False},
])
def test_fused_graph_is_closer_to_torch_and_batch_independent(shape, real_flows, tmp_path):  # noqa: F811
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from etool_sensor.features import FeatureSpec, encode
    from etool_sensor.runtime import run_graph, session_options
    from etool_sensor.train.model import EncoderConfig, StudentClassifier
    from etool_sensor.export.fuse import check_closer, closeness, fuse_graph
    from etool_sensor.export.onnx_export import torch_logits
    from etool_sensor.export.token_axes import cut_logits

    spec = FeatureSpec()
    torch.manual_seed(0)
    model = StudentClassifier(EncoderConfig.from_spec(spec, **shape), 6, 9).eval()
    recs, ctxs = real_flows
    feats = encode(recs[:800], ctxs[:800], spec)
    simple, gran = _static_int8(model, feats, tmp_path)
    done = fuse_graph(simple, tmp_path / "fused.onnx")
    layers = model.encoder.c.layers
    assert done["int8_attention"] == layers and done["gemm_float_out"] >= 2  # both heads (+ the meta input)
    assert done["matmul_float_out"] >= 3 * layers  # proj, mlp.0, mlp.2 of every block (+ input projections)
    before, after = _ops(simple), _ops(tmp_path / "fused.onnx")
    assert "QLinearMatMul" in before and "QLinearMatMul" not in after and after.count("QAttention") == layers
    assert not [o for o in after if o in ("Softmax", "Split")]
    assert len(after) < len(before) - 15 * layers
    ref = torch_logits(model, feats)
    before, after = cut_logits(simple, feats, gran), cut_logits(tmp_path / "fused.onnx", feats, gran)
    prev, new = closeness(ref, before), closeness(ref, after)
    assert new["service_mean_abs_logit_diff"] < prev["service_mean_abs_logit_diff"]
    # labels off the reference, counted where the untrained model's top two logits are not a near-tie on
    # either head: at random init a quarter of the flows are, and which of those an int8 path rounds the
    # other way depends on the CPU's int8 kernel (AVX2 without VNNI saturates u8 x s8 pairs)
    margin = [np.diff(np.sort(r, 1)[:, -2:], axis=1)[:, 0] for r in ref]
    keep = (margin[0] > 0.05) & (margin[1] > 0.05)
    assert keep.sum() >= 0.3 * len(keep)
    sub = lambda x: (x[0][keep], x[1][keep])  # noqa: E731
    check_closer(closeness(sub(ref), sub(before)), closeness(sub(ref), sub(after)), int(keep.sum()), "test")
    # a flow's scores: the same bits alone, shuffled in batches of 7, or all together
    s = ort.InferenceSession(str(tmp_path / "fused.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    heads = ["service_logits", "app_logits"]
    whole = run_graph(s, heads, feats, names, gran)
    perm = np.random.default_rng(0).permutation(len(feats["pkt"]))
    parts = [run_graph(s, heads, {k: v[perm[i:i + 7]] for k, v in feats.items()}, names, gran)
             for i in range(0, len(perm), 7)]
    for h in range(2):
        assert np.array_equal(whole[h][perm], np.concatenate([p[h] for p in parts]))
    with pytest.raises(ValueError, match="nothing to fuse"):
        fuse_graph(tmp_path / "fused.onnx", tmp_path / "again.onnx")
    with pytest.raises(ValueError, match="nothing to fuse"):
        fuse_graph(tmp_path / "fp32.onnx", tmp_path / "fp32_fused.onnx")  # fp32: no int8 products


def test_check_closer_wants_no_drift_from_the_reference():
    from etool_sensor.export.fuse import check_closer

    prev = {"service_argmax_agreement": 0.99, "app_argmax_agreement": 0.98,
            "service_mean_abs_logit_diff": 0.02, "app_mean_abs_logit_diff": 0.04}
    check_closer(prev, dict(prev), 1000, "pkg")  # as close: accepted
    check_closer(prev, {**prev, "service_argmax_agreement": 0.989}, 1000, "pkg")  # one near-tie more
    with pytest.raises(ValueError, match="service: 12 vs 10 labels off"):
        check_closer(prev, {**prev, "service_argmax_agreement": 0.988}, 1000, "pkg")
    with pytest.raises(ValueError, match="app: .* mean abs logit diff 0.0410 vs 0.0400"):
        check_closer(prev, {**prev, "app_mean_abs_logit_diff": 0.041}, 1000, "pkg")


@needs_data
def test_fuse_package_rewrites_an_unfused_package_once(quick_package, tmp_path):
    """`python -m etool_sensor.export.fuse PKG` on a static-int8 package exported before the step existed."""
    pytest.importorskip("torch")
    from etool_sensor.runtime import load_model, sha256_file
    from etool_sensor.train.student import Student
    from export import fuse
    from etool_sensor.export.quantize import STATIC_INT8, STATIC_INT8_UNFUSED
    from etool_sensor.export.token_axes import real_features
    caps = [str(PCAPS / "tls_verylong_certificate.pcap"), str(PCAPS / "1kxun.pcap"), str(PCAPS / "instagram.pcap")]
    pkg = tmp_path / "pkg"
    shutil.copytree(quick_package, pkg)
    st = Student.load(pkg / "student.pt")
    feats, _ = real_features(caps, st.spec)
    simple, _ = _static_int8(st.model.eval(), feats, tmp_path)
    shutil.copyfile(simple, pkg / "model.onnx")
    m = json.loads((pkg / "manifest.json").read_text())
    del m["fused"], m["parity"]["fused"]
    m["quantization"], m["sha256"] = STATIC_INT8_UNFUSED, sha256_file(pkg / "model.onnx")
    (pkg / "manifest.json").write_text(json.dumps(m))
    assert fuse.main([str(pkg), "--pcap", *caps, "--version", "0.0.9"]) == 0
    up = load_model(pkg)
    assert up.version == "0.0.9" and up.manifest["quantization"] == STATIC_INT8
    assert up.manifest["fused"]["int8_attention"] == up.manifest["architecture"]["config"]["layers"]
    par = up.manifest["parity"]["fused"]
    assert par["flows"] > 50 and "without activation quantisation" in par["reference"]
    for h in ("service", "app"):
        key = f"{h}_mean_abs_logit_diff"
        assert par["fused_vs_reference"][key] <= par["previous_vs_reference"][key]
    assert "QAttention" in _ops(pkg / "model.onnx")
    assert fuse.main([str(pkg), "--pcap", *caps]) == 2  # already fused: refused, nothing rewritten
    assert up.manifest["sha256"] == sha256_file(pkg / "model.onnx")


@needs_data
@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_models_are_fused_and_closer_to_their_float_activations(name):
    from etool_sensor.runtime import load_model

    m = load_model(name, threads=1)
    layers = m.manifest["architecture"]["config"]["layers"]
    assert m.manifest["fused"]["int8_attention"] == layers and m.manifest["fused"]["gemm_float_out"] >= 2
    ops = _ops(m.path / "model.onnx")
    assert ops.count("QAttention") == layers and "QLinearMatMul" not in ops
    par = m.manifest["parity"]["fused"]
    assert par["flows"] >= 2000  # train checks every rewrite on 2,000 of its training flows
    for h in ("service", "app"):
        key = f"{h}_mean_abs_logit_diff"
        assert par["fused_vs_reference"][key] < par["previous_vs_reference"][key]
