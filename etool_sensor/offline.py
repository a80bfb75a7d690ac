"""Offline classification (`etool-sensor classify`): captures -> flow records -> context -> model -> etool.log and
conn.log. The one-process path lives here with what `classify --workers` (parallel.py) shares with it: the
log rows, the run's counts, the log writers, the summary line and its drift score."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import EXIT_OK, EXIT_OUTPUT, EXIT_TRUNCATED, PROG, CliError
from .session import Session, Tally

BATCH = 512  # flows per model call in classify
PIPELINE = 2  # batches queued to the model thread before classify waits for the oldest



@dataclass
class Counts(Tally):
    """A classify run's counts: its verdicts' Tally (the drift monitor over every verdict of the run, when the
    package has a reference) and its files, packets, flows and connections."""

    files: int = 0
    packets: int = 0
    flows: int = 0
    conns: int = 0


def _verdict_row(rec: Any, v: Any, model_id: str, top_k: int, uid: str | None = None) -> list[Any]:
    """etool.log's row for one verdict, in ETOOL_FIELDS order (a list: cheaper to format than a mapping);
    `uid` instead of the record's (classify --workers: a placeholder the parent fills in)."""
    ok = v.status == "ok"
    return [
        rec.ts, rec.uid if uid is None else uid, rec.orig_h, rec.orig_p, rec.resp_h, rec.resp_p, rec.proto,
        (v.service or None) if ok else None,  # service
        (v.app or None) if ok else None,  # app
        v.confidence if ok and v.confidence is not None else None,  # confidence
        bool(v.unknown) if ok else None,  # unknown
        list(v.alternatives or [])[:top_k] if ok else None,  # alternatives
        v.model or model_id,  # model
        None,  # latency: online only, publish-to-verdict time
        v.status,  # status
    ]


def _conn_row(c: Any, uid: str | None = None) -> list[Any]:
    """conn.log's row for one connection summary, in CONN_FIELDS order; `uid` as in _verdict_row. As Zeek's
    Conn::set_conn: duration and the byte counts only for a duration above 0, history only when not empty."""
    g = getattr
    duration = g(c, "duration", None)
    timed = duration is not None and duration > 0
    return [
        c.ts, c.uid if uid is None else uid, c.orig_h, c.orig_p, c.resp_h, c.resp_p, c.proto,
        g(c, "service", None) or None, duration if timed else None, g(c, "orig_bytes", None) if timed else None,
        g(c, "resp_bytes", None) if timed else None, g(c, "conn_state", None), g(c, "local_orig", None),
        g(c, "local_resp", None), g(c, "missed_bytes", 0), g(c, "history", None) or None, g(c, "orig_pkts", None),
        g(c, "orig_ip_bytes", None), g(c, "resp_pkts", None), g(c, "resp_ip_bytes", None),
        g(c, "tunnel_parents", None),
    ]


def _import_runtime_parts() -> tuple[Any, Any]:
    """(capture.reader, runtime); the context module too, so that a missing piece is one line before any work."""
    try:
        reader = importlib.import_module("etool_sensor.capture.reader")
        runtime = importlib.import_module("etool_sensor.runtime")
        importlib.import_module("etool_sensor.context")
    except ModuleNotFoundError as e:
        raise CliError(f"classify cannot run: the module {e.name!r} is missing from this installation") from None
    return reader, runtime


def _progress_bar(captures: Sequence[str]) -> Any:
    """A tqdm bar over the captures' bytes (shown only on a terminal; the caller decides)."""
    from tqdm import tqdm

    total = sum(os.path.getsize(p) for p in captures)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc="classify", leave=False, dynamic_ncols=True)


def _open_logs(outdir: Path, fmt: str) -> tuple[Any, Any]:
    """(etool.log, conn.log) writers; a failure aborts whatever was opened and raises CliError."""
    from .zeeklog import CONN_FIELDS, ETOOL_FIELDS, LogWriteError, open_log

    writers: list[Any] = []
    try:
        writers.append(open_log(outdir, "etool", ETOOL_FIELDS, fmt))
        writers.append(open_log(outdir, "conn", CONN_FIELDS, fmt))
    except LogWriteError as e:
        for w in writers:
            w.abort()
        raise CliError(str(e), EXIT_OUTPUT) from None
    return writers[0], writers[1]


def _warn_collection(runtime: Any, model_path: Any, params: Any) -> None:
    """A config that collects less than the model reads (flow.packets: 8 for a 32-packet model) still runs,
    but its verdicts are not the measured ones: say so once, before the work starts."""
    try:
        spec = runtime.check_manifest(*runtime.read_manifest(runtime.resolve_model_path(model_path)),
                                      verify_checksum=False)
    except runtime.ModelError:
        return  # loading the model reports it, with its exit code
    for gap in runtime.collection_shortfalls(spec, params):
        print(f"{PROG}: warning: {gap}; verdicts are less accurate than the model card measured", file=sys.stderr)


def _check_inputs(paths: Sequence[str]) -> list[str]:
    """The captures classify reads, checked (capture.reader.select_captures: a directory stands for the capture
    files under it); a PcapError is classify's one-line input error (exit 2). A file found under a directory
    that is no capture is skipped with a warning."""
    from .capture import reader

    try:
        files, skipped = reader.select_captures(paths)
    except reader.PcapError as e:
        raise CliError(str(e)) from None
    for why in skipped:
        print(f"{PROG}: warning: skipped {why}", file=sys.stderr)
    return files


def _summary(counts: Counts, stats: Any, outputs: Sequence[Path], drift: Any = None) -> str:
    parts = [f"{counts.files} file{'s' if counts.files != 1 else ''}",
             f"{counts.packets} packets", f"{counts.flows} flows",
             f"{counts.classified} classified", f"{counts.unknown} unknown"]
    if counts.alerts:
        parts.append(f"{sum(counts.alerts.values())} alerts ("
                     + ", ".join(f"{k} {n}" for k, n in sorted(counts.alerts.items())) + ")")
    for status, n in sorted(counts.statuses.items()):
        if status != "ok":
            parts.append(f"{n} {status.replace('_', ' ')}")
    skipped = dict(getattr(stats, "skipped_linktypes", None) or {})
    if skipped:
        n = sum(skipped.values())
        kinds = ", ".join(f"linktype {lt}" for lt in sorted(skipped))
        parts.append(f"skipped {n} packets of unsupported link type ({kinds})")
    else:
        parts.append("skipped 0")
    for attr, word in (("non_ip", "non-IP packets"), ("malformed", "malformed packets")):
        v = getattr(stats, attr, 0) or 0
        if v:
            parts.append(f"{v} {word}")
    if drift is not None:
        parts.append(drift.describe())
    return f"{PROG}: " + ", ".join(parts) + " -> " + ", ".join(str(o) for o in outputs)


def drift_monitor(model_path: Any, cfg: Any) -> Any:
    """A DriftMonitor over a whole classify run against the package's drift reference; None when the package
    has none (or it is unreadable: then a warning, and the run goes on without a drift score)."""
    from . import drift
    from .runtime import ModelError

    try:
        ref = drift.package_reference(model_path)
    except (ModelError, drift.DriftError) as e:
        print(f"{PROG}: warning: no drift score: {e}", file=sys.stderr)
        return None
    return None if ref is None else drift.DriftMonitor(ref, window=None)


def _drift_of(counts: Counts, cfg: Any) -> Any:
    """The run's DriftScore, None without a reference or below drift.min_flows verdicts (mostly noise)."""
    mon = counts.drift
    if mon is None or len(mon) < cfg.drift.min_flows:
        return None
    return mon.score()


def prepare(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any]:
    """What both classify paths do first: check every capture, import the runtime, warn about a collection
    that is smaller than the model reads, and set the collector (before --workers fork: they inherit it).
    args.captures becomes the list of files read (directories expanded). Returns (reader, runtime): reader is
    etool_sensor.capture.reader."""
    args.captures = _check_inputs(args.captures)
    reader, runtime = _import_runtime_parts()
    _warn_collection(runtime, args.model or cfg.model.path, cfg.flow_params)
    runtime.tune_gc()
    return reader, runtime


def classify_one(args: argparse.Namespace, cfg: Any, reader: Any, runtime: Any) -> int:
    """`classify` in one process: read -> context -> model (in threads) -> etool.log + conn.log."""
    from .zeeklog import LogWriteError

    model_path = args.model or cfg.model.path
    threads = cfg.model.threads
    if threads is None:
        # More model threads than a few only queue behind the one reader thread (the GIL): more cores are
        # for --workers.
        threads = min(os.cpu_count() or 2, 4)
    try:
        # `threads` model threads run whole batches side by side, each session run on one onnxruntime
        # thread: the graph is many small ops, so batch-level parallelism overlaps better with the
        # Python of the reader thread than intra-op threads do (docs/performance.md, "Fixed runtime settings and why").
        model = runtime.load_model(model_path, threads=1)
    except runtime.ModelError as e:
        raise CliError(f"model: {e}") from None
    # a collection longer than the model reads (flow.packets above its window) is cut, as the daemon does
    session = Session.of(model, cfg, collection=cfg.flow_params)
    model_id = session.model_id

    outdir = Path(args.output or cfg.log.dir)
    fmt = args.format or cfg.log.format
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{outdir}: cannot create output directory: {e.strerror or e}", EXIT_OUTPUT) from None

    stats = reader.ReadStats()
    counts = Counts(files=len(args.captures), drift=drift_monitor(model_path, cfg))
    top_k = session.top_k
    alert_labels = session.alert_labels
    prepare = session.prepare

    show_progress = not args.quiet and sys.stderr.isatty()
    bar = None
    if show_progress:
        bar = _progress_bar(args.captures)
    etool_w, conn_w = _open_logs(outdir, fmt)
    writers: list[Any] = [etool_w, conn_w]

    def on_conn(c: Any) -> None:
        counts.conns += 1
        conn_w.write(_conn_row(c))

    def progress(n: int) -> None:
        if bar is not None:
            bar.update(n)

    batch: list[Any] = []
    contexts: list[Any] = []
    # Pipeline: model.classify runs in `threads` worker threads (onnxruntime releases the GIL while it
    # computes) while this thread reads the capture and writes the logs. Batches are written strictly in
    # order; at most PIPELINE + threads - 1 batches are in flight, so memory stays bounded.
    inflight: deque[tuple[list[Any], Future]] = deque()
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="etool-model")
    # The model threads give the GIL up at every onnxruntime run (one per distinct cut of a batch) and need it
    # back to go on, while this thread reads; at CPython's 5 ms switch interval they waited that long each
    # time: 0.2 ms is 1.1x end to end (docs/performance.md, "Fixed runtime settings and why").
    sys.setswitchinterval(runtime.GIL_SWITCH_S)

    def write_oldest() -> None:
        recs, fut = inflight[0]
        verdicts = fut.result()
        counts.add(verdicts, alert_labels)
        write = etool_w.write
        for rec, v in zip(recs, verdicts):
            write(_verdict_row(rec, v, model_id, top_k))
        inflight.popleft()

    def submit_batch() -> None:
        nonlocal batch, contexts
        if not batch:
            return
        recs, ctxs = batch, contexts
        batch, contexts = [], []
        inflight.append((recs, executor.submit(session.classify, recs, ctxs)))
        while len(inflight) > PIPELINE + threads - 1:
            write_oldest()

    def flush_batch() -> None:
        submit_batch()
        while inflight:
            write_oldest()

    def unwritten_detail(e: LogWriteError) -> str:
        pending = len(batch) + sum(len(r) for r, _ in inflight)
        extra = f", {pending} classified flows not logged" if pending else ""
        return f"{e}{extra}; stopped after {counts.flows} flows"

    try:
        try:
            for rec in reader.read_flows(args.captures, cfg.flow_params, stats=stats, on_conn=on_conn,
                                       progress=progress, checksums=cfg.flow.verify_checksums):
                counts.flows += 1
                rec, ctx = prepare(rec)
                contexts.append(ctx)
                batch.append(rec)
                if len(batch) >= BATCH:
                    submit_batch()
            flush_batch()
        except reader.PcapError as e:
            # Logs keep what was classified before the bad file; the error names the file.
            flush_batch()
            raise CliError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        for w in writers:
            w.close()
    except LogWriteError as e:
        for w in writers:
            w.abort()
        raise CliError(unwritten_detail(e), EXIT_OUTPUT) from None
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        for _, fut in inflight:
            fut.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()

    return _finish_classify(args, counts, stats, writers, cfg)


def _finish_classify(args: argparse.Namespace, counts: Counts, stats: Any, writers: Sequence[Any],
                     cfg: Any = None) -> int:
    """The summary line (with the drift score), the drift hint, the truncation warning and the exit code of a
    classify run."""
    counts.packets = getattr(stats, "packets", 0) or 0
    drift = _drift_of(counts, cfg) if cfg is not None else None
    if not args.quiet:
        print(_summary(counts, stats, [w.path for w in writers], drift), file=sys.stderr)
        if drift is not None and drift.score >= cfg.drift.threshold:
            print(f"{PROG}: drift {drift.score:.2f} is at or above drift.threshold {cfg.drift.threshold:g}: these "
                  f"flows are not like the model's training traffic; fit the model to them with "
                  f"'{PROG} adapt' (docs/adapt.md)", file=sys.stderr)
    if getattr(stats, "truncated", False):
        which = getattr(stats, "truncated_files", None)
        names = f" ({', '.join(map(str, which))})" if which else ""
        print(f"{PROG}: warning: truncated capture{names}: its flows up to the cut were classified "
              f"({counts.flows} flows in all)", file=sys.stderr)
        return EXIT_TRUNCATED
    return EXIT_OK
