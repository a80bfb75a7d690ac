"""`classify --workers N`: sharded reading gives read_flows' records exactly, and N processes give the
logs of one process (same rows, order, uids, summary, exit codes and errors).

The one documented difference: a flow's BURST context comes from the flows of its own shard. When a
client's connections are split over shards (shard_owner's client guess is wrong for some of them:
peer-to-peer flows with two ephemeral ports, equal ports on a LAN) the context, hence the confidence
(and in principle the label), of some of its flows differs. The bounds below are what we observed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from etool_sensor import runtime
from etool_sensor.capture import reader
from etool_sensor.capture.shard import shard_owner
from etool_sensor.cli import EXIT_INPUT, EXIT_INTERNAL, EXIT_TRUNCATED, main
from etool_sensor.flows import make_uid
from etool_sensor.zeeklog import read_ascii_log

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PCAPS = SHARED / "data" / "ndpi" / "pcap"
ZEEK = SHARED / "data" / "zeek-traces"
SAMPLE = REPO / "etool_sensor" / "data" / "sample.pcap"

needs_ndpi = pytest.mark.skipif(not PCAPS.is_dir(), reason="../shared/data/ndpi not present")
needs_zeek = pytest.mark.skipif(not ZEEK.is_dir(), reason="../shared/data/zeek-traces not present")

#: Zeek traces with what the sharded reader must get right: VLAN/MPLS, Linux SLL2, IPv6 fragments,
#: ERSPAN, gzip, many TCP connections, checksum errors.
ZEEK_TRACES = ["mixed-vlan-mpls.pcap", "linux_dlt_sll2.pcap", "ipv6-fragmented-dns.pcap", "erspanIII.pcap",
               "echo-connections.pcap.gz", "ssh/ssh.pcap", "smb/smb2.pcap", "http/206_example_b.pcap",
               "ipv6-http-atomic-frag.pcap", "ip-bogus-header-len.pcap", "modbus/modbusBig.pcap"]


def merged_shards(paths, n: int, checksums: bool):
    """read_shard for every shard, merged by key as the classify parent does: (records, conns, stats)."""
    streams, glob_stats, shard_stats = [], [], []
    for i in range(n):
        st, sst = reader.ReadStats(), reader.ReadStats()
        ev = list(reader.read_shard(paths, (n, i), stats=st, shard_stats=sst, checksums=checksums, tick=97))
        keys = [k for k, _, _ in ev]
        assert keys == sorted(keys)  # watermarks (ticks) hold: no event below an earlier tick
        streams.append(ev)
        glob_stats.append(st)
        shard_stats.append(sst)
    # what every shard sees alike is counted alike
    assert all(dataclasses.asdict(s) == dataclasses.asdict(glob_stats[0]) for s in glob_stats)
    evs = sorted((e for s in streams for e in s if e[1] != reader.EV_TICK), key=lambda e: (e[0], e[1]))
    uids, base, k = {}, None, 0
    recs, conns = [], []
    for _key, kind, obj in evs:
        if kind == reader.EV_NEW:
            cid, b = obj
            base, k = (b, 0) if b != base else (base, k)
            k += 1
            uids[cid] = make_uid(base, k)
        elif kind == reader.EV_RECORD:
            recs.append(dataclasses.replace(obj, uid=uids[obj.uid]))
        else:
            conns.append(dataclasses.replace(obj, uid=uids[obj.uid]))
    stats = glob_stats[0]
    for s in shard_stats:
        stats.add_counts(s)
    return recs, conns, stats, [len([e for e in s if e[1] == reader.EV_RECORD]) for s in streams]


def single(paths, checksums: bool):
    st, conns = reader.ReadStats(), []
    recs = list(reader.read_flows(paths, stats=st, on_conn=conns.append, checksums=checksums))
    return recs, conns, st


def assert_same_reading(paths, n: int, checksums: bool) -> None:
    recs, conns, st = single(paths, checksums)
    m_recs, m_conns, m_st, per_shard = merged_shards(paths, n, checksums)
    assert len(m_recs) == len(recs) and m_recs == recs  # same records, same content, same order, same uids
    assert m_conns == conns
    assert dataclasses.asdict(m_st) == dataclasses.asdict(st)
    assert sum(per_shard) == len(recs)


# --------------------------------------------------------------------------------------- the reader
@needs_ndpi
def test_read_shard_equals_read_flows_on_every_ndpi_capture() -> None:
    paths = sorted(PCAPS.iterdir())
    assert len(paths) > 400
    assert_same_reading(paths, 2, checksums=False)


@needs_ndpi
def test_read_shard_three_shards_with_checksums() -> None:
    paths = sorted(PCAPS.iterdir())[::4]
    assert_same_reading(paths, 3, checksums=True)


@needs_zeek
@pytest.mark.parametrize("checksums", [False, True])
def test_read_shard_equals_read_flows_on_zeek_traces(checksums: bool) -> None:
    paths = [ZEEK / t for t in ZEEK_TRACES]
    assert all(p.exists() for p in paths)
    assert_same_reading(paths, 2, checksums)
    assert_same_reading(paths, 3, checksums)


def test_shard_owner_keeps_both_directions_and_the_client_together() -> None:
    lsp = reader.LIKELY_SERVER_PORTS["tcp"]
    c, s1, s2 = bytes([192, 168, 1, 7]), bytes([8, 8, 8, 8]), bytes([1, 1, 1, 1])
    for n in (2, 3, 7):
        own = shard_owner(c, s1, 50000, 443, lsp, n)
        assert shard_owner(s1, c, 443, 50000, lsp, n) == own  # both directions
        assert shard_owner(c, s2, 40000, 8443, lsp, n) == own  # the private client's other connection
        pub = bytes([5, 6, 7, 8])  # public client: not on a likely server port, else the higher port
        assert shard_owner(pub, s1, 1030, 8080, lsp, n) == shard_owner(pub, s2, 61000, 443, lsp, n)
        assert shard_owner(c, s1, -1, -1, (), n) == shard_owner(s1, c, -1, -1, (), n)


# ---------------------------------------------------------------------------------- classify N vs 1
def classify_logs(tmp: Path, workers: int, paths, capsys, *extra):
    out = tmp / f"w{workers}"
    rc = main(["classify", "--workers", str(workers), *map(str, paths), "-o", str(out), *extra])
    _, err = capsys.readouterr()
    return rc, err.replace(str(out), "OUT"), read_ascii_log(out / "etool.log")[1], read_ascii_log(out / "conn.log")[1]


def _client_split(rows, n: int = 2) -> set[str]:
    """orig_h values whose flows shard_owner puts in more than one of n shards."""
    shards = defaultdict(set)
    for r in rows:
        a, b = ipaddress.ip_address(r["id.orig_h"]).packed, ipaddress.ip_address(r["id.resp_h"]).packed
        lsp = reader.LIKELY_SERVER_PORTS[r["proto"]]
        shards[r["id.orig_h"]].add(shard_owner(a, b, int(r["id.orig_p"]), int(r["id.resp_p"]), lsp, n))
    return {h for h, s in shards.items() if len(s) > 1}


@needs_ndpi
def test_two_workers_log_what_one_process_logs_on_the_ndpi_corpus(tmp_path: Path, capsys) -> None:
    paths = sorted(PCAPS.iterdir())
    rc1, err1, e1, c1 = classify_logs(tmp_path, 1, paths, capsys)
    rc2, err2, e2, c2 = classify_logs(tmp_path, 2, paths, capsys)
    assert rc1 == rc2 == EXIT_TRUNCATED  # the corpus holds one cut capture
    # summary line (counts, skipped, malformed) and warning; the unknown count is each log's own (a split
    # client's flow near the threshold may change its flag, below)
    assert re.sub(r"\d+ unknown", "N unknown", err1) == re.sub(r"\d+ unknown", "N unknown", err2)
    for err, rows in ((err1, e1), (err2, e2)):
        assert f" {sum(r['unknown'] == 'T' for r in rows)} unknown" in err
    assert c1 == c2  # conn.log: identical rows in identical order
    assert [r["uid"] for r in e1] == [r["uid"] for r in e2] and len(e1) > 7000  # etool.log: same rows, order
    conn_cols = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "status"]
    assert [[r[k] for k in conn_cols] for r in e1] == [[r[k] for k in conn_cols] for r in e2]
    differ = [(a, b) for a, b in zip(e1, e2) if a != b]
    # Observed (model 0.3.0): 87 of 8,081 rows (3,770 classified) differ, in confidence/alternatives
    # only; no service, app or unknown flag changes. Every one is a flow of a client that shard_owner
    # splits over the two shards, i.e. its BURST context was built from part of the client's flows.
    # Model 0.3.3: the same rows, and one of them near a tie changes its label with the partial context.
    assert len(differ) <= 87, len(differ)
    split = _client_split(e1)
    assert all(a["id.orig_h"] in split for a, _ in differ)
    labels = ["service", "app", "unknown"]
    assert sum(1 for a, b in differ if [a[k] for k in labels] != [b[k] for k in labels]) <= 1
    # flows of clients kept whole are byte-identical
    assert all(a == b for a, b in zip(e1, e2) if a["id.orig_h"] not in split)


@needs_zeek
def test_two_workers_log_what_one_process_logs_on_zeek_traces(tmp_path: Path, capsys) -> None:
    paths = [ZEEK / t for t in ZEEK_TRACES]
    rc1, err1, e1, c1 = classify_logs(tmp_path, 1, paths, capsys)
    rc2, err2, e2, c2 = classify_logs(tmp_path, 3, paths, capsys)  # 3 processes on 2 cores: still the same
    assert rc1 == rc2 and err1 == err2
    assert c1 == c2 and len(c1) > 100
    assert [r["uid"] for r in e1] == [r["uid"] for r in e2]
    differ = [(a, b) for a, b in zip(e1, e2) if a != b]
    # Observed: 2 of 540 rows (two SSH flows of 192.168.1.32, whose LAN flows go to another shard)
    # differ in confidence only.
    assert len(differ) <= 2, len(differ)
    assert all((a["service"], a["app"], a["unknown"]) == (b["service"], b["app"], b["unknown"]) for a, b in differ)
    split = _client_split(e1, 3)
    assert all(a["id.orig_h"] in split for a, _ in differ)
    assert all(a == b for a, b in zip(e1, e2) if a["id.orig_h"] not in split)


# ------------------------------------------------------------------------------------------ errors
def test_truncated_capture_with_workers(tmp_path: Path, capsys) -> None:
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])  # ends inside a packet record
    rc1, err1, e1, c1 = classify_logs(tmp_path, 1, [cut], capsys)
    rc2, err2, e2, c2 = classify_logs(tmp_path, 2, [cut], capsys)
    assert rc1 == rc2 == EXIT_TRUNCATED
    assert err1 == err2 and "warning: truncated capture" in err2 and "cut.pcap" in err2
    assert e1 == e2 and c1 == c2 and len(e2) > 0


def test_bad_capture_after_a_good_one(tmp_path: Path, capsys, monkeypatch) -> None:
    """A capture that fails while being read (it changed on disk after the check before reading, which is
    skipped here): the good file's rows are logged and the logs closed, the same with workers."""
    import etool_sensor.capture.reader as reader

    monkeypatch.setattr(reader, "check_captures", lambda paths: None)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"this is not a capture file at all")
    results = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        rc = main(["classify", "--workers", str(w), str(SAMPLE), str(bad), "-o", str(out)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == EXIT_INPUT and len(lines) == 1 and lines[0].startswith("etool-sensor: error: "), err
        assert "bad.pcap" in lines[0] and "Traceback" not in err
        etool = out / "etool.log"
        results.append((lines[0], read_ascii_log(etool)[1], read_ascii_log(out / "conn.log")[1],
                        etool.read_text().rstrip("\n").splitlines()[-1].startswith("#close")))
    assert results[0] == results[1]
    assert len(results[1][1]) == 9 and results[1][3]  # the good file's rows, and the log is closed


def test_not_a_capture_in_the_list_stops_before_reading_with_workers_too(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "notes.pcap"
    bad.write_bytes(b"this is not a capture file at all")
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        rc = main(["classify", "--workers", str(w), str(SAMPLE), str(bad), "-o", str(out)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == EXIT_INPUT and len(lines) == 1 and "notes.pcap: not a pcap or pcapng capture" in lines[0], err
        assert not out.exists()


def test_bad_model_with_workers_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    rc = main(["classify", "--workers", "2", "--model", str(tmp_path / "no-model"), str(SAMPLE), "-o", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == EXIT_INPUT and len(lines) == 1 and lines[0].startswith("etool-sensor: error: model"), err
    assert not out.exists()


def _in_worker(parent: int, action):
    orig = runtime.Model.classify

    def classify(self, *a, **k):
        if os.getpid() != parent:
            action()
        return orig(self, *a, **k)

    return classify


def _raise() -> None:
    raise ValueError("boom in the model")


def test_worker_exception_is_one_line_internal_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(runtime.Model, "classify", _in_worker(os.getpid(), _raise))  # inherited by fork
    out = tmp_path / "o"
    rc = main(["classify", "--workers", "2", str(SAMPLE), "-o", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == EXIT_INTERNAL and len(lines) == 1, err
    assert lines[0].startswith("etool-sensor: error: internal error: ValueError: boom in the model"), err
    assert "Traceback" not in err
    assert (out / "etool.log").read_text().rstrip("\n").splitlines()[-1].startswith("#close")


def test_worker_that_dies_is_reported(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(runtime.Model, "classify",
                        _in_worker(os.getpid(), lambda: os.kill(os.getpid(), signal.SIGKILL)))
    rc = main(["classify", "--workers", "2", str(SAMPLE), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == EXIT_INTERNAL and len(lines) == 1, err
    assert "classify worker" in lines[0] and "died (killed by signal 9)" in lines[0], err


def test_workers_option_is_validated(capsys) -> None:
    assert main(["classify", "--workers", "0", str(SAMPLE)]) == EXIT_INPUT
    assert "--workers" in capsys.readouterr().err


@needs_ndpi
def test_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    # the corpus 20 times over: a fast machine classifies it once in about a second, and the signal must
    # find the run still going
    paths = [str(p) for p in sorted(PCAPS.iterdir())] * 20
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "etool_sensor", "classify", "--workers", "2", "-q", *paths,
                          "-o", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         # as from a terminal: a test run started in the background (`cmd &` in a script)
                         # inherits SIGINT ignored, and Python then installs no Ctrl-C handler at all
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    children: list[str] = []
    while time.monotonic() < deadline and p.poll() is None:  # both workers running and writing
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        if len(children) == 2 and (out / "conn.log").exists():
            break
        time.sleep(0.05)
    time.sleep(0.3)
    assert p.poll() is None, "the run ended before it could be interrupted"
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert err.strip().splitlines() == ["etool-sensor: error: interrupted"], err
    assert len(children) == 2
    for c in children:
        assert not Path(f"/proc/{c}").exists() or "Z" in Path(f"/proc/{c}/stat").read_text().split()[2]
