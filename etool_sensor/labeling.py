"""Weak labels from nDPI for the flows of captures: `etool-sensor label`, and what `adapt` (train/adapt.py) learns from.

nDPI runs out of process or through a binding, never re-implemented here. Two engines:

* `ndpireader`: Debian/Ubuntu's `ndpiReader` (`apt-get install libndpi-bin`). On Debian 12 that is nDPI 4.2,
  the version that wrote the labels.csv files of the shared more/ and zeek-traces/ sets, so its categories are theirs (100 % of the
  encrypted flows agree on `more/` and `zeek-traces/`, docs/labels.md). Its per-flow lines (`-v 2`) are
  parsed.
* `nfstream`: the nfstream package from PyPI (`pip install '.[label]'`), which bundles a newer
  nDPI (5.0 in nfstream 6.6). Newer nDPI re-files some apps and names an unknown flow's category; the tables
  below map those back where the shared sets show 4.2's choice, and ENCRYPTED_MASTERS gives the `encrypted`
  column, which nfstream does not expose.

`auto` takes ndpiReader when it is on PATH, else nfstream. The output is the labels.csv schema of the shared
sets (docs/labels.md): one row per TCP/UDP flow nDPI reports, `pcap` relative to `--root`.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

#: labels.csv columns, in order (docs/labels.md)
COLUMNS = ("pcap", "l4", "src", "sport", "dst", "dport", "bidirectional", "label", "master", "app", "category",
           "encrypted", "confidence", "sni", "c2s_pkts", "c2s_bytes", "s2c_pkts", "s2c_bytes")

EXIT_OK, EXIT_INPUT, EXIT_TRUNCATED = 0, 2, 3

INSTALL_HINT = ("labelling needs nDPI: apt-get install libndpi-bin (ndpiReader, nDPI 4.2 as the shared labels) "
                "or pip install '.[label]' (nfstream)")

# nDPI 5 (nfstream 6.6) category names -> nDPI 4.2's. On the shared captures nDPI 5 names its categories as 4.2
# did (it adds new ones, e.g. Health, which stay as they are) except the category of an unknown flow, which 4.2
# leaves empty.
NFSTREAM_CATEGORIES = {"Unspecified": ""}

# Apps nDPI 5 files under another category than 4.2 did, with 4.2's (TLS.Microsoft: Cloud in the labels of more/
# and ndpi/, Web in nDPI 5; 306 -> 324 of more/'s 391 encrypted flows agree with it).
NFSTREAM_APP_CATEGORIES = {"Microsoft": "Cloud"}

# The masters nDPI 4.2 marks Encrypted on the shared sets (every flow of these masters, none of the others):
# nfstream has no encrypted flag, and in nDPI the flag belongs to the (master) protocol.
ENCRYPTED_MASTERS = frozenset((
    "AVAST", "AVASTSecureDNS", "AliCloud", "AmazonAWS", "ApplePush", "Azure", "CiscoVPN", "Citrix", "CryNetwork",
    "DNScrypt", "DTLS", "Discord", "DoH_DoT", "EpicGames", "FTPS", "Google", "IMAPS", "IPSec", "LineCall",
    "Microsoft", "Mumble", "Nats", "NoMachine", "OpenVPN", "POPS", "QUIC", "Radmin", "RipeAtlas", "SMTPS", "SRTP",
    "SSH", "Skype_Teams", "Skype_TeamsCall", "Softether", "Sonos", "Spotify", "Steam", "Syncthing", "TLS",
    "Tailscale", "TeamViewer", "Telegram", "Threema", "UFTP", "Viber", "Webex", "WhatsApp", "WireGuard", "Xiaomi",
    "Yojimbo", "ZUG", "Zoom"))


class LabelError(Exception):
    """A one-line user error (exit 2)."""


@dataclass
class CaptureResult:
    rows: list[dict[str, Any]]
    truncated: bool = False
    warning: str = ""


class _Plain:
    """The capture as a plain file an nDPI engine can open: gzip decompressed to a temporary file (libpcap
    and nfstream read no gzip), keeping everything before a cut in the stream (`cut`)."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp, self.cut = path, None, False
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if not gz:
            return
        from .capture.formats import copy_decompressed

        fd, self.tmp = tempfile.mkstemp(suffix=".pcap")
        self.path = Path(self.tmp)
        with os.fdopen(fd, "wb") as out:
            self.cut = copy_decompressed(path, out)

    def __enter__(self) -> "_Plain":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.tmp:
            os.unlink(self.tmp)


def _split_label(label: str) -> tuple[str, str]:
    """'TLS.Google' -> ('TLS', 'Google'); 'OpenVPN' -> ('OpenVPN', 'OpenVPN')."""
    master, _, app = label.partition(".")
    return master, app or master


# one flow line of `ndpiReader -v 2` (nDPI 4.2): tuple, [proto: N[.M]/Name][Encrypted|ClearText]
# [Confidence: X], then [cat: Name/N] unless the flow is Unknown, counts, and later [Hostname/SNI: name]
_FLOW = re.compile(r"^\t\d+\t(TCP|UDP) (\S+):(\d+) (<->|->) (\S+):(\d+) \[proto: [^/\]]+/([^\]]+)\]"
                   r"\[(Encrypted|ClearText)\]\[Confidence: ([^\]]+)\](?:\[cat: ([^/\]]+)/\d+\])?"
                   r"\[(\d+) pkts/(\d+) bytes (?:<->|->) (\d+) pkts/(\d+) bytes\]")
_SNI = re.compile(r"\[Hostname/SNI: ([^\]]*)\]")


class NdpiReader:
    """ndpiReader (nDPI's own example program) on PATH."""

    name = "ndpireader"

    def __init__(self, exe: str) -> None:
        self.exe = exe
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, errors="replace")
        m = re.search(r"nDPI (\S+)", out.stdout + out.stderr)
        self.version = m.group(1) if m else "?"

    def label(self, path: Path, rel: str) -> CaptureResult:
        with _Plain(path) as plain:
            p = subprocess.run([self.exe, "-i", str(plain.path), "-v", "2"], capture_output=True, text=True,
                               errors="replace")
        rows = []
        for line in p.stdout.splitlines():
            m = _FLOW.match(line)
            if not m:
                continue
            master, app = _split_label(m[7])
            sni = _SNI.search(line, m.end())
            rows.append({"pcap": rel, "l4": m[1], "src": m[2].strip("[]"), "sport": m[3], "dst": m[5].strip("[]"),
                         "dport": m[6], "bidirectional": int(m[4] == "<->"), "label": m[7], "master": master,
                         "app": app, "category": m[10] or "", "encrypted": m[8], "confidence": m[9],
                         "sni": sni[1] if sni else "", "c2s_pkts": m[11], "c2s_bytes": m[12], "s2c_pkts": m[13],
                         "s2c_bytes": m[14]})
        # libpcap's errors ("Error while reading ...: truncated dump file", "ERROR: could not open pcap file:
        # ...") come on stdout or stderr depending on the build
        err = next((l for l in (p.stderr + "\n" + p.stdout).splitlines()
                    if "Error while reading" in l or l.startswith("ERROR")), "")
        return CaptureResult(rows, plain.cut or "truncated" in err, err.strip())


class Nfstream:
    """nfstream's NFStreamer (bundled nDPI), names mapped to nDPI 4.2's."""

    name = "nfstream"

    def __init__(self) -> None:
        import nfstream

        self.nfstream = nfstream
        try:
            from _lib_engine import ffi, lib  # nfstream's compiled engine: its nDPI version

            self.version = ffi.string(lib.engine_lib_ndpi_version()).decode(errors="replace")
        except Exception:  # noqa: BLE001 - only the version string is at stake
            self.version = "?"
        self.version = f"{self.version} (nfstream {nfstream.__version__})"

    def label(self, path: Path, rel: str) -> CaptureResult:
        rows = []
        warning = ""
        with _Plain(path) as plain:
            try:
                self._stream(plain.path, rel, rows)
            except Exception as e:  # noqa: BLE001 - nfstream raises plain exceptions on a bad capture
                warning = str(e).splitlines()[0] if str(e) else type(e).__name__
        # nfstream reads a capture cut mid-packet without a word: the cut is found as classify finds it
        return CaptureResult(rows, plain.cut or "truncat" in warning.lower() or _cut_short(path), warning)

    def _stream(self, path: Path, rel: str, rows: list[dict[str, Any]]) -> None:
        """Append the rows of the capture at `path` (a plain file) to `rows`, flow by flow."""
        for f in self.nfstream.NFStreamer(source=str(path), n_dissections=255, statistical_analysis=False,
                                          n_meters=1, decode_tunnels=True):
            if f.protocol not in (6, 17):
                continue
            label = f.application_name or "Unknown"
            master, app = _split_label(label)
            cat = f.application_category_name or ""
            conf = NFSTREAM_CONFIDENCE.get(f.application_confidence, "DPI (partial)")
            rows.append({"pcap": rel, "l4": "TCP" if f.protocol == 6 else "UDP", "src": f.src_ip,
                         "sport": f.src_port, "dst": f.dst_ip, "dport": f.dst_port,
                         "bidirectional": int(f.dst2src_packets > 0), "label": label, "master": master,
                         "app": app,
                         "category": NFSTREAM_APP_CATEGORIES.get(app, NFSTREAM_CATEGORIES.get(cat, cat)),
                         "encrypted": "Encrypted" if master in ENCRYPTED_MASTERS else "ClearText",
                         "confidence": conf, "sni": f.requested_server_name or "",
                         "c2s_pkts": f.src2dst_packets, "c2s_bytes": f.src2dst_bytes,
                         "s2c_pkts": f.dst2src_packets, "s2c_bytes": f.dst2src_bytes})


#: nDPI's ndpi_confidence_t as nfstream reports it -> the names ndpiReader prints (nDPI 4.2's labels.csv)
NFSTREAM_CONFIDENCE = {0: "Unknown", 1: "Match by port", 2: "nBPF", 3: "DPI (partial)", 4: "DPI (partial cache)",
                       5: "DPI (cache)", 6: "DPI", 7: "Match by IP", 8: "DPI (aggressive)",
                       9: "Match by custom rule"}


def _cut_short(path: Path) -> bool:
    """Whether the capture ends inside a record, as etool's reader (classify) sees it."""
    from .capture.reader import PcapError, ReadStats, read_flows

    st = ReadStats()
    try:
        for _ in read_flows(path, stats=st, checksums=False):
            pass
    except PcapError:
        return False
    return bool(st.truncated)


def find_engine(name: str = "auto") -> Any:
    """The labelling engine `name` (auto: ndpiReader on PATH, else nfstream); LabelError naming what to install."""
    if name in ("auto", "ndpireader"):
        exe = shutil.which("ndpiReader")
        if exe:
            return NdpiReader(exe)
        if name == "ndpireader":
            raise LabelError("ndpiReader is not on PATH: apt-get install libndpi-bin")
    try:
        return Nfstream()
    except ImportError:
        raise LabelError(INSTALL_HINT if name == "auto" else "nfstream is not installed: "
                         "pip install '.[label]'") from None


def check_captures(paths: Sequence[str | Path], warn: Callable[[str], None] | None = None) -> list[str]:
    """The captures to label, checked: capture.reader.select_captures (a directory stands for the capture files
    under it, as for classify); a PcapError is a LabelError (exit 2). A file found under a directory that is
    no capture is skipped and handed to `warn`."""
    from .capture.reader import PcapError, select_captures

    try:
        files, skipped = select_captures(paths)
    except PcapError as e:
        raise LabelError(str(e)) from None
    for why in skipped:
        if warn is not None:
            warn(f"skipped {why}")
    return files


def default_root(paths: Sequence[str | Path]) -> Path:
    """The deepest directory that holds every capture named; a directory named holds itself, so that `label
    DIR` writes paths relative to DIR (what `adapt --data DIR` reads)."""
    return Path(os.path.commonpath([os.path.abspath(p) if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
                                    for p in paths]))


@dataclass
class LabelStats:
    captures: int = 0
    flows: int = 0
    encrypted: int = 0
    unknown: int = 0
    truncated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # "CAPTURE: what the engine said", other read errors


def label_rows(paths: Sequence[str | Path], root: str | Path, engine: Any, *, progress: bool = False,
               stats: LabelStats | None = None) -> Iterator[dict[str, Any]]:
    """labels.csv rows of every capture, one capture at a time (nothing held beyond one capture's flows);
    truncated captures are labelled up to the cut and named in `stats.truncated`."""
    stats = stats if stats is not None else LabelStats()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="capture", file=sys.stderr, desc="label", leave=False, dynamic_ncols=True)
    root = Path(root).resolve()
    try:
        for p in paths:
            path = Path(p).resolve()
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = os.path.relpath(path, root)
            res = engine.label(path, rel)
            stats.captures += 1
            if res.truncated:
                stats.truncated.append(str(p))
            elif res.warning:
                stats.warnings.append(f"{p}: {res.warning}")
            for r in res.rows:
                stats.flows += 1
                stats.encrypted += r["encrypted"] == "Encrypted"
                stats.unknown += r["master"] == "Unknown"
                yield r
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def write_labels(paths: Sequence[str | Path], out: str | Path, root: str | Path | None = None, *,
                 engine: Any = None, progress: bool = False) -> LabelStats:
    """Label `paths` into the CSV `out` (written to OUT.tmp, then renamed); the stats of the run."""
    root = Path(root) if root is not None else default_root(paths)
    paths = check_captures(paths)
    engine = engine or find_engine()
    if not root.is_dir():
        raise LabelError(f"{root}: --root is not a directory")
    out = Path(out)
    if out.is_dir():
        raise LabelError(f"{out}: is a directory; -o names the labels CSV to write")
    if not out.resolve().parent.is_dir():
        raise LabelError(f"{out.parent}: no such directory (it holds the labels CSV -o {out})")
    tmp = out.with_name(out.name + ".tmp")
    stats = LabelStats()
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            for r in label_rows(paths, root, engine, progress=progress, stats=stats):
                w.writerow(r)
    except OSError as e:
        raise LabelError(f"{out}: cannot write: {e.strerror or e}") from None
    tmp.replace(out)
    return stats


def add_label_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="pcap or pcapng file(s), or directories of them (every capture file under it, as classify)")
    p.add_argument("-o", "--output", required=True, metavar="CSV", help="labels CSV to write (docs/labels.md)")
    p.add_argument("--root", metavar="DIR", help="the `pcap` column is relative to DIR (default: the deepest "
                                                 "directory holding every capture); pass it as --data to adapt")
    p.add_argument("--engine", choices=("auto", "ndpireader", "nfstream"), default="auto",
                   help="nDPI binding (default auto: ndpiReader on PATH, else nfstream)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")


def label_main(args: argparse.Namespace) -> int:
    prog = "etool-sensor"
    try:
        root = Path(args.root) if args.root else default_root(args.captures)
        args.captures = check_captures(args.captures, warn=lambda w: print(f"{prog}: warning: {w}", file=sys.stderr))
        engine = find_engine(args.engine)
        stats = write_labels(args.captures, args.output, root, engine=engine,
                             progress=not args.quiet and sys.stderr.isatty())
    except LabelError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    if not args.quiet:
        print(f"{prog}: {stats.captures} captures, {stats.flows} flows ({stats.encrypted} encrypted, "
              f"{stats.unknown} unknown) labelled by {engine.name} (nDPI {engine.version}) -> {args.output} "
              f"(pcap relative to {root.resolve()})", file=sys.stderr)
    for w in stats.warnings:
        print(f"{prog}: warning: {w}", file=sys.stderr)
    if stats.truncated:
        print(f"{prog}: warning: truncated capture{'s' if len(stats.truncated) > 1 else ''} "
              f"({', '.join(stats.truncated)}): labelled up to the cut", file=sys.stderr)
    # a capture without all its rows is a partial result, whatever the reason: a script that labels and then
    # adapts must not take it for a whole one
    return EXIT_TRUNCATED if stats.truncated or stats.warnings else EXIT_OK
