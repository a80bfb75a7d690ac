"""Drift monitoring (etool_sensor/drift.py): the distances on known values, the sliding window, the bundled
packages' references, the score on the shared captures, classify's summary, the ETooL::drift frame, serve."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import numpy as np
import pytest

from etool_sensor import drift as dr
from etool_sensor.zeek import broker_json as bj, messages, wire
from etool_sensor.flows import Verdict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "ndpi" / "pcap").is_dir(), reason="../shared/data not present")


def V(service: str, conf: float, status: str = "ok") -> Verdict:
    return Verdict("C1", service, "x", conf, conf < 0.5, [], "m@1", status)


REF = {"flows": 4, "label_shares": {"Web": 0.5, "Chat": 0.5},
       "confidence_hist": [0.0] * 5 + [0.5, 0.0, 0.0, 0.0, 0.5], "unknown_rate": 0.0, "table_hit_rate": 0.5,
       "threshold": 0.5, "source": "test"}


# ------------------------------------------------------------------------------------------- distances
def test_total_variation_known_values() -> None:
    assert dr.total_variation({"a": 1.0}, {"a": 1.0}) == 0.0
    assert dr.total_variation({"a": 1.0}, {"b": 1.0}) == 1.0  # disjoint
    assert dr.total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert dr.total_variation({"a": 0.2, "b": 0.3, "c": 0.5}, {"a": 0.5, "b": 0.3, "d": 0.2}) == pytest.approx(0.5)


def test_confidence_bins_cover_0_to_1() -> None:
    assert [dr.confidence_bin(c) for c in (0.0, 0.0999, 0.1, 0.5, 0.95, 1.0, 1.2, -0.1)] == [0, 0, 1, 5, 9, 9, 9, 0]


def test_reference_from_verdicts_known_values() -> None:
    vs = [V("Web", 0.55), V("Web", 0.95), V("Chat", 0.3), V("VPN", 0.99), V("", 0.0, "too_few_packets")]
    ref = dr.reference_from_verdicts(vs, [True, False, None, True, None], 0.5, "four flows")
    assert ref["flows"] == 4
    assert ref["label_shares"] == {"Chat": 0.25, "VPN": 0.25, "Web": 0.5}
    assert ref["confidence_hist"] == [0, 0, 0, 0.25, 0, 0.25, 0, 0, 0, 0.5]
    assert ref["unknown_rate"] == 0.25 and ref["table_hit_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert (ref["threshold"], ref["source"]) == (0.5, "four flows")
    assert dr.reference_from_verdicts(vs, None, 0.5, "")["table_hit_rate"] is None
    with pytest.raises(dr.DriftError):
        dr.reference_from_verdicts([V("", 0.0, "too_few_packets")], None, 0.5, "")


def test_monitor_parts_on_known_windows() -> None:
    m = dr.DriftMonitor(REF, window=None)
    assert m.score().score == 0.0 and m.score().flows == 0
    for v, hit in ((V("Web", 0.55), True), (V("Chat", 0.95), False), (V("Web", 0.97), True),
                   (V("Chat", 0.51), False)):
        m.observe(v, hit)
    d = m.score()
    assert (d.score, d.label_shift, d.confidence_shift, d.unknown_rate, d.table_hit_rate, d.flows) == \
        (0.0, 0.0, 0.0, 0.0, 0.5, 4)
    # two flows of a label the reference never predicted, unknown, not in the table
    m.observe(V("Game", 0.05), False)
    m.observe(V("Game", 0.15), False)
    d = m.score()
    assert d.label_shift == pytest.approx(1 / 3)  # the unseen label is its own mass
    assert d.confidence_shift == pytest.approx(1 / 3)
    assert d.unknown_rate == pytest.approx(1 / 3) and d.unknown_shift == pytest.approx(1 / 3)
    assert d.table_shift == pytest.approx(1 / 3 - 0.5)
    assert d.score == pytest.approx(max(d.parts().values())) == pytest.approx(1 / 3)
    assert d.describe() == "drift 0.33 (label 0.33, confidence 0.33, unknown +0.33, table -0.17)"
    m.observe(V("", 0.0, "too_few_packets"))  # no inference: not counted
    assert len(m) == 6


def test_monitor_disjoint_traffic_scores_1_and_no_table_part_without_a_table() -> None:
    m = dr.DriftMonitor({**REF, "table_hit_rate": None}, window=10)
    for _ in range(20):
        m.observe(V("Game", 0.25))
    d = m.score()
    assert d.score == 1.0 and d.label_shift == 1.0 and d.confidence_shift == 1.0
    assert "table" not in d.parts() and d.table_hit_rate is None and "table" not in d.describe()


def test_unknown_is_taken_at_the_references_threshold() -> None:
    """A verdict's own unknown flag (classify.threshold 0.9 here) does not count: the reference's threshold does."""
    m = dr.DriftMonitor(REF, window=None)
    m.observe(Verdict("C1", "Web", "x", 0.6, True, [], "m", "ok"), True)
    assert m.score().unknown_rate == 0.0


def test_sliding_window_equals_a_fresh_count_of_the_last_n() -> None:
    rng = random.Random(1)
    labels = ["Web", "Chat", "VPN", "Game", "Network"]
    seq = [(V(rng.choice(labels), rng.random()), rng.choice([True, False, None])) for _ in range(700)]
    mon = dr.DriftMonitor(REF, window=50)
    for i, (v, h) in enumerate(seq):
        mon.observe(v, h)
        if i % 37 == 0 or i == len(seq) - 1:
            fresh = dr.DriftMonitor(REF, window=None)
            for vv, hh in seq[max(0, i - 49):i + 1]:
                fresh.observe(vv, hh)
            assert mon.score() == fresh.score()
            assert len(mon) == min(i + 1, 50)
    assert sum(mon._labels.values()) == sum(mon._bins) == 50  # running counts hold only the window
    mon.reset()
    assert len(mon) == 0 and mon.score().flows == 0


def test_bad_references_are_refused() -> None:
    for bad in ({}, {**REF, "confidence_hist": [0.1] * 9}, {**REF, "unknown_rate": 1.5},
                {**REF, "flows": 0}, {**REF, "label_shares": {"Web": "x"}}):
        with pytest.raises(dr.DriftError):
            dr.DriftMonitor(bad)
    with pytest.raises(ValueError):
        dr.DriftMonitor(REF, window=0)


# ------------------------------------------------------------------------------ the real model, real data
@pytest.fixture(scope="module")
def default_model():
    from etool_sensor.runtime import load_model

    return load_model("default", threads=1)


def _score(model, captures, window=None) -> dr.DriftScore:
    verdicts, hits = dr.classify_captures(model, captures)
    mon = dr.DriftMonitor(dr.model_reference(model), window)
    for v, h in zip(verdicts, hits):
        mon.observe(v, h)
    return mon.score()


@needs_data
def test_table_hit_is_the_service_tables_lookup(default_model) -> None:
    from etool_sensor.fingerprints import fingerprints
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.runtime import load_model

    caps = dr.captures_in(DATA / "ndpi")[:40]
    recs = [r for r in read_flows([str(p) for p in caps]) if len(r.packets) >= 2]
    vs = default_model.classify(recs)
    known = default_model._tables["service"].lookup(fingerprints(recs, default_model.spec.payload_packets))[0]
    assert [v.table_hit for v in vs] == known.tolist()
    assert 0 < int(known.sum()) < len(recs)
    assert {v.table_hit for v in load_model("fast", threads=1).classify(recs[:50])} == {None}  # no table


@needs_data
@pytest.mark.parametrize("package", ["default", "fast"])
def test_bundled_reference_is_the_packages_verdicts_on_the_ndpi_corpus(package) -> None:
    """The manifest's drift_reference is what `python -m etool_sensor.drift reference` computes now: a package
    whose verdicts change (new graph, tables, confidence) must get a new reference."""
    from etool_sensor.runtime import load_model

    m = load_model(package, threads=1)
    ref = m.manifest["drift_reference"]
    verdicts, hits = dr.classify_captures(m, dr.captures_in(DATA / "ndpi"))
    now = dr.reference_from_verdicts(verdicts, hits, 0.5, ref["source"])
    assert now["flows"] == ref["flows"] and now["label_shares"] == ref["label_shares"]
    # onnxruntime's int8 kernels round differently on AVX2-only CPUs (README): a confidence or two may change bin
    tol = 3 / ref["flows"]
    assert np.allclose(now["confidence_hist"], ref["confidence_hist"], atol=tol)
    assert now["unknown_rate"] == pytest.approx(ref["unknown_rate"], abs=tol)
    assert (now["table_hit_rate"] is None) == (package == "fast")
    assert _score(m, dr.captures_in(DATA / "ndpi")).score < 1e-3


@needs_data
def test_other_networks_drift_more_than_the_ndpi_corpus(default_model) -> None:
    """Half of the nDPI captures (every other file) stays near the reference; the captures of other networks
    are far from it, over the default drift.threshold (0.3)."""
    ndpi = dr.captures_in(DATA / "ndpi")
    halves = [_score(default_model, ndpi[i::2]) for i in (0, 1)]
    more = _score(default_model, dr.captures_in(DATA / "more"))
    traces = _score(default_model, dr.captures_in(DATA / "zeek-traces"))
    print("ndpi halves", [h.describe() for h in halves], "more", more.describe(), "zeek-traces", traces.describe())
    assert all(h.score < 0.15 and h.flows > 1000 for h in halves)
    assert more.flows > 1000 and traces.flows > 1000
    assert min(more.score, traces.score) > 0.3 > max(h.score for h in halves)
    assert more.unknown_shift > 0.1 and traces.unknown_shift > 0.1  # the model is less sure there
    assert more.table_shift < -0.1 and traces.table_shift < -0.1  # fewer fingerprints it knows


# --------------------------------------------------------------------------------------------- classify
@needs_data
def test_classify_summary_shows_drift_and_the_adapt_hint(tmp_path, capsys) -> None:
    from etool_sensor.cli import main

    caps = dr.captures_in(DATA / "more")
    rc = main(["classify", *map(str, caps), "-o", str(tmp_path / "a")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 0
    summary = next(ln for ln in err if ln.startswith("etool-sensor: ") and " -> " in ln)
    part = summary.split(", drift ", 1)[1].split(" -> ")[0]
    assert part.startswith("0.") and "(label 0." in part and ", table -0." in part
    assert float(part.split()[0]) > 0.3
    assert any("drift.threshold 0.3" in ln and "etool-sensor adapt" in ln for ln in err)
    # --workers 2: a drift part too, from the same verdicts up to the BURST context of split clients
    rc = main(["classify", "--workers", "2", *map(str, caps), "-o", str(tmp_path / "b")])
    err2 = capsys.readouterr().err
    assert rc == 0 and ", drift 0." in err2 and "etool-sensor adapt" in err2
    # below drift.min_flows verdicts, no drift part (the bundled sample: 9 flows); --quiet: nothing
    sample = REPO / "etool_sensor" / "data" / "sample.pcap"
    assert main(["classify", str(sample), "-o", str(tmp_path / "c")]) == 0
    assert "drift" not in capsys.readouterr().err
    assert main(["classify", "-q", *map(str, caps[:30]), "-o", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------- the wire event
SCORE = dr.DriftScore(0.41, 0.41, 0.25, 0.5, 0.09, 0.75, 0.94, 1284)


def test_encode_drift_is_broker_json_like_encode_verdict() -> None:
    from tests.support.zeek_peer import schema_validator

    text = wire.encode_drift(wire.DRIFT_TOPIC, "etool-sensor-1", "etool-hybrid@0.8.1", SCORE)
    val = schema_validator()
    if val is not None:
        val.validate(json.loads(text))  # Broker's v1 JSON schema (shared/reference/zeek-websocket)
    # the envelope of ETooL::verdict: data-message, [1, 1, [name, [record]]], records as vectors
    verdict = wire.encode_verdict("etool/verdicts/x/", Verdict("C1", "Web", "Google", 0.5, False, [], "m"))
    head = '"@data-type":"vector","data":[{"@data-type":"count","data":1},{"@data-type":"count","data":1},' \
           '{"@data-type":"vector","data":[{"@data-type":"string","data":"ETooL::'
    assert head in verdict and head + 'drift"},{"@data-type":"vector","data":[{"@data-type":"vector","data":[' in text
    assert text.startswith('{"type":"data-message","topic":"etool/verdicts/drift",')
    ev = messages.parse_event(text)
    got = wire.drift_from_event(ev)
    assert list(got) == list(wire.DRIFT_FIELDS)
    assert got == {"daemon": "etool-sensor-1", "model": "etool-hybrid@0.8.1", "score": 0.41, "label_shift": 0.41,
                   "confidence_shift": 0.25, "unknown_rate": 0.5, "unknown_rate_ref": 0.09, "table_hit_rate": 0.75,
                   "table_hit_rate_ref": 0.94, "flows": 1284}
    # doubles always carry a decimal point; no table: -1; a count is a count
    no_table = wire.encode_drift(wire.DRIFT_TOPIC, "d", "m", dr.DriftScore(0.0, 0.0, 0.0, 0.0, 0.0, None, None, 0))
    assert no_table.count('{"@data-type":"real","data":0.0}') == 5
    assert no_table.count('{"@data-type":"real","data":-1.0}') == 2 and '"count","data":0}' in no_table
    with pytest.raises(bj.WireError):
        wire.encode_drift(wire.DRIFT_TOPIC, "d", "m", dr.DriftScore(float("nan"), 0, 0, 0, 0, None, None, 1))
    with pytest.raises(bj.WireError):  # a verdict is not a drift event
        wire.drift_from_event(messages.parse_event(verdict))


# ------------------------------------------------------------------------------------------------ serve
@needs_data
def test_serve_publishes_drift_events_and_gauges(default_model) -> None:
    from etool_sensor.config import DriftConfig
    from tests.test_daemon_e2e import http_get, serving
    from tests.support.zeek_peer import ZeekPeer
    from bench.replay import flows_from_captures

    recs = flows_from_captures(limit=300)
    ok = sum(len(r.packets) >= 2 for r in recs)

    async def main():
        cfg = DriftConfig(window=200, min_flows=100, threshold=0.3, interval_s=0.2)
        async with ZeekPeer() as peer, serving(peer, default_model, drift=cfg, app_name="etool-d") as d:
            assert await peer.wait_connected()
            for r in recs:
                await peer.publish_flow(r)
            assert await peer.wait_verdicts(len(recs), 60)
            assert await peer.wait_for(lambda: any(x.name == wire.DRIFT_EVENT and x.value["flows"] == 200
                                                   for x in peer.received), 10)
            ev = [x for x in peer.received if x.name == wire.DRIFT_EVENT][-1]
            want = d.drift.current()
            st, body = await http_get(d.metrics_port, "/metrics")
        assert not peer.errors_sent  # the peer (Zeek's view of the declared event) took every frame
        assert ev.topic == "etool/verdicts/drift"
        v = ev.value
        assert (v["daemon"], v["model"], v["flows"]) == ("etool-d", default_model.id, min(ok, 200))
        assert v["score"] == pytest.approx(want.score) and 0.0 <= v["score"] <= 1.0
        assert v["table_hit_rate_ref"] == default_model.manifest["drift_reference"]["table_hit_rate"]
        assert 0.0 <= v["table_hit_rate"] <= 1.0
        text = body.decode()
        assert f"etool_drift_score {want.score}" in text or f"etool_drift_score {want.score!r}" in text
        for part in dr.PARTS:
            assert f'etool_drift_part{{part="{part}"}}' in text
        assert "etool_drift_flows 200.0" in text

    asyncio.run(asyncio.wait_for(main(), 120))


@needs_data
def test_serve_without_a_reference_publishes_no_drift() -> None:
    """A package without drift_reference (the stand-in model): gauges NaN, no ETooL::drift, verdicts as ever."""
    from etool_sensor.config import DriftConfig
    from bench.stub_daemon import StubModel
    from tests.test_daemon_e2e import http_get, serving
    from tests.support.zeek_peer import ZeekPeer
    from bench.replay import flows_from_captures

    recs = flows_from_captures(limit=150)

    async def main():
        cfg = DriftConfig(window=100, min_flows=10, threshold=0.3, interval_s=0.05)
        async with ZeekPeer() as peer, serving(peer, StubModel(), drift=cfg) as d:
            assert await peer.wait_connected()
            for r in recs:
                await peer.publish_flow(r)
            assert await peer.wait_verdicts(len(recs), 30)
            await asyncio.sleep(0.3)  # several intervals
            st, body = await http_get(d.metrics_port, "/metrics")
        assert d.drift.monitor is None and d.drift.current() is None and d.drift.published == 0
        assert not any(x.name == wire.DRIFT_EVENT for x in peer.received)
        assert "etool_drift_score NaN" in body.decode() and "etool_drift_flows 0.0" in body.decode()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_serve_drift_topic_interval_0_and_a_reload_of_the_same_package(monkeypatch, caplog) -> None:
    """drift.topic is where the events go; with interval_s 0 nothing is published but the threshold warning
    still comes (a stable event name); reloading the same package keeps the window, another one clears it."""
    import logging
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from etool_sensor.config import DriftConfig
    from etool_sensor.sensor.drift import ServeDrift

    def pkg(version: str = "1") -> SimpleNamespace:
        return SimpleNamespace(id=f"p@{version}", manifest={"sha256": version, "drift_reference": REF})

    class Client:
        connected = True

        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, text: str) -> None:
            self.sent.append(text)

    log = logging.getLogger("test.drift")

    async def run(interval_s: float) -> tuple[ServeDrift, Client]:
        cfg = DriftConfig(window=100, min_flows=2, threshold=0.3, interval_s=interval_s, topic="site/v/drift")
        sd = ServeDrift(cfg, "d", pkg(), CollectorRegistry(), log)
        sd.observe_all([V("Game", 0.05)] * 4)  # a label the reference never predicted: score 1
        client, stop = Client(), asyncio.Event()
        task = asyncio.create_task(sd.run(client, stop))
        await asyncio.sleep(0.3)
        stop.set()
        await task
        return sd, client

    monkeypatch.setattr(ServeDrift, "CHECK_S", 0.05)
    with caplog.at_level(logging.INFO, "test.drift"):
        sd, client = asyncio.run(run(0))
    assert client.sent == [] and sd.published == 0
    assert [r.event for r in caplog.records if hasattr(r, "event")] == ["drift"]  # once per crossing
    _, client = asyncio.run(run(0.05))
    assert client.sent and {json.loads(t)["topic"] for t in client.sent} == {"site/v/drift"}
    sd.set_model(pkg())  # a reload that loaded the same package
    assert len(sd.monitor) == 4 and sd.current().score == 1.0
    sd.set_model(pkg("2"))
    assert len(sd.monitor) == 0 and sd.model_id == "p@2"


def test_reference_command_adds_only_drift_reference(tmp_path) -> None:
    """`python -m etool_sensor.drift reference` on a copy of the fast package: the manifest gains the key and is
    otherwise the same text; the package still loads (its checksums do not cover the manifest)."""
    import shutil

    from etool_sensor.runtime import BUNDLED_DIR, load_model

    pkg = tmp_path / "fast"
    shutil.copytree(BUNDLED_DIR / "fast", pkg)
    before = json.loads((pkg / "manifest.json").read_text())
    before.pop("drift_reference", None)
    (pkg / "manifest.json").write_text(json.dumps(before, indent=1) + "\n")
    caps = tmp_path / "caps"
    caps.mkdir()
    for p in dr.captures_in(DATA / "ndpi")[:25] if (DATA / "ndpi").is_dir() else []:
        shutil.copy(p, caps / p.name)
    if not any(caps.iterdir()):
        shutil.copy(REPO / "etool_sensor" / "data" / "sample.pcap", caps / "sample.pcap")
    assert dr.main(["reference", str(pkg), "--data", str(caps), "--source", "test captures"]) == 0
    after = json.loads((pkg / "manifest.json").read_text())
    ref = after.pop("drift_reference")
    assert after == before and list(after) == list(before)
    assert ref["source"] == "test captures" and ref["table_hit_rate"] is None and ref["flows"] > 0
    assert abs(sum(ref["label_shares"].values()) - 1) < 1e-4 and abs(sum(ref["confidence_hist"]) - 1) < 1e-4
    m = load_model(pkg)
    assert dr.model_reference(m)["flows"] == ref["flows"]


def test_config_min_flows_may_not_exceed_the_window() -> None:
    from etool_sensor.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"config key drift.min_flows: must be <= drift.window \(100\), got 500"):
        config_from_dict({"drift": {"window": 100}})
    c = config_from_dict({"drift": {"window": 100, "min_flows": 100, "interval_s": 0}})
    assert (c.drift.window, c.drift.min_flows, c.drift.interval_s, c.drift.threshold) == (100, 100, 0.0, 0.3)
