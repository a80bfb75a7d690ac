"""One daemon process: the configuration it runs under, its model, its event loop and its signals.

The configuration is etool.yaml (``--config``, else ``$ETOOL_CONFIG``, else the defaults) with the command
line's overrides; a worker of ``serve --workers N`` runs its share of it (``worker_config``). SIGHUP reads both
again (``make_reloader``); SIGTERM/SIGINT stop the pipeline gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from typing import Any, Callable

from ..config import Config
from . import logfmt
from .logfmt import DAEMON_LOGGER, ev
from .daemon import Daemon, Reloader

log = logging.getLogger(DAEMON_LOGGER)

_hup_pending = False  # a SIGHUP that came before the event loop could take it (see note_hup)


def note_hup(_sig: int = 0, _frame: Any = None) -> None:
    """SIGHUP while the model loads: remembered and handled once serving, instead of Python's default
    action for SIGHUP (terminate)."""
    global _hup_pending
    _hup_pending = True


def take_pending_hup() -> bool:
    """Whether a SIGHUP came before its handler was in place (and forget it)."""
    global _hup_pending
    pending, _hup_pending = _hup_pending, False
    return pending


# ------------------------------------------------------------------------------------ configuration
def config_path(args: argparse.Namespace | None) -> str | None:
    """The etool.yaml serve reads at start and on SIGHUP: --config, else $ETOOL_CONFIG, else none."""
    return (getattr(args, "config", None) if args is not None else None) or os.environ.get("ETOOL_CONFIG") or None


def with_args(cfg: Config, args: argparse.Namespace | None) -> Config:
    """``cfg`` with what the command line overrides: --workers, --zeek-url, --log-format (serve.*) and
    --model (model.path)."""
    if args is None:
        return cfg
    serve = {k: getattr(args, k, None) for k in ("workers", "zeek_url", "log_format") if getattr(args, k, None)}
    if serve:
        cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **serve))
    if getattr(args, "model", None):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=args.model))
    return cfg


def load_serve_config(args: argparse.Namespace | None) -> Config:
    """etool.yaml at its configured path with the command line's overrides. Raises ConfigError."""
    from ..config import load_config

    return with_args(load_config(config_path(args)), args)


def worker_config(cfg: Config, i: int, n: int | None = None) -> Config:
    """Worker i of ``serve --workers N``: one of N daemons to Zeek, named ``<app_name>-<i>``.

    It subscribes to ``<topic><name>/`` for each of serve.topics (``etool/flows/etool-sensor-0/`` by
    default: what the Zeek package publishes to with ``ETooL::daemons`` listing the names), says its
    name in the handshake (cluster.log), serves its metrics on a free loopback port for the supervisor to
    merge (workermetrics), queues at most ``queue_size / N`` flows and admits at most ``max_flows_per_s / N``
    flows a second, so the N workers together hold and admit no more than one daemon would."""
    s = cfg.serve
    n = n or s.workers
    name = f"{s.app_name or 'etool-sensor'}-{i}"
    return dataclasses.replace(cfg, serve=dataclasses.replace(
        s, topics=tuple(t + name + "/" for t in s.topics), app_name=name, metrics_addr="127.0.0.1", metrics_port=0,
        workers=1, queue_size=max(1, s.queue_size // n), max_flows_per_s=s.max_flows_per_s / n))


def inference_threads(cfg: Config, workers: int) -> int:
    # null = one core for the event loop (decode, context, send), the others for inference; with
    # several workers, each gets its share of the cores
    threads = cfg.model.threads
    from ..runtime import usable_cores

    return threads if threads is not None else max(1, usable_cores() // workers - 1)


def make_reloader(args: argparse.Namespace | None, worker: tuple[int, int] | None = None) -> Reloader:
    """What SIGHUP loads: etool.yaml at its configured path (command-line options still override it) and the
    model package it names; for worker (i, n) of ``--workers n``, that worker's share. Raises on a file,
    value or package that does not load or validate."""
    def reload() -> tuple[Config, Any]:
        from ..runtime import load_model

        cfg = load_serve_config(args)
        n = cfg.serve.workers
        if worker is not None:
            cfg = worker_config(cfg, worker[0], worker[1])
            n = worker[1]
        return cfg, load_model(cfg.model.path, threads=inference_threads(cfg, n))
    return reload


# ---------------------------------------------------------------------------------------- running
def serve_one(cfg: Config, workers: int = 1, reloader: Reloader | None = None,
              on_listening: Callable[[int], None] | None = None) -> int:
    """Load the model and run one daemon until it is stopped; the process exit status."""
    try:
        from ..runtime import GIL_SWITCH_S, load_model, tune_gc
    except ImportError as e:
        print(f"etool-sensor serve: the model runtime is not available: {e}", file=sys.stderr)
        return 2
    serve = cfg.serve
    logfmt.context["daemon"] = serve.app_name
    if workers > 1:
        logfmt.context["worker"] = serve.app_name
    try:
        model = load_model(cfg.model.path, threads=inference_threads(cfg, workers))
    except Exception as e:  # noqa: BLE001 - a bad model package is an input error
        print(f"etool-sensor serve: cannot load model: {e}", file=sys.stderr)
        return 2
    log.info("model %s %s loaded", getattr(model, "name", "?"), getattr(model, "version", "?"),
             extra=ev("model_loaded", model=model.id,
                      path=str(getattr(model, "path", cfg.model.path))))
    sys.setswitchinterval(GIL_SWITCH_S)  # this process is the daemon: see runtime.GIL_SWITCH_S
    tune_gc()
    return asyncio.run(_run(cfg, model, reloader, on_listening))


async def _run(cfg: Config, model: Any, reloader: Reloader | None = None,
               on_listening: Callable[[int], None] | None = None) -> int:
    d = Daemon(cfg, model, reloader=reloader, on_listening=on_listening)
    loop = asyncio.get_running_loop()
    for sig, handler in ((signal.SIGTERM, d.request_stop), (signal.SIGINT, d.request_stop),
                         (signal.SIGHUP, d.request_reload)):
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    if take_pending_hup():  # a SIGHUP while the model loaded: the files may have changed since they were read
        loop.call_soon(d.request_reload)
    try:
        return await d.run()
    except OSError as e:  # e.g. the metrics port is taken
        print(f"etool-sensor serve: {e}", file=sys.stderr)
        return 2
