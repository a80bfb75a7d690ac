"""End-to-end benchmark of `etool-sensor classify` with a per-stage breakdown, and an ORT-BERT anchor.

    python bench/bench_classify.py [--packets 500000] [--repeat 3] [--threads N] [--workers 1,2]
                                   [--models default,fast] [--no-bert]

Uses bench_ingest's large capture (/tmp/etool_bench.pcap, built from ../shared/data when missing).
In one process, each repetition times:

* ``e2e workers=N``: ``etool-sensor classify CAPTURE -o TMP -q --workers N`` run in-process (cli.main;
  imports excluded, model load and worker start included), which is what the user gets, for each N of
  ``--workers`` (default 1 and 2), interleaved within each repetition so that foreign load hits all alike;
* the stages of the same work, run one after the other on the same data:
  ``read`` (read_flows, conn summaries collected), ``context`` (ContextTracker.observe),
  ``encode`` (features.encode incl. name masking), ``model`` (Model.classify minus its encode: the
  onnxruntime session plus softmax/verdicts), ``log`` (etool.log + conn.log rows, TSV, to a temp dir).

The reported figure for each line is the best of ``--repeat`` runs (the least disturbed by other load
on the machine; the median is printed too). ``sum`` is the serial cost of the stages; e2e below the sum
means stages overlap (classify runs the model in a worker thread).

The BERT row is the issue's anchor: a random-weight BertModel (4 layers, hidden 256, 4 heads, 128 tokens)
exported with torch.onnx.export and run by onnxruntime fp32 and dynamic-int8, batch 32, same threads;
flows/s = sequences/s. It needs torch + transformers (skipped otherwise) and is cached in /tmp.
Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from etool_sensor import cli, offline  # noqa: E402
from etool_sensor.context import ContextTracker  # noqa: E402
from etool_sensor.capture.reader import ReadStats, read_flows  # noqa: E402
from etool_sensor import runtime as runtime_mod  # noqa: E402
from etool_sensor.runtime import load_model  # noqa: E402
from etool_sensor.zeeklog import CONN_FIELDS, ETOOL_FIELDS, open_log  # noqa: E402

CAPTURE = Path("/tmp/etool_bench.pcap")
BERT_DIR = Path("/tmp/etool_bench_bert")


def ensure_capture(packets: int) -> None:
    if CAPTURE.exists() and CAPTURE.stat().st_size > 0:
        return
    import bench_ingest  # needs dpkt (pip install 'etool-sensor[bench]')

    bench_ingest.build(packets)


def threads_config(td: str, threads: int | None) -> list[str]:
    """classify arguments setting model.threads (a config file in td), or none for the default."""
    if not threads:
        return []
    cfgfile = Path(td) / "etool.yaml"
    cfgfile.write_text(f'{{"model": {{"threads": {threads}}}}}')
    return ["--config", str(cfgfile)]


def run_e2e(threads: int | None, workers: int = 1, model: str = "default") -> float:
    with tempfile.TemporaryDirectory() as td:
        argv = ["classify", str(CAPTURE), "-o", td, "-q", "--workers", str(workers), "--model", model]
        argv += threads_config(td, threads)
        t = time.perf_counter()
        rc = cli.main(argv)
        dt = time.perf_counter() - t
        if rc not in (0, 3):
            raise SystemExit(f"classify failed with exit code {rc}")
    return dt


_ROOT_RUN = """
import sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from etool_sensor import cli, offline, runtime  # imported before the clock starts, as in run_e2e
import onnxruntime  # noqa: F401
argv = ["classify", sys.argv[2], "-q", "--workers", sys.argv[3], "--model", sys.argv[4]] + sys.argv[5:]
with tempfile.TemporaryDirectory() as td:
    t = time.perf_counter()
    rc = cli.main(argv + ["-o", td])
    print(time.perf_counter() - t, rc)
"""


def run_e2e_root(root: Path, threads: int | None, workers: int, model: str) -> float:
    """run_e2e with the etool_sensor of another checkout (its own process; imports done before timing)."""
    with tempfile.TemporaryDirectory() as td:
        extra = threads_config(td, threads)
        out = subprocess.run([sys.executable, "-c", _ROOT_RUN, str(root), str(CAPTURE), str(workers), model, *extra],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)), check=True)
    dt, rc = out.stdout.split()
    if int(rc) not in (0, 3):
        raise SystemExit(f"classify in {root} failed with exit code {rc}")
    return float(dt)


def run_stages(model, batch: int) -> tuple[dict[str, float], int, int]:
    cfg = cli._config_from_args(argparse.Namespace(config=None))
    times: dict[str, float] = {}
    st = ReadStats()
    conns: list = []
    t = time.perf_counter()
    recs = list(read_flows(CAPTURE, cfg.flow_params, stats=st, on_conn=conns.append,
                           checksums=cfg.flow.verify_checksums))
    times["read"] = time.perf_counter() - t

    tr = ContextTracker(window=cfg.context.window, bursts=cfg.context.bursts)
    t = time.perf_counter()
    ctxs = [tr.observe(r) for r in recs]
    times["context"] = time.perf_counter() - t

    # Model.classify encodes with runtime.encode_keyed: timed where the runtime looks it up
    enc = [0.0]
    orig = runtime_mod.encode_keyed

    def timed_encode(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            enc[0] += time.perf_counter() - t0

    runtime_mod.encode_keyed = timed_encode
    verdicts: list = []
    t = time.perf_counter()
    try:
        for i in range(0, len(recs), batch):
            verdicts += model.classify(recs[i:i + batch], ctxs[i:i + batch], cfg.thresholds,
                                       mask_names=cfg.privacy.mask_names, min_packets=cfg.flow.min_packets,
                                       top_k=cfg.classify.top_k)
    finally:
        runtime_mod.encode_keyed = orig
    if enc[0] == 0.0:
        raise SystemExit("bench_classify: the model never called runtime.encode_keyed; the encode stage "
                         "cannot be timed apart from the model")
    total = time.perf_counter() - t
    times["encode"] = enc[0]
    times["model"] = total - enc[0]

    mid = model.id
    with tempfile.TemporaryDirectory() as td:
        t = time.perf_counter()
        ew = open_log(td, "etool", ETOOL_FIELDS, "tsv")
        cw = open_log(td, "conn", CONN_FIELDS, "tsv")
        for r, v in zip(recs, verdicts):
            ew.write(offline._verdict_row(r, v, mid, cfg.classify.top_k))
        for c in conns:
            cw.write(offline._conn_row(c))
        ew.close()
        cw.close()
        times["log"] = time.perf_counter() - t
    return times, len(recs), st.packets


def bert_baseline(threads: int | None, seconds: float) -> list[tuple[str, float]]:
    try:
        import numpy as np
        import onnxruntime as ort
        import torch
        from transformers import BertConfig, BertModel
    except ImportError as e:
        print(f"# BERT baseline skipped: {e}")
        return []
    BERT_DIR.mkdir(exist_ok=True)
    fp32, int8 = BERT_DIR / "bert4x256.onnx", BERT_DIR / "bert4x256.int8.onnx"
    seq, bs = 128, 32
    if not fp32.exists():
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=seq)
        m = BertModel(cfg).eval()
        ids = torch.randint(0, 1024, (bs, seq))
        mask = torch.ones(bs, seq, dtype=torch.int64)
        torch.onnx.export(m, (ids, mask), str(fp32), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "pooler_output"], opset_version=17,
                          dynamic_axes={"input_ids": {0: "b"}, "attention_mask": {0: "b"}}, dynamo=False)
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 1024, (bs, seq), dtype=np.int64),
            "attention_mask": np.ones((bs, seq), np.int64)}
    rows = []
    for name, path in (("ORT BERT-4x256@128 fp32", fp32), ("ORT BERT-4x256@128 int8", int8)):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        s.run(None, feed)
        k, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            s.run(None, feed)
            k += 1
        rows.append((name, k * bs / (time.perf_counter() - t)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=500_000, help="capture size when it has to be built")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its choice)")
    ap.add_argument("--batch", type=int, default=offline.BATCH, help="flows per classify call in the stage run")
    ap.add_argument("--workers", default="1,2", help="comma-separated classify --workers values to time end to end")
    ap.add_argument("--models", default="default", help="comma-separated models (bundled names or directories), "
                                                        "each timed end to end and by stage in the same run")
    ap.add_argument("--readers", default="engine",
                    help="comma-separated pcap readers for the e2e runs: engine (the compiled packet path where "
                         "it applies, the default) and/or python (ETOOL_PURE_PYTHON=1), interleaved")
    ap.add_argument("--roots", default=None,
                    help="comma-separated checkouts (directories holding etool_sensor/) whose classify is timed end "
                         "to end, each in its own process, interleaved round by round: an A/B of two commits")
    ap.add_argument("--no-stages", action="store_true", help="end-to-end runs only")
    ap.add_argument("--no-bert", action="store_true")
    ap.add_argument("--bert-seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    ensure_capture(a.packets)
    la0 = os.getloadavg()[0]
    print(f"# capture {CAPTURE} ({CAPTURE.stat().st_size / 1e6:.0f} MB); {os.cpu_count()} CPUs, "
          f"load average {la0:.2f} at start; onnxruntime threads {a.threads or 'default'}")
    workers = [int(w) for w in a.workers.split(",") if w]
    names = [m for m in a.models.split(",") if m]
    models = {n: load_model(n, threads=a.threads) for n in names}
    readers = [r for r in a.readers.split(",") if r]
    if set(readers) - {"engine", "python"}:
        ap.error("--readers takes engine and/or python")
    roots = [Path(x).resolve() for x in a.roots.split(",") if x] if a.roots else [None]
    runs_e2e: dict[tuple, list[float]] = {(n, w, r, root): [] for n in names for w in workers for r in readers
                                          for root in roots}
    runs_st: list[dict[str, float]] = []
    nflows = npk = 0
    if a.no_stages:
        st = ReadStats()
        nflows = sum(1 for _ in read_flows(CAPTURE, stats=st, checksums=False))
        npk = st.packets
    for _ in range(a.repeat):
        for n in names:
            for w in workers:
                for r in readers:
                    for root in roots:
                        if r == "python":
                            os.environ["ETOOL_PURE_PYTHON"] = "1"
                        try:
                            runs_e2e[(n, w, r, root)].append(
                                run_e2e(a.threads, w, n) if root is None else run_e2e_root(root, a.threads, w, n))
                        finally:
                            os.environ.pop("ETOOL_PURE_PYTHON", None)
        if not a.no_stages:
            st: dict[str, float] = {}
            for j, n in enumerate(names):
                t, nflows, npk = run_stages(models[n], a.batch)
                if j == 0:
                    st.update(t)
                else:  # the reading, context and log stages do not depend on the model
                    st.update({f"{k} ({n})": t[k] for k in ("encode", "model")})
            runs_st.append(st)
    stages = list(runs_st[0]) if runs_st else []
    main_stages = ["read", "context", "encode", "model", "log"] if runs_st else []
    best = {s: min(r[s] for r in runs_st) for s in stages}
    med = {s: statistics.median(r[s] for r in runs_st) for s in stages}
    ssum = sum(best[s] for s in main_stages) or float("nan")
    print(f"# {nflows} flows, {npk} packets ({npk / max(nflows, 1):.1f} packets/flow); best of {a.repeat} "
          f"(median in brackets)")
    print(f"{'stage':24} {'seconds':>8} {'flows/s':>10} {'packets/s':>11} {'share':>6}  {'median s':>8}")
    for s in stages:
        dt = best[s]
        print(f"{s:24} {dt:8.3f} {nflows / dt:10,.0f} {npk / dt:11,.0f} {dt / ssum:6.1%}  ({med[s]:6.3f})")
    if runs_st:
        print(f"{'sum of stages (' + names[0] + ')':24} {ssum:8.3f} {nflows / ssum:10,.0f} {npk / ssum:11,.0f}")
    e2e_fps = 0.0
    def where(root: Path | None) -> str:
        return "" if root is None else f" {root.name or root}"

    for (n, w, r, root), runs in runs_e2e.items():
        e2e, e2e_med = min(runs), statistics.median(runs)
        e2e_fps = max(e2e_fps, nflows / e2e)
        share = f"{e2e / ssum:6.1%}" if runs_st else f"{'':6}"
        label = f"e2e {n} w={w}" if len(names) > 1 else f"classify e2e workers={w}"
        if len(readers) > 1:
            label += f" {r}"
        label += where(root)
        print(f"{label:24} {e2e:8.3f} {nflows / e2e:10,.0f} {npk / e2e:11,.0f} {share}  ({e2e_med:6.3f})")
    if len(roots) > 1:
        print("# per round, flows/s: " + "; ".join(
            f"{n} w={w}{where(root)}: " + " ".join(f"{nflows / x:,.0f}" for x in runs)
            for (n, w, r, root), runs in runs_e2e.items()))
    first = next(iter(runs_e2e))
    b1 = min(runs_e2e[first])
    others = [k for k in runs_e2e if k != first]
    if others:
        print(f"# speed-up over {first[0]} workers={first[1]} reader={first[2]}{where(first[3])}: " + ", ".join(
            f"{n} workers={w} reader={r}{where(root)} {b1 / min(runs_e2e[(n, w, r, root)]):.2f}x"
            for n, w, r, root in others))
    model_fps = nflows / best["model"] if best else float("nan")
    if not a.no_bert:
        rows = bert_baseline(a.threads, a.bert_seconds)
        for name, fps in rows:
            print(f"{name:24} {'':8} {fps:10,.0f} {'':11} {'':6}  etool e2e/this {e2e_fps / fps:5.1f}x, "
                  f"etool model/this {model_fps / fps:5.1f}x")
    print("# issue anchors (same CPU, earlier, unloaded?): ORT BERT-4x256@128 177 flows/s fp32, 262 int8; "
          "dpkt 61-81k packets/s; tshark 15-34k packets/s; ETooL Vicuna-7B 16-66 flows/s on an H100")
    print(f"# etool e2e vs anchors: {e2e_fps / 262:.0f}x BERT int8 (262/s), {e2e_fps / 66:.0f}x..{e2e_fps / 16:.0f}x "
          f"Vicuna-7B on H100; load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
