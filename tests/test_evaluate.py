"""`etool-sensor eval`: CLI contract on real captures (quick), splits, metrics against sklearn, ECE."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support import NDPI

from etool_sensor.lab import runner as R
from etool_sensor.lab import scoring as S
from etool_sensor.lab import splits as SP
from etool_sensor.train import teacher_logits as TL

PCAPS = ["whatsapp.pcap", "discord.pcap", "avast_securedns.pcapng", "avast.pcap", "alicloud.pcap",
         "softether.pcap", "tunnelbear.pcap", "telegram.pcap", "signal.pcap", "viber.pcap", "webex.pcap"]


def test_ece_known_values():
    assert S.expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert S.expected_calibration_error([1.0, 1.0], [False, False]) == pytest.approx(1.0)
    # one bin (0.6, 0.667]: mean confidence 0.65, accuracy 0.5 -> 0.15
    assert S.expected_calibration_error([0.6 + 1e-9, 0.65, 0.65, 0.7 - 1e-9][:2] + [0.66, 0.64],
                                        [True, False, True, False], bins=15) == pytest.approx(
        abs(0.5 - np.mean([0.6 + 1e-9, 0.65, 0.66, 0.64])), abs=1e-6)
    # two bins, weighted by their share of the flows
    conf = [0.95, 0.95, 0.95, 0.95, 0.25]
    corr = [True, True, True, False, True]
    want = 0.8 * abs(0.75 - 0.95) + 0.2 * abs(1.0 - 0.25)
    assert S.expected_calibration_error(conf, corr, bins=10) == pytest.approx(want)
    assert S.expected_calibration_error([], []) == 0.0


def test_confidence_coverage_known_values():
    # right: 0.95, 0.6; wrong: 0.9, 0.4 -> of the 4 right/wrong pairs, 3 rank the right one higher
    c = S.confidence_coverage([0.95, 0.9, 0.6, 0.4], [True, False, True, False], thresholds=(0.5, 0.9, 0.99))
    assert c["auroc"] == pytest.approx(0.75)
    assert c["thresholds"] == [
        {"threshold": 0.5, "flows": 3, "share": 0.75, "accuracy": pytest.approx(2 / 3)},
        {"threshold": 0.9, "flows": 2, "share": 0.5, "accuracy": 0.5},  # >= t: 0.9 itself counts
        {"threshold": 0.99, "flows": 0, "share": 0.0, "accuracy": None}]  # no flow that sure: no accuracy
    assert S.confidence_coverage([0.7, 0.8], [True, True])["auroc"] is None  # nothing wrong to rank against
    assert S.confidence_coverage([], [])["thresholds"][0] == {"threshold": 0.5, "flows": 0, "share": 0.0,
                                                             "accuracy": None}


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    y = ["a", "a", "a", "a", "a", "b", "b", "c", "c", "c", "c", "c"]
    p = ["a", "a", "b", "a", "c", "b", "a", "c", "c", "c", "a", "c"]
    m = S.metrics(y, p, [0.9] * len(y))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    # only a and c have >= 5 test flows
    assert m["macro_f1_min5"] == pytest.approx(f1_score(y, p, labels=["a", "c"], average="macro"))
    assert m["per_class"]["b"]["support"] == 2
    assert m["per_class"]["a"]["recall"] == pytest.approx(3 / 5)
    assert m["ece"] == pytest.approx(abs(0.9 - accuracy_score(y, p)))
    at = {r["threshold"]: r for r in m["by_confidence"]["thresholds"]}  # every flow at 0.9: all or nothing
    assert at[0.9]["share"] == 1.0 and at[0.9]["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert at[0.99]["flows"] == 0 and m["by_confidence"]["auroc"] == pytest.approx(0.5)


def _fake(n_pcaps=6, per=10):
    """A LabelledSet-like object: 3 services, 2 apps each, spread over captures."""
    rng = np.random.default_rng(1)
    svc, app, pcap = [], [], []
    for i in range(n_pcaps * per):
        s = ["Chat", "VPN", "Web"][i % 3]
        svc.append(s)
        app.append(f"{s}{rng.integers(2)}")
        pcap.append(f"p{i // per}.pcap")
    return SimpleNamespace(labels=list(svc), service=svc, app=app, pcap=pcap, __len__=None,
                           records=[None] * len(svc))


class _DS(SimpleNamespace):
    def __len__(self):
        return len(self.labels)


def test_bootstrap_macro_f1_is_metrics_and_its_intervals_behave():
    from etool_sensor.lab.scoring import _macro_f1_min5_codes, bootstrap_vs

    rng = np.random.default_rng(1)
    labs = list("ABCDEFG")
    for _ in range(40):  # the fast inner loop computes exactly what metrics() reports
        n = int(rng.integers(5, 300))
        y = [labs[i] for i in rng.integers(0, 7, n)]
        p = [labs[i] if rng.random() < 0.5 else y[j] for j, i in enumerate(rng.integers(0, 7, n))]
        code = {c: i for i, c in enumerate(sorted(set(y) | set(p)))}
        fast = _macro_f1_min5_codes(np.array([code[v] for v in y]), np.array([code[v] for v in p]), len(code))
        assert fast == pytest.approx(S.metrics(y, p)["macro_f1_min5"], abs=1e-12)
    y = [labs[i % 4] for i in range(400)]
    groups = [f"cap{i % 40}" for i in range(400)]
    noisy = [v if i % 3 else "G" for i, v in enumerate(y)]  # a third wrong
    same = S.bootstrap_vs(y, noisy, noisy, groups, boot=200)
    assert same["ratio"] == 1.0 and same["ratio_ci95"] == [1.0, 1.0] and same["diff_ci95"] == [0.0, 0.0]
    better = bootstrap_vs(y, y, noisy, groups, boot=200, seed=3)
    assert better["ratio"] > 1.2 and better["ratio_ci95"][0] > 1.0 and better["diff_ci95"][0] > 0
    assert better == bootstrap_vs(y, y, noisy, groups, boot=200, seed=3) and better["groups"] == 40


def test_splits_disjoint_and_reproducible():
    f = _fake()
    ds = _DS(labels=f.labels, service=f.service, app=f.app, pcap=f.pcap, records=f.records)
    a = SP.make_splits(ds, SP.SPLITS, seed=3)
    b = SP.make_splits(ds, SP.SPLITS, seed=3)
    for name in SP.SPLITS:
        tr, te = set(a[name]["train"].tolist()), set(a[name]["test"].tolist())
        assert tr and te and not tr & te and tr | te <= set(range(len(ds)))
        assert np.array_equal(a[name]["test"], b[name]["test"])
    tr_p = {ds.pcap[i] for i in a["capture"]["train"]}
    te_p = {ds.pcap[i] for i in a["capture"]["test"]}
    assert not tr_p & te_p
    tr_a = {(ds.service[i], ds.app[i]) for i in a["unseen_app"]["train"]}
    assert not {x for _, x in tr_a} & {ds.app[i] for i in a["unseen_app"]["test"]}
    te_a = {(ds.service[i], ds.app[i]) for i in a["unseen_app"]["test"]}
    assert not tr_a & te_a
    assert {s for s, _ in te_a} <= {s for s, _ in tr_a}  # the service was seen through its other apps
    assert a["unseen_app"]["label"] == "category"
    # shifted: class priors differ between train and test
    def prior(idx):
        ys = [ds.labels[i] for i in idx]
        return np.array([ys.count(c) / len(ys) for c in ("Chat", "VPN", "Web")])
    assert np.abs(prior(a["shifted"]["train"]) - prior(a["shifted"]["test"])).sum() > 0.05


def test_capture_folds_partition_captures():
    f = _fake(n_pcaps=11, per=7)
    ds = _DS(labels=f.labels, service=f.service, app=f.app, pcap=f.pcap, records=f.records)
    folds = SP.capture_folds(ds, 4, seed=2)
    assert len(folds) == 4
    every = np.concatenate(folds)
    assert sorted(every.tolist()) == list(range(len(ds)))  # each flow tested exactly once
    caps = [{ds.pcap[i] for i in f_} for f_ in folds]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not caps[i] & caps[j]  # a capture never straddles two folds
    sizes = sorted(len(f_) for f_ in folds)
    assert sizes[-1] - sizes[0] <= 7  # balanced to within one capture
    again = SP.capture_folds(ds, 4, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    with pytest.raises(ValueError):
        SP.capture_folds(ds, 12)


def test_iid_folds_partition_and_stratify():
    f = _fake(n_pcaps=11, per=7)
    ds = _DS(labels=f.labels, service=f.service, app=f.app, pcap=f.pcap, records=f.records)
    folds = SP.iid_folds(ds, 4, seed=2)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(ds)))  # each flow tested exactly once
    counts = {c: ds.labels.count(c) for c in set(ds.labels)}
    for c, n in counts.items():
        per_fold = [sum(ds.labels[i] == c for i in f_) for f_ in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)  # stratified: every class spread evenly
    assert any(len({ds.pcap[i] for i in f_} & {ds.pcap[i] for i in g}) for f_ in folds for g in folds
               if f_ is not g)  # unlike capture folds, captures straddle folds
    assert all(np.array_equal(a, b) for a, b in zip(folds, SP.iid_folds(ds, 4, seed=2)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, SP.iid_folds(ds, 4, seed=3)))
    with pytest.raises(ValueError):
        SP.iid_folds(ds, 1)


@pytest.fixture(scope="module")
def eval_run(shared, tmp_path_factory):
    from etool_sensor.lab.cli import main

    out = tmp_path_factory.mktemp("eval")
    rc = main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--label-column", "category",
               "--json", str(out / "r.json"), "--report", str(out / "r.md"), "--encrypted-only", "--quick",
               "--splits", "capture,unseen_app,capture_kfold,iid_kfold", "--folds", "3", "--methods", "rf,knn",
               "--pcaps", ",".join(PCAPS)])
    return rc, out


def test_eval_cli_contract(eval_run):
    rc, out = eval_run
    assert rc == 0
    r = json.loads((out / "r.json").read_text())
    for k in ("macro_f1", "macro_f1_min5", "weighted_f1", "accuracy"):
        assert 0.0 <= r[k] <= 1.0
    assert r["flows"] > 50
    assert set(r["splits"]) == {"capture", "unseen_app", "capture_kfold", "iid_kfold"}
    assert r["near_hellos"] == 3  # the hybrids' table backs off to near hellos unless told not to
    # the bundled model on flows it was trained on: its confidence ranks its verdicts (not so on new captures)
    bc = r["model"]["by_confidence"]
    assert bc["auroc"] is None or bc["auroc"] > 0.8
    assert bc["thresholds"][0]["share"] > 0.9 and bc["thresholds"][3]["accuracy"] >= r["model"]["accuracy"]
    kf_unseen = {}
    for name in ("capture_kfold", "iid_kfold"):
        kf = r["splits"].pop(name)
        kf_unseen[name] = kf["methods"]["rf"]["by_app_seen"]["unseen"]["flows"]
        assert kf["folds"] == 3 and kf["test_flows"] == r["flows"]  # pooled: every flow predicted once
        for m in ("rf", "knn"):
            mm = kf["methods"][m]
            assert mm["flows"] == r["flows"] and len(mm["fold_macro_f1_min5"]) == 3
            assert mm["fold_mean"] == pytest.approx(np.mean(mm["fold_macro_f1_min5"]), abs=1e-3)
            assert "_pred" not in mm
            b = mm["by_app_seen"]  # every test flow is on one side; the pooled accuracy is their weighted mean
            assert b["seen"]["flows"] + b["unseen"]["flows"] == r["flows"]
            acc = (b["seen"]["accuracy"] * b["seen"]["flows"] + b["unseen"]["accuracy"] * b["unseen"]["flows"]) / r["flows"]
            assert acc == pytest.approx(mm["accuracy"], abs=1e-9)
        vs = kf["methods"]["knn"]["vs_rf"]  # the forest is the target's reference: knn against it, resampled
        assert "vs_rf" not in kf["methods"]["rf"] and vs["boot"] == 1000
        assert vs["unit"] == ("capture group" if name == "capture_kfold" else "capture file")
        ratio = kf["methods"]["knn"]["macro_f1_min5"] / kf["methods"]["rf"]["macro_f1_min5"]
        assert vs["ratio"] == pytest.approx(ratio, abs=1e-3)
        assert vs["ratio_ci95"][0] <= vs["ratio_ci95"][1] and vs["diff_ci95"][0] <= vs["diff"] + 1e-9
        hr = kf["headroom"]  # what the folds leave learnable (lab/headroom.py), beside the methods
        assert sum(c["support"] for c in hr["classes"].values()) == r["flows"]
        assert 0.0 <= hr["fingerprint_with_label"] <= hr["label_in_training"] <= 1.0
        kf_unseen[name + "_fp"] = hr["fingerprint_with_label"]
    for s in r["splits"].values():
        assert s["train_flows"] + s["test_flows"] <= r["flows"]
        for m in ("rf", "knn"):
            mm = s["methods"][m]
            assert "error" not in mm, mm
            for k in ("macro_f1", "macro_f1_min5", "weighted_f1", "accuracy", "ece"):
                assert 0.0 <= mm[k] <= 1.0
            assert mm["flows"] == s["test_flows"]
            rows = mm["by_confidence"]["thresholds"]  # a higher threshold keeps a subset of the flows
            assert [r["flows"] for r in rows] == sorted((r["flows"] for r in rows), reverse=True)
            assert rows[0]["flows"] <= mm["flows"]
    assert r["splits"]["unseen_app"]["label"] == "category"
    # whole captures held out move apps out of training; random folds almost never do
    assert kf_unseen["capture_kfold"] > kf_unseen["iid_kfold"]
    assert kf_unseen["capture_kfold_fp"] < kf_unseen["iid_kfold_fp"]  # and take their wire formats with them
    md = (out / "r.md").read_text()
    assert "Test flows whose app has flows in the training folds" in md
    assert md.count("What the folds leave learnable") == 2 and "an exact fingerprint lookup" in md
    assert "| rf |" in md and "Split `capture`" in md and "3 capture folds" in md and "3 random stratified folds" in md
    assert "| knn | " in md.split("Against the forest")[1]
    assert md.count("What a confidence threshold buys") == md.count("## Split `") + 1 and "| model | " in md.split(
        "## Shipped model")[1].split("## Split")[0] and "| rf | " in md.split(
        "What a confidence threshold buys")[1]
    assert list(out.glob("confusion_*_rf.png"))


def test_real_capture_split_disjoint(shared):
    from etool_sensor.train.data import load_labelled

    ds = load_labelled(NDPI / "pcap", NDPI / "labels.csv", encrypted_only=True, pcaps=PCAPS)
    sp = SP.make_splits(ds, ["capture", "unseen_app"], seed=0)
    assert not {ds.pcap[i] for i in sp["capture"]["train"]} & {ds.pcap[i] for i in sp["capture"]["test"]}
    held = {ds.app[i] for i in sp["unseen_app"]["test"]}
    assert held and not held & {ds.app[i] for i in sp["unseen_app"]["train"]}


def test_eval_rejects_bad_student_config(shared, tmp_path, capsys):
    from etool_sensor.lab.cli import main

    base = ["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(tmp_path / "r.json"),
            "--no-model", "--pcaps", ",".join(PCAPS[:2])]
    assert main(base + ["--student-config", "{layers: 1"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(base + ["--student-config", '{"depth": 3}']) == 2
    assert "must be an object with keys" in capsys.readouterr().err
    assert main(base + ["--splits", "capture", "--near-hellos", "-1"]) == 2
    assert "--near-hellos -1 must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_eval_and_train_refuse_bad_labels_and_data_in_one_line(shared, tmp_path, capsys):
    """A wrong --labels or --data is the user's error (exit 2, one line naming the file), found before any
    capture is read: not an internal error, not 483 "skipping" lines."""
    from etool_sensor.cli import main as cli_main

    labels, data = NDPI / "labels.csv", NDPI / "pcap"
    no_pcap = tmp_path / "no_pcap.csv"
    rows = labels.read_text().splitlines()
    cols = rows[0].split(",")
    keep = [i for i, c in enumerate(cols) if c != "pcap"]
    no_pcap.write_text("\n".join(",".join(r.split(",")[i] for i in keep) for r in rows[:3]) + "\n")
    cases = [
        (data, tmp_path / "missing.csv", "missing.csv: cannot read"),
        (data, no_pcap, "no_pcap.csv: missing column pcap"),
        (data, data / PCAPS[0], "not a CSV file"),
        (tmp_path / "nowhere", labels, "nowhere: not a directory"),
    ]
    for d, lab, msg in cases:
        for cmd in (["eval", "--json", str(tmp_path / "r.json")], ["train", "--out", str(tmp_path / "m")]):
            rc = cli_main([cmd[0], "--data", str(d), "--labels", str(lab)] + cmd[1:])
            err = capsys.readouterr().err
            assert rc == 2, (cmd[0], msg, err)
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and msg in lines[0] and "internal error" not in err, (cmd[0], err)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "m").exists()


def test_eval_no_model_needs_splits(shared, tmp_path, capsys):
    """--no-model alone would evaluate nothing: refused before any work, no JSON that looks like a score."""
    from etool_sensor.lab.cli import main

    out = tmp_path / "r.json"
    rc = main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
               "--no-model", "--pcaps", ",".join(PCAPS[:2])])
    assert rc == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert not out.exists()


def test_eval_unlabelled_captures_join_the_students_ssl(shared, tmp_path, capsys):
    """--unlabelled DIR: the student's self-supervised stage sees the split's training flows plus those captures
    (and --epochs sets its supervised epochs)."""
    import shutil

    from etool_sensor.lab.cli import main
    from etool_sensor.train.data import load_unlabelled

    extra = tmp_path / "extra"
    extra.mkdir()
    for name in ("443-curl.pcap", "443-firefox.pcap"):  # not among PCAPS
        shutil.copy(NDPI / "pcap" / name, extra / name)
    n_extra = len(load_unlabelled(sorted(extra.iterdir()))[0])
    assert n_extra > 0
    out = tmp_path / "r.json"
    rc = main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
               "--no-model", "--encrypted-only", "--quick", "--splits", "capture", "--methods", "student_no_llm",
               "--unlabelled", str(extra), "--pcaps", ",".join(PCAPS), "--epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "student: epoch 2/2 " in err and "student: epoch 3/" not in err  # --epochs reaches every student
    r = json.loads(out.read_text())
    assert r["unlabelled"] == {"dirs": [str(extra)], "flows": n_extra, "transductive": False}
    split = r["splits"]["capture"]
    assert "error" not in split["methods"]["student_no_llm"]
    assert f"ssl: {split['train_flows'] + n_extra} flows" in err
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
                 "--no-model", "--splits", "capture", "--unlabelled", str(tmp_path / "empty-or-missing"),
                 "--pcaps", ",".join(PCAPS)]) == 2
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
                 "--no-model", "--splits", "capture", "--transductive", "--pcaps", ",".join(PCAPS)]) == 2
    assert "name --unlabelled" in capsys.readouterr().err


def test_ssl_extra_leaves_out_the_test_captures_unless_transductive(shared):
    """--unlabelled may name --data itself: a split's self-supervised stage then reads every flow of its
    training captures and of captures without labels, once, and none of its test captures' flows (all of
    them with --transductive)."""
    from etool_sensor.lab.runner import ssl_extra
    from etool_sensor.train.data import load_labelled, load_unlabelled

    ds = load_labelled(NDPI / "pcap", NDPI / "labels.csv", pcaps=PCAPS[:6], encrypted_only=True)
    files = [NDPI / "pcap" / n for n in PCAPS[:6] + ["443-curl.pcap"]]
    unl = load_unlabelled(files)
    caps = sorted(set(ds.pcap))
    tr = ds.subset([i for i, p in enumerate(ds.pcap) if p in caps[:3]])
    te = ds.subset([i for i, p in enumerate(ds.pcap) if p not in caps[:3]])
    by_cap = {}
    for r, n in zip(unl[0], unl[2]):
        by_cap.setdefault(Path(n).name, []).append(r.uid)
    train_uids = {r.uid for r in tr.records}
    want = {u for c, us in by_cap.items() if c not in set(te.pcap) for u in us} - train_uids
    (recs, ctxs), info = ssl_extra(unl, tr, te)
    assert {r.uid for r in recs} == want and len(recs) == len(want) == len(ctxs)
    assert set(by_cap["443-curl.pcap"]) <= want and not train_uids & {r.uid for r in recs}
    assert info == {"flows": len(want), "test_capture_flows_left_out": sum(len(by_cap[c]) for c in set(te.pcap)),
                    "transductive": False} and info["test_capture_flows_left_out"] >= len(te)
    (recs, _), info = ssl_extra(unl, tr, te, transductive=True)
    assert {r.uid for r in recs} == {u for us in by_cap.values() for u in us} - train_uids
    assert info["test_capture_flows_left_out"] == 0


def test_ssl_extra_finds_test_captures_in_subfolders():
    """labels.csv names captures relative to --data (ssh/ssh.pcap in the other-network sets); the unlabelled
    flows carry full paths. A test capture in a subfolder is left out all the same, and only it."""
    from etool_sensor.lab.runner import ssl_extra
    from etool_sensor.train.data import in_captures

    assert in_captures("/d/zeek-traces/ssh/ssh.pcap", {"ssh/ssh.pcap"})
    assert in_captures("/d/ndpi/pcap/tls.pcap", {"tls.pcap"})
    assert not in_captures("/d/zeek-traces/tls/ssh.pcap", {"ssh/ssh.pcap"})
    recs = [SimpleNamespace(uid=u) for u in ("a", "b", "c")]
    names = ["/d/x/ssh/ssh.pcap", "/d/x/tls/ssh.pcap", "/d/x/ssh/ssh.pcap"]
    tr = SimpleNamespace(records=[])
    te = SimpleNamespace(pcap=["ssh/ssh.pcap"])
    (kept, _), info = ssl_extra((recs, [None] * 3, names), tr, te)
    assert [r.uid for r in kept] == ["b"] and info["test_capture_flows_left_out"] == 2


def test_eval_rf_hello_reads_whole_hellos(shared, tmp_path, capsys):
    """rf_hello (the forest with the TLS handshake structure) runs beside rf on flows read with whole hellos
    (--hello-bytes, 1024 by default); a hello size outside 0..65535 is refused."""
    from etool_sensor.lab.cli import main

    out = tmp_path / "h.json"
    args = ["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
            "--no-model", "--splits", "iid", "--methods", "rf,rf_hello", "--encrypted-only", "--quick"]
    assert main(args + ["--hello-bytes", "70000"]) == 2
    assert "must be in 0..65535" in capsys.readouterr().err
    assert main(args) == 0
    res = json.loads(out.read_text())
    m = res["splits"]["iid"]["methods"]
    assert 0.0 < m["rf"]["accuracy"] <= 1.0 and 0.0 < m["rf_hello"]["accuracy"] <= 1.0


def test_capture_draw_weighs_captures_not_flows():
    from etool_sensor.train.student import capture_draw

    caps = ["big"] * 90 + ["small"] * 10
    flat = capture_draw(caps, 0.0)
    assert np.allclose(flat, 0.01)  # power 0: every flow alike
    even = capture_draw(caps, 1.0)
    assert np.isclose(even[:90].sum(), 0.5) and np.isclose(even[90:].sum(), 0.5)  # power 1: every capture alike
    half = capture_draw(caps, 0.5)
    assert np.isclose(half[:90].sum() / half[90:].sum(), 3.0)  # sqrt(90) / sqrt(10)
    assert np.isclose(half.sum(), 1.0)


def test_eval_capture_balanced_student_runs(shared, tmp_path, capsys):
    """student_capbal (student_no_llm drawing flows per capture, an experiment) is measured beside it."""
    from etool_sensor.lab.cli import main

    out = tmp_path / "c.json"
    rc = main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
               "--no-model", "--encrypted-only", "--quick", "--splits", "capture",
               "--methods", "student_no_llm,student_capbal", "--pcaps", ",".join(PCAPS)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads(out.read_text())["splits"]["capture"]["methods"]
    assert 0.0 <= m["student_capbal"]["accuracy"] <= 1.0 and "error" not in m["student_capbal"]


def test_teacher_cache_is_reused_only_for_the_same_training_flows(shared, tmp_path):
    """eval writes a teacher's logits to --teacher-cache keyed by the flows it was trained on: a file from
    another training set (another seed's fold, a cache copied from another run) must be refused, not reused."""
    from etool_sensor.train.data import load_labelled

    ds = load_labelled(NDPI / "pcap", NDPI / "labels.csv", encrypted_only=True, pcaps=PCAPS[:3])
    a, b = ds.subset(range(0, len(ds) // 2)), ds.subset(range(len(ds) // 2, len(ds)))
    labels = sorted(set(ds.labels))
    z = np.random.default_rng(0).normal(size=(len(ds), len(labels))).astype(np.float32)
    teacher = SimpleNamespace(labels=labels, predict_logits=lambda records, contexts=None: z[:len(records)])
    path = tmp_path / "teacher_category_capture_kfold0_seed0.npz"
    TL.save_teacher_logits(path, ds, teacher, TL.training_key(a))
    assert TL.training_key(a) == TL.training_key(ds.subset(list(range(len(ds) // 2))[::-1]))  # order-free
    got = TL.load_cached_teacher(ds, path, TL.training_key(a))
    assert got is not None and got.labels == labels
    np.testing.assert_allclose(got.predict_logits(b.records), z[len(ds) // 2:].astype(np.float16), rtol=0, atol=0)
    assert TL.load_cached_teacher(ds, path, TL.training_key(b)) is None  # trained on other flows
    # the same labelled flows with other self-supervised flows (eval --unlabelled): another teacher
    assert TL.load_cached_teacher(ds, path, TL.training_key(a, b.records)) is None
    assert TL.training_key(a, b.records) == TL.training_key(a, b.records[::-1]) != TL.training_key(a, b.records[1:])
    assert TL.load_cached_teacher(ds, path) is not None  # no key asked: the old contract (train --teacher-cache)
    old = tmp_path / "old.npz"  # a cache written before keys (the GPU run's files) still loads
    TL.save_teacher_logits(old, ds, teacher)
    assert TL.load_cached_teacher(ds, old, TL.training_key(b)) is not None


@pytest.mark.slow
def test_kfold_repeats_keep_repeat_zero_and_share_the_teacher(shared, tmp_path, monkeypatch, capsys):
    """--repeats R retrains the students and forests with R model seeds on the same folds: repeat 0 is the
    run without --repeats, the spread is reported, and each fold's teacher is trained once, not R times.
    --first-repeat S continues the seeds of an earlier run."""
    from etool_sensor.lab.cli import main
    import etool_sensor.train.teacher as T

    calls = []

    def fake_teacher(tr, label_column, **kw):  # deterministic logits from the flow alone, no training
        calls.append(kw["seed"])
        labels = sorted(set(tr.labels))

        def logits(records, contexts=None):
            return np.array([[np.sin(r.resp_p * (j + 1) + r.packets[0].ip_len) for j in range(len(labels))]
                             for r in records], np.float32).reshape(len(records), len(labels))
        return SimpleNamespace(labels=labels, predict_logits=logits)

    monkeypatch.setattr(T, "train_teacher", fake_teacher)
    # number for number needs one torch thread count in both runs (student.set_threads follows the load)
    monkeypatch.setenv("ETOOL_TORCH_THREADS", "1")
    args = ["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--no-model", "--encrypted-only",
            "--quick", "--splits", "capture_kfold", "--folds", "3", "--methods", "rf,knn,etool",
            "--pcaps", ",".join(PCAPS)]
    assert main(args + ["--json", str(tmp_path / "one.json")]) == 0, capsys.readouterr().err
    assert calls == [0, 0, 0]  # one teacher per fold
    calls.clear()
    assert main(args + ["--json", str(tmp_path / "three.json"), "--repeats", "3",
                        "--report", str(tmp_path / "three.md")]) == 0, capsys.readouterr().err
    assert calls == [0, 0, 0]  # still one per fold: the repeats share it, seeded by the fold seed
    one = json.loads((tmp_path / "one.json").read_text())["splits"]["capture_kfold"]
    three = json.loads((tmp_path / "three.json").read_text())["splits"]["capture_kfold"]
    assert "repeats" not in one
    for m in ("rf", "knn", "etool"):  # repeat 0 is the plain run, number for number
        for k in ("macro_f1", "macro_f1_min5", "accuracy", "fold_macro_f1_min5"):
            assert three["methods"][m][k] == one["methods"][m][k], (m, k)
    rp = three["repeats"]
    assert rp["model_seeds"] == [0, 100, 200]
    for m, v in rp["methods"].items():
        assert len(v["macro_f1_min5"]) == 3 and v["macro_f1_min5"][0] == pytest.approx(one["methods"][m]["macro_f1_min5"], abs=1e-4)
        assert v["mean"] == pytest.approx(np.mean(v["macro_f1_min5"]), abs=1e-3)
    assert rp["methods"]["knn"]["sd"] == 0.0  # k-NN has no seed: every repeat is the same model
    # the seeded models do change: a forest or a student of another seed predicts some flow differently
    assert any(len(set(rp["methods"][m]["accuracy"])) > 1 for m in ("rf", "etool"))
    assert rp["methods"]["etool"]["ratio_of_means_to_rf"] == pytest.approx(
        rp["methods"]["etool"]["mean"] / rp["methods"]["rf"]["mean"], rel=1e-2)
    assert "model seeds 0, 100, 200" in (tmp_path / "three.md").read_text()
    # --first-repeat adds seeds to an earlier run: repeats 1 and 2 of the run above, number for number
    assert main(args + ["--json", str(tmp_path / "later.json"), "--repeats", "2", "--first-repeat", "1"]) == 0
    later = json.loads((tmp_path / "later.json").read_text())["splits"]["capture_kfold"]["repeats"]
    assert later["model_seeds"] == [100, 200]
    for m in ("rf", "etool"):
        assert later["methods"][m]["macro_f1_min5"] == rp["methods"][m]["macro_f1_min5"][1:], m
    assert main(args + ["--json", str(tmp_path / "bad.json"), "--repeats", "0"]) == 2
    assert "--repeats 0 must be >= 1" in capsys.readouterr().err
    assert main(args + ["--json", str(tmp_path / "bad.json"), "--first-repeat", "-1"]) == 2
    assert "--first-repeat -1 must be >= 0" in capsys.readouterr().err


def test_numpy_metrics_match_sklearn_on_the_shipped_models_verdicts(shared):
    """eval's metrics are numpy only (the base install has no sklearn); scikit-learn is the reference."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

    from etool_sensor.train.data import load_labelled

    from tests.support import ZEEK_TRACES

    ds = load_labelled(ZEEK_TRACES, ZEEK_TRACES / "labels.csv", encrypted_only=True)  # a network it never saw
    m = R.evaluate_model(ds, None, "category")
    y, p = SP.label_of(ds, "category"), m["_pred"]
    assert set(p) - set(y), "the model should predict a label the test set lacks, to check it counts"
    true = sorted(set(y))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, labels=true, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, labels=true, average="weighted", zero_division=0))
    pr, rc, _, _ = precision_recall_fscore_support(y, p, labels=true, zero_division=0)
    for i, c in enumerate(true):
        assert m["per_class"][c]["precision"] == pytest.approx(pr[i]) and m["per_class"][c]["recall"] == pytest.approx(rc[i])
    rng = np.random.default_rng(0)
    score = np.round(rng.random(300), 1)  # many ties
    right = rng.random(300) < 0.6
    assert S.auroc(score, right) == pytest.approx(roc_auc_score(right, score))


# What the base install (`pip install .`) lacks: eval must still score a model, or say what to install.
_NO_TRAIN_EXTRA = """
import sys
sys.modules.update(dict.fromkeys(("torch", "sklearn", "matplotlib", "transformers"), None))  # import fails
from etool_sensor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_eval_scores_the_model_without_the_train_extra(shared, tmp_path):
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    base = [sys.executable, "-c", _NO_TRAIN_EXTRA, "eval", "--data", str(NDPI / "pcap"), "--labels",
            str(NDPI / "labels.csv"), "--pcaps", ",".join(PCAPS[:4])]
    env = {**__import__("os").environ, "PYTHONPATH": root}
    r = subprocess.run(base + ["--json", str(tmp_path / "m.json")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 < res["accuracy"] <= 1.0 and res["macro_f1"] is not None
    cm = res["model"]["confusion"]
    assert sum(map(sum, cm["counts"])) == res["flows"] and "confusion_png" not in res["model"]
    r = subprocess.run(base + ["--json", str(tmp_path / "s.json"), "--splits", "capture"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and "train extra" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def ndpi_encrypted(shared):
    from etool_sensor.train.data import load_labelled

    return load_labelled(NDPI / "pcap", NDPI / "labels.csv", encrypted_only=True)


def test_capture_groups_keep_servers_and_clients_in_one_fold(ndpi_encrypted):
    """On nDPI's encrypted flows: no server endpoint and no client of one day spans two capture folds, and the
    captures cut from shared recordings end up together."""
    ds = ndpi_encrypted
    group = SP.capture_groups(ds)
    of = dict(zip(ds.pcap, group))
    assert of["reddit.pcap"] == of["tumblr.pcap"] == of["pinterest.pcap"]  # 11 shared 5-tuples, one client
    assert of["openvpn.pcap"] == of["openvpn_nohmac.pcapng"] == of["openvpn_nohmac_tcp.pcapng"]
    assert of["dnscrypt-v1-and-resolver-pings.pcap"] == of["dnscrypt-v2-doh.pcap"]
    folds = SP.capture_folds(ds, 5, seed=0)
    fold = np.empty(len(ds), int)
    for k, te in enumerate(folds):
        fold[te] = k
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(ds)))
    servers, clients, span = {}, {}, {}
    for i, r in enumerate(ds.records):
        if SP._identifies(r.resp_h):
            servers.setdefault((r.resp_h, r.resp_p, r.proto), set()).add(fold[i])
        if SP._identifies(r.orig_h):
            clients.setdefault(r.orig_h, {}).setdefault(ds.pcap[i], fold[i])
        lo, hi = span.get(ds.pcap[i], (r.ts, r.ts))
        span[ds.pcap[i]] = (min(lo, r.ts), max(hi, r.ts))
    assert len(servers) > 300 and all(len(f) == 1 for f in servers.values())
    day = 0
    for caps in clients.values():
        for a in caps:
            for b in caps:
                clocks = all(span[c][0] > 946684800 and span[c][1] - span[c][0] <= 30 * 86400 for c in (a, b))
                if a < b and clocks and max(span[a][0], span[b][0]) - min(span[a][1], span[b][1]) <= SP.CLIENT_WINDOW:
                    day += 1
                    assert caps[a] == caps[b], (a, b)
    assert day > 10
    sizes = sorted(len(te) for te in folds)
    assert sizes[-1] < 0.35 * len(ds), sizes  # the groups still make usable folds
    print(f"\n{len(set(group))} capture groups of {len(set(ds.pcap))} captures; fold sizes {sizes}")


@pytest.mark.slow
def test_kfold_pairs_the_llm_teacher_with_its_twin_on_the_same_folds(shared, tmp_path, monkeypatch, capsys):
    """The control for the LLM's share: student_enc_teacher is distilled from the teacher's twin without the
    LLM (use_llm False) on the same folds; the paired block compares it, etool and student_no_llm per model
    seed, and its differences are the pooled scores' differences."""
    from etool_sensor.lab.cli import main
    import etool_sensor.train.teacher as T

    variants = []

    def fake_teacher(tr, label_column, **kw):
        variants.append(kw["use_llm"])
        labels = sorted(set(tr.labels))
        k = 1 if kw["use_llm"] else 3

        def logits(records, contexts=None):
            return np.array([[np.sin(r.resp_p * (j + k) + r.packets[0].ip_len) for j in range(len(labels))]
                             for r in records], np.float32).reshape(len(records), len(labels))
        return SimpleNamespace(labels=labels, predict_logits=logits)

    monkeypatch.setattr(T, "train_teacher", fake_teacher)
    out = tmp_path / "p.json"
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--no-model", "--encrypted-only",
                 "--quick", "--splits", "capture_kfold", "--folds", "2", "--repeats", "2", "--pcaps", ",".join(PCAPS),
                 "--methods", "rf,etool,student_enc_teacher,student_no_llm", "--json", str(out)]) == 0
    assert sorted(variants) == [False, False, True, True]  # per fold one teacher of each kind, shared by the repeats
    k = json.loads(out.read_text())["splits"]["capture_kfold"]
    pairs = k["paired"]
    assert set(pairs) == {"etool - student_enc_teacher", "etool - student_no_llm",
                          "student_enc_teacher - student_no_llm"}
    m = k["methods"]
    for name, v in pairs.items():
        a, b = name.split(" - ")
        assert len(v["diff"]) == 2 and v["verdict"] in ("gain", "loss", "noise")
        assert v["diff"][0] == pytest.approx(m[a]["macro_f1_min5"] - m[b]["macro_f1_min5"], abs=2e-4)
        assert all(lo <= d <= hi for d, (lo, hi) in zip(v["diff"], v["diff_ci95"]))
    pp = k["pooled_predictions"]
    assert len(pp["y"]) == len(pp["groups"]) == k["test_flows"] and len(pp["methods"]["etool"]) == 2
    assert "etool - student_enc_teacher: macroF1(>=5) difference per model seed" in capsys.readouterr().err


@pytest.mark.slow
def test_kfold_pairs_the_student_ensemble_with_one_student(shared, tmp_path, capsys):
    """hybrid_ensemble averages --members whole trainings of the student (each its own self-supervised
    stage; the first is hybrid_no_llm's student) and is paired with hybrid_no_llm on the same folds."""
    from etool_sensor.lab.cli import main

    out = tmp_path / "e.json"
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--no-model", "--encrypted-only",
                 "--quick", "--splits", "capture_kfold", "--folds", "2", "--pcaps", ",".join(PCAPS), "--members", "2",
                 "--methods", "hybrid_no_llm,hybrid_ensemble", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("ssl: epoch 1/") == 4  # per fold: hybrid_no_llm's own, and the second member's
    assert err.count("student: epoch 1/") == 4  # the first member is hybrid_no_llm's student, not trained again
    k = json.loads(out.read_text())["splits"]["capture_kfold"]
    m, name = k["methods"], "hybrid_ensemble - hybrid_no_llm"
    assert k["paired"][name]["diff"][0] == pytest.approx(m["hybrid_ensemble"]["macro_f1_min5"]
                                                         - m["hybrid_no_llm"]["macro_f1_min5"], abs=2e-4)
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--no-model", "--members", "0",
                 "--splits", "capture_kfold", "--methods", "hybrid_ensemble", "--json", str(out)]) == 2


def test_eval_scores_size_forests_beside_the_model(shared, tmp_path):
    """--baselines-from trains rf and rf_shape on the model's training data and scores them on the same flows
    as the model: the other-network target in one run."""
    import csv

    from etool_sensor.lab.cli import main

    train_csv = tmp_path / "train.csv"
    with open(NDPI / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["pcap"] in set(PCAPS[:5])]
    with open(train_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "b.json"
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--pcaps", ",".join(PCAPS[5:]),
                 "--json", str(out), "--baselines-from", str(NDPI / "pcap"), str(train_csv)]) == 0
    r = json.loads(out.read_text())
    b = r["baselines"]
    assert b["trained_on"]["flows"] > 0 and b["trained_on"]["labels"] == str(train_csv)
    for kind in ("rf", "rf_shape"):
        assert 0 <= b[kind]["accuracy"] <= 1
        if b[kind]["macro_f1_min5"]:
            assert b[kind]["model_ratio_macro_f1_min5"] == pytest.approx(r["macro_f1_min5"] / b[kind]["macro_f1_min5"],
                                                                         rel=1e-2)


def test_one_sided_keeps_one_direction_and_the_copies_keep_their_labels(shared):
    """train.data.one_sided is what a sensor behind asymmetric routing collects of a flow: one direction's
    packets and chunks, times from its first packet; with_one_sided adds such copies to a training set with the
    flow's label, capture and context, and leaves the original flows as they were."""
    from etool_sensor.capture.reader import LIKELY_SERVER_PORTS
    from etool_sensor.train.data import load_labelled, one_sided, with_one_sided

    ds = load_labelled(NDPI / "pcap", NDPI / "labels.csv", encrypted_only=True, pcaps=PCAPS)
    rec = next(r for r in ds.records if {p.is_orig for p in r.packets} == {True, False} and len(r.payload) > 1
               and r.proto == "tcp" and r.packets[0].tcp_flags == 0x02)  # a whole TCP connection, from its SYN
    for orig in (True, False):
        o = one_sided(rec, orig)
        assert o is not None and o.uid != rec.uid
        assert o.packets and len({p.is_orig for p in o.packets}) == 1 and o.packets[0].dt == 0.0
        assert [p.ip_len for p in o.packets] == [p.ip_len for p in rec.packets if p.is_orig == orig]
        assert [c.data for c in o.payload] == [c.data for c in rec.payload if c.is_orig == orig]
        # the side seen is the originator unless Zeek flips it (it sends from a likely server port)
        swapped = o.packets[0].is_orig != orig
        assert (o.orig_h, o.orig_p) == ((rec.resp_h, rec.resp_p) if swapped else (rec.orig_h, rec.orig_p))
        assert swapped == (not orig and rec.resp_p not in LIKELY_SERVER_PORTS[rec.proto])
        o.validate()
    lone = next((r for r in ds.records if sum(p.is_orig for p in r.packets) < 2), None)
    if lone is not None:
        assert one_sided(lone, True) is None  # fewer than 2 packets on that side: no record, as classify
    before = [r.uid for r in ds.records]
    aug = with_one_sided(ds, 0.5, seed=0)
    n = len(ds)
    assert [r.uid for r in ds.records] == before and [r.uid for r in aug.records[:n]] == before
    assert n < len(aug) <= n + n * 0.7
    for r, y, cap, ctx in zip(aug.records[n:], aug.labels[n:], aug.pcap[n:], aug.contexts[n:]):
        src = ds.records.index(next(x for x in ds.records if x.uid == r.uid[:-1]))
        assert r.uid[-1] in "<>" and len({p.is_orig for p in r.packets}) == 1
        assert (y, cap, ctx) == (ds.labels[src], ds.pcap[src], ds.contexts[src])
    assert [r.uid for r in with_one_sided(ds, 0.5, seed=0).records] == [r.uid for r in aug.records]
    assert with_one_sided(ds, 0.0, seed=0) is ds
    with pytest.raises(ValueError):
        with_one_sided(ds, 1.5, seed=0)


def test_eval_views_score_every_method_on_one_sided_test_flows(shared, tmp_path, capsys):
    """eval --views adds M@client_only and M@server_only: the same trained method scored on the test flows
    seen from one side, the same trained models answering; --one-sided recorded in the result."""
    from etool_sensor.lab.cli import main

    out = tmp_path / "v.json"
    rc = main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(out),
               "--no-model", "--encrypted-only", "--quick", "--splits", "capture_kfold", "--folds", "3",
               "--methods", "rf_shape", "--views", "--one-sided", "0.5", "--pcaps", ",".join(PCAPS)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["one_sided"] == 0.5 and res["views"] is True
    plain = tmp_path / "p.json"
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(plain),
                 "--no-model", "--encrypted-only", "--quick", "--splits", "capture", "--methods", "rf_shape",
                 "--pcaps", ",".join(PCAPS)]) == 0
    with_copies = tmp_path / "c.json"
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(with_copies),
                 "--no-model", "--encrypted-only", "--quick", "--splits", "capture", "--methods", "rf_shape",
                 "--one-sided", "0.5", "--pcaps", ",".join(PCAPS)]) == 0
    n0 = json.loads(plain.read_text())["splits"]["capture"]["train_flows"]
    assert n0 < json.loads(with_copies.read_text())["splits"]["capture"]["train_flows"]  # the copies train too
    assert main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--json", str(plain),
                 "--views"]) == 2  # views of what? no split trains a model
    m = res["splits"]["capture_kfold"]["methods"]
    assert set(m) == {"rf_shape", "rf_shape@client_only", "rf_shape@server_only"}
    for k in m:
        assert "error" not in m[k] and 0.0 <= m[k]["accuracy"] <= 1.0
    preds = res["splits"]["capture_kfold"]["pooled_predictions"]["methods"]
    assert preds["rf_shape@client_only"] != preds["rf_shape"]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_one_sided_is_what_the_reader_makes_of_one_direction(shared, tmp_path):
    """A capture cut down to one direction with tcpdump and read by the capture reader gives the records that
    one_sided makes of the whole capture's: the same endpoints (Zeek's flip from a likely server port, and
    none from another port), directions, sizes and times (a TLS server on 443, a WireGuard peer on 51820)."""
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.train.data import one_sided

    checked = 0
    for name, side in (("signal.pcap", "tcp src port 443"), ("wireguard.pcap", "udp src port 51820")):
        cut = tmp_path / name
        subprocess.run(["tcpdump", "-r", str(NDPI / "pcap" / name), "-w", str(cut), side], check=True,
                       capture_output=True)
        whole = list(read_flows(NDPI / "pcap" / name, checksums=False))
        port = int(side.split()[-1])
        for seen in read_flows(cut, checksums=False):
            # the whole connection: the same endpoints, the latest to start before this side's first packet
            src = max((r for r in whole if {(r.orig_h, r.orig_p), (r.resp_h, r.resp_p)} ==
                       {(seen.orig_h, seen.orig_p), (seen.resp_h, seen.resp_p)} and r.ts <= seen.ts + 1e-6),
                      key=lambda r: r.ts)
            o = one_sided(src, src.orig_p == port)
            if o is None:
                continue
            n = min(len(o.packets), len(seen.packets))
            assert (o.orig_h, o.orig_p, o.resp_h, o.resp_p) == (seen.orig_h, seen.orig_p, seen.resp_h, seen.resp_p)
            assert abs(o.ts - seen.ts) < 1e-5
            assert [(p.is_orig, p.ip_len) for p in o.packets[:n]] == [(p.is_orig, p.ip_len) for p in seen.packets[:n]]
            assert np.allclose([p.dt for p in o.packets[:n]], [p.dt for p in seen.packets[:n]], atol=1e-5)
            checked += 1
    assert checked >= 15


def test_a_method_that_fails_in_one_fold_takes_its_views_with_it(monkeypatch):
    """eval --views: when a method fails in a fold, its one-sided views were never scored there; the K-fold
    result reports the method and its views as failed and keeps the other methods' numbers."""
    from etool_sensor.flows import FlowRecord, Packet
    from etool_sensor.train.data import LabelledSet

    n = 20
    recs = [FlowRecord(f"C{i}", 0.0, "1.1.1.1", 1000 + i, "2.2.2.2", 443, "tcp",
                       [Packet(0.0, True, 60, 0, 2), Packet(0.1, False, 60, 0, 18)]) for i in range(n)]
    ds = LabelledSet(records=recs, contexts=[None] * n, labels=["A", "B"] * 10, service=["A", "B"] * 10,
                     app=["a", "b"] * 10, pcap=[f"p{i % 4}.pcap" for i in range(n)], encrypted=[True] * n)
    calls = {"k": 0}

    def split_scores(ds, split, column, methods, **kw):  # rf_shape fails in the second fold
        calls["k"] += 1
        p = [ds.labels[i] for i in split["test"]]
        res: dict = {"methods": {}}
        for m in methods:
            if m == "rf_shape" and calls["k"] == 2:
                res["methods"][m] = {"error": "boom"}
                continue
            res["methods"][m] = {"_pred": p, "_conf": [1.0] * len(p), "macro_f1_min5": 1.0, "fit_s": 0.0}
            for v in R.VIEWS:
                res["methods"][f"{m}@{v}"] = {"_pred": ["-"] * len(p), "_conf": [0.0] * len(p), "macro_f1_min5": 0.0}
        return res

    monkeypatch.setattr(R, "run_split", split_scores)
    monkeypatch.setitem(R.KFOLDS, "two_folds", lambda ds, f, s: [np.arange(i, n, 2) for i in range(2)])
    monkeypatch.setattr(R, "dataset_headroom", lambda ds, parts: {})
    out = R.run_kfold(ds, "category", ["rf_shape", "rf"], folds=2, seed=0, log=lambda s: None, png_dir=None,
                      kind="two_folds", views=True)
    m = out["methods"]
    assert m["rf_shape"] == {"error": "boom"}
    assert all("error" in m[f"rf_shape@{v}"] for v in R.VIEWS)
    assert m["rf"]["accuracy"] == 1.0 and all(m[f"rf@{v}"]["accuracy"] == 0.0 for v in R.VIEWS)
