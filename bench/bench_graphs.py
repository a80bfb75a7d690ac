"""A/B of model packages on the same real flows: inference flows/s per batch size, interleaved rounds.

    python bench/bench_graphs.py PKG_A PKG_B [...] [--pcap FILE ...] [--batches 1 8 32 512] [--rounds 3]

Each package (a directory, or a bundled name) runs `Model._run` (the runtime's inference: padding cut off,
equal cuts run together, one onnxruntime thread) over the encoded flows of the captures (default: every
nDPI capture in ../shared, flows with >= 2 packets), shuffled once, in calls of B flows. Packages take turns
within each round, so a drift of the machine's speed hits all of them alike; the best round counts. Ratios
are against the first package. How docs/performance.md compares a graph rewrite with the graph it replaces
(keep a copy of the old package). Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etool_sensor.runtime import HEADS, load_model  # noqa: E402

NDPI = ROOT.parent / "shared" / "data" / "ndpi" / "pcap"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("packages", nargs="+", help="model package directories or bundled names")
    ap.add_argument("--pcap", nargs="*", help="captures whose flows are timed (default: the nDPI corpus)")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32, 512])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    from etool_sensor.export.token_axes import real_features

    models = [load_model(p, threads=1) for p in a.packages]
    pcaps = a.pcap or sorted(str(p) for p in NDPI.glob("*.pcap*"))
    # packages may differ in the extra inputs they take (a hybrid's flt): one encoding holds them all, and
    # each graph is fed only its own inputs (the encoding itself is not timed here; bench_classify times it)
    extra = {"flights": max(m.spec.flights for m in models)}
    spec = dataclasses.replace(models[0].spec, **extra)
    for m in models[1:]:
        if dataclasses.replace(m.spec, **extra) != spec:
            raise SystemExit(f"{m.id} reads other features than {models[0].id}: not comparable on one encoding")
    feats, n = real_features(pcaps, spec)
    perm = np.random.default_rng(0).permutation(n)
    feats = {k: v[perm] for k, v in feats.items()}
    print(f"# {n} flows (>= 2 packets) from {len(pcaps)} captures; one onnxruntime thread; best of {a.rounds} "
          "interleaved rounds, flows/s")
    print(f"{'batch':>6} " + " ".join(f"{m.id:>28}" for m in models))
    for b in a.batches:
        calls = [{k: v[i:i + b] for k, v in feats.items()} for i in range(0, n, b)]
        best = [0.0] * len(models)
        for _ in range(a.rounds):
            for j, m in enumerate(models):
                t = time.perf_counter()
                for c in calls:
                    m._run(c, HEADS)
                best[j] = max(best[j], n / (time.perf_counter() - t))
        print(f"{b:>6} " + " ".join(f"{x:>20,.0f} ({x / best[0]:.2f}x)" for x in best), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
