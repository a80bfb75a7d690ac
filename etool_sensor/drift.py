"""Drift: how far the verdicts on the traffic at hand are from the verdicts on the model's training traffic.

A model package carries reference statistics of its own verdicts on the traffic it was trained on
(manifest ``drift_reference``: label shares, confidence histogram, unknown rate, fingerprint-table hit rate;
``reference_from_verdicts``). A ``DriftMonitor`` keeps the same statistics over a sliding window of the last
``window`` verdicts (classify: all verdicts of the run) and compares them with the reference. Each part is the
total variation distance between one marginal of the verdicts in the window and the reference's, in [0, 1]:

* ``label_shift``: between the shares of the predicted service labels; a label the reference never predicted
  is its own mass, so traffic answered only with such labels is 1;
* ``confidence_shift``: between the confidence histograms (CONF_BINS bins of width 0.1 over [0, 1]);
* unknown: between the unknown rates, i.e. ``|unknown_rate - unknown_rate_ref|``, both at the reference's
  threshold (a verdict is unknown when its confidence is below it, whatever classify.threshold says);
* table: between the shares of flows whose fingerprint is in the service fingerprint table,
  ``|table_hit_rate - table_hit_rate_ref|`` (left out for a package without a table).

The score is the largest part. The total variation between the joint distributions of (label, confidence
bin, unknown, table hit) is at least the largest of its marginals' distances, so the score is a lower
bound on it: at least that share of the window's verdicts would have to change to look like the
reference's. 0 = the reference's marginals, 1 = disjoint. Labels are not compared with ground truth: a
high score says the traffic or the model's answers changed, not that they are wrong.

`python -m etool_sensor.drift reference PKG --data DIR` classifies the captures of DIR with the package and
writes ``drift_reference`` into its manifest.json (the package's files and checksums are not touched);
`python -m etool_sensor.drift score PKG --data DIR` prints the score of captures against it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

CONF_BINS = 10  # confidence histogram: [0, 0.1), ..., [0.9, 1.0]
DEFAULT_WINDOW = 5000
REFERENCE_KEY = "drift_reference"
PARTS = ("label", "confidence", "unknown", "table")


class DriftError(ValueError):
    """A drift reference that cannot be used (missing keys, values out of range)."""


def confidence_bin(c: float) -> int:
    """The histogram bin of a confidence: floor(10 c), 1.0 (and anything above) in the last bin."""
    b = int(c * CONF_BINS)
    return CONF_BINS - 1 if b >= CONF_BINS else (0 if b < 0 else b)


def total_variation(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """Total variation distance 1/2 sum |p_k - q_k| over the union of the keys (a missing key: 0), in [0, 1]
    for two distributions."""
    keys = sorted(set(p) | set(q), key=str)  # a fixed order: the sum does not depend on when labels came
    return min(1.0, 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys))


@dataclass(frozen=True)
class DriftScore:
    """A window compared with the reference. Rates are shares in [0, 1]; the table rates are None where the
    package has no table."""

    score: float
    label_shift: float
    confidence_shift: float
    unknown_rate: float
    unknown_rate_ref: float
    table_hit_rate: float | None
    table_hit_rate_ref: float | None
    flows: int

    @property
    def unknown_shift(self) -> float:
        return self.unknown_rate - self.unknown_rate_ref

    @property
    def table_shift(self) -> float | None:
        if self.table_hit_rate is None or self.table_hit_rate_ref is None:
            return None
        return self.table_hit_rate - self.table_hit_rate_ref

    def parts(self) -> dict[str, float]:
        """Each part's distance in [0, 1] (the score is their maximum); no "table" without a table."""
        d = {"label": self.label_shift, "confidence": self.confidence_shift, "unknown": abs(self.unknown_shift)}
        if self.table_shift is not None:
            d["table"] = abs(self.table_shift)
        return d

    def describe(self) -> str:
        """``drift 0.42 (label 0.42, confidence 0.30, unknown +0.12, table -0.20)``: the differences of the
        rates are signed (window minus reference)."""
        s = (f"drift {self.score:.2f} (label {self.label_shift:.2f}, confidence {self.confidence_shift:.2f}, "
             f"unknown {_signed(self.unknown_shift)}")
        if self.table_shift is not None:
            s += f", table {_signed(self.table_shift)}"
        return s + ")"


def _signed(x: float) -> str:
    return f"{round(x, 2) or 0.0:+.2f}"  # no "-0.00"


def check_reference(ref: Any) -> dict[str, Any]:
    """The reference as a dict with float values, or DriftError naming what is wrong."""
    if not isinstance(ref, Mapping):
        raise DriftError(f"{REFERENCE_KEY} is not an object")
    try:
        shares = {str(k): float(v) for k, v in dict(ref["label_shares"]).items()}
        hist = [float(x) for x in ref["confidence_hist"]]
        unknown = float(ref["unknown_rate"])
        table = ref.get("table_hit_rate")
        table = None if table is None else float(table)
        flows = int(ref["flows"])
        threshold = float(ref["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise DriftError(f"{REFERENCE_KEY}: missing or malformed {e}") from None
    if len(hist) != CONF_BINS:
        raise DriftError(f"{REFERENCE_KEY}: confidence_hist has {len(hist)} bins, not {CONF_BINS}")
    vals = [*shares.values(), *hist, unknown, threshold] + ([table] if table is not None else [])
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals):
        raise DriftError(f"{REFERENCE_KEY}: shares and rates must be in 0..1")
    if flows <= 0:
        raise DriftError(f"{REFERENCE_KEY}: flows must be positive")
    return {**dict(ref), "label_shares": shares, "confidence_hist": hist, "unknown_rate": unknown,
            "table_hit_rate": table, "flows": flows, "threshold": threshold}


class DriftMonitor:
    """Verdict statistics over the last `window` verdicts (None: every verdict observed), compared with a
    reference (``drift_reference``).

    ``observe`` is O(1): the window is a ring of (label, confidence bin, unknown, table hit) codes with running
    counts, the oldest taken out as a new one comes in. ``score`` is O(labels + bins). Verdicts whose status
    is not "ok" (too few packets: no inference) are not counted. Not thread-safe: one thread observes (the
    daemon's event loop)."""

    def __init__(self, reference: Mapping[str, Any], window: int | None = DEFAULT_WINDOW) -> None:
        self.reference = check_reference(reference)
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window
        self._ref_hist = dict(enumerate(self.reference["confidence_hist"]))
        self._has_table = self.reference["table_hit_rate"] is not None
        self._threshold = self.reference["threshold"]
        self._ring: deque[tuple[str, int, bool, bool | None]] = deque()
        self._labels: dict[str, int] = {}
        self._bins = [0] * CONF_BINS
        self._unknown = 0
        self._hits = 0
        self._hit_known = 0  # verdicts with a table hit status (a hit or a miss)

    def __len__(self) -> int:
        return len(self._ring)

    def observe(self, verdict: Any, table_hit: bool | None = None) -> None:
        """Count one verdict (flows.Verdict or anything with status, service and confidence) and whether its
        flow's fingerprint is in the service table (None: not known). add() inlined: this runs per flow."""
        if verdict.status != "ok":
            return
        label = verdict.service
        c = verdict.confidence
        b = int(c * CONF_BINS)
        if b >= CONF_BINS:
            b = CONF_BINS - 1
        elif b < 0:
            b = 0
        unknown = c < self._threshold
        ring = self._ring
        if len(ring) == self.window:
            self._forget(*ring.popleft())
        ring.append((label, b, unknown, table_hit))
        labels = self._labels
        labels[label] = labels.get(label, 0) + 1
        self._bins[b] += 1
        if unknown:
            self._unknown += 1
        if table_hit is not None:
            self._hit_known += 1
            if table_hit:
                self._hits += 1

    def add(self, label: str, confidence: float, table_hit: bool | None = None) -> None:
        """Count one classified flow: its service label, confidence and table hit. Its unknown flag is taken at
        the reference's threshold, so a different classify.threshold does not read as drift."""
        self.observe(_Seen(label, confidence), table_hit)

    def _forget(self, label: str, b: int, unknown: bool, table_hit: bool | None) -> None:
        n = self._labels[label] - 1
        if n:
            self._labels[label] = n
        else:
            del self._labels[label]
        self._bins[b] -= 1
        self._unknown -= unknown
        if table_hit is not None:
            self._hit_known -= 1
            self._hits -= table_hit

    def reset(self) -> None:
        """Forget the window (a new model answers from now on)."""
        self._ring.clear()
        self._labels.clear()
        self._bins = [0] * CONF_BINS
        self._unknown = self._hits = self._hit_known = 0

    def score(self) -> DriftScore:
        """The window against the reference; all parts 0 while the window is empty."""
        ref = self.reference
        n = len(self._ring)
        table_ref = ref["table_hit_rate"] if self._has_table else None
        if not n:
            return DriftScore(0.0, 0.0, 0.0, 0.0, ref["unknown_rate"], None, table_ref, 0)
        label = total_variation({k: v / n for k, v in self._labels.items()}, ref["label_shares"])
        conf = total_variation({i: v / n for i, v in enumerate(self._bins)}, self._ref_hist)
        unknown = self._unknown / n
        table = self._hits / self._hit_known if self._has_table and self._hit_known else None
        parts = [label, conf, abs(unknown - ref["unknown_rate"])]
        if table is not None:
            parts.append(abs(table - table_ref))
        return DriftScore(max(parts), label, conf, unknown, ref["unknown_rate"], table, table_ref, n)


class _Seen:
    """What DriftMonitor reads of a verdict (classify --workers sends these three values, not the verdict)."""

    __slots__ = ("service", "confidence")
    status = "ok"

    def __init__(self, service: str, confidence: float) -> None:
        self.service, self.confidence = service, confidence


def reference_from_verdicts(verdicts: Iterable[Any], table_hits: Iterable[bool | None] | None, threshold: float,
                            source: str) -> dict[str, Any]:
    """The ``drift_reference`` of a package from its verdicts on its training traffic (only status "ok" counts)
    and, per verdict, whether the flow's fingerprint is in the service table (`table_hits` None, or every
    entry None: the package has no table; table_hit_rate is then null). A verdict counts as unknown when its
    confidence is below `threshold` (what DriftMonitor compares with, whatever the verdict's own flag)."""
    verdicts = list(verdicts)
    hits = [None] * len(verdicts) if table_hits is None else list(table_hits)
    if len(hits) != len(verdicts):
        raise ValueError(f"{len(verdicts)} verdicts but {len(hits)} table hits")
    labels: dict[str, int] = {}
    bins = [0] * CONF_BINS
    unknown = n = nh = h = 0
    for v, hit in zip(verdicts, hits):
        if v.status != "ok":
            continue
        n += 1
        labels[v.service] = labels.get(v.service, 0) + 1
        bins[confidence_bin(v.confidence)] += 1
        unknown += v.confidence < threshold
        if hit is not None:
            nh += 1
            h += bool(hit)
    if not n:
        raise DriftError("no classified flows: a reference needs verdicts")
    return {
        "flows": n,
        "label_shares": {k: round(labels[k] / n, 6) for k in sorted(labels)},
        "confidence_hist": [round(b / n, 6) for b in bins],
        "unknown_rate": round(unknown / n, 6),
        "table_hit_rate": round(h / nh, 6) if nh else None,
        "threshold": float(threshold),
        "source": source,
    }


def model_reference(model: Any) -> dict[str, Any] | None:
    """A loaded package's drift reference (runtime.Model), None when its manifest has none; DriftError when
    it is malformed."""
    ref = getattr(model, "manifest", {}).get(REFERENCE_KEY)
    return None if ref is None else check_reference(ref)


def package_reference(path: str | Path | None) -> dict[str, Any] | None:
    """The drift reference in a package's manifest (a directory, a bundled name, None = the default) without
    loading the model; None when it has none. ModelError / DriftError as model_reference."""
    from .runtime import read_manifest, resolve_model_path

    ref = read_manifest(resolve_model_path(path))[1].get(REFERENCE_KEY)
    return None if ref is None else check_reference(ref)


# ---------------------------------------------------------------------------------- the reference command
def captures_in(data: str | Path) -> list[Path]:
    """The capture files under `data` (its pcap/ folder when there is one), sorted."""
    d = Path(data)
    root = d / "pcap" if (d / "pcap").is_dir() else d
    if root.is_file():
        return [root]
    from .capture.reader import capture_files  # the files classify DIR reads

    return capture_files(root)


def classify_captures(model: Any, captures: Sequence[str | Path], cfg: Any = None, *,
                      batch: int = 512) -> tuple[list[Any], list[bool | None]]:
    """Every flow of the captures classified as `classify` does (its reader, BURST context and settings;
    `cfg` None = the defaults): the verdicts and their table hits, in flow order."""
    from .capture.reader import read_flows
    from .config import Config
    from .context import ContextTracker
    from .runtime import exceeds, model_window

    cfg = cfg or Config()
    window = model_window(model.spec)
    cut = exceeds(cfg.flow_params, window)
    tracker = ContextTracker(window=cfg.context.window, bursts=cfg.context.bursts)
    verdicts: list[Any] = []
    recs: list[Any] = []
    ctxs: list[Any] = []

    def run() -> None:
        verdicts.extend(model.classify(recs, ctxs, cfg.thresholds, mask_names=cfg.privacy.mask_names,
                                       min_packets=cfg.flow.min_packets, top_k=cfg.classify.top_k))
        recs.clear()
        ctxs.clear()

    for rec in read_flows([str(p) for p in captures], cfg.flow_params, checksums=cfg.flow.verify_checksums):
        if cut:
            rec = rec.within(window)
        ctxs.append(tracker.observe(rec))
        recs.append(rec)
        if len(recs) >= batch:
            run()
    if recs:
        run()
    return verdicts, [v.table_hit for v in verdicts]


def reference_of(model: Any, captures: Sequence[str | Path], cfg: Any, source: str) -> dict[str, Any]:
    """A package's ``drift_reference``: its verdicts on every flow of `captures`, as classify makes them with
    `cfg`, unknown at cfg's classify.threshold."""
    verdicts, hits = classify_captures(model, captures, cfg)
    return reference_from_verdicts(verdicts, hits, cfg.classify.threshold, source)


def write_reference(package: str | Path, reference: Mapping[str, Any]) -> Path:
    """Put `reference` into the package's manifest.json under drift_reference, the rest of the file as it was
    written (one-space indent, key order kept). The manifest's checksums cover model.onnx and the tables, not
    the manifest itself, so the package still loads."""
    from .runtime import read_manifest

    d, manifest = read_manifest(package)
    manifest[REFERENCE_KEY] = dict(reference)
    mf = d / "manifest.json"
    mf.write_text(json.dumps(manifest, indent=1) + "\n")
    return mf


def _reference_main(a: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .runtime import ModelError, load_model

    try:
        cfg = load_config(a.config)
        model = load_model(a.package, threads=1)
    except (ConfigError, ModelError) as e:
        print(f"etool-sensor drift: {e}", file=sys.stderr)
        return 2
    caps = captures_in(a.data)
    if not caps:
        print(f"etool-sensor drift: no captures under {a.data}", file=sys.stderr)
        return 2
    ref = reference_of(model, caps, cfg, a.source or f"{len(caps)} captures under {a.data}, every TCP/UDP flow")
    if not a.dry_run:
        print(f"wrote {REFERENCE_KEY} into {write_reference(model.path, ref)}", file=sys.stderr)
    print(json.dumps(ref, indent=1))
    return 0


def _score_main(a: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .runtime import ModelError, load_model

    try:
        cfg = load_config(a.config)
        model = load_model(a.package, threads=1)
        ref = model_reference(model)
    except (ConfigError, ModelError, DriftError) as e:
        print(f"etool-sensor drift: {e}", file=sys.stderr)
        return 2
    if ref is None:
        print(f"etool-sensor drift: {model.path} has no {REFERENCE_KEY}", file=sys.stderr)
        return 2
    caps = [p for d in a.data for p in captures_in(d)]
    verdicts, hits = classify_captures(model, caps, cfg)
    mon = DriftMonitor(ref, window=None)
    for v, h in zip(verdicts, hits):
        mon.observe(v, h)
    print(f"{len(caps)} captures, {len(mon)} classified flows: {mon.score().describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etool_sensor.drift", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference", help="classify a package's training captures and write drift_reference "
                                         "into its manifest.json")
    r.add_argument("package", help="model package directory, or default / fast")
    r.add_argument("--data", required=True, help="the captures (a directory, its pcap/ folder if it has one)")
    r.add_argument("--config", help="etool.yaml whose flow, context and classify settings to use")
    r.add_argument("--source", help="what traffic, for the manifest (default: the capture count and folder)")
    r.add_argument("--dry-run", action="store_true", help="print the reference, do not write it")
    s = sub.add_parser("score", help="the drift score of captures against a package's reference")
    s.add_argument("package", help="model package directory, or default / fast")
    s.add_argument("--data", required=True, action="append", help="captures (a directory; repeatable)")
    s.add_argument("--config", help="etool.yaml")
    a = p.parse_args(argv)
    return _reference_main(a) if a.cmd == "reference" else _score_main(a)


if __name__ == "__main__":
    sys.exit(main())
