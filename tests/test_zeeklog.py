"""Zeek log writers: byte-for-byte against conn.log files that real Zeek wrote, escaping, JSON, disk full."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etool_sensor.zeeklog import (ascii_row_formatter, CONN_FIELDS, ETOOL_FIELDS, AsciiLogWriter, JsonLogWriter, LogWriteError,
                                  escape, format_ascii, format_double, open_log, read_ascii_log, read_json_log)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BASELINES = SHARED / "reference" / "zeek-conn-baselines"

needs_shared = pytest.mark.skipif(not BASELINES.is_dir(), reason="../shared/reference not present")


def _unescape(s: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), s)


def _parse(ztype: str, raw: str):
    """A Zeek ASCII value back into the Python value our writer takes (the inverse of format_ascii)."""
    if raw == "-":
        return None
    if ztype.startswith(("set[", "vector[")):
        if raw == "(empty)":
            return []
        inner = ztype[ztype.index("[") + 1:-1]
        return [_parse(inner, x) for x in raw.split(",")]
    if ztype in ("time", "interval", "double"):
        return float(raw)
    if ztype in ("count", "int", "port"):
        return int(raw)
    if ztype == "bool":
        return raw == "T"
    if raw == "(empty)":
        return ""
    return _unescape(raw)


def _zeek_logs() -> list[Path]:
    out = []
    for p in sorted(BASELINES.glob("*.log")):
        if p.read_text(errors="replace").count("#separator"):
            out.append(p)
    return out


@needs_shared
def test_reproduces_every_real_zeek_conn_log(tmp_path: Path) -> None:
    """Re-writing each baseline's rows with its own field spec gives the same header and the same rows."""
    logs = _zeek_logs()
    assert len(logs) > 50
    for src in logs:
        lines = [ln for ln in src.read_text().splitlines() if not ln.startswith("### ")]
        header = {re.split(r"[\t ]", ln, maxsplit=1)[0]: ln for ln in lines if ln.startswith("#")}
        names = header["#fields"].split("\t")[1:]
        types = header["#types"].split("\t")[1:]
        rows = [ln.split("\t") for ln in lines if not ln.startswith("#")]
        out = tmp_path / "x.log"
        with AsciiLogWriter(out, list(zip(names, types)), log_path="conn") as w:
            for r in rows:
                # btest canonified timestamps (XXXXXXXXXX.XXXXXX); give those a placeholder value.
                w.write([None if "X" in raw and t == "time" else _parse(t, raw) for t, raw in zip(types, r)])
        got = out.read_text().splitlines()
        got_header = [ln for ln in got if ln.startswith("#")]
        for key in ("#separator", "#set_separator", "#empty_field", "#unset_field", "#path", "#fields", "#types"):
            assert header[key] in got_header, (src.name, key)
        assert got_header[5].startswith("#open\t") and re.fullmatch(r"#open\t\d{4}(-\d\d){5}", got_header[5])
        assert re.fullmatch(r"#close\t\d{4}(-\d\d){5}", got[-1])
        got_rows = [ln.split("\t") for ln in got if not ln.startswith("#")]
        assert len(got_rows) == len(rows)
        for want, have in zip(rows, got_rows):
            for t, a, b in zip(types, want, have):
                if "X" in a and t == "time":
                    assert b == "-"
                else:
                    assert a == b, (src.name, t, a, b)


def test_header_order_and_format(tmp_path: Path) -> None:
    with open_log(tmp_path, "etool", ETOOL_FIELDS) as w:
        pass
    lines = (tmp_path / "etool.log").read_text().splitlines()
    assert lines[0] == "#separator \\x09"
    assert lines[1:5] == ["#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tetool"]
    assert re.fullmatch(r"#open\t\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d", lines[5])
    assert lines[6] == "#fields\t" + "\t".join(n for n, _ in ETOOL_FIELDS)
    assert lines[7] == "#types\t" + "\t".join(t for _, t in ETOOL_FIELDS)
    assert lines[8].startswith("#close\t") and len(lines) == 9


def test_value_rendering() -> None:
    assert format_ascii("time", 1300475167.0965352) == "1300475167.096535"
    assert format_ascii("interval", 0) == "0.000000"
    assert format_ascii("double", 0.5) == "0.5"
    assert format_ascii("double", 1) == "1.0"
    assert format_ascii("double", 0.1234567) == "0.123457"
    assert format_double(-0.0) == "0.0"
    assert format_ascii("bool", True) == "T" and format_ascii("bool", False) == "F"
    assert format_ascii("string", None) == "-"
    assert format_ascii("string", "") == "(empty)"
    assert format_ascii("string", "-") == "\\x2d"
    assert format_ascii("string", "(empty)") == "\\x28empty)"
    assert format_ascii("string", "a\tb\nc\\d") == "a\\x09b\\x0ac\\x5cd"
    assert format_ascii("string", "a,b") == "a,b"  # a comma only needs escaping inside a container
    assert format_ascii("vector[string]", ["a,b", "c"]) == "a\\x2cb,c"
    assert format_ascii("vector[string]", []) == "(empty)"
    assert format_ascii("set[string]", None) == "-"
    assert format_ascii("string", "Zürich ☃") == "Zürich ☃"  # valid UTF-8 passes through
    assert format_ascii("string", b"\xff\x00ok") == "\\xff\\x00ok"
    assert format_ascii("port", 443) == "443"
    assert format_ascii("addr", "2001:db8::1") == "2001:db8::1"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_escaped_strings_never_break_the_format(s: str) -> None:
    out = format_ascii("string", s)
    assert "\t" not in out and "\n" not in out and "\r" not in out
    if s:
        assert _unescape(out) == s


_TYPES = ["time", "interval", "double", "bool", "count", "int", "port", "addr", "string", "enum",
          "vector[string]", "set[string]"]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["-", "(empty)", "", "a,b", "a\tb", "x\\y"]),
                    st.lists(st.one_of(st.none(), st.text(max_size=6),
                                       st.sampled_from(["-", "(empty)", "", ",", "a,b", "x\\y", "Web:0.5", "é"])),
                             max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TYPES), _VALUES), min_size=1, max_size=8))
def test_generated_row_formatter_equals_field_by_field(fields) -> None:
    """The per-log generated formatter (ascii_row_formatter) prints what format_ascii prints per field."""
    types = [t for t, _ in fields]
    row = [v for _, v in fields]
    want = got = None
    try:
        want = "\t".join(format_ascii(t, v) for t, v in fields)
    except (TypeError, ValueError, OverflowError) as e:
        want = type(e)
    try:
        got = ascii_row_formatter(types)(row)
    except (TypeError, ValueError, OverflowError) as e:
        got = type(e)
    assert got == want


def test_json_lines(tmp_path: Path) -> None:
    row = {"ts": 1700000000.25, "uid": "CabcdEFGH0123456789", "id.orig_h": "10.0.0.1", "id.orig_p": 51000,
           "id.resp_h": "1.1.1.1", "id.resp_p": 443, "proto": "tcp", "service": "Web", "app": None,
           "confidence": 0.875, "alternatives": ["Web:0.875", "Chat:0.1"], "unknown": False, "status": "ok",
           "model": "etool@1"}
    with open_log(tmp_path, "etool", ETOOL_FIELDS, "json") as w:
        assert isinstance(w, JsonLogWriter)
        w.write(row)
    text = (tmp_path / "etool.log").read_text()
    assert not text.startswith("#")
    (obj,) = read_json_log(tmp_path / "etool.log")
    assert list(obj) == [n for n, _ in ETOOL_FIELDS if n not in ("app", "latency")]  # unset fields are left out, order kept
    assert obj["ts"] == 1700000000.25 and obj["id.resp_p"] == 443 and obj["unknown"] is False
    assert obj["alternatives"] == ["Web:0.875", "Chat:0.1"]
    assert json.loads(text.splitlines()[0]) == obj


def test_sequence_and_mapping_rows_agree(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    vals = [1.0, "C1", "1.2.3.4", 1, "5.6.7.8", 2, "udp", None, 0.5, 10, 20, "SF", None, None, 0, "Dd", 1, 38,
            1, 48, None]
    with open_log(a, "conn", CONN_FIELDS, open_time=0) as w:
        w.write(vals)
    with open_log(b, "conn", CONN_FIELDS, open_time=0) as w:
        w.write(dict(zip([n for n, _ in CONN_FIELDS], vals)))
    ra, rb = read_ascii_log(a / "conn.log")[1], read_ascii_log(b / "conn.log")[1]
    assert ra == rb and ra[0]["proto"] == "udp" and ra[0]["service"] == "-"
    with pytest.raises(KeyError):
        open_log(a, "conn", CONN_FIELDS).write({"nope": 1})
    with pytest.raises(ValueError):
        open_log(a, "conn", CONN_FIELDS).write([1, 2])
    with pytest.raises(ValueError):
        open_log(a, "conn", [("x", "table[string]")])


def test_flushes_regularly(tmp_path: Path) -> None:
    w = open_log(tmp_path, "etool", ETOOL_FIELDS, flush_rows=10)
    for i in range(25):
        w.write({"uid": f"C{i}"})
    assert w.written == 20 and w.pending == 5  # two flushes so far; a crash now loses at most 5 rows
    assert len(read_ascii_log(tmp_path / "etool.log")[1]) == 20
    w.close()
    assert w.written == 25 and len(read_ascii_log(tmp_path / "etool.log")[1]) == 25


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_reported_with_counts() -> None:
    w = AsciiLogWriter("/dev/full", ETOOL_FIELDS, log_path="etool", flush_rows=4)
    with pytest.raises(LogWriteError) as ei:
        for i in range(10):
            w.write({"uid": f"C{i}"})
    e = ei.value
    assert e.written == 0 and e.unwritten == 4 and "No space left on device" in str(e)
    with pytest.raises(LogWriteError) as ei2:  # later writes fail too, and are counted
        w.write({"uid": "late"})
    assert ei2.value.unwritten == 5
    with pytest.raises(LogWriteError):
        w.close()
    assert w.closed


def test_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(LogWriteError) as ei:
        open_log(tmp_path / "missing" / "dir", "etool", ETOOL_FIELDS)
    assert "No such file" in str(ei.value)


def test_escape_helper() -> None:
    assert escape("a\x7fb\x85") == "a\\x7fb\\x85"


# ------------------------------------------------------------------- the compiled row writer (tsv_row)
def _py_formatter(types):
    """The generated Python formatter alone (the compiled path switched off)."""
    import etool_sensor.zeeklog as zl

    saved, zl._tsv_row = zl._tsv_row, None
    try:
        return zl.ascii_row_formatter(types)
    finally:
        zl._tsv_row = saved


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TYPES), st.one_of(
    _VALUES, st.floats(), st.sampled_from([-0.0, 0.0, 1e16, 1e300, -1e-7, 2.5e-7, float("inf"), float("-nan")]),
    st.integers(), st.lists(st.sampled_from(["Web:0.5", "a", "b,c", "-", "(empty)", "", "é", "x\ty"]), max_size=4))),
    min_size=1, max_size=10))
def test_compiled_row_writer_writes_what_python_writes(fields) -> None:
    import etool_sensor.zeeklog as zl

    if zl._tsv_row is None:
        pytest.skip("no compiled extension")
    types = [t for t, _ in fields]
    row = [v for _, v in fields]
    outs = []
    for f in (ascii_row_formatter(types), _py_formatter(types)):
        try:
            outs.append(f(row))
        except (TypeError, ValueError, OverflowError) as e:
            outs.append(type(e))
    assert outs[0] == outs[1]


def test_compiled_row_writer_takes_real_rows(tmp_path: Path) -> None:
    """classify's rows are plain: the compiled writer writes them (it does not decline them all to Python)."""
    import etool_sensor.zeeklog as zl
    from etool_sensor.cli import main as cli_main

    if zl._tsv_row is None:
        pytest.skip("no compiled extension")
    sample = Path(__file__).resolve().parents[1] / "etool_sensor" / "data" / "sample.pcap"
    assert cli_main(["classify", "-q", str(sample), "-o", str(tmp_path)]) == 0
    for name, fields in (("etool", ETOOL_FIELDS), ("conn", CONN_FIELDS)):
        _, rows = read_ascii_log(tmp_path / f"{name}.log")
        assert rows
        codes = "".join(zl._TSV_CODES[zl._check_type(t) + ("[]" if zl._is_container(t) else "")]
                        for _, t in fields).encode()
        for r in rows:  # the logged text, parsed back into values of the field types, written again alike
            vals = [None if r[n] == "-" else r[n] for n, _ in fields]
            typed = [float(v) if v is not None and t in ("time", "interval", "double") else
                     int(v) if v is not None and t in ("count", "port") else
                     (v == "T") if v is not None and t == "bool" else
                     (v.split(",") if v != "(empty)" else []) if v is not None and t.startswith("vector") else v
                     for v, (_, t) in zip(vals, fields)]
            got = zl._tsv_row(codes, typed)
            assert got is not None and got == _py_formatter([t for _, t in fields])(typed)
