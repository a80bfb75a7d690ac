"""Benchmark of `etool-sensor serve` over loopback WebSocket (not a test; prints numbers).

The bench process plays Zeek (the WebSocket v1 server side) and is the load generator:
bench/loadgen.LeanPeer, which speaks the protocol with websockets' Sans-I/O layer, writes pre-encoded frames
and matches verdicts by uid (one in 64 decoded in full); the conformance peer that checks every verdict is
the tests' (tests/support/zeek_peer.py), which a bench does not import. It publishes ETooL::flow events built
from real captures (bench/replay.py) at a fixed rate, steps the
rate up until the daemons drop flows or fall behind, and reports per step: offered and answered
flows/s, p50/p99 verdict latency (flow sent -> verdict received, both ends on this machine), drops
(from the daemons' /metrics) and the daemons' RSS (largest and summed). Each daemon runs as its own
process (`python -m etool_sensor serve`, or with --stub a fixed-answer model, for the transport alone).

Scale-out the way the Zeek package does it (docs/sensor.md, "Several daemons"): with ``--daemons N``
(N > 1) daemon i is named ``etool-i`` and subscribes to ``etool/flows/etool-i/`` only, and the peer
publishes each flow on the topic ``ETooL::pick_daemon`` gives its originator address (rendezvous
hashing, bench/replay.pick_daemon). One daemon subscribes to ``etool/flows/`` (``ETooL::daemons``
empty). ``--daemons 1,2`` measures both in one run; ``--rounds R`` alternates them R times.
``--workers`` runs one ``serve --workers N`` process instead (workers etool-sensor-i, same topics scheme).

Originators: the captures' 256 flows come from 59 client addresses, one of them with a quarter of the
flows, so HRW over two daemons splits them 66/34. ``--clients K`` (default 1024) gives the flows K
synthetic originator addresses (round robin), as on a sensor watching many hosts; ``--clients 0`` keeps
the captures' addresses.

    python bench/bench_daemon.py [--rates 1000,2000,5000,10000] [--seconds 5] [--daemons 1,2] [--stub]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import gc
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etool_sensor.zeek import wire  # noqa: E402
from bench.loadgen import LeanPeer  # noqa: E402
from bench.replay import daemon_topic, flows_from_captures  # noqa: E402

UID_MARK = "CUIDUIDUIDUIDUIDUI"
ADDR_MARK = "203.0.113.254"  # TEST-NET-3: never one of the captures' addresses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, worker: str | None = None) -> dict[str, float]:
    """One endpoint's samples; `serve --workers N` labels each with its worker: summed over them, or
    only `worker`'s when given."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = collections.defaultdict(float)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = dict(s.labels)
            if worker is not None and labels.get("worker", worker) != worker:
                continue
            labels.pop("worker", None)
            out[s.name + "".join(f".{v}" for v in labels.values())] += s.value
    return out


def scrape_all(ports: list[int]) -> dict[str, float]:
    tot: dict[str, float] = collections.defaultdict(float)
    for p in ports:
        for k, v in scrape(p).items():
            tot[k] += v
    return tot


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@dataclasses.dataclass
class Template:
    """One real flow's ETooL::flow frame (UTF-8) with holes for the uid and the originator address."""

    parts: tuple[bytes, bytes, bytes] | None  # frame = parts[0] + uid + parts[1] + orig_h + parts[2]
    whole: tuple[bytes, bytes]  # frame = whole[0] + uid + whole[1] (the capture's own orig_h)
    orig_h: str


def make_templates(clients: int) -> tuple[list[Template], str]:
    flows = flows_from_captures(limit=256)
    out = []
    for r in flows:
        a, b = wire.encode_flow("etool/flows/", dataclasses.replace(r, uid=UID_MARK), "etool/verdicts/",
                                network_time=time.time()).split(UID_MARK)
        parts = None
        if clients and ":" not in r.orig_h:
            f = wire.encode_flow("etool/flows/", dataclasses.replace(r, uid=UID_MARK, orig_h=ADDR_MARK),
                                 "etool/verdicts/", network_time=time.time())
            p0, rest = f.split(UID_MARK)
            p1, p2 = rest.split('"' + ADDR_MARK + '"')
            parts = (p0.encode(), (p1 + '"').encode(), ('"' + p2).encode())
        out.append(Template(parts, (a.encode(), b.encode()), r.orig_h))
    info = (f"# {len(flows)} distinct flows from real captures, avg "
            f"{sum(len(r.packets) for r in flows) / len(flows):.1f} packets, avg frame "
            f"{sum(len(t.whole[0]) + len(t.whole[1]) + 18 for t in out) / len(out):.0f} bytes; "
            f"{os.cpu_count()} CPUs; originators: "
            f"{f'{clients} synthetic' if clients else f'{len({r.orig_h for r in flows})} from the captures'}")
    return out, info


def client_addr(i: int) -> str:
    return f"10.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"


async def run_config(a: argparse.Namespace, n: int, tmpls: list[Template], root: Path = ROOT) -> dict[str, float]:
    """Start the peer and n daemon processes, step the rates; returns a summary."""
    import psutil

    names = [f"{'etool-sensor' if a.workers else 'etool'}-{i}" for i in range(n)] if n > 1 else []
    # Per sent flow: topic and frame pieces. With --clients K, flow seq goes to client seq % K.
    K = a.clients
    if K:
        ctopic = [daemon_topic(client_addr(i), names) for i in range(K)]
        caddr = [client_addr(i) for i in range(K)]
    ttopic = [daemon_topic(t.orig_h, names) for t in tmpls]

    baddr = [x.encode() for x in caddr] if K else []

    def frame_bytes(seq: int, uid: bytes) -> tuple[str, bytes]:
        """Flow number seq: its topic and frame."""
        t = tmpls[seq % len(tmpls)]
        p = t.parts
        if K and p is not None:
            c = seq % K
            return ctopic[c], b"".join((p[0], uid, p[1], baddr[c], p[2]))
        return ttopic[seq % len(tmpls)], b"".join((t.whole[0], uid, t.whole[1]))

    share = collections.Counter(frame_bytes(s, b"x")[0] for s in range(len(tmpls) * max(1, K)))
    tot = sum(share.values())
    label = (f"serve --workers {n}" if a.workers and n > 1 else f"{n} daemon{'s' if n > 1 else ''}") \
        + (f" from {root}" if root != ROOT else "")
    print(f"## {label}; flow share per topic: "
          + ", ".join(f"{t} {c / tot * 100:.0f}%" for t, c in sorted(share.items())), flush=True)

    sent_at: dict[bytes, float] = {}
    lat: list[float] = []
    peer = LeanPeer()
    await peer.start()

    async def wait_for(pred: Any, timeout: float) -> bool:
        t_end = time.monotonic() + timeout
        while not pred() and time.monotonic() < t_end:
            await asyncio.sleep(0.01)
        return pred()

    procs: list[subprocess.Popen] = []
    mports: list[int] = []
    summary = {"daemons": n, "root": str(root), "max_ok_rate": 0.0, "p99_at_first": float("nan"), "answered_max": 0.0}
    with tempfile.TemporaryDirectory() as td:
        def start(i: int, topics: list[str], extra: list[str]) -> None:
            mport = free_port()
            cfg = Path(td) / f"etool-{i}.yaml"
            serve = {"metrics_port": mport, "queue_size": a.queue_size, "batch_size": a.batch_size,
                     "topics": topics}
            if a.deadline_ms is not None:
                serve["batch_deadline_ms"] = a.deadline_ms
            cfg.write_text(json.dumps({"serve": serve, **({"model": {"path": a.model}} if a.model else {})}))
            cmd = [sys.executable, "-m", "etool_sensor", "serve", "--config", str(cfg), "--zeek-url", peer.url] + extra
            if a.stub:
                # the measured checkout's own stand-in; older checkouts kept it among their tests
                old = root / "tests" / "stub_daemon.py"
                mod = next((m for m, f in (("bench.stub_daemon", "bench/stub_daemon.py"),
                                           ("tests.support.stub_daemon", "tests/support/stub_daemon.py"))
                            if (root / f).is_file()), None)
                cmd = [sys.executable, *(["-m", mod] if mod else [str(old)])] + cmd[4:]
            env = dict(os.environ, PYTHONPATH=str(root))
            procs.append(subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE if a.quiet else None))
            mports.append(mport)

        if a.workers and n > 1:  # one process; one metrics endpoint with each worker's series
            start(0, ["etool/flows/"], ["--workers", str(n)])
        else:
            for i in range(max(1, n)):
                start(i, [f"etool/flows/{names[i]}/"] if names else ["etool/flows/"], [])
        try:
            if not await peer.wait_connected(n, timeout=90):
                raise SystemExit("daemons did not connect")
            pss = []
            for p in procs:
                pp = psutil.Process(p.pid)
                pss.append(pp)
                pss.extend(pp.children(recursive=True))
            seen = 0

            def collect() -> None:
                nonlocal seen
                for uid, t in peer.verdicts[seen:]:
                    t0 = sent_at.pop(uid, None)
                    if t0 is not None:
                        lat.append(t - t0)
                seen = len(peer.verdicts)

            seq = a.seq_base
            print(f"{'offered/s':>10} {'answered/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'drops':>7} {'rss max MB':>10} "
                  f"{'rss sum MB':>10} {'cpu us/flow':>11} {'peer us/flow':>12} {'load1':>6}")

            def cpu() -> float:
                t = 0.0
                for p in pss:
                    try:
                        c = p.cpu_times()
                        t += c.user + c.system
                    except psutil.Error:
                        pass
                return t

            me = psutil.Process()
            for rate in a.rates:
                lat.clear()
                # This process is the load generator and the latency clock: its own collector must not stall
                # it mid-step (full collections over the growing verdict list took up to 200 ms, which showed
                # up as p99 spikes of the daemon). Collect between steps, freeze what is alive, none during one.
                gc.enable()
                gc.collect()
                gc.freeze()
                gc.disable()
                m0 = scrape_all(mports)
                c0, pc0 = cpu(), sum(me.cpu_times()[:2])
                v0 = len(peer.verdicts)
                t0 = time.perf_counter()
                n_sent = 0
                while (el := time.perf_counter() - t0) < a.seconds:
                    due = min(int(el * rate) - n_sent, 1000)
                    # one write per tick; every flow of the tick stamped at the write
                    batch, uids = [], []
                    for _ in range(due):
                        uid = b"B%017d" % seq
                        uids.append(uid)
                        batch.append(frame_bytes(seq, uid))
                        seq += 1
                    now = time.perf_counter()
                    for uid in uids:
                        sent_at[uid] = now
                    n_sent += due
                    await peer.publish_many(batch)
                    await asyncio.sleep(0.001)
                    collect()
                offered = n_sent / (time.perf_counter() - t0)
                collect()
                kept_up = len(peer.verdicts) - v0  # answered while the step lasted, not in the drain after it
                await wait_for(lambda: len(peer.verdicts) - v0 >= n_sent, 5)
                collect()
                answered_n = len(peer.verdicts) - v0
                answered = answered_n / (time.perf_counter() - t0)
                c1, pc1 = cpu(), sum(me.cpu_times()[:2])
                m1 = scrape_all(mports)
                drops = sum(m1[k] - m0.get(k, 0) for k in m1 if k.startswith("etool_drops_total"))
                rss = [p.memory_info().rss / 2**20 for p in pss if p.is_running()]
                p99 = pct(lat, .99) * 1e3
                print(f"{offered:10.0f} {answered:10.0f} {pct(lat, .5) * 1e3:8.2f} {p99:8.2f} "
                      f"{drops:7.0f} {max(rss):10.0f} {sum(rss):10.0f} {(c1 - c0) / max(1, answered_n) * 1e6:11.0f} "
                      f"{(pc1 - pc0) / max(1, n_sent) * 1e6:12.0f} {os.getloadavg()[0]:6.2f}", flush=True)
                if rate == a.rates[0]:
                    summary["p99_at_first"] = p99
                summary["answered_max"] = max(summary["answered_max"], answered)
                sent_at.clear()
                if drops > 0 or kept_up < 0.95 * n_sent:
                    print(f"# saturated at ~{offered:.0f} flows/s offered ({kept_up}/{n_sent} answered during the "
                          f"step, {answered_n} in all, {drops:.0f} dropped)")
                    break
                summary["max_ok_rate"] = offered
                await asyncio.sleep(0.5)
            a.seq_base = seq
            m = scrape_all(mports)
            print("# daemon counters (summed):",
                  json.dumps({k: v for k, v in m.items() if k.endswith("_total") and v}))
            print("# load generator:", json.dumps(peer.summary()))
            if m.get("etool_inference_seconds_count"):
                print(f"# mean batch {m['etool_batch_size_sum'] / m['etool_batch_size_count']:.1f} flows, "
                      f"mean inference {m['etool_inference_seconds_sum'] / m['etool_inference_seconds_count'] * 1e3:.2f} ms")
            per = ([scrape(mports[0], f"etool-sensor-{i}").get("etool_flows_in_total", 0) for i in range(n)]
                   if a.workers and n > 1 else [scrape(p).get("etool_flows_in_total", 0) for p in mports])
            if len(per) > 1:
                print("# flows per daemon:", per)
        finally:
            gc.enable()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            await peer.stop()
    return summary


async def main(a: argparse.Namespace) -> None:
    tmpls, info = make_templates(a.clients)
    print(info, flush=True)
    a.seq_base = 0
    results: list[dict[str, float]] = []
    roots = [Path(r).resolve() for r in a.roots] if a.roots else [ROOT]
    for _ in range(a.rounds):
        for n in a.daemons:
            for root in roots:
                results.append(await run_config(a, n, tmpls, root))
                await asyncio.sleep(1.0)
    print("# summary: daemons, highest step kept up with (offered/s), most answered/s, p99 ms at the first rate, "
          "most answered/s as a ratio to the first run's (the baseline of this run), daemon checkout")
    base = results[0]["answered_max"] or float("nan")
    for r in results:
        print(f"#   {r['daemons']:>2}  {r['max_ok_rate']:8.0f}  {r['answered_max']:8.0f}  {r['p99_at_first']:8.2f}  "
              f"{r['answered_max'] / base:6.2f}x  {r['root']}")


if __name__ == "__main__":
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=ints, default=[1000, 2000, 5000, 10000, 20000])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", default=None, help="model.path for the daemons (default: the bundled default model)")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="serve.batch_deadline_ms for the daemons (default: the daemon's, 5 ms)")
    p.add_argument("--daemons", type=ints, default=[1], help="daemon processes, e.g. 1,2 (one run each)")
    p.add_argument("--workers", action="store_true",
                   help="one `serve --workers N` process instead of N daemon processes")
    p.add_argument("--rounds", type=int, default=1, help="repeat the --daemons list this many times")
    p.add_argument("--clients", type=int, default=1024, help="synthetic originator addresses (0: the captures')")
    p.add_argument("--roots", type=lambda s: s.split(","), default=None,
                   help="A/B: run the daemons from these checkouts in turn (e.g. a `git worktree` of the base "
                        "commit and .); the peer always runs from this one")
    p.add_argument("--stub", action="store_true", help="fixed-answer model: measure decode/transport alone")
    p.add_argument("--quiet", action="store_true", help="hide the daemons' log")
    asyncio.run(main(p.parse_args()))
