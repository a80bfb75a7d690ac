"""Labelled and unlabelled flow sets built from captures with the same reader the sensor path uses.

Labels come from nDPI's verdicts (labels.csv): one row per flow, matched to our flow records by the
5-tuple in either direction (nDPI's client side need not be Zeek's originator). Every connection our
reader splits from one nDPI flow (port reuse, UDP timeouts) inherits that flow's label.
"""

from __future__ import annotations

import csv
import dataclasses
import ipaddress
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..context import Context, ContextTracker
from ..flows import FlowParams, FlowRecord
from ..capture.conntrack import zeek_flips
from ..capture.reader import LIKELY_SERVER_PORTS, PcapError, ReadStats, read_flows

Key = tuple[str, frozenset]


def _addr(a: str) -> str:
    try:
        return ipaddress.ip_address(a).compressed
    except ValueError:
        return a


def flow_key(proto: str, a: str, ap: int | str, b: str, bp: int | str) -> Key:
    """Direction-free 5-tuple key."""
    return (proto.lower(), frozenset({(_addr(a), int(ap)), (_addr(b), int(bp))}))


@dataclass
class LabelledSet:
    """Parallel lists, one entry per matched flow."""

    records: list[FlowRecord] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the chosen label column
    service: list[str] = field(default_factory=list)  # nDPI category
    app: list[str] = field(default_factory=list)
    pcap: list[str] = field(default_factory=list)
    encrypted: list[bool] = field(default_factory=list)
    label_column: str = "category"
    unmatched_rows: int = 0  # CSV rows with no flow in the capture
    truncated: list[str] = field(default_factory=list)  # captures that end mid-record: read up to the cut

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, idx: Iterable[int]) -> "LabelledSet":
        idx = list(idx)
        out = LabelledSet(label_column=self.label_column)
        for name in ("records", "contexts", "labels", "service", "app", "pcap", "encrypted"):
            src = getattr(self, name)
            setattr(out, name, [src[i] for i in idx])
        return out


def read_with_context(path: str | Path, params: FlowParams, window: float = 1.0, bursts: int = 3,
                      stats: ReadStats | None = None) -> tuple[list[FlowRecord], list[Context]]:
    """All flow records of one capture and their BURST contexts, in arrival order (`stats`: what the read
    counted, a cut capture included).

    Checksums are not verified (zeek -C): many corpus captures were taken on hosts with checksum
    offload, and Zeek's default would drop nearly half of nDPI's labelled flows.
    """
    tracker = ContextTracker(window=window, bursts=bursts)
    records, contexts = [], []
    for r in read_flows(path, params, checksums=False, stats=stats):
        contexts.append(tracker.observe(r))
        records.append(r)
    return records, contexts


def _progress(items: Sequence, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, file=sys.stderr, leave=False)


#: The columns of ../shared/data/ndpi/labels.csv that load_labelled reads (the label column comes on top).
LABEL_CSV_COLUMNS = ("pcap", "l4", "src", "sport", "dst", "dport", "encrypted", "category", "app")


class LabelsError(ValueError):
    """The labels CSV or the capture directory cannot be used (a user error, reported in one line)."""


def check_labelled_inputs(data_dir: str | Path, labels_csv: str | Path, label_column: str = "category") -> None:
    """Raise LabelsError unless `data_dir` is a directory and `labels_csv` a readable CSV with the columns
    load_labelled reads: `eval` and `train` check this before reading hundreds of captures."""
    if not Path(data_dir).is_dir():
        raise LabelsError(f"{data_dir}: not a directory (--data names the directory that holds the captures)")
    try:
        with open(labels_csv, newline="") as f:
            header = next(csv.reader(f), None)
    except OSError as e:
        raise LabelsError(f"{labels_csv}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabelsError(f"{labels_csv}: not a CSV file ({e})") from None
    need = [c for c in dict.fromkeys(LABEL_CSV_COLUMNS + (label_column,)) if c not in (header or [])]
    if need:
        raise LabelsError(f"{labels_csv}: missing column{'s' if len(need) > 1 else ''} {', '.join(need)} (a labels "
                          "CSV has the columns of nDPI's labels.csv, docs/model-card.md)")


def load_labelled(data_dir: str | Path, labels_csv: str | Path, *, label_column: str = "category",
                  encrypted_only: bool = False, params: FlowParams = FlowParams(), window: float = 1.0,
                  bursts: int = 3, pcaps: Sequence[str] | None = None, progress: bool = False,
                  on_error: Callable[[str, Exception], None] | None = None) -> LabelledSet:
    """Flows of every capture named in `labels_csv` that match a row with a non-empty label.

    `pcaps` restricts to some captures (tests use it to stay fast). Captures that cannot be read are
    reported to `on_error` (default: a line on stderr) and skipped; nothing else is dropped silently.
    """
    if label_column not in ("category", "app", "label", "master"):
        raise ValueError(f"label_column must be category, app, label or master, got {label_column!r}")
    check_labelled_inputs(data_dir, labels_csv, label_column)
    rows_by_pcap: dict[str, dict[Key, dict]] = defaultdict(dict)
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if pcaps is not None and row["pcap"] not in pcaps:
                    continue
                if (row["l4"] or "").upper() not in ("TCP", "UDP"):
                    continue
                if None in (row["src"], row["sport"], row["dst"], row["dport"]):
                    raise LabelsError(f"{labels_csv}: line {reader.line_num}: too few columns")
                try:
                    k = flow_key(row["l4"], row["src"], row["sport"], row["dst"], row["dport"])
                except (TypeError, ValueError) as e:  # a short row (None) or a port or address that is not one
                    raise LabelsError(f"{labels_csv}: line {reader.line_num}: not a flow row ({e})") from None
                rows_by_pcap[row["pcap"]].setdefault(k, row)
        except UnicodeDecodeError:
            raise LabelsError(f"{labels_csv}: line {reader.line_num + 1}: not UTF-8 text") from None
        except csv.Error as e:
            raise LabelsError(f"{labels_csv}: line {reader.line_num}: {e}") from None
    out = LabelledSet(label_column=label_column)
    data_dir = Path(data_dir)
    for name in _progress(sorted(rows_by_pcap), progress, "captures"):
        rows = rows_by_pcap[name]
        st = ReadStats()
        try:
            records, contexts = read_with_context(data_dir / name, params, window, bursts, stats=st)
            if st.truncated:
                out.truncated.append(name)
        except (PcapError, OSError) as e:
            (on_error or (lambda n, e: print(f"etool: skipping {n}: {e}", file=sys.stderr)))(name, e)
            out.unmatched_rows += len(rows)
            continue
        seen: set[Key] = set()
        for r, c in zip(records, contexts):
            k = flow_key(r.proto, r.orig_h, r.orig_p, r.resp_h, r.resp_p)
            row = rows.get(k)
            if row is None:
                continue
            seen.add(k)
            label = row[label_column]
            enc = row["encrypted"] == "Encrypted"
            if not label or (encrypted_only and not enc):
                continue
            out.records.append(r)
            out.contexts.append(c)
            out.labels.append(label)
            out.service.append(row["category"])
            out.app.append(row["app"])
            out.pcap.append(name)
            out.encrypted.append(enc)
        out.unmatched_rows += len(rows) - len(seen)
    return out


def in_captures(path: str | Path, names: set[str]) -> bool:
    """Whether the capture at `path` is one of `names`, capture paths as labels.csv writes them (relative to
    its data directory: a file name, or sub/dir/file.pcap). Matched on the path's trailing components, so a
    capture in a subfolder is found whatever directory `path` starts from."""
    parts = Path(path).parts
    return any("/".join(parts[i:]) in names for i in range(len(parts)))


def load_unlabelled(paths: Iterable[str | Path], params: FlowParams = FlowParams(), *, window: float = 1.0,
                    bursts: int = 3, progress: bool = False
                    ) -> tuple[list[FlowRecord], list[Context], list[str]]:
    """Flow records (+ contexts and capture name) of many captures for self-supervised training.

    Unreadable files are skipped quietly: the Zeek trace corpus holds deliberately broken captures.
    """
    records, contexts, names = [], [], []
    for p in _progress(list(paths), progress, "captures"):
        try:
            rs, cs = read_with_context(p, params, window, bursts)
        except (PcapError, OSError):
            continue
        records += rs
        contexts += cs
        names += [str(p)] * len(rs)
    return records, contexts, names


def one_sided(rec: FlowRecord, orig: bool) -> FlowRecord | None:
    """`rec` as a sensor sees it when only one direction of the connection passes it (asymmetric routing, a
    half-duplex tap): the originator's packets and chunks (`orig`) or the responder's, times from the first of
    them. Zeek's rule for a connection whose first packet is not a SYN (capture.conntrack): its sender is the
    originator unless it sends from a likely server port, so a responder seen alone from any other port
    becomes the originator, endpoints swapped. The BURST context is the caller's. None when that side sent
    fewer than 2 packets (classify answers such a flow without the model). An approximation: a real one-sided
    collection holds that side's first N packets, this holds those among the connection's first N (and keeps
    the record's `final`)."""
    pk = [p for p in rec.packets if p.is_orig == orig]
    if len(pk) < 2:
        return None
    first = pk[0]
    sp, dp = (rec.orig_p, rec.resp_p) if orig else (rec.resp_p, rec.orig_p)
    # the side seen becomes the originator unless Zeek flips it: the record's sides swap when the originator
    # seen flipped, or the responder seen did not
    flips = zeek_flips(rec.proto == "tcp", first.tcp_flags, sp, dp, LIKELY_SERVER_PORTS.get(rec.proto, frozenset()))
    swap = flips == orig
    t0 = first.dt
    out = dataclasses.replace(
        rec, uid=f"{rec.uid}{'>' if orig else '<'}", ts=rec.ts + t0,
        packets=[dataclasses.replace(p, dt=p.dt - t0, is_orig=p.is_orig != swap) for p in pk],
        payload=[dataclasses.replace(c, is_orig=c.is_orig != swap) for c in rec.payload if c.is_orig == orig])
    if swap:
        out.orig_h, out.orig_p, out.resp_h, out.resp_p = rec.resp_h, rec.resp_p, rec.orig_h, rec.orig_p
    return out


def with_one_sided(ds: LabelledSet, share: float, seed: int) -> LabelledSet:
    """`ds` plus, for a random `share` of its flows, a copy seen from one side (one_sided; the side drawn per
    flow), with the flow's label and context: training data for a sensor that sees some connections from one
    side only. `share` 0 gives `ds` itself."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"one_sided share must be in [0, 1], not {share}")
    if not share:
        return ds
    rng = np.random.default_rng(seed)
    pick = np.flatnonzero(rng.random(len(ds)) < share)
    sides = rng.random(len(pick)) < 0.5
    idx, copies = [], []
    for i, orig in zip(pick.tolist(), sides.tolist()):
        r = one_sided(ds.records[i], bool(orig))
        if r is not None:
            idx.append(i)
            copies.append(r)
    out = ds.subset(list(range(len(ds))) + idx)
    out.records[len(ds):] = copies
    return out
