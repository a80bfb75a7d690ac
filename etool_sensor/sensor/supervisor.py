"""``serve --workers N``: N forked daemon processes under one supervisor.

Each worker is a whole daemon (its own event loop, model, WebSocket session and topic), so decoding and
inference use N cores instead of one GIL. The supervisor loads nothing; it forwards SIGTERM/SIGINT and SIGHUP
(each worker reloads itself), serves the workers' merged metrics (workermetrics), and when one worker fails it
stops the others and exits with that worker's status (a service manager restarts the set).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from ..config import Config
from .logfmt import DAEMON_LOGGER, ev
from .process import load_serve_config, make_reloader, note_hup, serve_one, take_pending_hup, worker_config

log = logging.getLogger(DAEMON_LOGGER)


def _worker_main(cfg: Config, workers: int, i: int, args: argparse.Namespace | None, report: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, note_hup)
    sys.exit(serve_one(cfg, workers, make_reloader(args, (i, workers)), report.send if report is not None else None))


def serve_workers(cfg: Config, args: argparse.Namespace | None = None) -> int:
    """Run serve.workers daemons until stopped. Exit status: the first failing worker's, else the largest of
    the workers'."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from .workermetrics import WorkerMetrics, serve_endpoint

    serve = cfg.serve
    n = serve.workers
    ws = [worker_config(cfg, i, n) for i in range(n)]
    names = ", ".join(f'"{w.serve.app_name}"' for w in ws)
    log.info("%d workers subscribing to %s; in Zeek: redef ETooL::daemons = vector(%s);", n,
             ", ".join(w.serve.topics[0] for w in ws), names,
             extra=ev("workers", workers=[w.serve.app_name for w in ws], topics=[w.serve.topics[0] for w in ws]))
    merged = WorkerMetrics([w.serve.app_name for w in ws])
    endpoint = None
    if serve.metrics_port:
        try:
            endpoint = serve_endpoint(merged, serve.metrics_addr, serve.metrics_port)
        except OSError as e:  # e.g. the port is taken
            print(f"etool-sensor serve: metrics endpoint {serve.metrics_addr}:{serve.metrics_port}: {e}",
                  file=sys.stderr)
            return 2
    ctx = mp.get_context("fork")  # nothing heavy is loaded yet: each worker loads its own model
    pipes = [ctx.Pipe(duplex=False) if serve.metrics_port else (None, None) for _ in ws]
    procs = [ctx.Process(target=_worker_main, args=(w, n, i, args, pipes[i][1]), name=w.serve.app_name,
                         daemon=False) for i, w in enumerate(ws)]
    for p in procs:
        p.start()
    for _, w_end in pipes:
        if w_end is not None:
            w_end.close()  # the worker holds it: a worker that dies before reporting reads as EOF here
    reports = {r: w.serve.app_name for (r, _), w in zip(pipes, ws) if r is not None}
    stopping = False
    failed: int | None = None

    def send(sig: int) -> None:
        for p in procs:
            if p.exitcode is None and p.pid is not None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def stop(_sig: int = 0, _frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        send(signal.SIGTERM)

    def reload(_sig: int = 0, _frame: Any = None) -> None:
        log.info("SIGHUP: each of the %d workers reloads", n, extra=ev("reload_forward", workers=n))
        _warn_process_settings(cfg, args)
        send(signal.SIGHUP)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    if take_pending_hup():  # came before this handler: a worker started before it may have read the old files
        reload()
    try:
        while any(p.exitcode is None for p in procs):
            ready = wait([p.sentinel for p in procs if p.exitcode is None] + list(reports), timeout=1.0)
            for r in ready:
                if r in reports:  # a worker's metrics port
                    try:
                        merged.set_port(reports[r], int(r.recv()))
                    except (EOFError, OSError, ValueError):
                        pass
                    del reports[r]
            for p in procs:
                if p.exitcode not in (None, 0) and not stopping:
                    log.error("worker %s exited with status %s: stopping the others", p.name, p.exitcode,
                              extra=ev("worker_failed", worker=p.name, exitcode=p.exitcode))
                    failed = _status(p.exitcode)
                    stop()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if endpoint is not None:
            endpoint.shutdown()
            endpoint.server_close()
    if failed is not None:
        return failed
    return max(_status(p.exitcode if p.exitcode is not None else 1) for p in procs)


def _warn_process_settings(cfg: Config, args: argparse.Namespace | None) -> None:
    """The supervisor's part of a reload: the number of workers and its metrics endpoint are fixed until
    restart; say so."""
    try:
        new = load_serve_config(args).serve
    except Exception:  # noqa: BLE001 - each worker refuses a bad file and logs why
        return
    running = cfg.serve
    for k in ("workers", "metrics_addr", "metrics_port"):
        if getattr(new, k) != getattr(running, k):
            log.warning("reload: serve.%s changed to %r; it takes effect on restart, keeping %r", k, getattr(new, k),
                        getattr(running, k), extra=ev("reload_needs_restart", key=f"serve.{k}", new=getattr(new, k),
                                                      running=getattr(running, k)))


def _status(exitcode: int) -> int:
    """multiprocessing's exit code (-N: killed by signal N) as a shell status."""
    return exitcode if exitcode >= 0 else 128 - exitcode
