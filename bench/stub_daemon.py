"""`python -m bench.stub_daemon [serve args]` (from the repository root): the real daemon entry point with a
stand-in model.

For `bench daemon --stub` (the transport alone) and the daemon's tests when no model package is installed
(ETOOL_E2E_STUB=1): it exercises signal handling, draining and metrics exactly as `python -m etool_sensor
serve`, with a model whose answers are fixed. ``--delay S`` makes each batch take S seconds.
"""

from __future__ import annotations

import sys
import time

from etool_sensor import cli
from etool_sensor.flows import Verdict


class StubModel:
    name = "stub"
    version = "0"
    id = "stub@0"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def classify(self, records, contexts=None, thresholds=None, *, mask_names=True, min_packets=2, top_k=3):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return [Verdict(r.uid, "tls", "stub", 0.75, False, ["other"], "stub@0") for r in records]


def main(argv: list[str]) -> int:
    delay = 0.0
    if "--delay" in argv:
        i = argv.index("--delay")
        delay = float(argv[i + 1])
        del argv[i:i + 2]
    model = StubModel(delay)

    import etool_sensor.runtime as rt

    rt.load_model = lambda *a, **k: model  # type: ignore[assignment]
    return cli.main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
