"""CPU per flow of the daemon's own hot path, without sockets (not a test; prints numbers).

Feeds real ETooL::flow frames (as Zeek lays them out; 1,024 client addresses) to ``Daemon._on_frame`` in bursts, lets the batcher
batch them, a fixed-answer model "classify" them in the worker thread and the verdicts be encoded and
handed to a client stand-in that only counts them: decode, duplicate check, context, queue, batching,
thread hand-off, verdict encoding, metrics. Reports process CPU seconds per flow (user + system, all
threads), best of --repeat. With ``--roots A,B`` each checkout runs in its own subprocess, alternately,
so two versions are compared under the same machine load.

    python bench/bench_daemon_cpu.py [--flows 20000] [--burst 64] [--repeat 5] [--roots /tmp/base,.] [--drift]

``--drift`` gives the fixed-answer model the bundled default package's drift reference, so the daemon's drift
window (etool_sensor/drift.py) counts every verdict, as it does with a real package (bench/bench_drift.py
compares the two).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(a: argparse.Namespace) -> None:
    import asyncio
    import dataclasses

    from etool_sensor.zeek import wire
    try:
        from etool_sensor.config import Config
        from etool_sensor.sensor.daemon import Daemon

        def new_daemon(model):  # (the daemon, its queue size)
            d = Daemon(Config().with_overrides({"serve.metrics_port": 0}), model)
            return d, d.cfg.serve.queue_size
    except ImportError:  # a checkout from before etool_sensor/sensor/ (--roots A/B against an older commit)
        from etool_sensor.daemon import Daemon, ServeSettings

        def new_daemon(model):
            d = Daemon(ServeSettings(metrics_port=0), model)
            return d, d.s.queue_size
    from etool_sensor.flows import Verdict

    sys.path.insert(0, str(ROOT))
    from bench.replay import flows_from_captures  # the peer side is always this checkout's

    class Model:
        name, version, id = "etool-student", "0.3.0", "etool-student@0.3.0"
        manifest: dict = {}

        def classify(self, records, contexts=None, thresholds=None, *, mask_names=True, min_packets=2, top_k=3):
            return [Verdict(r.uid, "Web", "Google", 0.7123, False, ["Web:0.712", "Chat:0.100", "VPN:0.050"],
                            "etool-student@0.3.0", "ok", i % 3 > 0) for i, r in enumerate(records)]

    if getattr(a, "drift", False):
        from etool_sensor.runtime import read_manifest, resolve_model_path

        Model.manifest = {"drift_reference": read_manifest(resolve_model_path(None))[1]["drift_reference"]}

    class Client:
        connected = True
        sent = 0

        async def send(self, text):
            self.sent += 1

        async def send_many(self, texts):
            self.sent += len(texts)

    flows = flows_from_captures(limit=256)
    frames = []
    for i in range(a.flows):
        r = flows[i % len(flows)]
        frames.append(wire.encode_flow("etool/flows/", dataclasses.replace(r, uid=f"C{i:017d}",
                                                                          orig_h=f"10.64.{(i >> 8) & 3}.{i & 255}"),
                                       "etool/verdicts/worker-1/", network_time=1.7e9 + i * 1e-3))

    async def once() -> float:
        d, queue_size = new_daemon(Model())
        d.client = Client()
        d.queue = asyncio.Queue(queue_size)
        d.stop_event = asyncio.Event()
        batcher = asyncio.create_task(d._batcher())
        await asyncio.sleep(0.01)
        c0 = time.process_time()
        perf = time.perf_counter
        half = queue_size // 2
        for i in range(0, len(frames), a.burst):
            for f in frames[i:i + a.burst]:
                d._on_frame(f, perf())
            await asyncio.sleep(0)
            while d.queue.qsize() > half:  # backpressure, as the socket gives it: no queue_full drops
                await asyncio.sleep(0.0005)
        last, idle = -1, 0
        while d.client.sent < len(frames):
            await asyncio.sleep(0.0005)
            idle = idle + 1 if d.client.sent == last else 0
            last = d.client.sent
            if idle > 20000:  # 10 s without a verdict: something dropped flows; say so instead of hanging
                raise SystemExit(f"only {d.client.sent} of {len(frames)} flows answered")
        c1 = time.process_time()
        batcher.cancel()
        d._pool.shutdown(wait=True)
        return (c1 - c0) / len(frames)

    best = min(asyncio.run(once()) for _ in range(a.repeat))
    print(json.dumps({"cpu_us_per_flow": best * 1e6}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=20000)
    p.add_argument("--burst", type=int, default=64, help="frames handed to the daemon between loop turns")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="with --roots: alternations")
    p.add_argument("--roots", type=lambda s: s.split(","), default=None)
    p.add_argument("--drift", action="store_true", help="the model has a drift reference: drift monitoring on")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child or not a.roots:
        if not a.child:
            sys.path.insert(0, str(ROOT))
        child(a)
        return
    res: list[list[float]] = [[] for _ in a.roots]  # by position: `--roots .,.` is an A/A check
    print(f"# load average at start {os.getloadavg()[0]:.2f}")
    for _ in range(a.rounds):
        for i, r in enumerate(a.roots):
            root = Path(r).resolve()
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--flows", str(a.flows),
                                  "--burst", str(a.burst), "--repeat", str(a.repeat)] + ["--drift"] * a.drift, cwd=root,
                                 env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, check=True)
            v = json.loads(out.stdout.strip().splitlines()[-1])["cpu_us_per_flow"]
            res[i].append(v)
            print(f"{str(root):40s} {v:7.1f} us/flow", flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.2f}")
    base = statistics.median(res[0])
    for r, v in zip(a.roots, res):
        med = statistics.median(v)
        print(f"# {r}: best {min(v):.1f} us/flow, median {med:.1f}, {med / base:.3f}x the first root's median")


if __name__ == "__main__":
    main()
