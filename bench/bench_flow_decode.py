"""CPU per ETooL::flow frame of each decoder zeek.wire.parse_flow can take (not a test; prints numbers).

Real frames as Zeek lays them out (the flows of the shared captures, 2,000 distinct uids and addresses) go
through: the compiled decoder (_fastpath.flow_frame, absent with ETOOL_PURE_PYTHON=1), its Python reference
``_flow_text`` (the regular expression), the generic strict path (loads -> message_from_json ->
event_from_data -> flow_from_event), and parse_flow itself. Each is reported as microseconds per frame, best
of --repeat, and as a ratio to the generic path in the same run (the ratios are what to compare on a busy
machine).

    python bench/bench_flow_decode.py [--frames 2000] [--repeat 5]
    ETOOL_PURE_PYTHON=1 python bench/bench_flow_decode.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etool_sensor.zeek import broker_json, messages, wire  # noqa: E402
from bench.replay import flows_from_captures  # noqa: E402


def generic(frame: str) -> wire.FlowEvent:
    return wire.flow_from_event(messages.event_from_data(messages.message_from_json(broker_json.loads(frame))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    flows = flows_from_captures(limit=256)
    frames = [wire.encode_flow("etool/flows/", dataclasses.replace(flows[i % len(flows)], uid=f"C{i:017d}",
                                                                   orig_h=f"10.64.{(i >> 8) & 3}.{i & 255}"),
                               "etool/verdicts/worker-1/", network_time=1.7e9 + i * 1e-3) for i in range(a.frames)]
    decoders = {"generic": generic, "text (_flow_text)": wire._flow_text, "parse_flow": wire.parse_flow}
    if wire._flow_frame is not None:
        decoders["compiled (flow_frame)"] = wire._flow_compiled
    for name, fn in decoders.items():
        declined = sum(fn(f) is None for f in frames)
        if declined:
            print(f"{name}: declines {declined} of {len(frames)} frames")
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(a.repeat):  # interleaved, so a burst of load on the machine hits every decoder alike
        for name, fn in decoders.items():
            t0 = time.process_time()
            for f in frames:
                fn(f)
            best[name] = min(best[name], (time.process_time() - t0) / len(frames) * 1e6)
    print(f"{'compiled' if wire._flow_frame is not None else 'pure Python'}, {len(frames)} frames, "
          f"mean {sum(map(len, frames)) // len(frames)} bytes")
    for name, us in best.items():
        print(f"{name:24s} {us:7.1f} us/frame   {us / best['generic']:.3f} x generic")


if __name__ == "__main__":
    main()
