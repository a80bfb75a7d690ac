"""session.Session and Tally on real captures: records are cut to the model's window, and the two ways a run
tallies its verdicts (one process: Tally.add; --workers: Session.entry sent to the parent, Tally.add_entry)
count the same."""

from __future__ import annotations

from pathlib import Path

from etool_sensor import runtime
from etool_sensor.capture import reader
from etool_sensor.config import Config
from etool_sensor.drift import DriftMonitor, package_reference
from etool_sensor.session import Session, Tally

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = sorted((ROOT.parent / "shared" / "data" / "ndpi" / "pcap").glob("*.pcap"))[:60]


def test_session_cuts_and_tallies_agree() -> None:
    cfg = Config().with_overrides({"flow.packets": 48, "flow.payload_bytes": 128,
                                   "classify.alert_labels": ["VPN", "DNS", "Web"]})
    model = runtime.load_model(None, threads=1)
    s = Session.of(model, cfg, collection=cfg.flow_params)
    assert s.cuts and s.window.packets < 48
    recs, ctxs = [], []
    for rec in reader.read_flows([str(p) for p in CAPTURES], cfg.flow_params):
        r, c = s.prepare(rec)
        assert len(r.packets) <= s.window.packets and r.uid == rec.uid
        recs.append(r)
        ctxs.append(c)
    verdicts = s.classify(recs, ctxs)
    assert len(verdicts) == len(recs) > 100

    ref = package_reference(None)
    one, two = Tally(drift=DriftMonitor(ref, window=None)), Tally(drift=DriftMonitor(ref, window=None))
    one.add(verdicts, s.alert_labels)
    for v in verdicts:
        two.add_entry(*s.entry(v))
    assert one.alerts and one.classified and set(one.statuses) == {"ok", "too_few_packets"}
    assert (one.classified, one.unknown, one.alerts, one.statuses) == \
        (two.classified, two.unknown, two.alerts, two.statuses)
    assert one.drift.score() == two.drift.score()

    # a collection within the window is not cut
    assert not Session.of(model, Config(), collection=Config().flow_params).cuts


def test_config_travels_to_a_spawned_worker() -> None:
    """classify --workers sends the Config itself (parallel.WorkerSpec); under 'spawn' it is pickled."""
    import pickle

    cfg = Config().with_overrides({"classify.label_thresholds": {"Chat": 0.7}, "flow.packets": 48})
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and hash(back) == hash(cfg) and dict(back.classify.label_thresholds) == {"Chat": 0.7}
