"""What drift monitoring costs per flow (not a test; prints numbers).

1. ``DriftMonitor.observe`` on the default model's real verdicts (nDPI captures), window drift.window, against
   the model's own CPU per flow (``Model.classify`` on the same flows, one onnxruntime thread) in the same run.
2. The daemon's hot path (bench/bench_daemon_cpu.py: decode, context, batching, encoding, with a fixed-answer
   model) with and without a drift reference, alternately, in subprocesses under the same load.

    python bench/bench_drift.py [--captures 120] [--observe 200000] [--flows 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def observe_cost(a: argparse.Namespace) -> None:
    from etool_sensor import drift as dr
    from etool_sensor.config import DriftConfig
    from etool_sensor.context import ContextTracker
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.runtime import load_model

    model = load_model("default", threads=1)
    caps = dr.captures_in(ROOT.parent / "shared" / "data" / "ndpi")[:a.captures]
    tracker = ContextTracker()
    recs = [r for r in read_flows([str(p) for p in caps]) if len(r.packets) >= 2]
    ctxs = [tracker.observe(r) for r in recs]
    model.classify(recs[:64], ctxs[:64])  # warm up
    c0 = time.process_time()
    verdicts = [v for i in range(0, len(recs), 256) for v in model.classify(recs[i:i + 256], ctxs[i:i + 256])]
    model_us = (time.process_time() - c0) / len(recs) * 1e6
    mon = dr.DriftMonitor(dr.model_reference(model), DriftConfig().window)
    pairs = [(v, v.table_hit) for v in verdicts]
    seq = (pairs * (a.observe // len(pairs) + 1))[:a.observe]
    best = float("inf")
    for _ in range(5):
        mon.reset()
        observe = mon.observe
        c0 = time.process_time()
        for v, h in seq:
            observe(v, h)
        best = min(best, (time.process_time() - c0) / len(seq) * 1e6)
    c0 = time.process_time()
    for _ in range(1000):
        mon.score()
    score_us = (time.process_time() - c0) / 1000 * 1e6
    print(f"model.classify: {model_us:.1f} us CPU per flow ({len(recs)} flows of {len(caps)} captures, 1 thread)")
    print(f"DriftMonitor.observe: {best:.2f} us per verdict (window {mon.window}), "
          f"{best / model_us:.2%} of the model's CPU per flow; score(): {score_us:.1f} us")


def daemon_cost(a: argparse.Namespace) -> None:
    script = ROOT / "bench" / "bench_daemon_cpu.py"
    res: dict[bool, list[float]] = {False: [], True: []}
    print(f"# load average at start {os.getloadavg()[0]:.2f}")
    for _ in range(a.rounds):
        for drift in (False, True):
            out = subprocess.run([sys.executable, str(script), "--child", "--flows", str(a.flows), "--repeat", "3"]
                                 + ["--drift"] * drift, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                 capture_output=True, text=True, check=True)
            v = json.loads(out.stdout.strip().splitlines()[-1])["cpu_us_per_flow"]
            res[drift].append(v)
            print(f"daemon hot path, drift {'on ' if drift else 'off'}: {v:6.1f} us/flow", flush=True)
    off, on = min(res[False]), min(res[True])
    print(f"daemon hot path, best of {a.rounds}: drift off {off:.1f} us/flow, on {on:.1f} us/flow "
          f"(ratio {on / off:.3f}, {on - off:+.1f} us/flow)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--captures", type=int, default=120, help="nDPI captures whose flows are classified")
    p.add_argument("--observe", type=int, default=200000, help="verdicts fed to the monitor")
    p.add_argument("--flows", type=int, default=20000, help="flows per daemon run")
    p.add_argument("--rounds", type=int, default=3, help="daemon runs per setting, alternating")
    a = p.parse_args()
    observe_cost(a)
    daemon_cost(a)


if __name__ == "__main__":
    main()
