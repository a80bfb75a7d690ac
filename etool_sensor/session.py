"""The session glue between flow records and verdicts, written once for `classify` (one process and the
`--workers` worker) and `serve`: cut a record to what the model reads, take its BURST context, classify a
batch with the classify settings, and tally the verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from .context import ContextTracker


class Session:
    """A model and the configuration sections it answers with (config.Config's ``classify``, ``privacy``,
    ``flow`` and ``context``, read, not copied).

    One per classify run or worker, one per serve load or reload: a flow is classified by the Session that
    prepared it. ``collection`` is the flows.FlowParams the records were collected with (classify:
    ``cfg.flow_params``); records are cut to the model's window only when that collection can exceed it.
    None means the collection is not known (serve: Zeek's ETooL::packets_per_flow), so every record is cut.
    ``tracker``: the BURST context to continue (serve keeps it across a reload that leaves ``context``
    alone); by default a fresh one from the ``context`` section."""

    def __init__(self, model: Any, *, classify: Any, privacy: Any, flow: Any, context: Any,
                 collection: Any = None, tracker: ContextTracker | None = None) -> None:
        # imported here: offline.py imports this module for Tally before it checks the runtime is installed
        from .context import ContextTracker
        from .runtime import Thresholds, exceeds, model_window

        self.model = model
        self.model_id: str = model.id  # name@version, as in the verdicts' model field
        self.classify_settings = classify
        self.privacy = privacy
        self.flow = flow
        self.context_settings = context
        self.thresholds = Thresholds(default=classify.threshold, per_label=dict(classify.label_thresholds))
        self.top_k: int = classify.top_k
        self.mask_names: bool = privacy.mask_names
        self.min_packets: int = flow.min_packets
        self.alert_labels: frozenset[str] = frozenset(classify.alert_labels)
        self.window = model_window(getattr(model, "spec", None))  # None: the model reads all of a record
        self.model_packets: int = self.window.packets if self.window is not None else 0
        self.cuts: bool = self.window is not None and (collection is None or exceeds(collection, self.window))
        self.tracker = tracker if tracker is not None else ContextTracker(window=context.window,
                                                                          bursts=context.bursts)

    @classmethod
    def of(cls, model: Any, cfg: Any, **kw: Any) -> "Session":
        """The Session of ``model`` under a config.Config's sections."""
        return cls(model, classify=cfg.classify, privacy=cfg.privacy, flow=cfg.flow, context=cfg.context, **kw)

    def cut(self, rec: Any) -> Any:
        """The record as the model reads it (FlowRecord.within its window)."""
        return rec.within(self.window) if self.cuts else rec

    def context(self, rec: Any) -> Any:
        """The record's BURST context; the tracker remembers the record for the flows after it."""
        return self.tracker.observe(rec)

    def prepare(self, rec: Any) -> tuple[Any, Any]:
        """(the record cut to the model's window, its context)."""
        if self.cuts:
            rec = rec.within(self.window)
        return rec, self.tracker.observe(rec)

    def classify(self, recs: Sequence[Any], ctxs: Sequence[Any]) -> list[Any]:
        """The verdicts (flows.Verdict) of a batch of prepared records, in order."""
        verdicts = self.model.classify(recs, ctxs, self.thresholds, mask_names=self.mask_names,
                                       min_packets=self.min_packets, top_k=self.top_k)
        if len(verdicts) != len(recs):
            raise RuntimeError(f"model returned {len(verdicts)} verdicts for {len(recs)} flows")
        return verdicts

    def alert(self, v: Any) -> str | None:
        """The classify.alert_labels label the verdict raises, if any."""
        return v.alert(self.alert_labels)

    def entry(self, v: Any) -> tuple[str, bool, str | None, tuple | None]:
        """What Tally.add_entry counts of one verdict, as plain values (sent from a --workers worker):
        (status, unknown, alert label, (service, confidence, table hit) for the drift score)."""
        if v.status == "ok":
            return v.status, bool(v.unknown), v.alert(self.alert_labels), (v.service, v.confidence, v.table_hit)
        return v.status, False, None, None


@dataclass
class Tally:
    """What a run counts of its verdicts: statuses, classified, unknown, classify.alert_labels hits by label,
    and the drift monitor (drift.DriftMonitor, None without a reference) that sees every verdict."""

    classified: int = 0
    unknown: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    drift: Any = None

    def add(self, verdicts: Iterable[Any], alert_labels: frozenset[str]) -> None:
        """Count verdicts (flows.Verdict)."""
        statuses, alerts = self.statuses, self.alerts
        observe = self.drift.observe if self.drift is not None else None
        for v in verdicts:
            statuses[v.status] = statuses.get(v.status, 0) + 1
            if v.status == "ok":
                self.classified += 1
                self.unknown += bool(v.unknown)
                hit = v.alert(alert_labels)
                if hit:
                    alerts[hit] = alerts.get(hit, 0) + 1
            if observe is not None:
                observe(v, v.table_hit)

    def add_entry(self, status: str, unknown: bool, alert: str | None, seen: tuple | None) -> None:
        """Count one verdict given as Session.entry's values."""
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        if status == "ok":
            self.classified += 1
            self.unknown += unknown
            if alert:
                self.alerts[alert] = self.alerts.get(alert, 0) + 1
            if self.drift is not None:
                self.drift.add(*seen)
