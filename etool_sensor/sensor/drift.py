"""serve's drift monitoring: the core's DriftMonitor (etool_sensor/drift.py) over the daemon's last
drift.window verdicts, its Prometheus gauges, the ETooL::drift events to Zeek and the threshold warning."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Sequence

from ..drift import PARTS, DriftError, DriftMonitor, DriftScore, model_reference
from ..zeek import wire as z
from .logfmt import ev


class ServeDrift:
    """serve's drift monitoring, kept in one object so the daemon needs three calls: ``observe_all(verdicts)``
    where a batch's verdicts come back (event loop thread), ``run(client, stop)`` as a task (publishes
    ETooL::drift on drift.topic every drift.interval_s once the window holds drift.min_flows verdicts, and logs
    a warning when the score crosses drift.threshold, also with interval_s 0), ``set_model(model)`` when
    another package answers. Gauges on the daemon's registry: etool_drift_score, etool_drift_part{part},
    etool_drift_flows (absent for a package without a drift reference)."""

    CHECK_S = 60.0  # how often the threshold is checked when nothing is published (interval_s 0)

    def __init__(self, cfg: Any, daemon: str, model: Any, registry: Any, log: Any = None) -> None:
        """``cfg``: the drift section of the configuration (config.DriftConfig); ``daemon``: serve.app_name."""
        self.window, self.min_flows = int(cfg.window), int(cfg.min_flows)
        self.threshold, self.interval_s = float(cfg.threshold), float(cfg.interval_s)
        self.topic = str(cfg.topic)
        self.daemon = str(daemon)
        self.log = log
        self.monitor: DriftMonitor | None = None
        self.model_id = "-"
        self._key: str | None = None  # what the window compares with: the package's manifest, as text
        self.published = 0
        self._over = False  # the score was at or above the threshold at the last interval
        self.set_model(model)
        self._gauges(registry)

    def set_model(self, model: Any) -> None:
        """Compare with `model`'s reference from now on: a fresh window, unless `model` is the package
        already answering (the same manifest, which holds model.onnx's checksum, the priors and the
        reference), as after a reload that changed only settings; no monitoring when it has no reference."""
        key = json.dumps(getattr(model, "manifest", None), sort_keys=True, default=str)
        if key == self._key:  # the manifest names the package too (name, version)
            return
        self._key = key
        self.model_id = model.id
        try:
            ref = model_reference(model)
        except DriftError as e:
            ref = None
            if self.log is not None:
                self.log.warning("no drift monitoring: %s", e)
        self.monitor = None if ref is None else DriftMonitor(ref, self.window)
        self._over = False

    def observe_all(self, verdicts: Sequence[Any]) -> None:
        mon = self.monitor
        if mon is not None:
            observe = mon.observe
            for v in verdicts:
                observe(v, v.table_hit)

    def current(self) -> DriftScore | None:
        """The window's score once it holds min_flows verdicts; None before (or without a reference)."""
        mon = self.monitor
        return None if mon is None or len(mon) < self.min_flows else mon.score()

    def _gauges(self, registry: Any) -> None:
        from prometheus_client import Gauge

        def value(get: Any) -> Any:
            def f() -> float:
                d = self.current()
                return math.nan if d is None else float(get(d))
            return f

        Gauge("etool_drift_score", "drift score of the last drift.window verdicts against the model's reference "
              "(0..1, NaN until drift.min_flows verdicts or without a reference)", registry=registry
              ).set_function(value(lambda d: d.score))
        part = Gauge("etool_drift_part", "drift score parts: total variation distance of each verdict marginal "
                     "from the reference's (0..1)", ["part"], registry=registry)
        for name in PARTS:
            part.labels(name).set_function(value(lambda d, n=name: d.parts().get(n, math.nan)))
        Gauge("etool_drift_flows", "verdicts in the drift window", registry=registry).set_function(
            lambda: len(self.monitor) if self.monitor is not None else 0)

    async def run(self, client: Any, stop: Any) -> None:
        """Every interval_s until `stop` (an asyncio.Event) is set: publish the window's ETooL::drift to Zeek
        (drift.topic) when there is a score and a session, and log when the score crosses drift.threshold;
        with interval_s 0 only the latter, every CHECK_S. Never raises for a lost connection."""
        publish = self.interval_s > 0
        period = self.interval_s if publish else self.CHECK_S
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), period)
                return
            except (asyncio.TimeoutError, TimeoutError):
                pass
            d = self.current()
            if d is None:
                continue
            over = d.score >= self.threshold
            if over != self._over and self.log is not None:  # once per crossing, not every interval
                fields = ev("drift" if over else "drift_cleared", score=round(d.score, 4), flows=d.flows,
                            threshold=self.threshold, model=self.model_id)
                if over:
                    self.log.warning("%s of the last %d verdicts is at or above drift.threshold %g: the traffic is "
                                     "not like the model's training traffic (etool-sensor adapt fits it)",
                                     d.describe(), d.flows, self.threshold, extra=fields)
                else:
                    self.log.info("%s of the last %d verdicts: below drift.threshold %g again", d.describe(),
                                  d.flows, self.threshold, extra=fields)
            self._over = over
            if not publish or not client.connected:
                continue
            try:
                await client.send(z.encode_drift(self.topic, self.daemon, self.model_id, d))
                self.published += 1
            except Exception as e:  # noqa: BLE001 - ConnectionClosed: the next interval tries again
                if self.log is not None:
                    self.log.warning("cannot send ETooL::drift: %s", str(e).splitlines()[0] if str(e) else e,
                                     extra=ev("drift_send_failed"))
