"""Ingest benchmark: our read_flows (compiled packet path and pure Python) vs a plain dpkt loop vs
tshark -T fields, same large capture.

Builds /tmp/etool_bench.pcap by concatenating the Ethernet packets of many captures in
../shared/data (timestamps rewritten to increase), then times each reader. Not a test.
Usage: python bench/bench_ingest.py [--packets N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

from etool_sensor.capture.native import fast_path_available
from etool_sensor.capture.reader import ReadStats, read_flows

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OUT = Path("/tmp/etool_bench.pcap")


def build(target: int) -> int:
    import dpkt  # the bench extra; imported where used, so --help works without it

    n = 0
    t = 1_600_000_000.0
    part = OUT.with_name(OUT.name + ".part")  # renamed when whole: a killed build leaves no short capture
    with open(part, "wb") as w:
        w.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        files = sorted((SHARED / "data" / "ndpi" / "pcap").glob("*.pcap*")) + sorted(
            (SHARED / "data" / "zeek-traces").rglob("*.pcap"))
        while n < target:
            before = n
            for f in files:
                try:
                    with open(f, "rb") as fh:
                        rd = dpkt.pcap.Reader(fh) if not f.name.endswith("ng") else dpkt.pcapng.Reader(fh)
                        if rd.datalink() != 1:
                            continue
                        for _ts, buf in rd:
                            t += 0.0005
                            s = int(t)
                            w.write(struct.pack("<IIII", s, int((t - s) * 1e6), len(buf), len(buf)) + buf)
                            n += 1
                except Exception:
                    continue
                if n >= target:
                    break
            if n == before:
                part.unlink()
                raise SystemExit(f"bench_ingest: no readable Ethernet captures under {SHARED / 'data'}; cannot "
                                 f"build {OUT}")
    part.replace(OUT)
    return n


def bench_ours(checksums=True, pure=False):
    """read_flows over the capture; pure=True forces the pure-Python reader (ETOOL_PURE_PYTHON)."""
    old = os.environ.pop("ETOOL_PURE_PYTHON", None)
    if pure:
        os.environ["ETOOL_PURE_PYTHON"] = "1"
    try:
        if not pure and not fast_path_available():
            return None
        st = ReadStats()
        t = time.perf_counter()
        for _ in read_flows(OUT, stats=st, checksums=checksums):
            pass
        return time.perf_counter() - t, st.packets, st.flows
    finally:
        os.environ.pop("ETOOL_PURE_PYTHON", None)
        if old is not None:
            os.environ["ETOOL_PURE_PYTHON"] = old


def bench_dpkt():
    import dpkt

    t = time.perf_counter()
    n = 0
    flows = set()
    with open(OUT, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            n += 1
            try:
                ip = dpkt.ethernet.Ethernet(buf).data
            except dpkt.dpkt.UnpackError:
                continue
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                a, b = (ip.src, ip.data.sport), (ip.dst, ip.data.dport)
                flows.add((min(a, b), max(a, b), ip.p))
    return time.perf_counter() - t, n, len(flows)


def bench_tshark():
    if not shutil.which("tshark"):
        return None
    t = time.perf_counter()
    p = subprocess.run(["tshark", "-n", "-r", str(OUT), "-T", "fields", "-e", "frame.number", "-e", "tcp.stream",
                        "-e", "udp.stream"], capture_output=True, text=True)
    dt = time.perf_counter() - t
    lines = p.stdout.splitlines()
    streams = {(x.split("\t")[1], x.split("\t")[2]) for x in lines if "\t" in x}
    return dt, len(lines), len(streams)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=500_000)
    a = ap.parse_args()
    n = build(a.packets)
    print(f"capture: {OUT} {n} packets, {OUT.stat().st_size / 1e6:.1f} MB")
    rows = [("etool read_flows", bench_ours()), ("etool (checksums off)", bench_ours(False)),
            ("etool pure Python", bench_ours(pure=True)), ("etool pure Py, cks off", bench_ours(False, pure=True)),
            ("dpkt loop", bench_dpkt())]
    ts = bench_tshark()
    rows.append(("tshark -T fields", ts) if ts else ("tshark -T fields", None))
    ref = rows[0][1] or rows[2][1]  # the compiled reader, or the Python one where it is not built
    base = ref[1] / ref[0]
    print(f"{'reader':24} {'seconds':>8} {'packets/s':>11} {'flows/s':>9} {'ours/this':>9}")
    for name, r in rows:
        if r is None:
            print(f"{name:24} {'(not available)':>30}")
            continue
        dt, pk, fl = r
        print(f"{name:24} {dt:8.2f} {pk / dt:11,.0f} {fl / dt:9,.0f} {base / (pk / dt):9.2f}")


if __name__ == "__main__":
    main()
