"""The serve daemon against the Zeek-like peer (tests/support/zeek_peer.py) on loopback.

Tests that need a model use the real one (``runtime.load_model()``) and skip with the reason when it
cannot be loaded; ETOOL_E2E_STUB=1 runs them with a fixed-answer stand-in (bench/stub_daemon.py)
instead, for work on the daemon while no model package is installed. The pipeline-mechanics tests
(slow model, failing model) always use a stand-in: they are about queues, not answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from etool_sensor.zeek import broker_json as bj, messages, wire
from etool_sensor.config import Config
from etool_sensor.flows import Verdict
from etool_sensor.sensor.daemon import Daemon
from bench.loadgen import LeanPeer
from bench.replay import flows_from_captures
from bench.stub_daemon import StubModel
from tests.support.zeek_peer import ERR_BAD_URI, ZeekPeer

ROOT = Path(__file__).resolve().parents[1]
STUB = os.environ.get("ETOOL_E2E_STUB") == "1"

_model_cache: dict[str, object] = {}


def _real_model():
    if "m" not in _model_cache:
        try:
            from etool_sensor.runtime import load_model

            _model_cache["m"] = load_model()
        except Exception as e:  # noqa: BLE001
            _model_cache["m"] = None
            _model_cache["why"] = f"{type(e).__name__}: {e}"
    return _model_cache["m"]


@pytest.fixture(scope="module")
def model():
    m = _real_model()
    if m is not None:
        return m
    if STUB:
        return StubModel()
    pytest.skip(f"no model: load_model() failed ({_model_cache['why']}); set ETOOL_E2E_STUB=1 to use a stand-in")


@pytest.fixture(scope="module")
def flows():
    fl = flows_from_captures(limit=400)
    if len(fl) < 50:
        pytest.skip("real captures (../shared/data/ndpi/pcap) are not present")
    return fl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def serve_config(url: str, *, alert_labels=(), drift=None, **serve) -> Config:
    """The defaults with quick reconnects, metrics on a free port and these serve.* keys (and
    classify.alert_labels, the drift section), validated as etool.yaml would be."""
    cfg = Config().with_overrides({"serve.zeek_url": url, "serve.metrics_port": free_port(),
                                   "serve.reconnect_min_s": 0.05, "serve.reconnect_max_s": 0.5,
                                   "classify.alert_labels": sorted(alert_labels),
                                   **{f"serve.{k}": v for k, v in serve.items()}})
    return cfg if drift is None else dataclasses.replace(cfg, drift=drift)


@asynccontextmanager
async def serving(peer: ZeekPeer, model, url: str | None = None, **kw):
    d = Daemon(serve_config(url or peer.url, **kw), model)
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        d.request_stop()
        await asyncio.wait_for(task, 30)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    def get():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    return await asyncio.to_thread(get)


async def serve_flows(model, recs, timeout: float = 30) -> tuple[dict, list]:
    """One daemon session: publish `recs` in order, wait for every verdict; (daemon counts, verdicts)."""
    async with ZeekPeer() as peer, serving(peer, model) as d:
        assert await peer.wait_connected()
        for r in recs:
            await peer.publish_flow(r)
        assert await peer.wait_verdicts(len(recs), timeout)
        return d.counts(), [v for _, v, _ in peer.verdicts]


def uids(peer: ZeekPeer) -> list[str]:
    return [v.uid for _, v, _ in peer.verdicts]


# ------------------------------------------------------------------------------------- happy path
def test_one_verdict_per_uid_on_the_reply_topic(model, flows):
    async def main():
        alerting = frozenset(model.label_sets["service"])
        async with ZeekPeer() as peer, serving(peer, model, alert_labels=alerting) as d:
            assert await peer.wait_connected()
            assert peer.app_names[-1] == "etool-sensor"
            st, body = await http_get(d.metrics_port, "/healthz")
            assert st == 200 and json.loads(body)["connected"] is True
            sel = flows[:300]
            for i, r in enumerate(sel):
                await peer.publish_flow(r, reply_topic=f"etool/verdicts/worker-{i % 2}/")
            assert await peer.wait_verdicts(len(sel), 30), (len(peer.verdicts), d.counts())
            await asyncio.sleep(0.3)  # nothing more arrives
            got = uids(peer)
            assert sorted(got) == sorted(r.uid for r in sel)  # exactly one verdict per uid
            want_topic = {r.uid: f"etool/verdicts/worker-{i % 2}/" for i, r in enumerate(sel)}
            for topic, v, _ in peer.verdicts:
                assert topic == want_topic[v.uid]
                assert isinstance(v, Verdict) and 0.0 <= v.confidence <= 1.0  # the peer type-checked it
                assert all(isinstance(a, str) for a in v.alternatives) and v.model
            assert not peer.errors_sent  # Zeek accepted every event
            c = d.counts()
            assert c["flows_in"] == c["verdicts_out"] == len(sel)
            assert c["short_collection"] == 0  # Zeek's default packets_per_flow is the model's window
            st, body = await http_get(d.metrics_port, "/metrics")
            assert st == 200 and b"etool_verdict_latency_seconds_bucket" in body and b"etool_batch_size" in body
            # every confident verdict alerts (all service labels are listed), no unknown one does
            confident = sum(1 for _, v, _ in peer.verdicts if not v.unknown and v.service)
            assert confident > 0 and sum(v for k, v in c.items() if k.startswith("alerts.")) == confident
            assert b"etool_alerts_total{label=" in body
            print("counts:", json.dumps(c, sort_keys=True))
    run(main())


def test_a_collection_below_the_models_window_is_warned_and_counted(model, flows, caplog):
    """Flows sent at a packet threshold below the model's window (ETooL::packets_per_flow redef'd to 16 for
    a 32-packet model) are still answered, counted in etool_short_collection_total and logged once."""
    import dataclasses

    want = model.spec.packets
    long = [r for r in flows if not r.final and len(r.packets) == want][:40]
    assert len(long) >= 10
    cut = [dataclasses.replace(r, packets=r.packets[:want // 2]) for r in long]

    with caplog.at_level("WARNING"):
        c, _ = run(serve_flows(model, cut))
    assert c["short_collection"] == len(cut) and c["verdicts_out"] == len(cut)
    warned = [r.getMessage() for r in caplog.records if "packets_per_flow" in r.getMessage()]
    assert len(warned) == 1 and f"after {want // 2} packets" in warned[0] and f"reads {want}" in warned[0]


def test_a_collection_above_the_models_window_is_answered_alike_and_warned(model, flows, caplog):
    """Zeek collecting more than the model reads (ETooL::packets_per_flow = 64, payload_bytes = 128 for a
    32-packet, 64-byte model) is within the flow contract: every flow is answered, and (sent in the same
    order) with the verdict a matching collection gives, since the record is cut to the model's window
    before its BURST context is taken; the daemon says once that Zeek waits for packets nobody reads."""
    import dataclasses

    from etool_sensor.flows import Chunk

    want = getattr(getattr(model, "spec", None), "packets", 0)
    if not want:
        pytest.skip("the stand-in model has no input window")
    base = [r for r in flows if not r.final and len(r.packets) == want][:40]
    assert len(base) >= 20 and sum(bool(r.payload) for r in base) >= 10

    def sparse(r):  # the same connection with payload in its first two payload packets only (ACK-heavy TCP)
        first = [i for i, p in enumerate(r.packets) if p.payload_len][:2]
        return dataclasses.replace(r, uid=r.uid + "s", payload=r.payload[:2], packets=[
            p if i in first else dataclasses.replace(p, payload_len=0) for i, p in enumerate(r.packets)])
    base += [sparse(r) for r in base[:20]]  # here the made-up tail below would add chunks and context sizes
    # What Zeek would send with twice the packets, 128 payload bytes and 5 payload packets: a made-up tail of
    # packets (carrying payload, so a longer collection also has more payload sizes for the BURST context),
    # chunks cut at 64 bytes continued, two more chunks. The model's window must leave all of it out.
    B = model.spec.payload_bytes
    wide = [dataclasses.replace(r, packets=r.packets + [dataclasses.replace(p, payload_len=p.payload_len + 100)
                                                        for p in r.packets],
                                payload=[Chunk(c.is_orig, c.data + b"\x00" * B if len(c.data) == B else c.data)
                                         for c in r.payload] + [Chunk(True, b"\x17\x03\x03" * 40)] * 2)
            for r in base]

    def answers(recs):
        c, verdicts = run(serve_flows(model, recs))
        assert c["verdicts_out"] == len(recs) and c.get("short_collection", 0) == 0
        assert not any(k.startswith("decode_errors") and v for k, v in c.items()), c
        return {v.uid: (v.service, v.app, v.confidence, v.unknown) for v in verdicts}

    with caplog.at_level("WARNING"):
        got = answers(wide)
    warned = [r.getMessage() for r in caplog.records if "packets_per_flow" in r.getMessage()]
    assert len(warned) == 1 and f"after {2 * want} packets" in warned[0] and f"only the first {want}" in warned[0]
    assert got == answers(base)


def test_pipeline_with_stand_in_model(flows):
    """Always runs (no model package needed): decode -> context -> batch -> classify -> publish."""
    async def main():
        async with ZeekPeer() as peer, serving(peer, StubModel(), batch_size=16) as d:
            assert await peer.wait_connected()
            for r in flows[:100]:
                await peer.publish_flow(r)
            assert await peer.wait_verdicts(100, 20)
            assert sorted(uids(peer)) == sorted(r.uid for r in flows[:100])
            assert d.counts()["verdicts_out"] == 100
    run(main())


# ---------------------------------------------------------------------------------------- hostile
def _bad_flow_frames(rec) -> dict[str, str]:
    good = json.loads(wire.encode_flow("etool/flows/", rec, "etool/verdicts/"))
    wrong = json.loads(json.dumps(good))
    wrong["data"][2]["data"][1]["data"][0]["data"][0] = {"@data-type": "count", "data": 7}  # uid: count
    depth = 5000
    nested = '{"@data-type":"vector","data":[' * depth + "]}" * depth
    return {
        "wrong_arg_types": json.dumps(wrong),
        "foreign_event": messages.encode_event("etool/flows/", "ping", ["hi", bj.Count(1)]),
        "broken_json": '{"type":"data-message","topic":"etool/flows/","@data-type":"vector","data":[{',
        "not_json": "How is it going?",
        "deep_nesting": '{"type":"data-message","topic":"etool/flows/","@data-type":"vector","data":[' + nested + "]}",
        "lone_surrogate": json.dumps(good).replace(rec.uid, "\\ud800x", 1),
        "wrong_arity": messages.encode_event("etool/flows/", "ETooL::flow", []),
        "not_an_event": json.dumps({"type": "data-message", "topic": "etool/flows/", "@data-type": "count",
                                    "data": 1}),
        "unknown_message": json.dumps({"type": "surprise"}),
    }


def test_hostile_input_is_counted_and_serving_goes_on(model, flows):
    async def main():
        async with ZeekPeer() as peer, serving(peer, model, max_message_bytes=256 * 1024) as d:
            assert await peer.wait_connected()
            good = iter(flows)
            n_good = 0

            async def prove_alive():
                nonlocal n_good
                r = next(good)
                await peer.publish_flow(r)
                n_good += 1
                assert await peer.wait_verdicts(n_good, 15), (n_good, d.counts())
                assert uids(peer)[-1] == r.uid

            await prove_alive()
            for name, frame in _bad_flow_frames(flows[0]).items():
                assert await peer.send_raw(frame) == 1, name
                await prove_alive()
            await peer.send_raw(b"\x00\x01binary")  # a binary frame: v1 is text only
            await prove_alive()
            # peer answers with error messages (as Zeek does for what it cannot use)
            await peer.send_error_all("deserialization_failed", "failed to create Zeek event")
            await prove_alive()
            # what a peer could grow without bound: error codes (a lone surrogate, many distinct ones), a uid or
            # a reply topic as long as a frame
            await peer.send_raw('{"type":"error","code":"\\ud800","context":"x"}')
            for i in range(40):
                await peer.send_raw(json.dumps({"type": "error", "code": f"code_{i}", "context": "x"}))
            for uid, topic in (("C" + "u" * 100, "etool/verdicts/"), ("Clongtopic", "etool/verdicts/" + "t" * 300)):
                rec = dataclasses.replace(flows[1], uid=uid)
                await peer.send_raw(wire.encode_flow("etool/flows/", rec, topic, network_time=time.time()))
            await prove_alive()
            st, body = await http_get(d.metrics_port, "/metrics")
            assert st == 200 and b"etool_server_errors_total" in body
            labels = [k for k in d.counts() if k.startswith("server_errors.")]
            assert len(labels) <= 17 and "server_errors.other" in labels, labels
            assert d.counts()["decode_errors.flow"] >= 2
            c = d.counts()
            for reason in ("type", "foreign_event", "json", "envelope", "encoding", "binary"):
                assert c.get(f"decode_errors.{reason}", 0) >= 1, (reason, c)
            assert c.get("decode_errors.depth", 0) == 1, c  # the decoder's own nesting bound, any parser
            assert sum(v for k, v in c.items() if k.startswith("decode_errors.")) >= 10
            assert c["server_errors.deserialization_failed"] == 1
            # a huge frame and invalid UTF-8 cost the session (websockets closes 1009 / 1007): counted,
            # the daemon reconnects and serves on
            before = peer.connections
            await peer.send_raw("x" * (300 * 1024))
            assert await peer.wait_for(lambda: peer.connections > before and len(peer.subscribers("etool/flows/")) == 1, 15)
            await prove_alive()
            before = peer.connections
            await peer.send_raw(b'{"type":"error","code":"\xff\xfe","context":"x"}', text=True)
            assert await peer.wait_for(lambda: peer.connections > before and len(peer.subscribers("etool/flows/")) == 1, 15)
            await prove_alive()
            c = d.counts()
            assert c["decode_errors.too_big"] == 1 and c["decode_errors.encoding"] >= 2, c
            assert c["reconnects"] >= 2
            assert c["verdicts_out"] == n_good and sorted(uids(peer)) == sorted(set(uids(peer)))
            print("counts:", json.dumps(c, sort_keys=True))
    run(main())


# ------------------------------------------------------------------------------------------ faults
def test_peer_restart_reconnect_and_resume(model, flows):
    async def main():
        peer = await ZeekPeer().start()
        port = peer.port
        async with serving(peer, model) as d:
            assert await peer.wait_connected()
            for r in flows[:50]:
                await peer.publish_flow(r)
            assert await peer.wait_verdicts(50, 20)
            await peer.stop()  # 1001 Terminating, listener gone
            await asyncio.sleep(0.3)
            st, body = await http_get(d.metrics_port, "/healthz")
            assert st == 503 and json.loads(body)["connected"] is False
            peer2 = await ZeekPeer(port=port).start()
            try:
                assert await peer2.wait_connected(timeout=15), d.counts()
                for r in flows[50:120]:
                    await peer2.publish_flow(r)
                assert await peer2.wait_verdicts(70, 20)
                assert sorted(uids(peer2)) == sorted(r.uid for r in flows[50:120])
                st, _ = await http_get(d.metrics_port, "/healthz")
                assert st == 200
                assert d.counts()["reconnects"] >= 1
            finally:
                await peer2.stop()
    run(main())


def test_handshake_errors_are_counted_and_retried(model):
    async def main():
        async with ZeekPeer() as peer:
            bad_url = peer.url.replace("/v1/messages/json", "/v2/messages/json")
            async with serving(peer, model, url=bad_url) as d:
                assert await peer.wait_for(lambda: len(peer.errors_sent) >= 2, 10)
                assert all((e[1], e[2]) == ERR_BAD_URI for e in peer.errors_sent)
                c = d.counts()
                assert c["server_errors.invalid_uri"] >= 2 and c["reconnects"] >= 2
                st, _ = await http_get(d.metrics_port, "/healthz")
                assert st == 503
    run(main())


class _Slow(StubModel):
    def __init__(self, delay: float) -> None:
        super().__init__(delay)


def test_slow_model_full_queue_drops_are_counted(flows):
    async def main():
        async with ZeekPeer() as peer, serving(peer, _Slow(0.2), batch_size=8, queue_size=20) as d:
            assert await peer.wait_connected()
            sent = flows[:300]
            for r in sent:
                await peer.publish_flow(r)
            await peer.wait_for(lambda: d.counts()["flows_in"] >= len(sent), 20)
            c = d.counts()
            assert c["drops.queue_full"] > 0
            # let the backlog finish; then every flow is either answered or counted as dropped
            await peer.wait_for(lambda: d.queue.qsize() == 0, 30)
            await asyncio.sleep(0.6)
            c = d.counts()
            assert c["verdicts_out"] + c["drops.queue_full"] == len(sent), c
            assert len(peer.verdicts) == c["verdicts_out"]
            st, body = await http_get(d.metrics_port, "/metrics")
            assert b'etool_drops_total{reason="queue_full"}' in body
            print("counts:", json.dumps(c, sort_keys=True))
    run(main())


class _Recording(StubModel):
    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.sizes: list[int] = []

    def classify(self, records, *a, **kw):
        self.sizes.append(len(records))
        return super().classify(records, *a, **kw)


def test_flows_that_queue_behind_a_busy_model_go_out_together(flows):
    """Flows that arrive while both inference slots are busy are answered together once a slot is free,
    not in deadline-sized batches one slot-time after another."""
    async def main():
        # A 0.3 s model call: one flow every >= 3 ms for >= 0.3 s puts dozens behind each busy slot even when a
        # loaded machine stretches the sleeps 2-3x (with 0.1 s, a busy CPU once left only 14 per batch).
        m = _Recording(0.3)
        async with ZeekPeer() as peer, serving(peer, m, batch_size=256, batch_deadline_ms=5) as d:
            assert await peer.wait_connected()
            sent = flows[:100]
            for r in sent:  # one flow every ~3 ms for ~0.3 s
                await peer.publish_flow(r)
                await asyncio.sleep(0.003)
            await peer.wait_for(lambda: len(peer.verdicts) >= len(sent), 30)
            assert sorted(uids(peer)) == sorted(r.uid for r in sent)
            assert sum(m.sizes) == len(sent)
            # deadline-sized batches would be ~2 flows each (~50 calls)
            assert len(m.sizes) <= len(sent) // 4 and max(m.sizes) >= 15, m.sizes
            assert d.counts()["verdicts_out"] == len(sent)
    run(main())


def test_rate_limit_drops_the_excess_and_counts_it(flows):
    """serve.max_flows_per_s: a burst above the limit is cut to about the limit; nothing goes uncounted."""
    async def main():
        async with ZeekPeer() as peer, serving(peer, StubModel(), max_flows_per_s=50.0) as d:
            assert await peer.wait_connected()
            sent = flows[:400]
            for r in sent:
                await peer.publish_flow(r)
            # the limit applies before decoding, so a refused frame never counts as flows_in
            settled = lambda: (lambda c: c.get("verdicts_out", 0) + c.get("drops.rate_limited", 0))(d.counts())  # noqa: E731
            await peer.wait_for(lambda: settled() >= len(sent), 20)
            await asyncio.sleep(0.3)
            c = d.counts()
            assert c["flows_in"] == c["verdicts_out"] and c.get("drops.rate_limited", 0) > 200, c  # a bucket of ~50 admitted of 400 sent at once
            assert c["verdicts_out"] + c["drops.rate_limited"] == len(sent), c
            st, body = await http_get(d.metrics_port, "/metrics")
            assert b'etool_drops_total{reason="rate_limited"}' in body
    run(main())


class _Broken(StubModel):
    def classify(self, records, *a, **k):
        if any(r.uid.endswith("7") for r in records):
            raise RuntimeError("boom")
        return super().classify(records, *a, **k)


def test_model_failure_costs_the_batch_not_the_daemon(flows):
    async def main():
        async with ZeekPeer() as peer, serving(peer, _Broken(), batch_size=1) as d:
            assert await peer.wait_connected()
            sel = [dataclasses.replace(r, uid=f"CX{i:015d}") for i, r in enumerate(flows[:20])]
            for r in sel:
                await peer.publish_flow(r)
            await peer.wait_for(lambda: d.counts()["verdicts_out"] + d.counts()["drops.model_error"] >= 20, 20)
            c = d.counts()
            assert c["drops.model_error"] == 2 and c["verdicts_out"] == 18
    run(main())


def test_reload_keeps_restart_only_keys_and_applies_the_rest():
    """Daemon._apply on two validated configurations: every restart-only key is a real etool.yaml key and keeps
    its running value (named in last_reload), the others answer the flows that arrive next."""
    from etool_sensor.config import iter_options
    from etool_sensor.sensor.daemon import RESTART_ONLY

    keys = {k for k, _ in iter_options()}
    assert all(k in keys or k == "drift" for k in RESTART_ONLY)
    old = Config().with_overrides({"serve.metrics_port": 0})
    d = Daemon(old, StubModel())
    tracker = d.tracker
    new = old.with_overrides({"serve.app_name": "renamed", "serve.tls.verify": False, "drift.window": 20000,
                              "serve.batch_size": 8, "serve.max_flows_per_s": 10, "classify.top_k": 1,
                              "classify.threshold": 0.9, "context.window": 2.0, "privacy.mask_names": False})
    d._apply(new, StubModel())
    assert d.last_reload["kept"] == ["drift", "serve.app_name", "serve.tls.verify"]
    assert (d.cfg.serve.app_name, d.cfg.serve.tls.verify, d.cfg.drift) == ("etool-sensor", True, old.drift)
    assert d.cfg.serve.batch_size == 8 and d.rate.rate == 10 and d.tracker is not tracker
    sv = d.serving
    assert (sv.top_k, sv.thresholds.default, sv.mask_names) == (1, 0.9, False)
    d._pool.shutdown()


def test_a_refused_reload_keeps_the_whole_reason(tmp_path):
    """A config error names the allowed keys after the bad one; the refused reload's log line and /healthz's
    last_reload carry all of it (a cut list would hide the key the user meant)."""
    from etool_sensor.config import ConfigError, load_config

    bad = tmp_path / "etool.yaml"
    bad.write_text("serve:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    whole = str(e.value)
    assert len(whole) > 200 and whole.endswith("log_format, tls")  # the whole list, the serve section's last key

    def reloader():
        return load_config(bad), StubModel()

    d = Daemon(Config().with_overrides({"serve.metrics_port": 0}), StubModel(), reloader=reloader)
    asyncio.run(d._reload())
    assert d.last_reload["ok"] is False and d.last_reload["error"] == whole.splitlines()[0]
    d._pool.shutdown()


# --------------------------------------------------------------------------------- subprocess daemon
def daemon_cmd(tmp: Path, url: str, metrics_port: int, extra: dict | None = None, delay: float = 0.0) -> list[str]:
    serve = {"metrics_port": metrics_port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
    serve.update(extra or {})
    cfg = tmp / "etool.yaml"
    cfg.write_text(json.dumps({"serve": serve}))  # JSON is YAML
    if _real_model() is not None:
        return [sys.executable, "-m", "etool_sensor", "serve", "--config", str(cfg), "--zeek-url", url]
    if STUB:
        return [sys.executable, "-m", "bench.stub_daemon", "--config", str(cfg), "--zeek-url", url,
                "--delay", str(delay)]
    pytest.skip(f"no model: load_model() failed ({_model_cache['why']}); set ETOOL_E2E_STUB=1 to use a stand-in")


async def _terminate(proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    """SIGTERM a daemon still running and wait for it (killed after `timeout` seconds)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            proc.kill()


def _stopped_counts(stderr: str) -> dict:
    for line in stderr.splitlines():
        if "stopped: {" in line:
            return json.loads(line.split("stopped: ", 1)[1])
    raise AssertionError("no 'stopped:' line in the daemon's log:\n" + stderr[-3000:])


def test_sigterm_during_a_batch_answers_what_is_in_hand(tmp_path, flows):
    async def main():
        async with ZeekPeer(validate_data=0) as peer:
            port = free_port()
            cmd = daemon_cmd(tmp_path, peer.url, port, {"batch_size": 64, "batch_deadline_ms": 50}, delay=0.05)
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=subprocess.PIPE,
                                                        stdout=subprocess.DEVNULL)
            try:
                assert await peer.wait_connected(timeout=60)
                for r in flows[:400]:
                    await peer.publish_flow(r)
                await peer.wait_for(lambda: len(peer.verdicts) >= 1, 30)  # batches are in flight
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
            assert proc.returncode == 0, err.decode()[-2000:]
            c = _stopped_counts(err.decode())
            await asyncio.sleep(0.2)
            # every flow the daemon took in was answered before it closed; nothing was answered twice
            assert c["verdicts_out"] == c["flows_in"] - c.get("drops.queue_full", 0), c
            assert len(peer.verdicts) == c["verdicts_out"] and len(set(uids(peer))) == len(peer.verdicts)
            assert c["flows_in"] > 0
            print("counts:", json.dumps(c, sort_keys=True))
    run(main())


def test_a_drain_that_times_out_counts_every_unanswered_flow_once(flows, caplog):
    """A model too slow for serve.drain_timeout_s: the flows still queued, forming a batch or being inferred
    at the timeout are counted as drops.shutdown, each once, and nothing is sent or counted after it."""
    async def main():
        async with ZeekPeer() as peer:
            d = Daemon(serve_config(peer.url, batch_size=8, drain_timeout_s=0.5), StubModel(1.0))
            task = asyncio.create_task(d.run())
            assert await peer.wait_connected()
            for r in flows[:100]:
                await peer.publish_flow(r)
            await peer.wait_for(lambda: d.counts()["flows_in"] >= 100, 10)
            await asyncio.sleep(0.2)  # batches are being inferred, others wait in the queue
            d.request_stop()
            await asyncio.wait_for(task, 30)
            c = d.counts()
            await asyncio.sleep(1.5)  # an inference still running in its thread would finish by now
            assert d.counts() == c, "counted after the daemon stopped"
            assert c["flows_in"] == 100 and 0 < c["drops.shutdown"] < 100, c
            assert c["verdicts_out"] + c["drops.shutdown"] == c["flows_in"], c
            assert len(peer.verdicts) == c["verdicts_out"]
            hit = [r for r in caplog.records if getattr(r, "event", None) == "drain_timeout"]
            assert hit and hit[0].fields["flows"] == c["drops.shutdown"]
    run(main())


# ----------------------------------------------------------------------------------------- soak
def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "".join(f".{v}" for v in s.labels.values())
            out[key] = s.value
    return out


def frame_factory(rec, reply_topic: str = "etool/verdicts/"):
    """Cheap distinct-uid frames: encode once, substitute the uid."""
    tmpl = wire.encode_flow("etool/flows/", dataclasses.replace(rec, uid="CUIDUIDUIDUIDUIDUI"), reply_topic,
                            network_time=time.time())
    return lambda uid: tmpl.replace("CUIDUIDUIDUIDUIDUI", uid, 1)


@pytest.mark.slow
def test_soak_twice_the_sustainable_rate(tmp_path, flows):
    """Bounded soak (~35 s): calibrate, then 20 s at 2x the rate the daemon sustains; RSS stays bounded,
    every flow is answered or counted, and the daemon recovers (no drops) once the load is back to normal."""
    psutil = pytest.importorskip("psutil")  # noqa: F841
    soak_s = float(os.environ.get("ETOOL_SOAK_S", "20"))

    async def main():
        async with ZeekPeer(validate_data=0) as peer:
            port = free_port()
            cmd = daemon_cmd(tmp_path, peer.url, port, {"queue_size": 2000})
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stderr=subprocess.PIPE,
                                                        stdout=subprocess.DEVNULL)
            err_task = asyncio.create_task(proc.stderr.read())
            try:
                assert await peer.wait_connected(timeout=60)
                makers = [frame_factory(r) for r in flows[:64]]
                seq = 0

                async def blast(rate: float, seconds: float) -> int:
                    nonlocal seq
                    t0 = time.perf_counter()
                    n = 0
                    while (el := time.perf_counter() - t0) < seconds:
                        due = int(el * rate) - n
                        for _ in range(min(due, 500)):
                            await peer.publish("etool/flows/", makers[seq % len(makers)](f"S{seq:017d}"))
                            seq += 1
                            n += 1
                        await asyncio.sleep(0.002)
                    return n

                # calibrate: offer a lot for 3 s, measure what is answered
                v0 = len(peer.verdicts)
                t0 = time.perf_counter()
                await blast(20000, 3.0)
                await asyncio.sleep(1.0)
                sustainable = max(200.0, (len(peer.verdicts) - v0) / (time.perf_counter() - t0))
                rss0 = await asyncio.to_thread(_rss_mb, proc.pid)
                rss_max = rss0
                sent = 0
                t1 = time.perf_counter()
                while time.perf_counter() - t1 < soak_s:
                    sent += await blast(2 * sustainable, 2.0)
                    rss_max = max(rss_max, await asyncio.to_thread(_rss_mb, proc.pid))
                await peer.wait_for(lambda: False, 3.0)  # let the backlog drain
                m = await asyncio.to_thread(_scrape, port)
                # recovery: normal load again -> every flow answered, no new drops
                drops_before = sum(v for k, v in m.items() if k.startswith("etool_drops_total"))
                v1 = len(peer.verdicts)
                rec_n = await blast(min(100.0, sustainable / 4), 2.0)
                ok = await peer.wait_verdicts(v1 + rec_n, 15)
                m2 = await asyncio.to_thread(_scrape, port)
                drops_after = sum(v for k, v in m2.items() if k.startswith("etool_drops_total"))
                summary = {"sustainable_flows_per_s": round(sustainable), "offered_per_s": round(2 * sustainable),
                           "sent": sent, "flows_in": m["etool_flows_in_total"],
                           "verdicts_out": m["etool_verdicts_out_total"],
                           "drops": {k: v for k, v in m.items() if k.startswith("etool_drops_total") and v},
                           "rss_mb_start": round(rss0), "rss_mb_max": round(rss_max),
                           "recovery_flows": rec_n, "recovery_ok": ok}
                print("soak:", json.dumps(summary))
                assert ok and drops_after == drops_before, summary
                assert rss_max < 600 and rss_max - rss0 < 250, summary
                total_in = m2["etool_flows_in_total"]
                answered = m2["etool_verdicts_out_total"]
                dropped = sum(v for k, v in m2.items() if k.startswith("etool_drops_total"))
                assert abs(total_in - answered - dropped) <= 1, summary  # accounted (queue empty)
            finally:
                await _terminate(proc)
                await err_task
    run(main(), timeout=180)


# ---------------------------------------------------------------------------------- the bench's peer
# bench/loadgen.LeanPeer is bench_daemon.py's Zeek stand-in. Its numbers are only worth something if it is a
# faithful v1 server: the daemon must connect, subscribe and be acked by it, decode every frame it sends, and
# each verdict must come back matched to its flow (every one also decoded in full here: check_every=1).


def test_lean_peer_serves_the_daemon_and_matches_every_verdict(flows) -> None:
    async def main() -> None:
        peer = await LeanPeer(check_every=1).start()
        cfg = Config().with_overrides({"serve.zeek_url": peer.url, "serve.metrics_port": free_port(),
                                       "serve.batch_size": 32, "serve.topics": ["etool/flows/"]})
        d = Daemon(cfg, StubModel())
        task = asyncio.create_task(d.run())
        try:
            assert await peer.wait_connected(1, 20)
            recs = [dataclasses.replace(r, uid=f"L{i:017d}") for i, r in enumerate(flows[:200])]
            frames = [("etool/flows/", wire.encode_flow("etool/flows/", r, "etool/verdicts/").encode()) for r in recs]
            # a topic nobody subscribed to is not delivered, as in Zeek
            assert await peer.publish_many(frames[:100] + [("other/", frames[0][1])]) == 100
            assert await peer.publish_many(frames[100:]) == len(frames) - 100
            for _ in range(400):
                if len(peer.verdicts) >= len(recs):
                    break
                await asyncio.sleep(0.05)
            assert sorted(u for u, _ in peer.verdicts) == sorted(r.uid.encode() for r in recs)
            assert peer.summary() == {"received": len(recs), "checked": len(recs), "bad": 0}
            assert d.counts()["verdicts_out"] == len(recs)
        finally:
            d.request_stop()
            await asyncio.wait_for(task, 30)
            await peer.stop()

    run(main())


def test_lean_peer_counts_a_verdict_that_does_not_decode() -> None:
    peer = LeanPeer()
    peer.check(b'{"type":"data-message","topic":"etool/verdicts/"}', b"x")
    good = wire.encode_verdict("etool/verdicts/",
                               Verdict("U1", "tls", "stub", 0.75, False, ["other"], "stub@0")).encode()
    peer.check(good, b"U1")
    peer.check(good, b"U2")  # decodes, but is another flow's verdict
    assert peer.summary() == {"received": 0, "checked": 3, "bad": 2}



# ------------------------------------------------------------------------------------- operations
def test_metrics_carry_per_label_verdicts_model_info_and_process_collectors(model, flows):
    """/metrics: a series per label of the package (and 'unknown') from the start, counting every verdict
    sent once per head; the package in etool_model_info; the process and GC collectors."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(body: bytes) -> dict[tuple, float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}

    async def main():
        async with ZeekPeer() as peer, serving(peer, model) as d:
            assert await peer.wait_connected()
            m0 = scrape((await http_get(d.metrics_port, "/metrics"))[1])
            sets = getattr(model, "label_sets", {"service": [], "app": []})
            for kind in ("service", "app"):
                for label in list(sets[kind]) + ["unknown"]:
                    assert m0[("etool_verdicts_total", (("kind", kind), ("label", label)))] == 0
            assert sum(1 for k in m0 if k[0] == "etool_verdicts_total") == len(sets["service"]) + len(sets["app"]) + 2
            info = [k for k in m0 if k[0] == "etool_model_info"]
            assert info == [("etool_model_info", (("name", model.name), ("version", model.version)))]
            assert m0[info[0]] == 1
            for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                         "python_gc_collections_total", "python_info"):
                assert any(k[0] == name for k in m0), name
            sel = flows[:120]
            for r in sel:
                await peer.publish_flow(r)
            assert await peer.wait_verdicts(len(sel), 30)
            m1 = scrape((await http_get(d.metrics_port, "/metrics"))[1])
            want: dict[tuple, int] = {}
            for _, v, _ in peer.verdicts:
                for kind, label in (("service", v.service), ("app", v.app)):
                    lab = "unknown" if v.unknown or (sets[kind] and label not in sets[kind]) else label
                    want[(kind, lab)] = want.get((kind, lab), 0) + 1
            got = {dict(k[1])["kind"] + "/" + dict(k[1])["label"]: v for k, v in m1.items()
                   if k[0] == "etool_verdicts_total" and v}
            assert got == {f"{k}/{lab}": n for (k, lab), n in want.items()}
            assert sum(v for k, v in got.items() if k.startswith("service/")) == len(sel)
    run(main())


def _json_log(stderr: str) -> list[dict]:
    """Every line of a daemon's stderr under serve.log_format: json is one object with these keys."""
    out = []
    for line in stderr.splitlines():
        obj = json.loads(line)
        assert {"time", "level", "event", "message", "fields"} <= set(obj), line
        assert obj["time"].endswith("Z") and obj["level"] in ("debug", "info", "warning", "error", "critical")
        out.append(obj)
    return out


def _model_id(path: str) -> str:
    from etool_sensor.runtime import read_manifest, resolve_model_path

    _, man = read_manifest(resolve_model_path(path))
    return f"{man['name']}@{man['version']}"


def test_sighup_swaps_the_model_mid_stream_without_losing_a_flow(tmp_path, flows):
    """etool.yaml says model.path: default; mid-stream it is rewritten to model.path: fast and the daemon
    gets SIGHUP. Every flow gets exactly one verdict; in the order sent, the verdicts' model goes from the
    default to the fast one once, and flows sent after the reload name the fast one. A config or package
    that does not load is then refused with a log line and the fast model serves on. Logs are JSON."""
    if _real_model() is None:
        pytest.skip(f"no model: load_model() failed ({_model_cache.get('why')})")
    default_id, fast_id = _model_id("default"), _model_id("fast")
    assert default_id != fast_id
    cfg = tmp_path / "etool.yaml"
    mport = free_port()
    serve = {"metrics_port": mport, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "log_format": "json"}

    def write(model_path, **extra) -> None:
        cfg.write_text(json.dumps({"model": {"path": model_path}, "serve": {**serve, **extra}}))

    write("default")
    before, during, after = flows[:100], flows[100:250], flows[250:330]

    async def metric(name: str) -> float:
        st, body = await http_get(mport, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return -1.0

    async def main():
        async with ZeekPeer() as peer:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "etool_sensor", "serve", "--config", str(cfg), "--zeek-url", peer.url, cwd=ROOT,
                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
            err_task = asyncio.create_task(proc.stderr.read())
            try:
                assert await peer.wait_connected(timeout=60)
                for r in before:
                    await peer.publish_flow(r)
                assert await peer.wait_verdicts(len(before), 30)

                async def stream():
                    for r in during:
                        await peer.publish_flow(r)
                        await asyncio.sleep(0.004)

                streaming = asyncio.create_task(stream())
                await asyncio.sleep(0.15)
                write("fast", app_name="renamed")  # app_name needs a new session: kept until restart
                proc.send_signal(signal.SIGHUP)
                await streaming
                ok = False
                for _ in range(100):
                    st, body = await http_get(mport, "/healthz")
                    h = json.loads(body)
                    if h["model"] == fast_id:
                        ok = True
                        break
                    await asyncio.sleep(0.1)
                assert ok, h
                assert h["last_reload"]["ok"] is True and h["last_reload"]["kept"] == ["serve.app_name"]
                for r in after:
                    await peer.publish_flow(r)
                n = len(before) + len(during) + len(after)
                assert await peer.wait_verdicts(n, 30), len(peer.verdicts)
                assert await metric('etool_model_info{name="%s",version="%s"}' % tuple(fast_id.split("@"))) == 1
                assert await metric('etool_model_info{name="%s",version="%s"}' % tuple(default_id.split("@"))) == -1
                assert await metric('etool_reloads_total{result="ok"}') == 1

                # refused: a package that does not exist, then a value out of range; the fast model serves on
                write(str(tmp_path / "no-such-package"))
                proc.send_signal(signal.SIGHUP)
                assert await peer.wait_for(lambda: False, 1.0) is False
                for _ in range(50):
                    if await metric('etool_reloads_total{result="refused"}') == 1:
                        break
                    await asyncio.sleep(0.1)
                cfg.write_text(json.dumps({"model": {"path": "default"}, "classify": {"threshold": 7}, "serve": serve}))
                proc.send_signal(signal.SIGHUP)
                for _ in range(50):
                    if await metric('etool_reloads_total{result="refused"}') == 2:
                        break
                    await asyncio.sleep(0.1)
                assert await metric('etool_reloads_total{result="refused"}') == 2
                assert await metric("etool_config_last_reload_successful") == 0
                late = [dataclasses.replace(r, uid=r.uid + "z") for r in flows[:20]]
                for r in late:
                    await peer.publish_flow(r)
                assert await peer.wait_verdicts(n + len(late), 30)
                assert peer.app_names == ["etool-sensor"] and peer.connections == 1
            finally:
                await _terminate(proc)
                err = (await err_task).decode()
            assert proc.returncode == 0, err[-3000:]
            sent = before + during + after + late
            got = [v for _, v, _ in peer.verdicts]
            assert sorted(v.uid for v in got) == sorted(r.uid for r in sent)  # exactly one verdict per flow
            model_of = {v.uid: v.model for v in got}
            seq = [model_of[r.uid] for r in before + during + after]
            assert set(seq) == {default_id, fast_id}
            cut = seq.index(fast_id)  # once switched, every later flow is the fast model's
            assert seq[:cut] == [default_id] * cut and seq[cut:] == [fast_id] * (len(seq) - cut), seq
            assert cut >= len(before) and all(model_of[r.uid] == fast_id for r in after + late)
            lines = _json_log(err)
            events = [o["event"] for o in lines]
            assert events.count("reloaded") == 1 and events.count("reload_refused") == 2, events
            done = next(o for o in lines if o["event"] == "reloaded")
            assert done["fields"]["model"] == fast_id and done["fields"]["previous"] == default_id
            refused = [o for o in lines if o["event"] == "reload_refused"]
            assert all(o["level"] == "error" and o["fields"]["model"] == fast_id for o in refused)
            assert "no-such-package" in refused[0]["message"] and "classify.threshold" in refused[1]["message"]
            kept = [o for o in lines if o["event"] == "reload_needs_restart"]
            assert [o["fields"]["key"] for o in kept] == ["serve.app_name"]
            stopped = next(o for o in lines if o["event"] == "stopped")["fields"]["counts"]
            assert stopped["flows_in"] == stopped["verdicts_out"] == len(sent), stopped
            print("reload:", json.dumps({"cut": cut, "default": cut, "fast": len(seq) - cut + len(late),
                                         "counts": {k: v for k, v in stopped.items() if not k.startswith("verdicts.")}}))
    run(main(), timeout=180)


def test_log_format_json_flag_one_object_a_line(tmp_path):
    """`serve --log-format json` (over serve.log_format: text): every stderr line is a JSON object, the
    failed connection attempts included, with their event name and fields."""
    if _real_model() is None:
        pytest.skip(f"no model: load_model() failed ({_model_cache.get('why')})")
    cfg = tmp_path / "etool.yaml"
    cfg.write_text(json.dumps({"model": {"path": "fast"},
                               "serve": {"metrics_port": 0, "log_format": "text", "reconnect_min_s": 0.05}}))
    url = f"ws://127.0.0.1:{free_port()}/v1/messages/json"  # nobody listens
    proc = subprocess.Popen([sys.executable, "-m", "etool_sensor", "serve", "--config", str(cfg), "--zeek-url", url,
                             "--log-format", "json"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if '"event":"connect"' in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    objs = _json_log("".join(lines) + rest)
    ev = {o["event"]: o for o in objs}
    assert ev["model_loaded"]["fields"]["model"] == _model_id("fast")
    assert ev["connect"]["level"] == "warning" and url in ev["connect"]["message"]
    assert ev["stopped"]["fields"]["counts"]["reconnects"] >= 1
    assert all(o["fields"]["daemon"] == "etool-sensor" for o in objs)
