"""Several daemons behind one Zeek, spread by rendezvous hashing (docs/sensor.md, "Several daemons").

The peer publishes each flow the way zeek-plugin/scripts/publish.zeek does with ``ETooL::daemons`` set:
on ``etool/flows/<name>/`` for the daemon ``ETooL::pick_daemon`` gives the originator address; each
daemon subscribes to its own topic only. Real flows from the nDPI captures, the real model.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress

import pytest

from tests.test_daemon_e2e import flows, model, run, serving  # noqa: F401 - fixtures
from bench.replay import daemon_topic, hrw_weight, pick_daemon
from tests.support.zeek_peer import ZeekPeer


def test_pick_daemon_is_stable_spreads_and_moves_only_the_removed_share():
    hosts = [str(ipaddress.ip_address(0x0A000000 + i * 7919)) for i in range(3000)]
    hosts += [f"2001:db8::{i:x}" for i in range(1000)]
    three = ["etool-a", "etool-b", "etool-c"]
    first = {h: pick_daemon(h, three) for h in hosts}
    assert all(pick_daemon(h, three) == d for h, d in first.items())  # stable
    share = collections.Counter(first.values())
    assert set(share) == set(three) and min(share.values()) > 0.25 * len(hosts)
    two = ["etool-a", "etool-c"]  # etool-b removed: only its hosts move
    for h, d in first.items():
        if d != "etool-b":
            assert pick_daemon(h, two) == d
    assert daemon_topic("10.0.0.1", []) == "etool/flows/"
    assert daemon_topic("10.0.0.1", ["d1"]) == "etool/flows/d1/"
    assert 0 <= hrw_weight(0xFFFFFFFF, 0xFFFFFFFF) < 2**31


def test_two_daemons_one_verdict_per_uid_same_answers_as_one(model, flows):  # noqa: F811
    names = ["etool-0", "etool-1"]
    sel = flows[:300]

    async def one_daemon() -> dict[str, tuple]:
        async with ZeekPeer() as peer, serving(peer, model) as d:
            assert await peer.wait_connected()
            for r in sel:
                await peer.publish_flow(r, topic=daemon_topic(r.orig_h, []))
            assert await peer.wait_verdicts(len(sel), 60), (len(peer.verdicts), d.counts())
            return {v.uid: v for _, v, _ in peer.verdicts}

    async def two_daemons():
        async with ZeekPeer() as peer, serving(peer, model, topics=("etool/flows/etool-0/",)) as d0, \
                serving(peer, model, topics=("etool/flows/etool-1/",)) as d1:
            assert await peer.wait_connected(2)
            for r in sel:
                assert await peer.publish_flow(r, topic=daemon_topic(r.orig_h, names)) == 1
            assert await peer.wait_verdicts(len(sel), 60), (len(peer.verdicts), d0.counts(), d1.counts())
            await asyncio.sleep(0.3)  # nothing more arrives
            return peer, d0.counts(), d1.counts()

    base = run(one_daemon())
    peer, c0, c1 = run(two_daemons())
    got = [v.uid for _, v, _ in peer.verdicts]
    assert len(got) == len(set(got)) == len(sel) and set(got) == {r.uid for r in sel}
    # each daemon took exactly the flows of its own originators
    want = collections.Counter(pick_daemon(r.orig_h, names) for r in sel)
    assert c0.get("flows_in") == want["etool-0"] and c1.get("flows_in") == want["etool-1"]
    assert want["etool-0"] > 0 and want["etool-1"] > 0
    # all verdicts for one client come from one daemon (one WebSocket client of the peer)
    by_uid = {r.uid: r for r in sel}
    answered_by: dict[str, set[int]] = collections.defaultdict(set)
    for rc in peer.received:
        if rc.name == "ETooL::verdict":
            answered_by[by_uid[rc.value.uid].orig_h].add(rc.client)
    assert all(len(c) == 1 for c in answered_by.values())
    # per-client context stays in one place, so the answers equal one daemon's
    for _, v, _ in peer.verdicts:
        b = base[v.uid]
        assert (v.service, v.app, v.unknown, v.alternatives[:1], v.model) == \
               (b.service, b.app, b.unknown, b.alternatives[:1], b.model)
        assert v.confidence == pytest.approx(b.confidence, abs=1e-5)


# ------------------------------------------------------------------------------ serve --workers N
def _scrape_by_worker(port: int, name: str) -> dict[str, float]:
    """One sample of the supervisor's merged /metrics, by its worker label."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.labels["worker"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name}


def test_serve_workers_two_processes_one_verdict_per_uid(tmp_path, model, flows):  # noqa: F811
    import json
    import signal
    import subprocess
    import sys

    from tests.test_daemon_e2e import ROOT, free_port

    names = ["etool-sensor-0", "etool-sensor-1"]
    sel = flows[:200]
    mport = free_port()
    cfg = tmp_path / "etool.yaml"
    cfg.write_text(json.dumps({"serve": {"metrics_port": mport, "reconnect_min_s": 0.05}}))

    async def main():
        async with ZeekPeer() as peer:
            proc = subprocess.Popen([sys.executable, "-m", "etool_sensor", "serve", "--config", str(cfg), "--zeek-url",
                                     peer.url, "--workers", "2"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
            try:
                assert await peer.wait_connected(2, 60), proc.stderr.read() if proc.poll() is not None else ""
                subs = sorted(tuple(c.subscriptions) for c in peer.clients.values())
                assert subs == [("etool/flows/etool-sensor-0/",), ("etool/flows/etool-sensor-1/",)]
                assert sorted(peer.app_names) == names
                for r in sel:
                    assert await peer.publish_flow(r, topic=daemon_topic(r.orig_h, names)) == 1
                assert await peer.wait_verdicts(len(sel), 60), len(peer.verdicts)
                await asyncio.sleep(0.3)
                got = [v.uid for _, v, _ in peer.verdicts]
                assert len(got) == len(set(got)) == len(sel) and set(got) == {r.uid for r in sel}
                want = collections.Counter(pick_daemon(r.orig_h, names) for r in sel)
                # one endpoint: each worker's series, labelled with its name
                per = await asyncio.to_thread(_scrape_by_worker, mport, "etool_flows_in_total")
                assert per == {n: want[n] for n in names}
                up = await asyncio.to_thread(_scrape_by_worker, mport, "etool_worker_up")
                rss = await asyncio.to_thread(_scrape_by_worker, mport, "process_resident_memory_bytes")
                assert up == {n: 1 for n in names} and set(rss) == set(names) and min(rss.values()) > 10e6
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.to_thread(proc.wait, 30)
                err = proc.stderr.read()
            assert rc == 0, err
            assert err.count("stopped:") == 2 and "redef ETooL::daemons = vector(" + ", ".join(
                f'"{n}"' for n in names) + ");" in err

    run(main())


def test_serve_workers_a_failing_worker_stops_the_set(tmp_path):
    import subprocess
    import sys

    from tests.test_daemon_e2e import ROOT

    t0 = __import__("time").monotonic()
    p = subprocess.run([sys.executable, "-m", "etool_sensor", "serve",
                        "--zeek-url", "ws://127.0.0.1:9/v1/messages/json",
                        "--model", str(tmp_path / "no-such-model"), "--workers", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "cannot load model" in p.stderr
    assert __import__("time").monotonic() - t0 < 30
    bad = subprocess.run([sys.executable, "-m", "etool_sensor", "serve", "--workers", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--workers" in bad.stderr


def test_worker_config_names_topics_ports_and_queue_share():
    from etool_sensor.config import Config
    from etool_sensor.sensor.process import worker_config

    cfg = Config().with_overrides({"serve.topics": ["etool/flows/", "other/"], "serve.metrics_port": 9464,
                                   "serve.queue_size": 10001, "serve.workers": 3, "serve.max_flows_per_s": 900})
    ws = [worker_config(cfg, i).serve for i in range(3)]
    assert [w.app_name for w in ws] == ["etool-sensor-0", "etool-sensor-1", "etool-sensor-2"]
    assert ws[1].topics == ("etool/flows/etool-sensor-1/", "other/etool-sensor-1/")
    # each serves on a free loopback port the supervisor merges into metrics_port (workermetrics)
    assert all((w.metrics_addr, w.metrics_port) == ("127.0.0.1", 0) for w in ws)
    assert all(w.queue_size == 3333 and w.workers == 1 for w in ws)
    assert all(w.max_flows_per_s == 300 for w in ws)  # together they admit what one daemon would
    # the topic is the one the Zeek script publishes to for that daemon name
    assert ws[2].topics[0] == daemon_topic("10.0.0.1", [ws[2].app_name])
    # nothing else of the configuration changes
    assert all(worker_config(cfg, i).classify == cfg.classify and worker_config(cfg, i).drift == cfg.drift
               for i in range(3))


def test_serve_workers_sighup_reloads_every_worker(tmp_path, model, flows):  # noqa: F811
    """SIGHUP to `serve --workers 2` (what systemd's ExecReload sends to the main process): the supervisor
    forwards it, each worker loads model.path again (default -> fast); every flow gets one verdict, and
    flows sent after both workers report the fast model name it, whichever worker answers."""
    import json
    import signal
    import subprocess
    import sys

    from tests.test_daemon_e2e import ROOT, _model_id, free_port, http_get

    fast_id = _model_id("fast")
    names = ["etool-sensor-0", "etool-sensor-1"]
    mport = free_port()
    cfg = tmp_path / "etool.yaml"
    serve = {"metrics_port": mport, "reconnect_min_s": 0.05, "workers": 2}
    cfg.write_text(json.dumps({"model": {"path": "default"}, "serve": serve}))
    first, second = flows[:100], flows[100:200]

    async def main():
        async with ZeekPeer() as peer:
            proc = subprocess.Popen([sys.executable, "-m", "etool_sensor", "serve", "--config", str(cfg), "--zeek-url",
                                     peer.url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
            try:
                assert await peer.wait_connected(2, 60)
                for r in first:
                    await peer.publish_flow(r, topic=daemon_topic(r.orig_h, names))
                assert await peer.wait_verdicts(len(first), 60)
                cfg.write_text(json.dumps({"model": {"path": "fast"}, "serve": {**serve, "workers": 3}}))
                proc.send_signal(signal.SIGHUP)
                for _ in range(150):
                    st, body = await http_get(mport, "/healthz")
                    hs = json.loads(body)["workers"]
                    if all(h.get("model") == fast_id for h in hs.values()):
                        break
                    await asyncio.sleep(0.1)
                assert st == 200 and sorted(hs) == names, hs
                assert all(h["model"] == fast_id and h["last_reload"]["ok"] for h in hs.values()), hs
                info = await asyncio.to_thread(_scrape_by_worker, mport, "etool_model_info")
                assert info == {n: 1 for n in names}
                for r in second:
                    await peer.publish_flow(r, topic=daemon_topic(r.orig_h, names))
                assert await peer.wait_verdicts(len(first) + len(second), 60)
                await asyncio.sleep(0.3)
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.to_thread(proc.wait, 30)
                err = proc.stderr.read()
            assert rc == 0, err[-3000:]
            got = {v.uid: v.model for _, v, _ in peer.verdicts}
            assert len(got) == len(peer.verdicts) == len(first) + len(second)
            assert {got[r.uid] for r in first} == {_model_id("default")}
            assert {got[r.uid] for r in second} == {fast_id}
            assert {pick_daemon(r.orig_h, names) for r in second} == set(names)  # both workers answered some
            assert err.count("reloaded: new flows go to " + fast_id) == 2
            # the number of workers is fixed until restart, and says so
            assert "serve.workers changed to 3; it takes effect on restart, keeping 2" in err
            assert peer.connections == 2

    run(main(), timeout=180)


@pytest.mark.parametrize("addr, url_host", [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
def test_the_workers_endpoint_listens_on_ipv4_and_ipv6(addr, url_host):
    """serve.metrics_addr may be an IPv6 address with --workers as without (the single daemon's endpoint
    takes both): the merged endpoint answers there, a worker it cannot reach reads as down."""
    import json
    import socket
    import urllib.error
    import urllib.request

    from etool_sensor.sensor.workermetrics import WorkerMetrics, serve_endpoint

    if ":" in addr:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    srv = serve_endpoint(WorkerMetrics(["etool-sensor-0"]), addr, 0)
    try:
        port = srv.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{url_host}:{port}/healthz", timeout=5)
        assert e.value.code == 503
        body = json.loads(e.value.read())
        assert body["workers"]["etool-sensor-0"]["status"] == "unreachable"
        with urllib.request.urlopen(f"http://{url_host}:{port}/metrics", timeout=5) as r:
            assert b'etool_worker_up{worker="etool-sensor-0"} 0.0' in r.read()
    finally:
        srv.shutdown()
