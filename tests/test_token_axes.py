"""Dynamic token axes (export/token_axes.py) and the runtime's length groups (runtime.token_groups):
cutting padding out must not change what the model says about real flows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import full_length
from tests.test_model import PCAPS, _flows

needs_data = pytest.mark.skipif(not PCAPS.is_dir(), reason="shared/data not present")


@pytest.fixture(scope="module")
def real_flows():
    if not PCAPS.is_dir():
        pytest.skip("shared/data not present")
    # every nDPI capture: long and short flows, with and without payload and BURST neighbours; the ones
    # Model.classify runs (>= 2 packets)
    pairs = [(r, c) for r, c in zip(*_flows(sorted(p.name for p in PCAPS.glob("*.pcap*")))) if len(r.packets) >= 2]
    recs, ctxs = [r for r, _ in pairs], [c for _, c in pairs]
    assert len(recs) >= 3000
    return recs, ctxs


@needs_data
@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_models_cut_padding_without_changing_verdicts(name, real_flows):
    import onnx

    from etool_sensor.runtime import HEADS, load_model

    m = load_model(name, threads=1)
    assert m.manifest["token_granules"] and m._granules == m.manifest["token_granules"]
    g = onnx.load(str(m.path / "model.onnx")).graph
    dims = {i.name: i.type.tensor_type.shape.dim[1] for i in g.input}
    assert all(dims[k].dim_param and not dims[k].dim_value for k in ("pkt", "byt", "seg", "ctx"))
    recs, ctxs = real_flows
    feats = m.features(recs, ctxs)
    cut = m._run(feats, HEADS)
    m._granules = full_length(m)  # the same graph over the full, padded arrays
    full = m._run(feats, HEADS)
    for h in HEADS:
        assert (cut[h].argmax(1) == full[h].argmax(1)).all(), h
        diff = np.abs(cut[h] - full[h]).max(1)
        # another length sums in another order; through int8 rounding that moves a rare flow's scores a little
        assert diff.max() < 0.05 and (diff < 1e-4).mean() > 0.98, (h, diff.max(), (diff >= 1e-4).sum())
    assert m.manifest["parity"]["cut_vs_full"]["service_argmax_agreement"] == 1.0


@needs_data
def test_token_groups_cover_every_flow_and_cut_only_padding(real_flows):
    from etool_sensor.runtime import load_model, token_groups

    m = load_model(threads=1)
    recs, ctxs = real_flows
    feats = m.features(recs, ctxs)
    gran = m.manifest["token_granules"]
    order, runs = token_groups(feats, gran, batch=100)
    assert sorted(order.tolist()) == list(range(len(recs)))
    assert np.concatenate([r for r, _ in runs]).tolist() == order.tolist()
    assert all(len(rows) <= 100 for rows, _ in runs)
    cut_tokens = 0
    for rows, cut in runs:
        assert cut["byt"] == cut["seg"]
        for k, n in cut.items():
            full = feats[k].shape[1]
            assert not feats[k][rows, n:].any()  # nothing but padding is left out
            levels = [gran[k] << i for i in range(full.bit_length()) if gran[k] << i < full] + [full]
            assert n in levels
            if n > gran[k]:  # the smallest level that holds every one of these flows, each on its own
                prev = levels[levels.index(n) - 1]
                beyond = feats[k][rows, prev:] != 0
                if k in ("byt", "seg"):
                    beyond = (feats["byt"][rows, prev:] != 0) | (feats["seg"][rows, prev:] != 0)
                assert beyond.reshape(len(rows), -1).any(1).all(), (k, n, prev)
            cut_tokens += len(rows) * n // gran[k]
    full_tokens = len(recs) * sum(feats[k].shape[1] // g for k, g in gran.items())
    assert cut_tokens < 0.8 * full_tokens  # real flows leave a lot of padding


@needs_data
def test_small_batches_group_as_large_ones(real_flows, monkeypatch):
    """token_groups groups batches of up to SMALL_BATCH flows in a dict, larger ones with numpy: both give
    the same order and runs, at every size around the switch."""
    import etool_sensor.runtime as rt

    m = rt.load_model(threads=1)
    recs, ctxs = real_flows
    feats = m.features(recs, ctxs)
    gran = m.manifest["token_granules"]
    rng = np.random.default_rng(3)
    small = rt.SMALL_BATCH
    for size in (1, 2, 7, small - 1, small, small + 1, 300):
        for _ in range(5):
            rows = rng.choice(len(recs), size, replace=False)
            sub = {k: v[rows] for k, v in feats.items()}
            order, runs = rt.token_groups(sub, gran, batch=5)
            monkeypatch.setattr(rt, "SMALL_BATCH", 0 if size <= small else 10**6)  # the other way
            order2, runs2 = rt.token_groups(sub, gran, batch=5)
            monkeypatch.undo()
            assert order.tolist() == order2.tolist()
            assert [(r.tolist(), c) for r, c in runs] == [(r.tolist(), c) for r, c in runs2]
            assert sorted(order.tolist()) == list(range(size))


@needs_data
def test_a_flows_scores_do_not_depend_on_its_batch(real_flows, monkeypatch):
    """Each flow's cut depends on the flow alone: alone, in small batches or shuffled, the scores are the
    same bits (static int8), so classify, classify --workers and the daemon agree exactly."""
    import etool_sensor.runtime as rt

    m = rt.load_model(threads=1)
    recs, ctxs = real_flows
    a = m.predict_proba(recs, ctxs)
    perm = np.random.default_rng(0).permutation(len(recs))
    monkeypatch.setattr(rt, "BATCH", 7)
    b = m.predict_proba([recs[i] for i in perm], [ctxs[i] for i in perm])
    assert np.array_equal(a[perm], b)
    m._granules, gran = full_length(m), m._granules
    full = m.predict_proba(recs, ctxs)
    m._granules = gran
    moved = np.nonzero(np.abs(full - a).max(1) > 0)[0]  # flows whose cut changed an int8 rounding
    assert len(moved) < 0.02 * len(recs)
    for i in sorted(set(range(0, len(recs), 97)) | set(moved.tolist())):
        assert np.array_equal(m.predict_proba(recs[i:i + 1], ctxs[i:i + 1])[0], a[i]), i  # alone: same bits
    assert m.predict_proba([], []).shape == (0, len(m.label_sets["service"]))


def test_rewrite_refuses_a_graph_it_does_not_know(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from etool_sensor.export.token_axes import make_token_axes_dynamic

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", 4]) for n in ("pkt", "byt", "seg", "ctx")]
    out = helper.make_tensor_value_info("y", TensorProto.INT64, ["b", 4])
    g = helper.make_graph([helper.make_node("Add", ["pkt", "byt"], ["y"])], "g", ins, [out])
    src = tmp_path / "x.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(ValueError, match="not the exporter's graph"):
        make_token_axes_dynamic(src, tmp_path / "y.onnx")
    g2 = helper.make_graph([helper.make_node("Add", ["pkt", "byt"], ["y"])], "g", ins[:2], [out])
    onnx.save(helper.make_model(g2, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(ValueError, match="no graph input"):
        make_token_axes_dynamic(src, tmp_path / "y.onnx")


def test_granules_never_cut_a_stream_the_encoder_pads():
    from etool_sensor.export.token_axes import granules

    base = {"packets": 32, "pkt_stride": 2, "payload_packets": 3, "payload_bytes": 64, "dgram_stride": 8}
    assert granules(base) == {"pkt": 2, "byt": 16, "seg": 16, "ctx": 1}
    assert granules({**base, "pkt_stride": 3})["pkt"] == 32  # 32 packets do not split into tokens of 3
    assert granules({**base, "payload_bytes": 60, "dgram_stride": 7})["byt"] == 180


@needs_data
@pytest.mark.parametrize("shape", [
    {},  # the default shape
    {"layers": 1, "pkt_stride": 4, "dgram_stride": 16},  # the fast one
    {"pkt_stride": 1, "use_payload": False},  # no payload inputs, no token reshape at all
    {"pkt_stride": 3, "dgram_stride": 7},  # streams the encoder pads up to whole tokens: never cut
    {"use_ports": True, "flights": 4},  # the optional inputs ride along uncut
])
def test_fresh_exports_of_every_shape_cut_to_the_same_logits(shape, real_flows, tmp_path):
    """torch export -> rewrite -> run cut as the runtime does: fp32 logits equal the full-length run."""
    torch = pytest.importorskip("torch")
    from etool_sensor.features import FeatureSpec, encode
    from etool_sensor.train.model import EncoderConfig, StudentClassifier
    from etool_sensor.export.onnx_export import export_onnx
    from etool_sensor.export.quantize import onnx_logits, parity
    from etool_sensor.export.token_axes import cut_logits, granules, make_token_axes_dynamic

    spec = FeatureSpec(use_ports=shape.pop("use_ports", False), flights=shape.pop("flights", 0))
    torch.manual_seed(0)
    model = StudentClassifier(EncoderConfig.from_spec(spec, **shape), 6, 9)
    for p in model.parameters():  # larger weights than the init's, so that positions matter
        torch.nn.init.normal_(p, std=0.2)
    gran = granules(model.encoder.c.to_dict())
    full = export_onnx(model, tmp_path / "full.onnx")
    cut = make_token_axes_dynamic(full, tmp_path / "cut.onnx", gran)
    recs, ctxs = real_flows
    feats = encode(recs[:600], ctxs[:600], spec)
    ref = onnx_logits(full, feats)
    assert np.array_equal(onnx_logits(cut, feats)[0], ref[0])  # uncut: the same graph
    p = parity(ref, cut_logits(cut, feats, gran))
    assert p["service_max_abs_logit_diff"] < 1e-3 and p["app_max_abs_logit_diff"] < 1e-3, p
    assert p["service_argmax_agreement"] == 1.0 and p["app_argmax_agreement"] == 1.0, p


@needs_data
@pytest.mark.parametrize("shape", [
    {},  # the default shape
    {"layers": 1, "pkt_stride": 4, "dgram_stride": 16},  # the fast one
    {"pkt_stride": 1, "use_payload": False},  # no datagram convolution: only the reshapes
    {"pkt_stride": 3, "dgram_stride": 7},  # units padded up to whole tokens before the convolution
])
def test_simplified_graph_computes_the_same_logits(shape, real_flows, tmp_path):
    """export/simplify.py on a fresh fp32 export: fewer kernels, no Conv, constant reshape targets, and the
    same logits run cut as the runtime does (fp32: equal to float rounding, every label the same)."""
    torch = pytest.importorskip("torch")
    import onnx

    from etool_sensor.features import FeatureSpec, encode
    from etool_sensor.train.model import EncoderConfig, StudentClassifier
    from etool_sensor.export.onnx_export import export_onnx
    from etool_sensor.export.quantize import parity
    from etool_sensor.export.simplify import simplify_graph
    from etool_sensor.export.token_axes import cut_logits, granules, make_token_axes_dynamic

    spec = FeatureSpec()
    torch.manual_seed(0)
    model = StudentClassifier(EncoderConfig.from_spec(spec, **shape), 6, 9)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    gran = granules(model.encoder.c.to_dict())
    cut = make_token_axes_dynamic(export_onnx(model, tmp_path / "full.onnx"), tmp_path / "cut.onnx", gran)
    done = simplify_graph(cut, tmp_path / "simple.onnx")
    before, after = (onnx.load(str(p)).graph for p in (cut, tmp_path / "simple.onnx"))
    assert done["conv_as_matmul"] == (0 if shape.get("use_payload") is False else 1)
    assert done["constant_reshape"] >= 4 * model.encoder.c.layers
    assert not [n for n in after.node if n.op_type == "Conv"]
    assert len(after.node) < len(before.node) - 8 * model.encoder.c.layers
    recs, ctxs = real_flows
    feats = encode(recs[:600], ctxs[:600], spec)
    p = parity(cut_logits(cut, feats, gran), cut_logits(tmp_path / "simple.onnx", feats, gran))
    assert p["service_max_abs_logit_diff"] < 1e-4 and p["app_max_abs_logit_diff"] < 1e-4, p
    assert p["service_argmax_agreement"] == 1.0 and p["app_argmax_agreement"] == 1.0, p
    with pytest.raises(ValueError, match="nothing to simplify"):
        simplify_graph(tmp_path / "simple.onnx", tmp_path / "again.onnx")


@needs_data
def test_simplify_keeps_a_bias_the_exporter_routes_through_identity(real_flows, tmp_path):
    """torch.onnx shares equal initializers through Identity nodes: the convolution's bias may reach it that
    way, and the matrix product that replaces the convolution must still add it."""
    torch = pytest.importorskip("torch")
    import onnx
    from onnx import helper

    from etool_sensor.features import FeatureSpec, encode
    from etool_sensor.train.model import EncoderConfig, StudentClassifier
    from etool_sensor.export.onnx_export import export_onnx
    from etool_sensor.export.quantize import parity
    from etool_sensor.export.simplify import simplify_graph
    from etool_sensor.export.token_axes import cut_logits, granules, make_token_axes_dynamic

    torch.manual_seed(0)
    model = StudentClassifier(EncoderConfig.from_spec(FeatureSpec()), 6, 9)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    gran = granules(model.encoder.c.to_dict())
    cut = make_token_axes_dynamic(export_onnx(model, tmp_path / "full.onnx"), tmp_path / "cut.onnx", gran)
    m = onnx.load(str(cut))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    m.graph.node.insert(0, helper.make_node("Identity", [conv.input[2]], ["shared_bias"], name="share"))
    conv.input[2] = "shared_bias"
    onnx.save(m, str(tmp_path / "shared.onnx"))
    simplify_graph(tmp_path / "shared.onnx", tmp_path / "simple.onnx")
    nodes = onnx.load(str(tmp_path / "simple.onnx")).graph.node
    assert [n for n in nodes if n.name.endswith("_bias") and n.op_type == "Add"]
    recs, ctxs = real_flows
    feats = encode(recs[:300], ctxs[:300], FeatureSpec())
    p = parity(cut_logits(cut, feats, gran), cut_logits(tmp_path / "simple.onnx", feats, gran))
    assert p["service_max_abs_logit_diff"] < 1e-4 and p["app_max_abs_logit_diff"] < 1e-4, p


@needs_data
@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_models_are_simplified_and_label_as_before(name):
    """The shipped graphs went through export.simplify; the manifest keeps what the check measured."""
    import onnx

    from etool_sensor.runtime import load_model

    m = load_model(name, threads=1)
    assert m.manifest["simplified"]["conv_as_matmul"] == 1
    nodes = onnx.load(str(m.path / "model.onnx")).graph.node
    assert not [n for n in nodes if n.op_type == "Conv" or (n.op_type == "Shape" and "/attn/" in n.name)]
    par = m.manifest["parity"]["simplified_vs_previous"]
    flows = par.get("flows", m.manifest["parity"].get("flows", 0))  # train records one count for every check
    assert flows >= 2000 and par["service_argmax_agreement"] == 1.0 and par["app_argmax_agreement"] >= 0.999


def test_simplify_tolerates_one_near_tie_not_more():
    from etool_sensor.export.simplify import check_agreement

    ok = {"service_argmax_agreement": 1.0, "app_argmax_agreement": 3192 / 3193}
    check_agreement(ok, 3193, "pkg")  # the fast model's one flipped app near-tie
    check_agreement({"service_argmax_agreement": 0.99, "app_argmax_agreement": 1.0}, 100, "pkg")  # one of 100
    with pytest.raises(ValueError, match="2 of 100 service"):
        check_agreement({"service_argmax_agreement": 0.98, "app_argmax_agreement": 1.0}, 100, "pkg")
    with pytest.raises(ValueError, match="6 of 3000 app"):
        check_agreement({"service_argmax_agreement": 1.0, "app_argmax_agreement": 0.998}, 3000, "pkg")
