"""Throughput of the shipped model: flows/s vs batch size, fp32 and int8, 1 and 2 threads; FLOPs per flow.

    python bench/bench_model.py [--model DIR] [--pcap FILE ...] [--batches 1 32 256 1024]

Times the ONNX session alone over full-length arrays ("model"), the runtime's inference with each flow's
padding cut off ("cut": runtime.token_groups, for packages with token_granules) and encode + inference
("end-to-end": Model.classify, features.encode of the flow records plus inference; reading the capture is
not included). Also prints how many tokens the cut leaves per flow against the full sequence. Every row's
end-to-end rate is also a ratio to the first row's ("x base"), measured in the same run: compare ratios, not
absolute rates, across machines. The fp32 graph is rebuilt from the
student checkpoint (--checkpoint, or student.pt in the package dir) when given (else only the shipped graph is timed). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etool_sensor import runtime  # noqa: E402
from etool_sensor.runtime import DEFAULT_MODEL_DIR, HEADS, load_model  # noqa: E402


def flows(pcaps: list[str], n: int):
    from etool_sensor.context import ContextTracker
    from etool_sensor.capture.reader import read_flows

    recs, ctxs, short = [], [], 0
    for p in pcaps:
        tr = ContextTracker()
        for r in read_flows(p):
            ctx = tr.observe(r)
            # Model.classify answers flows under min_packets (2) without inference: keep them out, or the
            # end-to-end column would count flows the model never saw.
            if len(r.packets) < 2:
                short += 1
                continue
            recs.append(r)
            ctxs.append(ctx)
    if not recs:
        raise SystemExit("no flows with >= 2 packets in the given captures")
    print(f"flows: {len(recs)} with >= 2 packets timed ({short} shorter ones left out: classify skips them)")
    reps = -(-n // len(recs))
    return (recs * reps)[:n], (ctxs * reps)[:n]


def time_it(fn, n_flows: int, min_s: float = 1.0) -> float:
    fn()
    k, t0 = 0, time.perf_counter()
    while True:
        fn()
        k += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return k * n_flows / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--pcap", nargs="*", default=None)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 32, 256, 1024])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--checkpoint", help="student.pt of the model (from `train --out`); rebuilds fp32 and int8")
    a = ap.parse_args(argv)
    pcaps = a.pcap or sorted(str(p) for p in (ROOT.parent / "shared/data/ndpi/pcap").glob("*.pcap*"))[:60]
    man = json.loads((Path(a.model) / "manifest.json").read_text())
    arch = man.get("architecture", {})
    print(f"model {man['name']}@{man['version']} ({man.get('quantization')}), tokens {arch.get('tokens')}, "
          f"params {arch.get('params')}, MACs/flow {arch.get('macs')}, FLOPs/flow {arch.get('flops')}")
    la = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpu: {os.cpu_count()} cores visible, load average {la:.2f} at start")
    variants = {"shipped": Path(a.model)}
    ck = Path(a.checkpoint) if a.checkpoint else Path(a.model) / "student.pt"
    tmp = tempfile.TemporaryDirectory()
    nmax = max(a.batches)
    recs, ctxs = flows(pcaps, max(nmax, 2048))
    if ck.is_file():
        from etool_sensor.features import encode as _enc
        from etool_sensor.train.student import Student
        from etool_sensor.export.package import build_package
        st = Student.load(ck)
        calib = _enc(recs[:2048], ctxs[:2048], st.spec)
        for q, name in (("none", "fp32"), ("static", "int8s"), ("dynamic", "int8d")):
            d = Path(tmp.name) / name
            build_package(st, d, name=man["name"], version=man["version"], quantize=q, check_feats=calib)
            variants[name] = d
    if man.get("token_granules"):
        from etool_sensor.runtime import token_groups
        cfg = arch["config"]
        m0 = load_model(a.model, threads=1)
        feats = m0.features(recs, ctxs)
        _, runs = token_groups(feats, m0._granules)
        per = {"pkt": cfg["pkt_stride"], "byt": 2 * cfg["dgram_stride"] if cfg.get("use_payload", True) else 0,
               "ctx": 1}
        tok = sum(len(rows) * (2 + sum(cut[k] // g for k, g in per.items() if g and k in cut)) for rows, cut in runs)
        print(f"cut: {tok / len(recs):.1f} of {arch.get('tokens')} tokens per flow on average, "
              f"{len(runs)} runs for {len(recs)} flows")
    print(f"{'graph':6} {'threads':>7} {'batch':>6} {'model flows/s':>14} {'cut flows/s':>12} {'end-to-end flows/s':>19}"
          f" {'x base':>7}")
    base = None  # the first row's end-to-end rate: every row is also given as a ratio to it, measured in this run
    for name, d in variants.items():
        for th in a.threads:
            m = load_model(d, threads=th)
            for bs in a.batches:
                r, c = recs[:bs], ctxs[:bs]
                feats = m.features(r, c)
                feed = {k: feats[k] for k in m._inputs}
                model_fps = time_it(lambda: m.session.run(None, feed), bs, a.seconds)
                cut = (f"{time_it(lambda: m._run(feats, HEADS), bs, a.seconds):>12,.0f}" if m._granules
                       else f"{'-':>12}")
                n_e2e = max(bs, 2048)
                r2, c2 = recs[:n_e2e], ctxs[:n_e2e]
                keep = runtime.BATCH
                runtime.BATCH = bs
                e2e = time_it(lambda: m.classify(r2, c2), n_e2e, a.seconds)
                runtime.BATCH = keep
                base = base or e2e
                print(f"{name:6} {th:>7} {bs:>6} {model_fps:>14,.0f} {cut} {e2e:>19,.0f} {e2e / base:>7.2f}")
    from etool_sensor import features

    spec = load_model(a.model).spec  # loaded before the clock starts
    t0 = time.perf_counter()
    features.encode(recs[:2048], ctxs[:2048], spec)
    which = "C" if features._encode_c is not None else "Python"
    enc = 2048 / (time.perf_counter() - t0)
    print(f"features.encode alone: {enc:,.0f} flows/s (1 thread, {which} arrays), {enc / base:.2f}x the first row's "
          "end-to-end rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
