"""`etool-sensor serve`: its arguments and its entry (cli.LAZY), one daemon or ``--workers N`` of them."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ..zeek.client import DEFAULT_URL, check_app_name
from ..config import Config
from .logfmt import LOG_FORMATS, setup_logging
from .process import make_reloader, note_hup, serve_one, with_args


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="etool.yaml (default: built-in defaults, or $ETOOL_CONFIG); "
                   "SIGHUP reads it again")
    p.add_argument("--zeek-url", metavar="URL",
                   help=f"Zeek WebSocket API endpoint (default: serve.zeek_url, {DEFAULT_URL})")
    p.add_argument("--model", metavar="DIR", help="model package directory (default: model.path, the bundled model); "
                   "SIGHUP loads it again")
    p.add_argument("--workers", metavar="N", type=_positive_int,
                   help="event-loop processes (default: serve.workers, 1); with N > 1, worker i is the daemon "
                        "<app_name>-i to Zeek (ETooL::daemons) and subscribes to <topic><app_name>-i/")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="the daemon's log lines on stderr (default: serve.log_format, text); json: one object a line")


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..64, got {v!r}")
    return n


def serve_main(args: argparse.Namespace, cfg: Config | None = None) -> int:
    """Serve under ``cfg`` (the loaded etool.yaml; None: the defaults) with the command line's overrides."""
    try:
        signal.signal(signal.SIGHUP, note_hup)
    except ValueError:  # not the main thread (embedded): the event loop's handler is all there is
        pass
    cfg = with_args(cfg if cfg is not None else Config(), args)
    if cfg.serve.log_format == "json" or not logging.getLogger().handlers:
        setup_logging(cfg.serve.log_format)
    try:
        check_app_name(cfg.serve.app_name)
    except ValueError as e:
        print(f"etool-sensor serve: {e}", file=sys.stderr)
        return 2
    if not cfg.serve.zeek_url.startswith(("ws://", "wss://")):
        print(f"etool-sensor serve: --zeek-url must be ws:// or wss://, got {cfg.serve.zeek_url!r}", file=sys.stderr)
        return 2
    if cfg.serve.workers > 1:
        from .supervisor import serve_workers

        return serve_workers(cfg, args)
    return serve_one(cfg, reloader=make_reloader(args))
