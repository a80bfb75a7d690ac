"""`etool-sensor adapt` on real captures (the shared zeek-traces set's ssh/ and tls/ captures and their nDPI
labels): the package it writes loads, classifies, records its lineage, and reaches a label the base never had."""

from __future__ import annotations

import csv
import importlib.util
import re

import pytest

from tests.support import ZEEK_TRACES

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnx")

NEW = "SecureShell"  # not a label of the bundled package: the SSH flows of the local labels get it


def subset_labels(out, keep) -> None:
    """zeek-traces' labels.csv cut to the rows keep(row) returns (possibly changed), written to `out`."""
    with open(ZEEK_TRACES / "labels.csv", newline="") as f, open(out, "w", newline="") as g:
        r = csv.DictReader(f)
        w = csv.DictWriter(g, r.fieldnames)
        w.writeheader()
        for row in r:
            row = keep(row)
            if row is not None:
                w.writerow(row)


def _ssh_tls_with_new_label(row: dict) -> dict | None:
    if not row["pcap"].startswith(("ssh/", "tls/")):
        return None
    if row["master"] == "SSH":
        row["category"] = NEW
    return row


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    if not (ZEEK_TRACES / "labels.csv").is_file():
        pytest.skip("shared/data/zeek-traces not present")
    from etool_sensor.cli import main

    d = tmp_path_factory.mktemp("adapt")
    labels = d / "labels.csv"
    subset_labels(labels, _ssh_tls_with_new_label)
    out = d / "pkg"
    rc = main(["adapt", "--data", str(ZEEK_TRACES), "--labels", str(labels), "-o", str(out), "--quiet"])
    return rc, out, labels


def test_adapted_package_loads_classifies_and_records_its_lineage(adapted, tmp_path):
    from etool_sensor.cli import main
    from etool_sensor.runtime import load_model

    rc, out, _ = adapted
    assert rc in (0, 5)  # 5: written, but not better on the held-back captures
    m = load_model(out)
    lin = m.manifest["lineage"]
    base = load_model(None)
    assert lin["base"] == base.id and lin["base_sha256"] == base.manifest["sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", lin["local_sha256"]) and lin["local_sha256"][:8] in m.version
    assert re.match(r"\d{4}-\d\d-\d\dT", lin["date"]) and lin["captures"] > 20 and lin["flows"] > 100
    assert lin["held_back"]["before"]["flows"] == lin["held_back"]["after"]["flows"] > 0
    assert m.manifest["parity"]["adapt"]["argmax_agreement_vs_numpy"] >= 0.99
    if importlib.util.find_spec("etool_sensor.drift") is not None:  # the package carries its drift reference
        ref = m.manifest["drift_reference"]
        assert ref["flows"] > 100 and abs(sum(ref["label_shares"].values()) - 1) < 1e-3
        assert NEW in ref["label_shares"]
    rc = main(["classify", str(ZEEK_TRACES / "tls" / "ecdhe.pcap"), "-o", str(tmp_path), "--model", str(out),
               "--quiet"])
    assert rc == 0
    rows = [l for l in (tmp_path / "etool.log").read_text().splitlines() if not l.startswith("#")]
    assert rows and all(m.id in r for r in rows)


def test_a_label_only_the_local_network_has_is_reachable(adapted):
    from etool_sensor.runtime import load_model, model_window
    from etool_sensor.train.data import load_labelled

    rc, out, labels = adapted
    m = load_model(out)
    assert NEW in m.label_sets["service"] and NEW in m.manifest["adapt"]["new_service_labels"]
    base = load_model(None)
    assert NEW not in base.label_sets["service"]
    ds = load_labelled(ZEEK_TRACES, labels, params=model_window(m.spec), pcaps=["ssh/ssh.pcap", "ssh/sshguess.pcap"])
    ssh = [i for i, s in enumerate(ds.service) if s == NEW]
    assert len(ssh) >= 20
    v = m.classify([ds.records[i] for i in ssh], [ds.contexts[i] for i in ssh])
    got = sum(x.service == NEW for x in v) / len(v)
    assert got >= 0.8, got


def test_an_adapted_package_adapts_again(adapted, tmp_path):
    from etool_sensor.cli import main
    from etool_sensor.runtime import load_model

    _, first, labels = adapted
    out = tmp_path / "again"
    rc = main(["adapt", "--data", str(ZEEK_TRACES), "--labels", str(labels), "--model", str(first), "-o", str(out),
               "--quiet", "--holdout", "0"])
    assert rc == 0
    m = load_model(out)
    assert m.manifest["lineage"]["base"] == load_model(first).id
    assert m.label_sets["service"][: len(load_model(first).label_sets["service"])] == \
        load_model(first).label_sets["service"]


def test_a_package_of_several_students_adapts(adapted, tmp_path, monkeypatch):
    """train --members 2 writes one graph of two students; adapt rewrites that graph like a single student's:
    the adapted package agrees with adapt's numpy computation, keeps both members and reaches the new label."""
    from etool_sensor.cli import main
    from etool_sensor.runtime import load_model, model_window
    from etool_sensor.train.data import load_labelled
    from tests.support import NDPI

    pytest.importorskip("torch")
    _, _, labels = adapted
    monkeypatch.setenv("ETOOL_TORCH_THREADS", "1")
    base, out = tmp_path / "two", tmp_path / "adapted"
    assert main(["train", "--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--out", str(base),
                 "--quick", "--no-teacher", "--quick-pcaps", "30", "--members", "2", "--name", "two",
                 "--version", "0.0.1"]) == 0
    assert main(["adapt", "--data", str(ZEEK_TRACES), "--labels", str(labels), "--model", str(base), "-o", str(out),
                 "--quiet", "--holdout", "0"]) == 0
    m = load_model(out)
    assert m.manifest["architecture"]["members"] == 2 and m.manifest["lineage"]["base"] == load_model(base).id
    assert m.manifest["parity"]["adapt"]["argmax_agreement_vs_numpy"] >= 0.99
    ds = load_labelled(ZEEK_TRACES, labels, params=model_window(m.spec), pcaps=["ssh/ssh.pcap", "ssh/sshguess.pcap"])
    ssh = [i for i, s in enumerate(ds.service) if s == NEW]
    v = m.classify([ds.records[i] for i in ssh], [ds.contexts[i] for i in ssh])
    assert sum(x.service == NEW for x in v) / len(v) >= 0.8


def test_adapt_errors_are_one_line_before_any_capture_is_read(tmp_path, capsys):
    from etool_sensor.cli import main

    if not (ZEEK_TRACES / "labels.csv").is_file():
        pytest.skip("shared/data/zeek-traces not present")

    for argv, want in ((["-o", str(tmp_path / "p")], "give captures to label, or --data DIR and --labels CSV"),
                       (["--data", str(ZEEK_TRACES), "--labels", str(tmp_path / "none.csv"), "-o", str(tmp_path / "p")],
                        "none.csv: cannot read"),
                       (["--data", str(ZEEK_TRACES), "--labels", str(ZEEK_TRACES / "labels.csv"), "-o",
                         str(tmp_path / "no" / "p")], "no such directory")):
        assert main(["adapt", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], err


def test_verdict_not_better_is_one_score_lower_and_the_other_not_higher():
    from etool_sensor.train.adapt import verdict

    def s(f1: float, acc: float, classes: int = 2) -> dict:
        return {"macro_f1_min5": f1, "accuracy": acc, "classes_min5": classes}

    assert verdict(s(0.5, 0.5), s(0.5, 0.5)) is True  # a tie is not worse
    assert verdict(s(0.5, 0.5), s(0.6, 0.4)) is True  # one up, one down: not "not better"
    assert verdict(s(0.5, 0.5), s(0.4, 0.5)) is False
    assert verdict(s(0.5, 0.5), s(0.5, 0.4)) is False
    assert verdict(s(0.5, 0.5), s(0.6, 0.6)) is True
    assert verdict(s(0.0, 1.0, 0), s(0.0, 1.0, 0)) is None  # no class of >= 5 held-back flows: no verdict


def test_one_step_adapt_checks_before_labelling_and_keeps_labels_it_cannot_use(tmp_path, capsys):
    """`adapt CAPTURE...` refuses a bad -o or base package before nDPI runs (one error line, nothing
    labelled); when it fails after labelling, the labels stay in PKG.labels.csv."""
    from etool_sensor.cli import main
    from etool_sensor.labeling import LabelError, find_engine

    try:
        find_engine("auto")
    except LabelError as e:
        pytest.skip(str(e))
    caps = sorted((ZEEK_TRACES / "tls").glob("*.pcap"))[:3]
    if not caps:
        pytest.skip("shared/data/zeek-traces not present")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    for argv, want in ((["-o", str(full)], "exists and is not an empty directory"),
                       (["-o", str(tmp_path / "p"), "--model", str(tmp_path / "nomodel")], "nomodel")):
        assert main(["adapt", *map(str, caps), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], err  # no "adapt: labelled ..." line: nDPI never ran
    out = tmp_path / "few"
    assert main(["adapt", str(caps[0]), "-o", str(out)]) == 2  # one capture: too few flows to adapt
    err = capsys.readouterr().err
    assert "adapt: labelled" in err and "adapt needs at least 10" in err and "few.labels.csv" in err
    kept = (tmp_path / "few.labels.csv").read_text()
    assert kept.startswith("pcap,") and not out.exists()


def test_adapt_from_captures_keeps_the_labels_it_wrote(tmp_path):
    """`adapt CAPTURE...` labels the captures with nDPI first; those labels go into the package
    (local_labels.csv, named in lineage.local_labels) so that lineage.local_sha256 can be checked again."""
    from etool_sensor.cli import main
    from etool_sensor.labeling import LabelError, default_root, find_engine
    from etool_sensor.train.adapted_package import digest
    from etool_sensor.train.data import load_labelled
    from etool_sensor.runtime import model_window
    from etool_sensor.runtime import load_model

    try:
        find_engine("auto")
    except LabelError as e:
        pytest.skip(str(e))
    caps = sorted((ZEEK_TRACES / "tls").glob("*.pcap"))[:40] + sorted((ZEEK_TRACES / "ssh").glob("*.pcap"))[:20]
    if len(caps) < 20:
        pytest.skip("shared/data/zeek-traces not present")
    out = tmp_path / "pkg"
    rc = main(["adapt", *map(str, caps), "-o", str(out), "--quiet", "--holdout", "0"])
    assert rc in (0, 3), rc  # 3: a truncated capture among them, labelled up to the cut
    m = load_model(out)
    lin = m.manifest["lineage"]
    assert lin["local_labels"] == "local_labels.csv"
    text = (out / "local_labels.csv").read_bytes()
    assert text.startswith(b"pcap,") and text.count(b"\n") > 10
    # checked again: the kept labels and the bytes of the captures they name give the recorded digest
    base = load_model()
    ds = load_labelled(default_root(caps), out / "local_labels.csv", params=model_window(base.spec))
    assert lin["local_sha256"] == digest(out / "local_labels.csv", default_root(caps), ds.pcap)
    assert lin["local_sha256"][:8] in m.version


def test_adapt_from_labels_says_which_captures_were_cut(tmp_path, capsys):
    """adapt --data/--labels on a capture that ends mid-record: its flows up to the cut are used, a warning
    names it and the exit is 3, as classify and label do."""
    import shutil

    from etool_sensor.cli import main

    if not (ZEEK_TRACES / "labels.csv").is_file():
        pytest.skip("shared/data/zeek-traces not present")
    data = tmp_path / "data"
    (data / "ssh").mkdir(parents=True)
    src = (ZEEK_TRACES / "ssh" / "ssh.pcap").read_bytes()
    (data / "ssh" / "ssh.pcap").write_bytes(src[: len(src) * 2 // 3 + 7])
    for name in ("sshguess.pcap", "ssh-on-port-80.trace"):
        if (ZEEK_TRACES / "ssh" / name).is_file():
            shutil.copy(ZEEK_TRACES / "ssh" / name, data / "ssh" / name)
    labels = tmp_path / "labels.csv"
    subset_labels(labels, lambda row: row if (data / row["pcap"]).is_file() else None)
    rc = main(["adapt", "--data", str(data), "--labels", str(labels), "-o", str(tmp_path / "pkg"), "--holdout", "0"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "truncated capture" in err and "ssh/ssh.pcap" in err
