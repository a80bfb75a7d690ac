"""`classify --workers N`: N processes, each reading the whole capture and classifying one shard of it.

Everything in classify except onnxruntime holds the GIL, so a second core needs a second process. Each
worker process runs ``capture.reader.read_shard`` (every packet is read and advances the network clock, but only
the packets whose shard key, the client-looking address, hashes to the worker are decoded and
tracked), the BURST context, the model (its own onnxruntime session) and the Zeek row formatting. It
sends back finished log lines whose uid is a placeholder, tagged with the key at which the single
process would have written them (``read_shard``'s event keys), in batches with a watermark ("nothing
below this key is still to come from me"). The parent merges the shards by key below the smallest
watermark, numbers each file's connections in creation order to give them the uids a single process
gives, and writes etool.log and conn.log: the rows and their order are those of ``--workers 1``.

The context (a client's BURST neighbours) sees only the flows of the worker's own shard. It is the same
as with one process when all of a client's connections get the same shard key, i.e. when the client is
the side that shard_owner picks (not a likely server port, else the higher port). Where it is not (peer
to peer flows with two ephemeral ports, a client on a well-known port), the flow's context, and so
possibly its verdict, can differ; tests/test_parallel.py measures how often on real captures.

Processes are started with 'fork' where the platform has it (Linux): the parent forks before it loads a
model or starts a thread (the progress bar comes after), so the children start in milliseconds without
re-importing numpy and onnxruntime; elsewhere 'spawn'. Each worker loads its own model (1 onnxruntime
thread unless model.threads says otherwise).
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Sequence

UID_PLACEHOLDER = "@UID@"  # printable, no separator: formatted verbatim in TSV and JSON rows
_INF = (float("inf"),)
_key = itemgetter(0)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable (for 'spawn'): the validated configuration as it is, and what the
    command line or the parent decided."""

    paths: tuple[str, ...]
    n: int
    me: int
    cfg: Any  # config.Config
    model_path: str | None  # --model, else model.path
    fmt: str  # --format, else log.format
    batch: int
    progress: bool


def _worker(conn: Any, spec: WorkerSpec) -> None:
    """Worker process body. Messages to the parent, in order:
    ("ready", model_id) | ("error", exit_code, message, traceback);
    then ("data", watermark, news, etool_rows, conn_rows, progress_bytes)..., watermark None in the last;
    then ("end", stats, shard_stats, error) with error None or (exit_code, message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers
    try:
        cfg = spec.cfg
        from . import runtime
        from .capture import reader
        from .errors import EXIT_INPUT
        from .offline import _conn_row, _verdict_row
        from .session import Session
        from .zeeklog import CONN_FIELDS, ETOOL_FIELDS, row_formatter

        try:
            model = runtime.load_model(spec.model_path, threads=cfg.model.threads or 1)
        except runtime.ModelError as e:
            conn.send(("error", EXIT_INPUT, f"model: {e}", None))
            return
        # records beyond the model's window are cut to it, as in one process
        session = Session.of(model, cfg, collection=cfg.flow_params)
        model_id = session.model_id
        runtime.tune_gc()  # inherited under 'fork'; 'spawn' starts with Python's defaults
        conn.send(("ready", model_id))

        fmt_e = row_formatter(ETOOL_FIELDS, spec.fmt)
        fmt_c = row_formatter(CONN_FIELDS, spec.fmt)
        top_k, entry, prepare, ph = session.top_k, session.entry, session.prepare, UID_PLACEHOLDER
        stats, shard_stats = reader.ReadStats(), reader.ReadStats()
        news: list = []
        erows: list = []
        crows: list = []
        keys: list = []
        recs: list = []
        ctxs: list = []
        prog = [0]

        def progress(d: int) -> None:
            prog[0] += d

        def classify() -> None:
            verdicts = session.classify(recs, ctxs)
            for key, rec, v in zip(keys, recs, verdicts):
                # the parent tallies entry(v) in merge order (statuses, alerts, the drift score)
                erows.append((key, rec.uid, fmt_e(_verdict_row(rec, v, model_id, top_k, ph)), entry(v)))
            keys.clear()
            recs.clear()
            ctxs.clear()

        def send(watermark: Any) -> None:
            conn.send(("data", watermark, news[:], erows[:], crows[:], prog[0]))
            news.clear()
            erows.clear()
            crows.clear()
            prog[0] = 0

        error = None
        try:
            events = reader.read_shard(list(spec.paths), (spec.n, spec.me), cfg.flow_params, stats=stats,
                                     shard_stats=shard_stats, progress=progress if spec.progress else None,
                                     checksums=cfg.flow.verify_checksums)
            for key, kind, obj in events:
                if kind == reader.EV_RECORD:
                    obj, ctx = prepare(obj)
                    keys.append(key)
                    recs.append(obj)
                    ctxs.append(ctx)
                    if len(recs) >= spec.batch:
                        classify()
                        send(key)
                elif kind == reader.EV_CONN:
                    row = _conn_row(obj, ph)
                    crows.append((key, obj.uid, fmt_c(row)))
                elif kind == reader.EV_NEW:
                    news.append(obj)
                else:  # EV_TICK
                    send(keys[0] if keys else key)
        except reader.PcapError as e:
            # like one process: what was read before the bad file is classified and logged, then the error
            error = (EXIT_INPUT, str(e).splitlines()[0] if str(e) else type(e).__name__)
        if recs:
            classify()
        send(None)
        conn.send(("end", stats, shard_stats, error))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides the exit code
        msg = str(e).splitlines()[0] if str(e) else ""
        try:
            conn.send(("error", 1, f"{type(e).__name__}{': ' + msg if msg else ''}", traceback.format_exc()))
        except (OSError, ValueError):
            pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


class WorkerFailed(Exception):
    """A worker reported an error or died; code is classify's exit code."""

    def __init__(self, message: str, code: int, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class _Shard:
    __slots__ = ("proc", "conn", "watermark", "news", "erows", "crows", "ended", "stats", "shard_stats", "error")

    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.watermark: Any = ()  # nothing yet: below every key
        self.news: deque = deque()
        self.erows: deque = deque()
        self.crows: deque = deque()
        self.ended = False
        self.stats = self.shard_stats = self.error = None


def _context() -> Any:
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


class ShardedClassify:
    """The parent side: start the workers, merge their rows into the writers in single-process order."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        ctx = _context()
        self.shards: list[_Shard] = []
        self.model_id: str | None = None
        self.uids: dict[int, str] = {}
        self._base: str | None = None
        self._ordinal = 0
        self._make_uid: Any = None  # flows.uid_maker(self._base)
        self._pending: list[tuple[int, tuple]] = []
        try:
            for spec in specs:
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker, args=(w, spec), name=f"etool-classify-{spec.me}", daemon=True)
                p.start()
                w.close()
                self.shards.append(_Shard(p, r))
        except BaseException:
            self.stop()
            raise

    # -- plumbing ---------------------------------------------------------------------------------
    def _describe_death(self, i: int) -> str:
        p = self.shards[i].proc
        p.join(1.0)
        code = p.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"classify worker {i + 1} of {len(self.shards)} died ({how})"

    def _receive(self) -> list[tuple[int, tuple]]:
        """Block until some worker has sent something or ended; raise WorkerFailed if one died."""
        live = [s for s in self.shards if not s.ended]
        ready = wait([s.conn for s in live] + [s.proc.sentinel for s in live])
        got: list[tuple[int, tuple]] = []
        for i, s in enumerate(self.shards):
            if s.ended:
                continue
            if s.conn in ready or s.conn.poll():
                try:
                    while s.conn.poll():
                        msg = s.conn.recv()
                        got.append((i, msg))
                        if msg[0] in ("end", "error"):
                            s.ended = True
                            break
                except (EOFError, OSError):
                    raise WorkerFailed(self._describe_death(i), 1) from None
            elif s.proc.sentinel in ready:
                raise WorkerFailed(self._describe_death(i), 1)
        return got

    def wait_ready(self) -> str:
        """The model id, once every worker has loaded its model; WorkerFailed with the first error."""
        ready = [False] * len(self.shards)
        pending: list[tuple[int, tuple]] = []
        while not all(ready):
            for i, msg in self._receive():
                if msg[0] == "error" and not ready[i]:
                    raise WorkerFailed(msg[2], msg[1], msg[3])
                if msg[0] == "ready":
                    ready[i] = True
                    self.model_id = msg[1]
                else:
                    pending.append((i, msg))
        self._pending = pending
        return self.model_id or "-"

    def stop(self) -> None:
        for s in self.shards:
            if s.proc.is_alive():
                s.proc.terminate()
        for s in self.shards:
            s.proc.join(5.0)
            if s.proc.is_alive():  # pragma: no cover - terminate ignored
                s.proc.kill()
                s.proc.join(1.0)
            try:
                s.conn.close()
            except OSError:
                pass

    # -- merging ----------------------------------------------------------------------------------
    def run(self, write_etool: Callable[..., Any], write_conn: Callable[..., Any],
            on_progress: Callable[[int], None] | None) -> tuple[list, list, tuple | None]:
        """Merge until every worker has ended. Returns (stats, shard_stats, input_error)."""
        msgs = self._pending
        self._pending = []
        while True:
            for i, msg in msgs:
                s = self.shards[i]
                tag = msg[0]
                if tag == "data":
                    _, wm, news, erows, crows, prog = msg
                    s.news.extend(news)
                    s.erows.extend(erows)
                    s.crows.extend(crows)
                    s.watermark = _INF if wm is None else wm
                    if prog:
                        on_progress(prog)
                elif tag == "end":
                    s.stats, s.shard_stats, s.error = msg[1], msg[2], msg[3]
                    s.watermark = _INF
                elif tag == "error":
                    raise WorkerFailed(msg[2], msg[1], msg[3])
            self._merge(write_etool, write_conn)
            if all(s.ended for s in self.shards):
                break
            msgs = self._receive()
        errors = [s.error for s in self.shards if s.error]
        return [s.stats for s in self.shards], [s.shard_stats for s in self.shards], \
            (errors[0] if errors else None)

    def pending_rows(self) -> int:
        """etool rows received but not yet written (for the disk-full message)."""
        return sum(len(s.erows) for s in self.shards)

    def _merge(self, write_etool, write_conn) -> None:
        bound = min(s.watermark for s in self.shards)
        if bound == ():
            return
        uids = self.uids
        # 1. connections created below the bound: number them per file in creation order -> uids
        news: list = []
        for s in self.shards:
            q = s.news
            while q and (q[0][0], 0, 0) < bound:
                news.append(q.popleft())
        if news:
            from .flows import uid_maker

            news.sort(key=_key)
            base, k = self._base, self._ordinal
            make = self._make_uid
            for cid, b in news:
                if b != base:
                    base, k, make = b, 0, uid_maker(b)
                k += 1
                uids[cid] = make(k)  # make_uid(base, k), its prefix hashed once per file
            self._base, self._ordinal, self._make_uid = base, k, make
        # 2. etool rows, then conn rows (a connection's conn row never precedes its etool row)
        for attr, write in (("erows", write_etool), ("crows", write_conn)):
            runs = []
            for s in self.shards:
                q = getattr(s, attr)
                if not q:
                    continue
                if q[-1][0] < bound:
                    runs.append(list(q))
                    q.clear()
                else:
                    run = []
                    while q and q[0][0] < bound:
                        run.append(q.popleft())
                    if run:
                        runs.append(run)
            if not runs:
                continue
            rows = runs[0] if len(runs) == 1 else heapq.merge(*runs, key=_key)
            write(rows, uids)


def _failure_message(e: WorkerFailed, counts: Any) -> str:
    """One line, like one process's: input errors as they are, anything else as an internal error."""
    if e.code != 1:
        return str(e)
    if e.detail and os.environ.get("ETOOL_DEBUG"):
        print(e.detail, file=sys.stderr, end="")  # the worker's traceback
    return (f"internal error: {e}; the logs hold the {counts.flows} flows merged before it "
            f"(set ETOOL_DEBUG=1 for a traceback)")


def classify_sharded(args: Any, cfg: Any, workers: int, reader: Any) -> int:
    """classify with `workers` processes; same logs, summary, exit codes and errors as one process."""
    from .errors import EXIT_OUTPUT, CliError
    from .offline import BATCH, Counts, _finish_classify, _open_logs, _progress_bar, drift_monitor
    from .zeeklog import LogWriteError

    fmt = args.format or cfg.log.format
    show_progress = not args.quiet and sys.stderr.isatty()
    specs = [WorkerSpec(paths=tuple(str(p) for p in args.captures), n=workers, me=i, cfg=cfg,
                        model_path=args.model or cfg.model.path, fmt=fmt, batch=BATCH,
                        progress=show_progress and i == 0)
             for i in range(workers)]

    pool = ShardedClassify(specs)
    writers: list[Any] = []
    bar = None
    counts = Counts(files=len(args.captures))
    try:
        try:
            pool.wait_ready()
        except WorkerFailed as e:
            raise CliError(_failure_message(e, counts), e.code) from None
        counts.drift = drift_monitor(args.model or cfg.model.path, cfg)
        outdir = Path(args.output or cfg.log.dir)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"{outdir}: cannot create output directory: {e.strerror or e}", EXIT_OUTPUT) from None
        if show_progress:
            bar = _progress_bar(args.captures)
        etool_w, conn_w = _open_logs(outdir, fmt)
        writers += [etool_w, conn_w]

        ph = UID_PLACEHOLDER
        add_entry = counts.add_entry

        def write_etool(rows, uids) -> None:
            write = etool_w.write_formatted
            for _key, cid, line, entry in rows:
                counts.flows += 1
                add_entry(*entry)
                write(line.replace(ph, uids[cid], 1))

        def write_conn(rows, uids) -> None:
            write = conn_w.write_formatted
            for _key, cid, line in rows:
                counts.conns += 1
                write(line.replace(ph, uids.pop(cid), 1))

        def on_progress(n: int) -> None:
            if bar is not None:
                bar.update(n)

        try:
            try:
                all_stats, shard_stats, input_error = pool.run(write_etool, write_conn, on_progress)
            except WorkerFailed as e:
                raise CliError(_failure_message(e, counts), e.code) from None
            if input_error is not None:
                raise CliError(input_error[1], input_error[0])
            for w in writers:
                w.close()
        except LogWriteError as e:
            for w in writers:
                w.abort()
            pending = pool.pending_rows()
            extra = f", {pending} classified flows not logged" if pending else ""
            raise CliError(f"{e}{extra}; stopped after {counts.flows} flows", EXIT_OUTPUT) from None
        except BaseException:
            for w in writers:
                w.abort()
            raise
    finally:
        pool.stop()
        if bar is not None:
            bar.close()

    stats = all_stats[0]
    for s in shard_stats:
        stats.add_counts(s)
    return _finish_classify(args, counts, stats, writers, cfg)
