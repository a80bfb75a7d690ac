"""Benchmark of `etool-sensor serve` over loopback WebSocket (not a test; prints numbers).

The bench process plays Zeek (tests/zeek_peer.ZeekPeer, the WebSocket v1 server side) and is the
load generator: it publishes ETooL::flow events built from real captures at a fixed rate, steps the
rate up until the daemon drops flows or falls behind, and reports per step: offered and answered
flows/s, p50/p99 verdict latency (flow sent -> verdict received, both ends on this machine), drops
(from the daemon's /metrics) and the daemon's RSS. The daemon runs as its own process
(`python -m etool_sensor.daemon`, or with --stub a fixed-answer model, for the transport alone).

    python bench/bench_daemon.py [--rates 1000,2000,5000,10000,20000] [--seconds 5] [--stub]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etool_sensor import zeekws as z  # noqa: E402
from tests.zeek_peer import ZeekPeer, flows_from_captures  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name + "".join(f".{v}" for v in s.labels.values())] = s.value
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main(a: argparse.Namespace) -> None:
    import psutil

    flows = flows_from_captures(limit=256)
    tmpls = [z.encode_flow("etool/flows/", dataclasses.replace(r, uid="CUIDUIDUIDUIDUIDUI"), "etool/verdicts/",
                           network_time=time.time()) for r in flows]
    print(f"# {len(flows)} distinct flows from real captures, avg {sum(len(r.packets) for r in flows) / len(flows):.1f} "
          f"packets, avg frame {sum(map(len, tmpls)) / len(tmpls):.0f} bytes; {os.cpu_count()} CPUs")
    sent_at: dict[str, float] = {}
    lat: list[float] = []

    peer = ZeekPeer(validate=False)
    await peer.start()
    mport = free_port()
    with tempfile.TemporaryDirectory() as td:
        cfg = Path(td) / "etool.yaml"
        cfg.write_text(json.dumps({"serve": {"metrics_port": mport, "queue_size": a.queue_size,
                                             "batch_size": a.batch_size}}))
        cmd = [sys.executable, "-m", "etool_sensor.daemon", "--config", str(cfg), "--zeek-url", peer.url]
        if a.stub:
            cmd = [sys.executable, str(ROOT / "tests" / "stub_daemon.py")] + cmd[3:]
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE if a.quiet else None)
        try:
            if not await peer.wait_connected(timeout=60):
                raise SystemExit("daemon did not connect")
            ps = psutil.Process(proc.pid)
            # verdict latency: the peer records receive time of each verdict
            seen = 0

            def collect() -> None:
                nonlocal seen
                for _, v, t in peer.verdicts[seen:]:
                    t0 = sent_at.pop(v.uid, None)
                    if t0 is not None:
                        lat.append(t - t0)
                seen = len(peer.verdicts)

            seq = 0
            print(f"{'offered/s':>10} {'answered/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'drops':>7} {'rss MB':>7}")
            for rate in a.rates:
                lat.clear()
                m0 = scrape(mport)
                v0 = len(peer.verdicts)
                t0 = time.perf_counter()
                n = 0
                while (el := time.perf_counter() - t0) < a.seconds:
                    due = int(el * rate) - n
                    for _ in range(min(due, 1000)):
                        uid = f"B{seq:017d}"
                        frame = tmpls[seq % len(tmpls)].replace("CUIDUIDUIDUIDUIDUI", uid, 1)
                        sent_at[uid] = time.perf_counter()
                        await peer.publish("etool/flows/", frame)
                        seq += 1
                        n += 1
                    await asyncio.sleep(0.001)
                    collect()
                offered = n / (time.perf_counter() - t0)
                await peer.wait_for(lambda: len(peer.verdicts) - v0 >= n, 5)
                collect()
                answered_n = len(peer.verdicts) - v0
                answered = answered_n / (time.perf_counter() - t0)
                m1 = scrape(mport)
                drops = sum(m1[k] - m0.get(k, 0) for k in m1 if k.startswith("etool_drops_total"))
                rss = ps.memory_info().rss / 2**20
                print(f"{offered:10.0f} {answered:10.0f} {pct(lat, .5) * 1e3:8.2f} {pct(lat, .99) * 1e3:8.2f} "
                      f"{drops:7.0f} {rss:7.0f}", flush=True)
                sent_at.clear()
                if drops > 0 or answered_n < 0.95 * n:
                    print(f"# saturated at ~{offered:.0f} flows/s offered ({answered_n}/{n} answered, {drops:.0f} dropped)")
                    break
                await asyncio.sleep(0.5)
            m = scrape(mport)
            print("# daemon counters:", json.dumps({k: v for k, v in m.items() if k.endswith("_total") and v}))
            if "etool_inference_seconds_count" in m and m["etool_inference_seconds_count"]:
                print(f"# mean batch {m['etool_batch_size_sum'] / m['etool_batch_size_count']:.1f} flows, "
                      f"mean inference {m['etool_inference_seconds_sum'] / m['etool_inference_seconds_count'] * 1e3:.2f} ms")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            await peer.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 2000, 5000, 10000, 20000])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--stub", action="store_true", help="fixed-answer model: measure decode/transport alone")
    p.add_argument("--quiet", action="store_true", help="hide the daemon's log")
    asyncio.run(main(p.parse_args()))
