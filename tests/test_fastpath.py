"""The compiled packet path (etool_sensor/_native/capture.c) against the pure-Python reader (etool_sensor/capture/), which is the reference.

read_flows uses the engine for pcap and pcapng when it is built; these tests read the same inputs
both ways and require identical records, connection summaries (in the same order) and counters: on
every shared capture the engine applies to, with and without checksum validation, with other
collection parameters, gzip, truncated and corrupt files.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import astuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etool_sensor.capture import native, reader
from etool_sensor.flows import FlowParams
from etool_sensor.capture.reader import ReadStats, read_flows

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"

needs_engine = pytest.mark.skipif(native._fastpath is None, reason="C extension not built (no compiler)")


def _captures() -> list[Path]:
    if not DATA.is_dir():
        return []
    return sorted(p for p in DATA.rglob("*") if p.suffix in (".pcap", ".cap", ".gz", ".pcapng", ".trace"))


def _read(path, pure: bool, monkeypatch, **kw):
    if pure:
        monkeypatch.setenv("ETOOL_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("ETOOL_PURE_PYTHON", raising=False)
    st = ReadStats()
    conns: list = []
    recs = [r.to_dict() for r in read_flows(path, stats=st, on_conn=conns.append, **kw)]
    return recs, [astuple(c) for c in conns], astuple(st)


def _same(path, monkeypatch, **kw):
    a = _read(path, True, monkeypatch, **kw)
    b = _read(path, False, monkeypatch, **kw)
    for name, x, y in zip(("records", "summaries", "stats"), a, b):
        assert x == y, f"{path.name} {kw}: {name} differ"
    return a


def test_engine_is_built_where_required():
    """CI sets ETOOL_REQUIRE_FASTPATH so that a build that silently fell back to Python fails here."""
    if os.environ.get("ETOOL_REQUIRE_FASTPATH"):
        assert native._fastpath is not None, "etool_sensor._fastpath was not built"
        assert native.fast_path_available()
    elif native._fastpath is None:
        pytest.skip("C extension not built")


@needs_engine
@pytest.mark.parametrize("checksums", [True, False])
def test_identical_on_every_shared_capture(checksums, monkeypatch):
    files = [p for p in _captures() if native._fast_header(p) is not None]
    if not files:
        pytest.skip("shared data absent")
    frags = {4: 0, 6: 0}
    handle = native._FragShim.handle

    def counting(self, frag):
        frags[frag[0]] += 1
        return handle(self, frag)

    monkeypatch.setattr(native._FragShim, "handle", counting)
    flows = 0
    for p in files:
        recs, _, _ = _same(p, monkeypatch, checksums=checksums)
        flows += len(recs)
    # the engine handled most of the corpus, IPv4 and IPv6 fragments included
    assert len(files) > 0.6 * len(_captures()) and flows > 5000
    assert frags[4] > 0 and frags[6] > 0


@needs_engine
@pytest.mark.parametrize("params", [FlowParams(packets=1), FlowParams(packets=64, payload_bytes=0, payload_packets=0),
                                    FlowParams(packets=8, payload_bytes=1500, payload_packets=8)])
def test_identical_with_other_collection_parameters(params, monkeypatch):
    files = [p for p in _captures() if native._fast_header(p) is not None][::25]
    if not files:
        pytest.skip("shared data absent")
    for p in files:
        _same(p, monkeypatch, params=params)
        _same(p, monkeypatch, params=params, likely_server_ports={})


def _biggest() -> Path:
    files = [p for p in _captures() if p.suffix == ".pcap" and native._fast_header(p) is not None]
    if not files:
        pytest.skip("shared data absent")
    return max(files[:200], key=lambda p: p.stat().st_size)


@needs_engine
def test_identical_on_gzip_truncated_and_corrupt_files(tmp_path, monkeypatch):
    src = _biggest()
    data = src.read_bytes()
    gz = tmp_path / "x.pcap.gz"
    gz.write_bytes(gzip.compress(data))
    def no_uid(recs):
        return [{k: v for k, v in r.items() if k != "uid"} for r in recs]

    assert no_uid(_same(gz, monkeypatch)[0]) == no_uid(_same(src, monkeypatch)[0])  # uids name the file
    # cut inside the file header of a record, inside a record body, and a record length beyond any snaplen
    for i, cut in enumerate((24 + 7, len(data) // 2, len(data) - 3)):
        p = tmp_path / f"cut{i}.pcap"
        p.write_bytes(data[:cut])
        _, _, st = _same(p, monkeypatch)
        assert st[4] is True  # ReadStats.truncated
    corrupt = bytearray(data)
    corrupt[24 + 8:24 + 12] = (1 << 30).to_bytes(4, "little" if data[:4] == b"\xd4\xc3\xb2\xa1" else "big")
    p = tmp_path / "corrupt.pcap"
    p.write_bytes(bytes(corrupt))
    recs, _, st = _same(p, monkeypatch)
    assert st[4] is True and recs == []


@needs_engine
def test_progress_and_streaming(tmp_path, monkeypatch):
    monkeypatch.delenv("ETOOL_PURE_PYTHON", raising=False)
    src = _biggest()
    got: list[int] = []
    it = read_flows(src, progress=got.append)
    first = next(it)
    assert first.packets  # records come out before the end of the file
    list(it)
    assert sum(got) == src.stat().st_size


def _small_captures() -> list[bytes]:
    out = []
    for suffix in (".pcap", ".pcapng"):
        files = [p for p in _captures() if p.suffix == suffix and native._fast_header(p) is not None]
        files = [p for p in files if 2_000 < p.stat().st_size < 60_000]
        out += [p.read_bytes() for p in files[::max(1, len(files) // 8)][:8]]
    return out


_SMALL = _small_captures() if native._fastpath is not None else []


@needs_engine
@pytest.mark.skipif(not _SMALL, reason="shared data absent")
@settings(max_examples=int(os.environ.get("ETOOL_FUZZ_EXAMPLES", "120")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.integers(0, 10**6), st.lists(st.tuples(st.integers(24, 10**6), st.integers(0, 255)), min_size=1,
                                       max_size=40), st.booleans(), st.integers(0, 10**6))
def test_identical_on_mutated_captures(tmp_path_factory, which, edits, checksums, cut):
    """Random byte edits (headers, lengths, flags, payload) and cuts of real captures: the engine and the
    Python reader still agree on everything, malformed-packet counters included."""
    data = bytearray(_SMALL[which % len(_SMALL)])
    for pos, val in edits:
        data[pos % len(data)] = val
    data = bytes(data[:24 + cut % (len(data) - 23)])
    p = tmp_path_factory.mktemp("mut") / "m.pcap"
    p.write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        try:
            _same(p, mp, checksums=checksums)
        except reader.PcapError:
            pass  # the header itself was destroyed: both readers refuse the file alike (not via the engine)


def _shard_events(paths, shard, pure: bool, monkeypatch, **kw):
    if pure:
        monkeypatch.setenv("ETOOL_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("ETOOL_PURE_PYTHON", raising=False)
    st, sst = ReadStats(), ReadStats()
    out, last = [], None
    for key, kind, o in reader.read_shard(paths, shard, stats=st, shard_stats=sst, **kw):
        # keys never decrease, ticks included: a tick promises that nothing below it comes later
        assert last is None or key >= last, (last, key)
        last = key
        if kind == reader.EV_TICK:
            continue
        out.append((key, kind, o.to_dict() if kind == reader.EV_RECORD else astuple(o) if kind == reader.EV_CONN else o))
    return out, astuple(st), astuple(sst)


@needs_engine
@pytest.mark.parametrize("n", [2, 3])
def test_sharded_reading_identical(n, monkeypatch):
    """read_shard through the engine: the same events with the same keys as the Python read_shard, on every
    shared capture the engine applies to (several files per call, so packet indices run across files)."""
    files = [p for p in _captures() if native._fast_header(p) is not None]
    if not files:
        pytest.skip("shared data absent")
    for i in range(0, len(files), 40):
        batch = files[i:i + 40]
        for me in range(n):
            a = _shard_events(batch, (n, me), True, monkeypatch)
            b = _shard_events(batch, (n, me), False, monkeypatch)
            for name, x, y in zip(("events", "stats", "shard_stats"), a, b):
                assert x == y, f"{batch[0].name}..: shard {me}/{n}: {name} differ"
