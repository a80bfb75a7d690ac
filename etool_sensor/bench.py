"""`etool-sensor bench NAME [ARGS...]`: run one of the benchmark scripts of a source checkout.

The benchmarks live in `bench/` beside the package (they need the shared captures, dpkt, tshark and
other things a sensor does not), so an installed wheel has none; this command finds them in a checkout
and runs them as if started with `python bench/bench_NAME.py ARGS...`.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    names = available()
    p.add_argument("name", help="which benchmark: " + (", ".join(names) if names else "(none: not a checkout)"))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (see its --help)")


def bench_main(args: argparse.Namespace) -> int:
    script = BENCH_DIR / f"bench_{args.name}.py"
    if not script.is_file():
        names = available()
        where = f"one of {', '.join(names)}" if names else f"none found: {BENCH_DIR} is not there (run from a checkout)"
        print(f"etool-sensor: error: no benchmark {args.name!r}: {where}", file=sys.stderr)
        return 2
    argv, sys.argv = sys.argv, [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):  # a bench's own one-line error (sys.exit("...")): say it
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return 0
