"""The hybrid (train/forest.py, export/hybrid.py): the student's service head times the shape forest. The mix
is the normalised product it claims to be; the joined ONNX graph computes it (runtime, classify) with the
app head untouched; the package rewrite refuses what it cannot do; eval trains one student for both."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_model import LABELS, PCAPS, needs_data, real_flows  # noqa: F401 (fixture)


def test_mix_is_the_normalised_weighted_product():
    from etool_sensor.train.forest import EPS, mix

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)).astype(np.float32) * 3
    pf = rng.dirichlet(np.full(7, 0.3), size=50).astype(np.float32)
    pf[:, 3] = 0.0  # a class no tree votes for
    pf /= pf.sum(1, keepdims=True)
    for w in (0.0, 0.5, 1.0):
        h = mix(logits, pf, w)
        got = np.exp(h - h.max(1, keepdims=True))
        got /= got.sum(1, keepdims=True)
        ps = np.exp(logits - logits.max(1, keepdims=True))
        ps /= ps.sum(1, keepdims=True)
        want = ps ** w * (pf + EPS) ** (1 - w)
        want /= want.sum(1, keepdims=True)
        assert np.allclose(got, want, atol=1e-5)
    assert (mix(logits, pf, 1.0).argmax(1) == logits.argmax(1)).all()  # w = 1: the student alone


def test_spread_moves_forest_classes_to_label_columns():
    from etool_sensor.train.forest import spread

    p = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    out = spread(p, ["VPN", "Web"], ["Chat", "VPN", "Video", "Web"])
    assert out.tolist() == [[0.0, 0.25, 0.0, 0.75], [0.0, 1.0, 0.0, 0.0]]
    assert spread(p, ["Gone", "Web"], ["VPN", "Web"]).tolist() == [[0.0, 0.75], [0.0, 0.0]]


def _joined(quick_package, tmp_path_factory, name: str, version: str, **kw):
    """A copy of the session's quick student package with export.hybrid run on it over 30 captures (checked on
    10 of them)."""
    from etool_sensor.export.hybrid import hybrid_package as make

    pcaps = sorted(PCAPS.glob("*.pcap"))
    d = tmp_path_factory.mktemp(name) / "model"
    shutil.copytree(quick_package, d)
    names = [p.name for p in pcaps[:30]]
    data = tmp_path_factory.mktemp(name + "-data")
    for n in names:
        (data / n).symlink_to(PCAPS / n)
    m = make(d, data, LABELS, [PCAPS / n for n in names[:10]], version=version, name=name, log=lambda s: None, **kw)
    return d, m


@pytest.fixture(scope="module")
def hybrid_package(quick_package, tmp_path_factory):
    """The session's quick student package with a shape forest joined, trained on 30 captures."""
    return _joined(quick_package, tmp_path_factory, "quick-hybrid", "0.0.2")


@needs_data
def test_joined_graph_computes_the_hybrid_and_keeps_the_app_head(quick_package, hybrid_package, real_flows):
    from etool_sensor.runtime import load_model
    from etool_sensor.train.forest import FLIGHTS

    d, m = hybrid_package
    par = m["parity"]["hybrid"]
    assert par["hybrid_argmax_agreement_vs_sklearn"] == 1.0 and par["forest_max_abs_diff_vs_sklearn"] < 1e-4
    assert par["student_outputs_unchanged"] and m["features"]["flights"] == FLIGHTS and m["inputs"][-1] == "flt"
    assert m["outputs"]["forest"] == "forest_proba" and m["hybrid"]["head"] == "service"
    assert m["name"] == "quick-hybrid" and m["version"] == "0.0.2" and m["hybrid"]["forest"]["flows"] > 100
    pri = m["priors"]  # the training flows' service shares, no deployment prior: verdicts unchanged by it
    assert pri["head"] == "service" and "deploy" not in pri and abs(sum(pri["train"].values()) - 1) < 1e-4
    assert set(pri["train"]) <= set(m["label_sets"]["service"]) and len(pri["train"]) > 3
    hyb, base = load_model(d, threads=1), load_model(quick_package, threads=1)
    recs, ctxs = real_flows
    assert "flt" in hyb.features(recs[:3], ctxs[:3]) and "flt" not in base.features(recs[:3], ctxs[:3])
    assert np.array_equal(hyb.predict_proba(recs, ctxs, "app"), base.predict_proba(recs, ctxs, "app"))
    hs, bs = hyb.predict_proba(recs, ctxs), base.predict_proba(recs, ctxs)
    assert np.allclose(hs.sum(1), 1.0, atol=1e-5)
    moved = (hs.argmax(1) != bs.argmax(1)).mean()
    assert 0.0 < moved < 0.6  # the forest moves some service labels, not all
    v = hyb.classify(recs[:20], ctxs[:20])
    assert all(x.model == "quick-hybrid@0.0.2" for x in v)
    # the service head is the mix of the graph's two outputs, which the runtime makes (the same bits)
    from etool_sensor.runtime import hybrid_logits, softmax

    feats = hyb.features(recs, ctxs)
    s_logits, pf = (hyb.session.run(["service_logits", "forest_proba"], {k: feats[k] for k in hyb._inputs}))
    assert np.array_equal(softmax(hybrid_logits(s_logits, pf, m["hybrid"]["mix"], m["hybrid"]["eps"])), hs)


@pytest.fixture(scope="module")
def hello_package(quick_package, tmp_path_factory):
    """hybrid_package's forest plus the hello table (export.hybrid --hello-bytes 1024): the same 30 captures,
    so the same forest (flights do not change when hellos are read whole)."""
    return _joined(quick_package, tmp_path_factory, "quick-hello", "0.0.3", hello_bytes=1024)


@needs_data
def test_hello_table_joins_the_service_head(hybrid_package, hello_package, real_flows):
    """The runtime adds the table's log-probabilities to the hybrid's mix (the same forest, the same seed):
    only flows whose fingerprint is in the table move; the app table does the same to the student's app
    logits."""
    from etool_sensor.fingerprints import HelloTable
    from etool_sensor.runtime import hybrid_logits, load_model, softmax

    d, m = hello_package
    t = m["hybrid"]["hello_table"]
    assert m["features"]["hello_bytes"] == 1024 and t["file"] == "hello_table.json" and t["fingerprints"] > 5
    assert m["parity"]["hybrid"]["flows_with_a_table_fingerprint"] > 0 and m["inputs"][-1] == "flt"
    hello, plain = load_model(d, threads=1), load_model(hybrid_package[0], threads=1)
    recs, ctxs = real_flows
    feats = hello.features(recs, ctxs)
    assert "hfp" in feats and "hfp" not in plain.features(recs, ctxs) and (feats["hfp"] > 0).sum() >= 5
    s_logits, pf = hello.session.run(["service_logits", "forest_proba"], {k: feats[k] for k in hello._inputs})
    table = HelloTable.load(d / "hello_table.json")
    mixed = hybrid_logits(s_logits, pf, m["hybrid"]["mix"], m["hybrid"]["eps"])
    got = hello.predict_proba(recs, ctxs)
    evidence = table.log_proba(feats["hfp"], recs, hello.spec.payload_packets)  # exact rows, then near hellos
    assert np.array_equal(got, softmax(mixed + evidence))
    assert table.near is not None and m["hybrid"]["hello_table"]["near"]["hellos"] == len(table.near.tokens)
    moved = evidence.any(1)
    known = np.array([k in table.counts for k in feats["hfp"].tolist()])
    assert known.any() and np.array_equal(got[~moved], plain.predict_proba(recs, ctxs)[~moved])
    assert (moved & ~known).any()  # flows whose hello the table lacks, reached through their near hellos
    # the app head: the student's logits plus the app table (no forest), known fingerprints only
    a = m["hybrid"]["app_table"]
    # (each table leaves out the flows whose label is outside its head's labels, which --quick keeps short)
    assert a["file"] == "app_table.json" and a["fingerprints"] > 0 and 0 < a["flows"] <= m["hybrid"]["forest"]["flows"]
    apps = HelloTable.load(d / "app_table.json")
    assert apps.labels == m["label_sets"]["app"]
    a_logits = hello.session.run(["app_logits"], {k: feats[k] for k in hello._inputs})[0]
    got_app = hello.predict_proba(recs, ctxs, "app")
    assert np.array_equal(got_app, softmax(a_logits + apps.log_proba(feats["hfp"])))
    plain_app = plain.predict_proba(recs, ctxs, "app")
    known = np.array([k in apps.counts for k in feats["hfp"].tolist()])
    assert np.array_equal(got_app[~known], plain_app[~known]) and (got_app[known] != plain_app[known]).any()


@needs_data
def test_runtime_refuses_a_broken_hello_table(hello_package, tmp_path):
    from etool_sensor.runtime import ModelError, load_model

    d, _ = hello_package
    for change, match in ((lambda p, m: (p / "hello_table.json").write_text("{}"), "sha256 does not match"),
                          (lambda p, m: (p / "hello_table.json").unlink(), "no hello_table.json"),
                          (lambda p, m: m["features"].update(hello_bytes=0), "needs features.hello_bytes"),
                          (lambda p, m: m["hybrid"]["hello_table"].pop("sha256"), "needs file and sha256"),
                          (lambda p, m: (p / "app_table.json").unlink(), "no app_table.json"),
                          (lambda p, m: m["hybrid"]["app_table"].pop("file"), "hybrid.app_table needs file"),
                          (lambda p, m: m["hybrid"].update(app_table=m["hybrid"]["hello_table"]),
                           "not the app head's")):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(d, bad)
        man = json.loads((bad / "manifest.json").read_text())
        change(bad, man)
        (bad / "manifest.json").write_text(json.dumps(man))
        with pytest.raises(ModelError, match=match):
            load_model(bad)


@needs_data
def test_agreement_confidence_is_the_geometric_mean_with_the_forest(hello_package, tmp_path, real_flows):
    """hybrid.confidence "agreement": the same labels, scores and alternatives; only the confidence (and so
    `unknown`) changes, to sqrt(p(label) * the forest's vote share for that label)."""
    from etool_sensor.runtime import ModelError, Thresholds, load_model

    d, m = hello_package
    assert m["hybrid"]["confidence"] == "agreement"  # what export.hybrid (and so `train`) writes
    recs, ctxs = real_flows
    prob, agree = tmp_path / "prob", tmp_path / "agree"
    for dst, kind in ((prob, "probability"), (agree, "agreement")):
        shutil.copytree(d, dst)
        man = json.loads((dst / "manifest.json").read_text())
        man["hybrid"]["confidence"] = kind
        (dst / "manifest.json").write_text(json.dumps(man))
    base, ag = load_model(prob, threads=1), load_model(agree, threads=1)
    th = Thresholds(default=0.5)
    vb, va = base.classify(recs, ctxs, th), ag.classify(recs, ctxs, th)
    assert [(v.service, v.app, v.alternatives) for v in vb] == [(v.service, v.app, v.alternatives) for v in va]
    feats = ag.features(recs, ctxs)
    pf = ag.session.run(["forest_proba"], {k: feats[k] for k in ag._inputs})[0]
    p = base.predict_proba(recs, ctxs)
    a = p.argmax(1)
    ok = [i for i, v in enumerate(va) if v.status == "ok"]
    want = np.sqrt(p[ok, a[ok]] * pf[ok, a[ok]])
    assert np.allclose([va[i].confidence for i in ok], want, atol=1e-6)
    assert np.allclose([vb[i].confidence for i in ok], p[ok, a[ok]], atol=1e-6)  # "probability": p itself
    assert np.allclose(ag.predict_with_confidence(recs, ctxs)[1][ok], want, atol=1e-6)  # what eval scores
    assert [va[i].unknown for i in ok] == [bool(w < 0.5) for w in want]
    assert 0 < np.mean([va[i].confidence < vb[i].confidence - 1e-3 for i in ok])  # it does change something
    man["hybrid"]["confidence"] = "vibes"
    (agree / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="hybrid.confidence"):
        load_model(agree)


@needs_data
def test_runtime_refuses_a_hybrid_manifest_without_the_forest_output(hybrid_package, tmp_path):
    from etool_sensor.runtime import ModelError, load_model

    d, _ = hybrid_package
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["outputs"]["forest"] = "no_such_output"
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="outputs.forest"):
        load_model(bad)
    del man["outputs"]["forest"]  # the key missing altogether: the same refusal, not a KeyError
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="outputs.forest"):
        load_model(bad)


@needs_data
def test_hybrid_rewrite_refusals(hybrid_package, quick_package, tmp_path, capsys):
    from etool_sensor.export.hybrid import main

    d, _ = hybrid_package
    pcap = str(sorted(PCAPS.glob("*.pcap"))[0])
    args = ["--data", str(PCAPS), "--labels", str(LABELS), "--pcap", pcap]
    assert main([str(d)] + args) == 2
    assert "already has the shape forest" in capsys.readouterr().err
    old = tmp_path / "old"
    shutil.copytree(quick_package, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["token_granules"]
    (old / "manifest.json").write_text(json.dumps(man))
    assert main([str(old)] + args) == 2
    assert "no 'token_granules'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")] + args) == 2


@needs_data
def test_eval_hybrid_trains_its_student_once(tmp_path, capsys):
    from etool_sensor.lab.cli import main

    out = tmp_path / "h.json"
    pcaps = "tls_verylong_certificate.pcap,chrome.pcap,quic.pcap,dnscrypt-v2.pcap,signal.pcap,teams.pcap,1kxun.pcap"
    assert main(["--data", str(PCAPS), "--labels", str(LABELS), "--json", str(out), "--no-model", "--splits", "iid",
                 "--methods", "student_no_llm,hybrid_no_llm", "--encrypted-only", "--quick", "--pcaps", pcaps]) == 0
    err = capsys.readouterr().err
    assert err.count("student: epoch 1/") == 1
    m = json.loads(out.read_text())["splits"]["iid"]["methods"]
    assert "error" not in m["hybrid_no_llm"] and 0.0 < m["hybrid_no_llm"]["accuracy"] <= 1.0


@needs_data
def test_train_joins_the_forest_unless_told_not_to(tmp_path):
    """`train` makes what ships: the student with the shape forest joined (--no-forest: the student alone,
    the package quick_package is)."""
    from etool_sensor.runtime import load_model
    from etool_sensor.train.cli import main

    out = tmp_path / "m"
    assert main(["--data", str(PCAPS), "--labels", str(LABELS), "--out", str(out), "--quick", "--no-teacher",
                 "--no-ssl", "--quick-pcaps", "12", "--epochs", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["hybrid"]["forest"]["flows"] == m["training"]["flows"] and m["inputs"][-1] == "flt"
    # --one-sided: copies seen from one side join the forest's (and student's) flows; the prior stays the
    # labelled flows' own
    sided = tmp_path / "sided"
    assert main(["--data", str(PCAPS), "--labels", str(LABELS), "--out", str(sided), "--quick", "--no-teacher",
                 "--no-ssl", "--quick-pcaps", "12", "--epochs", "1", "--one-sided", "0.5"]) == 0
    ms = json.loads((sided / "manifest.json").read_text())
    copies = ms["training"]["one_sided_copies"]
    assert ms["training"]["flows"] == m["training"]["flows"] and 0 < copies < ms["training"]["flows"]
    assert ms["hybrid"]["forest"]["flows"] == m["hybrid"]["forest"]["flows"] + copies
    assert ms["priors"]["train"] == m["priors"]["train"]
    assert main(["--data", str(PCAPS), "--labels", str(LABELS), "--out", str(sided), "--one-sided", "2"]) == 2
    assert m["parity"]["hybrid"]["hybrid_argmax_agreement_vs_sklearn"] == 1.0
    model = load_model(out, threads=1)
    assert model.spec.flights == m["features"]["flights"] > 0
    # with the hello table by default: flows read with hellos whole, the table's fingerprints from them
    assert m["features"]["hello_bytes"] == 1024 and m["hybrid"]["hello_table"]["fingerprints"] > 0
    assert set(model._tables) == {"service", "app"} and m["parity"]["hybrid"]["flows_with_a_table_fingerprint"] > 0
    assert m["hybrid"]["app_table"]["fingerprints"] == m["hybrid"]["hello_table"]["fingerprints"]


def test_eval_hybrid_on_the_app_column_is_the_student_plus_the_table():
    """Eval's hybrids on `--label-column app` are what a package's app head is (runtime: the student's app
    logits plus the app table, no forest): train/forest.Hybrid with forest None."""
    from etool_sensor.fingerprints import HelloTable, fingerprints
    from etool_sensor.flows import FlowParams
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.runtime import softmax
    from etool_sensor.train.forest import Hybrid

    trace = Path(__file__).parent.parent / "zeek-plugin" / "testing" / "Traces" / "tls-ecdhe.pcap"
    recs = list(read_flows(trace, FlowParams(hello_bytes=1024)))
    labels = ["Google", "Signal", "TLS"]
    keys = fingerprints(recs)
    assert keys[0] > 0

    class Student:  # the two heads' logits of a trained student, fixed
        head, label_sets = "app", {"app": labels}

        def logits(self, records, contexts):
            a = np.tile(np.array([[0.5, 0.2, 0.1]], np.float32), (len(records), 1))
            return np.zeros((len(records), 2), np.float32), a

    st = Student()
    st.labels = labels
    table = HelloTable.fit(keys, ["Signal"] * len(keys), labels)
    got = Hybrid(st, None, table=table).predict_proba(recs, None)
    want = softmax(st.logits(recs, None)[1] + table.log_proba(keys))
    assert np.array_equal(got, want) and (got.argmax(1) == 1).all()
    assert np.array_equal(Hybrid(st, None).predict_proba(recs, None), softmax(st.logits(recs, None)[1]))


@needs_data
def test_retable_refits_the_tables_and_leaves_the_graph(hello_package, tmp_path, real_flows, capsys):
    """export.hybrid --tables-only: the same exact rows, the near hellos on or off, model.onnx untouched; a
    package whose exact rows other flows would change is refused unchanged."""
    from etool_sensor.export.hybrid import main, retable_package
    from etool_sensor.runtime import load_model

    src, _ = hello_package
    d = tmp_path / "model"
    shutil.copytree(src, d)
    data = tmp_path / "data"
    data.mkdir()
    names = [p.name for p in sorted(PCAPS.glob("*.pcap"))[:30]]  # the fixture's training captures
    for n in names:
        (data / n).symlink_to(PCAPS / n)
    graph = (d / "model.onnx").read_bytes()
    recs, ctxs = real_flows
    with_near = load_model(d, threads=1).predict_proba(recs, ctxs)
    m = retable_package(d, data, LABELS, [PCAPS / n for n in names[:10]], version="0.0.4", near=0, log=lambda s: None)
    assert "near" not in m["hybrid"]["hello_table"] and m["version"] == "0.0.4"
    assert (d / "model.onnx").read_bytes() == graph and set(m["parity"]["tables"]) >= {"flows_with_near_hellos"}
    exact = load_model(d, threads=1).predict_proba(recs, ctxs)
    moved = np.abs(exact - with_near).max(1) > 0
    assert moved.any() and not moved.all()
    m = retable_package(d, data, LABELS, [PCAPS / n for n in names[:10]], log=lambda s: None)
    assert m["hybrid"]["hello_table"]["near"]["m"] == 3 and m["version"] == "0.0.4"
    assert np.array_equal(load_model(d, threads=1).predict_proba(recs, ctxs), with_near)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    (data / names[0]).unlink()  # other training flows: other exact rows
    assert main([str(d), "--tables-only", "--data", str(data), "--labels", str(LABELS), "--pcap",
                 str(PCAPS / names[1])]) == 2
    assert "exact rows differ from the package's" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


@needs_data
def test_train_recipe_builds_every_part_the_bundled_package_has(tmp_path, capsys):
    """`train --recipe default` is how the bundled package is built: the recipe's settings, the priors and
    the drift reference come out of the one command (nothing from outside the repository), and an option
    given on the command line wins over the recipe."""
    from etool_sensor.runtime import load_model
    from etool_sensor.train.cli import RECIPES, main

    out = tmp_path / "m"
    pinned = os.environ.pop("ETOOL_TORCH_THREADS", None)  # the recipe's torch_threads decides, and only inside
    try:
        assert main(["--recipe", "default", "--data", str(PCAPS), "--labels", str(LABELS), "--out", str(out),
                     "--quick", "--quick-pcaps", "12", "--epochs", "1", "--ssl-epochs", "1", "--version", "9.9.9"]) == 0
        assert "ETOOL_TORCH_THREADS" not in os.environ
    finally:
        if pinned is not None:
            os.environ["ETOOL_TORCH_THREADS"] = pinned
    m = json.loads((out / "manifest.json").read_text())
    recipe = yaml.safe_load((RECIPES / "default.yaml").read_text())
    assert m["name"] == recipe["name"] and m["version"] == "9.9.9" and m["training"]["student"]["epochs"] == 1
    assert m["training"]["recipe"]["recipe"] == "default.yaml" and m["training"]["teacher"] == {"used": False}
    assert m["training"]["torch_threads"] == recipe["torch_threads"] and m["training"]["ssl"]["used"]
    assert m["training"]["one_sided_copies"] == 0  # the bundled recipe trains on flows as captured
    bundled = load_model("default", threads=1).manifest
    missing = set(bundled) - set(m) - {"metrics", "notes"}  # eval and people fill those
    assert not missing, f"the recipe does not build {missing}"
    assert abs(sum(m["priors"]["train"].values()) - 1) < 1e-3
    ref = m["drift_reference"]
    assert ref["flows"] > 0 and "12 captures" in ref["source"] and ref["threshold"] == 0.5
    model = load_model(out, threads=1)
    assert model.name == recipe["name"]
    # the recipe fixes the torch threads: the same command builds the same bits
    again = tmp_path / "again"
    assert main(["--recipe", "default", "--data", str(PCAPS), "--labels", str(LABELS), "--out", str(again), "--quick",
                 "--quick-pcaps", "12", "--epochs", "1", "--ssl-epochs", "1", "--version", "9.9.9"]) == 0
    m2 = json.loads((again / "manifest.json").read_text())
    assert m2["sha256"] == m["sha256"] and m2["hybrid"]["hello_table"]["sha256"] == m["hybrid"]["hello_table"]["sha256"]
    # a recipe that does not exist, or holds a key train does not know, is one line and exit 2
    assert main(["--recipe", "nope", "--data", str(PCAPS), "--labels", str(LABELS), "--out", str(out)]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    assert main(["--recipe", str(bad), "--data", str(PCAPS), "--labels", str(LABELS), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no recipe 'nope' (known: default, fast" in err and "unknown recipe keys ['epochz']" in err


def test_recipe_fills_only_the_options_the_command_line_left_out():
    """An option given on the command line wins over the recipe even at its default value; the recipe fills the
    others."""
    import argparse

    from etool_sensor.train.cli import add_train_arguments, apply_recipe

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args(["--recipe", "default", "--data", "d", "--labels", "l", "--out", "o", "--version", "0.1.0",
                         "--hello-bytes", "0"])
    recipe = apply_recipe(args)
    assert (args.version, args.hello_bytes) == ("0.1.0", 0)  # given: kept although 0.1.0 is train's default
    assert (args.name, args.no_teacher, args.epochs, args.torch_threads) == (
        recipe["name"], True, recipe["epochs"], recipe["torch_threads"])
    # a recipe's true switches are turned off from the command line too
    args = p.parse_args(["--recipe", "fast", "--data", "d", "--labels", "l", "--out", "o", "--teacher", "--forest"])
    apply_recipe(args)
    assert (args.no_teacher, args.no_forest) == (False, False)
