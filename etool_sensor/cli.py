"""The `etool-sensor` command: argument handling and dispatch, nothing more.

`classify` is implemented here as a thin pipeline (pcap reader -> context -> model -> Zeek logs).
The other subcommands live in their own modules and are imported only when asked for, so `classify`
never imports torch and a missing optional part gives a one-line error instead of a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__

PROG = "etool-sensor"

# Exit codes (also in README.md and the --help epilog).
EXIT_OK = 0
EXIT_INTERNAL = 1  # unexpected error (a bug): one line, ETOOL_DEBUG=1 shows the traceback
EXIT_INPUT = 2  # bad usage, missing file, not a capture, bad config, bad model package, missing component
EXIT_TRUNCATED = 3  # a capture ended mid-packet: what was read is classified and logged
EXIT_OUTPUT = 4  # the logs could not be written (disk full, permissions): rows not written are counted
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    internal error (set ETOOL_DEBUG=1 for a traceback)
  2    bad input: usage, missing file, not a capture, bad config, bad model, missing component
  3    a capture was truncated: what was read was classified and logged
  4    the output could not be written (e.g. disk full); the message counts the rows not written
  5    adapt: the package was written but is not better than its base on the held-back captures
  130  interrupted
"""

BATCH = 512  # flows per model call in classify
PIPELINE = 2  # batches queued to the model thread before classify waits for the oldest


class CliError(Exception):
    """An error reported as one line on stderr with the given exit code."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------ lazy commands
@dataclass(frozen=True)
class LazyCommand:
    modules: tuple[str, ...]  # tried in order
    add_arguments: str
    main: str
    help: str
    extra: str = ""  # pip extra that provides its dependencies
    takes_config: bool = False
    checkout: bool = False  # may live in the source checkout beside etool_sensor/ (not installed)


LAZY: dict[str, LazyCommand] = {
    "serve": LazyCommand(("etool_sensor.daemon",), "add_serve_arguments", "serve_main",
                         "classify flows sent by Zeek over its WebSocket API (the sensor daemon)", "",
                         takes_config=True),
    "eval": LazyCommand(("etool_sensor.evaluate",), "add_eval_arguments", "eval_main",
                        "score a model against labelled captures"),
    "train": LazyCommand(("etool_sensor.train.cli",), "add_train_arguments", "train_main",
                         "train a model (needs the train extra)", "train"),
    # export/ lives at the top of a source checkout (not installed): found there when run from one.
    "export": LazyCommand(("etool_sensor.export", "export.package"), "add_export_arguments", "export_main",
                          "export a trained model to an ONNX model package (needs the train extra and a "
                          "source checkout)", "train", checkout=True),
    "label": LazyCommand(("etool_sensor.labeling",), "add_label_arguments", "label_main",
                         "label the flows of captures with nDPI into a labels CSV (docs/labels.md)"),
    "adapt": LazyCommand(("etool_sensor.train.adapt",), "add_adapt_arguments", "adapt_main",
                         "fit a model package to local traffic (docs/adapt.md; needs the adapt extra)", "adapt"),
    "bench": LazyCommand(("etool_sensor.bench",), "add_bench_arguments", "bench_main",
                         "measure classification throughput and latency"),
}


def _load_lazy(name: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
    """Import a subcommand's module; raise CliError (one line) when it or its dependencies are missing."""
    spec = LAZY[name]
    missing: list[str] = []
    if spec.checkout:
        root = str(Path(__file__).resolve().parents[1])
        if root not in sys.path and any((Path(root) / m.split(".")[0]).is_dir() for m in spec.modules):
            sys.path.append(root)
    for modname in spec.modules:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and (modname == e.name or modname.startswith(e.name + ".")):
                missing.append(modname)
                continue  # this candidate module does not exist; try the next
            hint = f"; install it with: pip install 'etool-sensor[{spec.extra}]'" if spec.extra else ""
            raise CliError(f"'{name}' needs the Python module {e.name!r}, which is not installed{hint}") from None
        except ImportError as e:
            raise CliError(f"'{name}' cannot be loaded: {e}") from None
        add = getattr(mod, spec.add_arguments, None)
        run = getattr(mod, spec.main, None)
        if callable(add) and callable(run):
            return add, run
        missing.append(f"{modname} (no {spec.add_arguments}/{spec.main})")
    raise CliError(f"'{name}' is not available in this build: missing {', '.join(missing)}")


# ------------------------------------------------------------------------------------------- parser
def _first_command(argv: Sequence[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..1024, got {v!r}")
    return n


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the subcommand named by ``load`` imports its module."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="etool: classify encrypted connections (service and app) from their first packets.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "classify", help="classify the connections of pcap/pcapng captures into etool.log and conn.log",
        description="Classify every TCP/UDP connection of the captures. Several captures give one\n"
                    "etool.log and one conn.log (Zeek format) in the output directory.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng file(s)")
    c.add_argument("-o", "--output", metavar="DIR", help="output directory (default: log.dir of the config, '.')")
    c.add_argument("--config", metavar="FILE", help="etool.yaml (default: built-in defaults, or $ETOOL_CONFIG)")
    c.add_argument("--format", choices=("tsv", "json"), help="log format (default: log.format of the config, tsv)")
    c.add_argument("--model", metavar="DIR", help="model package directory, or a bundled model by name: default, "
                                                  "fast (default: the bundled default model)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    c.add_argument("-w", "--workers", type=_positive_int, metavar="N",
                   help="processes (default: classify.workers of the config, 1); each reads the whole capture "
                        "and classifies one shard of its connections; 1 = one process, exact")

    for name, spec in LAZY.items():
        if name != load:
            sub.add_parser(name, help=spec.help, add_help=False, prefix_chars="\0")
            continue
        add, _ = _load_lazy(name)
        sp = sub.add_parser(name, help=spec.help, description=spec.help, epilog=EXIT_CODES_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve")
        if spec.takes_config:
            sp.add_argument("--config", metavar="FILE", help="etool.yaml (default: built-in defaults, or $ETOOL_CONFIG)")
        add(sp)
    return p


def _config_from_args(args: argparse.Namespace) -> Any:
    from .config import ConfigError, load_config

    path = getattr(args, "config", None) or os.environ.get("ETOOL_CONFIG") or None
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(str(e)) from None


# ------------------------------------------------------------------------------------------ classify
@dataclass
class Counts:
    files: int = 0
    packets: int = 0
    flows: int = 0
    classified: int = 0
    unknown: int = 0
    alerts: dict[str, int] = field(default_factory=dict)  # classify.alert_labels hits, by label
    statuses: dict[str, int] = field(default_factory=dict)
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
    """conn.log's row for one connection summary, in CONN_FIELDS order; `uid` as in _verdict_row."""
    g = getattr
    return [
        c.ts, c.uid if uid is None else uid, c.orig_h, c.orig_p, c.resp_h, c.resp_p, c.proto,
        g(c, "service", None) or None, g(c, "duration", None), g(c, "orig_bytes", None), g(c, "resp_bytes", None),
        g(c, "conn_state", None), g(c, "local_orig", None), g(c, "local_resp", None), g(c, "missed_bytes", 0),
        g(c, "history", None), g(c, "orig_pkts", None), g(c, "orig_ip_bytes", None), g(c, "resp_pkts", None),
        g(c, "resp_ip_bytes", None), g(c, "tunnel_parents", None),
    ]


def _import_runtime_parts() -> tuple[Any, Any, Any]:
    try:
        pcap = importlib.import_module("etool_sensor.pcap")
        runtime = importlib.import_module("etool_sensor.runtime")
        ContextTracker = importlib.import_module("etool_sensor.context").ContextTracker
    except ModuleNotFoundError as e:
        raise CliError(f"classify cannot run: the module {e.name!r} is missing from this installation") from None
    return pcap, runtime, ContextTracker


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


def _check_inputs(paths: Sequence[str]) -> None:
    """Every capture is checked before any is read: a missing, unreadable or non-capture file in a long list
    stops the run at once (exit 2), not after the captures before it were classified."""
    from . import pcap

    for p in paths:
        if not os.path.exists(p):
            raise CliError(f"{p}: no such file")
        if os.path.isdir(p):
            raise CliError(f"{p}: is a directory, not a capture")
        if not os.access(p, os.R_OK):
            raise CliError(f"{p}: permission denied")
    for p in paths:
        try:
            pcap.check_capture(p)
        except pcap.PcapError as e:
            raise CliError(str(e).splitlines()[0]) from None


def _summary(counts: Counts, stats: Any, outputs: Sequence[Path]) -> str:
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
    return f"{PROG}: " + ", ".join(parts) + " -> " + ", ".join(str(o) for o in outputs)


def classify_main(args: argparse.Namespace, cfg: Any) -> int:
    """`classify`. The process settings it tunes (garbage collector, GIL switch interval) are put back after
    the run, so that a program calling cli.main (tests, notebooks) keeps its own."""
    before = gc.get_threshold(), sys.getswitchinterval()
    try:
        return _classify(args, cfg)
    finally:
        gc.set_threshold(*before[0])
        sys.setswitchinterval(before[1])


def _classify(args: argparse.Namespace, cfg: Any) -> int:
    from .zeeklog import LogWriteError

    _check_inputs(args.captures)
    pcap, runtime, ContextTracker = _import_runtime_parts()
    workers = getattr(args, "workers", None) or cfg.classify.workers
    if workers is None:
        from .parallel import usable_cores

        workers = usable_cores()
    _warn_collection(runtime, args.model or cfg.model.path, cfg.flow_params)
    runtime.tune_gc()  # before the workers fork: they inherit it
    if workers > 1:
        # N processes, each reading the whole capture and classifying one shard (etool_sensor/parallel.py);
        # same rows in the same order, same summary, exit codes and errors as this one-process path.
        from .parallel import classify_sharded

        return classify_sharded(args, cfg, workers, pcap)

    model_path = args.model or cfg.model.path
    threads = cfg.model.threads
    if threads is None:
        # More model threads than a few only queue behind the one reader thread (the GIL): more cores are
        # for --workers.
        threads = min(os.cpu_count() or 2, 4)
    try:
        # `threads` model threads run whole batches side by side, each session run on one onnxruntime
        # thread: the graph is many small ops, so batch-level parallelism overlaps better with the
        # Python of the reader thread than intra-op threads do (docs/performance.md, 2026-11-27 II).
        model = runtime.load_model(model_path, threads=1)
    except runtime.ModelError as e:
        raise CliError(f"model: {e}") from None
    model_id = f"{model.name}@{model.version}"
    # a collection longer than the model reads (flow.packets above its window): cut, as the daemon does
    window = runtime.model_window(model.spec)
    cut = runtime.exceeds(cfg.flow_params, window)

    outdir = Path(args.output or cfg.log.dir)
    fmt = args.format or cfg.log.format
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{outdir}: cannot create output directory: {e.strerror or e}", EXIT_OUTPUT) from None

    stats = pcap.ReadStats()
    counts = Counts(files=len(args.captures))
    tracker = ContextTracker(window=cfg.context.window, bursts=cfg.context.bursts)
    thresholds = cfg.thresholds
    top_k = cfg.classify.top_k
    alert_labels = frozenset(cfg.classify.alert_labels)

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
    # time: 0.2 ms is 1.1x end to end (docs/performance.md, 2026-11-27 VI).
    sys.setswitchinterval(runtime.GIL_SWITCH_S)

    def classify_batch(recs: list[Any], ctxs: list[Any]) -> list[Any]:
        return model.classify(recs, ctxs, thresholds, mask_names=cfg.privacy.mask_names,
                              min_packets=cfg.flow.min_packets, top_k=top_k)

    def write_oldest() -> None:
        recs, fut = inflight[0]
        verdicts = fut.result()
        if len(verdicts) != len(recs):
            raise RuntimeError(f"model returned {len(verdicts)} verdicts for {len(recs)} flows")
        statuses = counts.statuses
        write = etool_w.write
        for rec, v in zip(recs, verdicts):
            statuses[v.status] = statuses.get(v.status, 0) + 1
            if v.status == "ok":
                counts.classified += 1
                counts.unknown += bool(v.unknown)
                hit = v.alert(alert_labels)
                if hit:
                    counts.alerts[hit] = counts.alerts.get(hit, 0) + 1
            write(_verdict_row(rec, v, model_id, top_k))
        inflight.popleft()

    def submit_batch() -> None:
        nonlocal batch, contexts
        if not batch:
            return
        recs, ctxs = batch, contexts
        batch, contexts = [], []
        inflight.append((recs, executor.submit(classify_batch, recs, ctxs)))
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
            for rec in pcap.read_flows(args.captures, cfg.flow_params, stats=stats, on_conn=on_conn,
                                       progress=progress, checksums=cfg.flow.verify_checksums):
                counts.flows += 1
                if cut:
                    rec = rec.within(window)
                contexts.append(tracker.observe(rec))
                batch.append(rec)
                if len(batch) >= BATCH:
                    submit_batch()
            flush_batch()
        except pcap.PcapError as e:
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

    return _finish_classify(args, counts, stats, writers)


def _finish_classify(args: argparse.Namespace, counts: Counts, stats: Any, writers: Sequence[Any]) -> int:
    """The summary line, the truncation warning and the exit code of a classify run."""
    counts.packets = getattr(stats, "packets", 0) or 0
    if not args.quiet:
        print(_summary(counts, stats, [w.path for w in writers]), file=sys.stderr)
    if getattr(stats, "truncated", False):
        which = getattr(stats, "truncated_files", None)
        names = f" ({', '.join(map(str, which))})" if which else ""
        print(f"{PROG}: warning: truncated capture{names}: its flows up to the cut were classified "
              f"({counts.flows} flows in all)", file=sys.stderr)
        return EXIT_TRUNCATED
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- main
def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "classify":
        return classify_main(args, _config_from_args(args))
    spec = LAZY[args.command]
    _, run = _load_lazy(args.command)
    if spec.takes_config:
        return int(run(args, _config_from_args(args)) or 0)
    try:
        wants_cfg = len(inspect.signature(run).parameters) >= 2
    except (TypeError, ValueError):
        wants_cfg = False
    if wants_cfg:
        return int(run(args, _config_from_args(args)) or 0)
    return int(run(args) or 0)


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd = _first_command(argv)
        parser = build_parser(load=cmd if cmd in LAZY else None)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_INPUT
        if not args.command:
            parser.print_help(sys.stderr)
            return EXIT_INPUT
        return _dispatch(args)
    except CliError as e:
        _err(str(e))
        return e.code
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        from .config import ConfigError

        if isinstance(e, ConfigError):
            _err(str(e))
            return EXIT_INPUT
        if os.environ.get("ETOOL_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        _err(f"internal error: {type(e).__name__}{': ' + msg if msg else ''} (set ETOOL_DEBUG=1 for a traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
