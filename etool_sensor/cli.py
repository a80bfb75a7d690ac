"""The `etool-sensor` command: argument handling and dispatch, nothing more.

`classify` runs offline.py (one process) or parallel.py (`--workers N`).
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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from . import __version__
from .errors import (EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT,  # noqa: F401 - re-exported:
                     EXIT_TRUNCATED, PROG, CliError)  # the exit codes are the CLI's contract

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    internal error (set ETOOL_DEBUG=1 for a traceback)
  2    bad input: usage, missing file, not a capture, bad config, bad model, missing component
  3    a capture was truncated: what was read was classified and logged (label: also a
       capture the nDPI engine could not read: its rows are missing)
  4    the output could not be written (e.g. disk full); the message counts the rows not written
  5    adapt: the package was written but is not better than its base on the held-back captures
  130  interrupted
"""

#: Modules of the `train` extra (setup.cfg): a command that needs one says how to install it.
TRAIN_EXTRA_MODULES = frozenset({"torch", "transformers", "onnx", "sklearn", "skl2onnx", "gguf", "matplotlib"})
TRAIN_EXTRA_HINT = "install the train extra: pip install '.[train]' (in a checkout of etool)"


# ------------------------------------------------------------------------------------ lazy commands
@dataclass(frozen=True)
class LazyCommand:
    modules: tuple[str, ...]  # tried in order
    add_arguments: str
    main: str
    help: str
    extra: str = ""  # pip extra that provides its dependencies
    takes_config: bool = False


LAZY: dict[str, LazyCommand] = {
    "serve": LazyCommand(("etool_sensor.sensor.serve",), "add_serve_arguments", "serve_main",
                         "classify flows sent by Zeek over its WebSocket API (the sensor daemon)", "",
                         takes_config=True),
    "eval": LazyCommand(("etool_sensor.lab.cli",), "add_eval_arguments", "eval_main",
                        "score a model against labelled captures"),
    "train": LazyCommand(("etool_sensor.train.cli",), "add_train_arguments", "train_main",
                         "train a model (needs the train extra)", "train"),
    "export": LazyCommand(("etool_sensor.export.package",), "add_export_arguments", "export_main",
                          "export a trained model to an ONNX model package (needs the train extra)", "train"),
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
    for modname in spec.modules:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and (modname == e.name or modname.startswith(e.name + ".")):
                missing.append(modname)
                continue  # this candidate module does not exist; try the next
            hint = f"; {TRAIN_EXTRA_HINT}" if spec.extra == "train" else ""
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
    c.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="pcap or pcapng file(s), gzipped or not, or directories: a directory stands for the "
                        "capture files under it (recursively, sorted; *.pcap, *.pcapng, *.cap, *.trace, *.dump, "
                        "gzipped or numbered as ring buffers number them, e.g. ring.pcap00)")
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


def classify_main(args: argparse.Namespace, cfg: Any) -> int:
    """`classify`: one process (offline.py) or `--workers N` processes (parallel.py). The process settings it
    tunes (garbage collector, GIL switch interval) are put back after the run, so that a program calling
    cli.main (tests, notebooks) keeps its own."""
    from . import offline

    before = gc.get_threshold(), sys.getswitchinterval()
    try:
        reader, runtime = offline.prepare(args, cfg)
        workers = getattr(args, "workers", None) or cfg.classify.workers
        if workers is None:
            from .runtime import usable_cores

            workers = usable_cores()
        if workers > 1:
            # N processes, each reading the whole capture and classifying one shard; same rows in the same
            # order, same summary, exit codes and errors as the one-process path.
            from .parallel import classify_sharded

            return classify_sharded(args, cfg, workers, reader)
        return offline.classify_one(args, cfg, reader, runtime)
    finally:
        gc.set_threshold(*before[0])
        sys.setswitchinterval(before[1])


# ---------------------------------------------------------------------------------------------- main
def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "classify":
        return classify_main(args, _config_from_args(args))
    spec = LAZY[args.command]
    _, run = _load_lazy(args.command)
    try:
        wants_cfg = spec.takes_config or len(inspect.signature(run).parameters) >= 2
    except (TypeError, ValueError):
        wants_cfg = False
    try:
        return int((run(args, _config_from_args(args)) if wants_cfg else run(args)) or 0)
    except ModuleNotFoundError as e:  # a module the command imports only once it runs
        root = (e.name or "").split(".")[0]
        if root not in TRAIN_EXTRA_MODULES:
            raise
        raise CliError(f"'{args.command}' needs the Python module {root!r}, which is not installed; "
                       f"{TRAIN_EXTRA_HINT}") from None


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
