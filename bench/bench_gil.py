"""Is one `classify` process bound by the GIL? Two measurements, not a test.

    python bench/bench_gil.py [--seconds 4] [--rounds 2] [--pipelines 2/512,4/512,8/256,4/1024]

1. Overlap: the shipped model's onnxruntime session (1 thread, batch 256 of real flows) in a worker thread
   next to a pure-Python loop in the main thread, each timed alone and then together. "together" close to
   the longer of the two means onnxruntime runs outside the GIL; close to their sum means it does not.
2. Pipeline depth: `etool-sensor classify` of the bench capture (bench_ingest's /tmp/etool_bench.pcap,
   built when missing) in-process with `offline.PIPELINE` (batches in flight) / `offline.BATCH` (flows per batch)
   set to each pair, the pairs alternated for `--rounds`. If one process were waiting on a too-shallow
   pipeline, deeper settings would be faster; if the GIL-held Python work of the reader and model threads
   is the floor, all settings take the same time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from etool_sensor import cli, offline  # noqa: E402
from etool_sensor.runtime import load_model  # noqa: E402


def overlap(seconds: float) -> None:
    from bench_model import flows

    m = load_model(None, threads=1)
    recs, ctxs = flows(["/tmp/etool_bench.pcap"], 256)
    feats = m.features(recs[:256], ctxs[:256])
    feed = {k: feats[k] for k in m._inputs}

    def ort_loop(n: int) -> None:
        for _ in range(n):
            m.session.run(None, feed)

    def py_loop(n: int) -> None:
        x = 0
        for i in range(n):
            x += i

    # size both loops to about `seconds` on this machine
    t = time.perf_counter()
    ort_loop(5)
    n_ort = max(1, int(5 * seconds / (time.perf_counter() - t)))
    t = time.perf_counter()
    py_loop(1_000_000)
    n_py = max(1, int(1_000_000 * seconds / (time.perf_counter() - t)))
    t = time.perf_counter()
    ort_loop(n_ort)
    a = time.perf_counter() - t
    t = time.perf_counter()
    py_loop(n_py)
    b = time.perf_counter() - t
    th = threading.Thread(target=ort_loop, args=(n_ort,))
    t = time.perf_counter()
    th.start()
    py_loop(n_py)
    th.join()
    c = time.perf_counter() - t
    print(f"overlap: onnxruntime {a:.2f} s, Python loop {b:.2f} s, together {c:.2f} s "
          f"(serial {a + b:.2f}, full overlap {max(a, b):.2f})")


def pipeline(pairs: list[tuple[int, int]], rounds: int) -> None:
    times: dict[tuple[int, int], list[float]] = {p: [] for p in pairs}
    old = offline.PIPELINE, offline.BATCH
    out = Path(tempfile.mkdtemp(prefix="etool_gil_"))
    try:
        for _ in range(rounds):
            for p in pairs:
                offline.PIPELINE, offline.BATCH = p
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                rc = cli.main(["classify", "/tmp/etool_bench.pcap", "-o", str(out), "-q"])
                times[p].append(time.perf_counter() - t)
                if rc != 0:
                    raise SystemExit(f"classify exited {rc}")
    finally:
        offline.PIPELINE, offline.BATCH = old
        shutil.rmtree(out, ignore_errors=True)
    print("pipeline (in flight) / batch: classify seconds per round")
    for (pl, b), ts in times.items():
        print(f"  {pl:>2} / {b:>5}: " + "  ".join(f"{x:.2f}" for x in ts) + f"   best {min(ts):.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each overlap loop")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pipelines", default="2/512,4/512,8/256,4/1024", help="PIPELINE/BATCH pairs")
    ap.add_argument("--packets", type=int, default=300_000, help="bench capture size when it has to be built")
    a = ap.parse_args(argv)
    if not Path("/tmp/etool_bench.pcap").exists():
        import bench_ingest

        bench_ingest.build(a.packets)
    pairs = [tuple(int(x) for x in p.split("/")) for p in a.pipelines.split(",")]
    la = os.getloadavg()[0]
    print(f"cpu: {os.cpu_count()} cores visible, load average {la:.2f} at start; default pipeline "
          f"{offline.PIPELINE}/{offline.BATCH}")
    overlap(a.seconds)
    pipeline(pairs, a.rounds)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
