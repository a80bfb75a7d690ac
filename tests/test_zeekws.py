"""Codec conformance for the Zeek WebSocket API v1 (Broker JSON): the reference baselines and schema,
every @data-type, the Zeek event envelope, and the ETooL::flow / ETooL::verdict contract."""

from __future__ import annotations

import ast
import copy
import ipaddress
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etool_sensor.zeek import broker_json as bj, client, messages, wire
from etool_sensor.flows import Chunk, FlowRecord, Packet, Verdict

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "zeek-websocket"


def _need_ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"{REF} is not present")
    return REF


@pytest.fixture(params=["orjson", "stdlib"])
def json_impl(request):
    if request.param == "orjson" and bj._orjson is None:
        pytest.skip("orjson not installed")
    bj.force_stdlib_json(request.param == "stdlib")
    yield request.param
    bj.force_stdlib_json(False)


@pytest.fixture(scope="module")
def schema():
    jsonschema = pytest.importorskip("jsonschema")
    s = json.loads((_need_ref() / "v1-broker-out.schema.json").read_text())
    return jsonschema, s


def broker_schema(s: dict) -> dict:
    """The upstream schema's timespan pattern omits "us", which Broker's own encoder emits
    (format/json.hh picks ns/us/ms/s); validate our output against the schema with that one fix."""
    s = copy.deepcopy(s)
    s["definitions"]["Timespan"]["properties"]["data"]["pattern"] = "^-?[0-9]+(ns|us|ms|s|min|h|d)$"
    return s


def validate(schema, msg: dict, fixed: bool = True) -> None:
    jsonschema, s = schema
    jsonschema.validate(msg, broker_schema(s) if fixed else s, cls=jsonschema.Draft202012Validator)


# ----------------------------------------------------------------------------------- baselines
def baseline_messages() -> list[tuple[str, dict]]:
    """Every server message printed in the baselines (Python dict reprs after a label)."""
    out = []
    for f in sorted(_need_ref().joinpath("baselines").iterdir()):
        for line in f.read_text().splitlines():
            i = line.find("{'type'")
            if i < 0:
                continue
            out.append((f"{f.name}: {line[:40]}", ast.literal_eval(line[i:])))
    return out


def baseline_event_args() -> list[tuple[str, list]]:
    """Every event seen by a client in the baselines: (name, [@data-type objects])."""
    out = []
    for f in sorted(_need_ref().joinpath("baselines").iterdir()):
        for line in f.read_text().splitlines():
            if line.startswith('{"client"') and '"event_args"' in line:
                d = json.loads(line)
                out.append((d["event_name"], d["event_args"]))
            m = re.search(r"event name (\w+) args (\[.*\])$", line)
            if m:
                out.append((m.group(1), ast.literal_eval(m.group(2))))
            m = re.match(r"(?:pong|ping) (\{'@data-type'.*?\}) (\{'@data-type'.*\})$", line)
            if m:
                out.append((ast.literal_eval(m.group(1))["data"], ast.literal_eval(m.group(2))["data"]))
    return out


def test_baselines_found():
    msgs = baseline_messages()
    kinds = {m["type"] for _, m in msgs}
    assert kinds == {"ack", "error", "data-message"}, kinds
    assert len(baseline_event_args()) > 100


def test_every_baseline_message_matches_schema_and_decodes(schema, json_impl):
    for where, m in baseline_messages():
        validate(schema, m, fixed=False)
        text = json.dumps(m)
        parsed = messages.parse_message(text)
        if m["type"] == "ack":
            assert parsed == messages.Ack(m["endpoint"], m["version"]), where
        elif m["type"] == "error":
            assert parsed == messages.ErrorMessage(m["code"], m["context"]), where
        else:
            ev = messages.event_from_data(parsed)
            assert ev.topic == m["topic"]
            assert ev.name in ("ping", "pong")
            # re-encoding the decoded event reproduces the message exactly (metadata included)
            again = json.loads(messages.encode_event(ev.topic, ev.name, ev.args, ev.metadata or None))
            if m["data"][2]["data"][2:] == [{"@data-type": "vector", "data": []}]:
                again["data"][2]["data"].append({"@data-type": "vector", "data": []})
            ts_fix(m)
            assert again == m, where


def ts_fix(m: dict) -> None:
    """Broker writes timestamps with exactly 3 fraction digits; a client may omit them (the metadata
    baseline does). Normalise the expected message to Broker's rendering."""
    def walk(o):
        if isinstance(o, dict):
            if o.get("@data-type") == "timestamp" and "." not in o["data"]:
                o["data"] += ".000"
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(m)


def test_baseline_event_args_round_trip(json_impl):
    for name, args in baseline_event_args():
        vals = [bj.decode_value(a) for a in args]
        assert [bj.encode_value(v) for v in vals] == args, name


def test_baseline_error_messages_are_what_the_peer_sends():
    from tests.support.zeek_peer import ERR_BAD_EVENT, ERR_BAD_JSON, ERR_NOT_ARRAY, ERR_NOT_STRING  # noqa: F401
    texts = {(m["code"], m["context"]) for _, m in baseline_messages() if m["type"] == "error"}
    assert ("deserialization_failed", "failed to decode JSON object") in texts
    assert ("deserialization_failed", "failed to create Zeek event") in texts
    assert ("deserialization_failed", "subscriptions not an array") in texts
    assert ("deserialization_failed", "individual subscription not a string") in texts
    assert ("invalid_uri", "Invalid URI - use /v1/messages/json") in texts
    assert {ERR_BAD_JSON, ERR_BAD_EVENT, ERR_NOT_ARRAY, ERR_NOT_STRING} <= texts


# --------------------------------------------------------------------------------- doc examples
def doc_json_blocks() -> list[object]:
    text = (_need_ref() / "broker-web-socket.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: json\n\n((?:  .*\n|\n)+)", text)
    out = []
    for b in blocks:
        b = "\n".join(line[2:] for line in b.splitlines()).strip()
        if b.startswith('"@data-type"'):
            b = "{" + b + "}"
        out.append(json.loads(b))
    return out


def test_doc_examples(json_impl):
    blocks = doc_json_blocks()
    assert len(blocks) >= 20
    seen = set()
    for b in blocks:
        if "@data-type" in b and "type" not in b:
            v = bj.decode_value(b)
            seen.add(b["@data-type"])
            if b["@data-type"] == "timespan":
                assert v == bj.Timespan(1_500_000_000)
                assert bj.encode_value(v) == b  # Broker renders 1.5 s as "1500ms"
            elif b["@data-type"] == "timestamp":
                assert bj.encode_value(v) == b
            else:
                assert bj.encode_value(v) == b
        elif b.get("type") == "data-message":
            dm = messages.message_from_json(b)
            if b["@data-type"] == "vector":
                ev = messages.event_from_data(dm)
                assert ev.name == "event_1"
                assert ev.args == [42, "test"]
                assert type(ev.args[0]) is int
                again = json.loads(messages.encode_event(ev.topic, ev.name, ev.args, ev.metadata or None))
                assert again == b
            else:
                assert dm.value == 1 and type(dm.value) is bj.Count
        elif b.get("type") == "error":
            assert messages.message_from_json(b) == messages.ErrorMessage(b["code"], b["context"])
        elif b.get("type") == "ack":
            assert isinstance(messages.message_from_json(b), messages.Ack)
    assert seen == {"none", "boolean", "count", "integer", "real", "timespan", "timestamp", "string",
                    "enum-value", "address", "subnet", "port", "vector", "set", "table"}


def test_zeek_api_doc_example_event():
    msg = ('{"type":"data-message","topic":"zeek.test","@data-type":"vector","data":[{"@data-type":"count","data":1},'
           '{"@data-type":"count","data":1},{"@data-type":"vector","data":[{"@data-type":"string","data":"hello"},'
           '{"@data-type":"vector","data":[{"@data-type":"count","data":3}]},{"@data-type":"vector","data":[]}]}]}')
    ev = messages.parse_event(msg)
    assert (ev.topic, ev.name, ev.args, ev.metadata) == ("zeek.test", "hello", [3], [])


# ------------------------------------------------------------------------------ every data type
def values():
    leaf = st.one_of(
        st.none(), st.booleans(),
        st.integers(0, bj.COUNT_MAX).map(bj.Count),
        st.integers(bj.INT_MIN, bj.INT_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**62), 2**62).map(bj.Timespan),
        st.integers(0, 4102444800 * 10**9).map(lambda ns: bj.Timestamp(ns - ns % 1_000_000)),
        st.text(),
        st.text(min_size=1).map(bj.Enum),
        st.ip_addresses(),
        st.ip_addresses().flatmap(lambda a: st.integers(0, a.max_prefixlen).map(
            lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))),
        st.builds(bj.Port, st.integers(0, 65535), st.sampled_from(["tcp", "udp", "icmp", "?"])),
    )
    return st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(st.one_of(st.text(), st.integers(0, 99).map(bj.Count)), max_size=4, unique=True).map(bj.ZSet),
        st.lists(st.tuples(st.text(), kids), max_size=3, unique_by=lambda kv: kv[0]).map(bj.Table),
    ), max_leaves=12)


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@settings(max_examples=300, deadline=None)
@given(values())
def test_round_trip_every_type(v):
    enc = bj.encode_value(v)
    text = bj.dumps(enc)
    dec = bj.decode_value(bj.loads(text))
    assert same(dec, v), (v, dec)
    assert bj.encode_value(dec) == enc


@settings(max_examples=200, deadline=None)
@given(values())
def test_encoding_matches_schema(schema, v):
    validate(schema, messages.data_message("/t", bj.encode_value(v)))


def test_scalar_formats():
    assert bj.encode_value(None) == {"@data-type": "none", "data": {}}
    assert bj.encode_value(bj.Count(7)) == {"@data-type": "count", "data": 7}
    assert bj.encode_value(-7) == {"@data-type": "integer", "data": -7}
    assert bj.encode_value(-7.5) == {"@data-type": "real", "data": -7.5}
    for ns, s in [(0, "0s"), (1, "1ns"), (1500, "1500ns"), (2000, "2us"), (1_500_000_000, "1500ms"),
                  (42_000_000_000, "42s"), (-3_000_000, "-3ms")]:
        assert bj.format_timespan(ns) == s
        assert bj.parse_timespan(s) == ns
    assert bj.parse_timespan("2min") == 120 * 10**9 and bj.parse_timespan("1h") == 3600 * 10**9
    assert bj.parse_timespan("1d") == 86400 * 10**9
    assert bj.format_timestamp(bj.parse_timestamp("2022-04-10T07:00:00.000")) == "2022-04-10T07:00:00.000"
    assert bj.parse_timestamp("2023-04-18T14:13:14.123456789") % 10**9 == 123456789
    assert bj.encode_value(bj.Port(8080, "tcp"))["data"] == "8080/tcp"
    assert bj.decode_value({"@data-type": "port", "data": "0/?"}) == bj.Port(0, "?")
    assert bj.encode_value(ipaddress.ip_address("2001:db8::"))["data"] == "2001:db8::"
    assert bj.encode_value(ipaddress.ip_network("255.255.255.0/24", strict=False))["data"] == "255.255.255.0/24"
    assert bj.encode_value({"a": 1}) == {"@data-type": "table", "data": [
        {"key": {"@data-type": "string", "data": "a"}, "value": {"@data-type": "integer", "data": 1}}]}
    assert bj.encode_value({bj.Count(1)})["@data-type"] == "set"
    assert bj.encode_value((1, "x"))["@data-type"] == "vector"


BAD_VALUES = [
    {"@data-type": "money", "data": 0},  # Zeek's bad-event-args err4
    {"@data-type": "count", "data": 1.0},  # doc: a decimal point is an error
    {"@data-type": "count", "data": -1},
    {"@data-type": "count", "data": 2**64},
    {"@data-type": "count", "data": True},
    {"@data-type": "integer", "data": 1.0},
    {"@data-type": "integer", "data": 2**63},
    {"@data-type": "integer", "data": "1"},
    {"@data-type": "real", "data": 1},  # Broker writes reals with a fraction (%f) and reads doubles only
    {"@data-type": "real", "data": "1.0"},
    {"@data-type": "boolean", "data": 1},
    {"@data-type": "none", "data": None},
    {"@data-type": "none", "data": {"a": 1}},
    {"@data-type": "string", "data": 1},
    {"@data-type": "enum-value", "data": None},
    {"@data-type": "timespan", "data": "1.5s"},
    {"@data-type": "timespan", "data": "15"},
    {"@data-type": "timespan", "data": "1 s"},
    {"@data-type": "timespan", "data": 1},
    {"@data-type": "timestamp", "data": "2022-04-10 07:00:00"},
    {"@data-type": "timestamp", "data": "2022-13-10T07:00:00"},
    {"@data-type": "timestamp", "data": "2022-02-30T07:00:00"},
    {"@data-type": "timestamp", "data": "2022-04-10T07:00:00+01:00"},
    {"@data-type": "timestamp", "data": 1649574000},
    {"@data-type": "address", "data": "1.2.3"},
    {"@data-type": "address", "data": "fe80::1%eth0"},
    {"@data-type": "address", "data": 16909060},
    {"@data-type": "subnet", "data": "10.0.0.0"},
    {"@data-type": "subnet", "data": "10.0.0.0/33"},
    {"@data-type": "port", "data": "80"},
    {"@data-type": "port", "data": "70000/tcp"},
    {"@data-type": "port", "data": "80/sctp"},
    {"@data-type": "vector", "data": {"a": 1}},
    {"@data-type": "vector", "data": [1]},
    {"@data-type": "set", "data": [{"@data-type": "count", "data": 1}, {"@data-type": "count", "data": 1}]},
    {"@data-type": "table", "data": [{"key": {"@data-type": "count", "data": 1}}]},
    {"@data-type": "string"},
    {"data": "x"},
    {"@data-type": 5, "data": "x"},
    ["@data-type", "data"],
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda b: json.dumps(b)[:50])
def test_strict_decoding(bad, json_impl):
    with pytest.raises(bj.WireError):
        bj.decode_value(bj.loads(json.dumps(bad)))


@pytest.mark.parametrize("v", [float("nan"), float("inf"), bj.Count(-1), 2**63, object(), b"bytes",
                               bj.Port(70000, "tcp"), "\ud800"])
def test_strict_encoding(v):
    with pytest.raises(bj.WireError):
        bj.encode_value(v)


def test_hostile_frames(json_impl):
    with pytest.raises(bj.WireError) as e:
        bj.loads(b"\xff\xfe")
    assert e.value.reason == "binary"
    with pytest.raises(bj.WireError) as e:
        bj.loads("How is it going?")
    assert e.value.reason == "json"
    with pytest.raises(bj.WireError) as e:
        messages.parse_event("[" * 100_000 + "]" * 100_000)
    assert e.value.reason == "depth"
    with pytest.raises(bj.WireError) as e:
        bj.loads("x" * 2000, max_bytes=1000)
    assert e.value.reason == "too_big"
    with pytest.raises(bj.WireError):
        bj.loads('{"a": NaN}')
    with pytest.raises(bj.WireError):
        bj.decode_value(bj.loads('{"@data-type":"string","data":"\\ud800"}'))
    deep = {"@data-type": "vector", "data": []}
    for _ in range(200):
        deep = {"@data-type": "vector", "data": [deep]}
    with pytest.raises(bj.WireError) as e:
        bj.decode_value(bj.loads(json.dumps(deep)))
    assert e.value.reason == "depth"


@pytest.mark.parametrize("msg", [
    [], 5, "x", {"type": "data-message"}, {"type": "bogus"}, {"type": "ack", "endpoint": 1, "version": "x"},
    {"type": "error", "code": "x"},
])
def test_bad_envelopes(msg):
    with pytest.raises(bj.WireError):
        messages.parse_message(json.dumps(msg))


def ev(data):
    return json.dumps({"type": "data-message", "topic": "t", "@data-type": "vector", "data": data})


C1 = {"@data-type": "count", "data": 1}
NAME = {"@data-type": "string", "data": "x"}
ARGS = {"@data-type": "vector", "data": []}


@pytest.mark.parametrize("frame", [
    ev([C1, C1]),
    ev([{"@data-type": "count", "data": 2}, C1, {"@data-type": "vector", "data": [NAME, ARGS]}]),
    ev([C1, {"@data-type": "count", "data": 2}, {"@data-type": "vector", "data": [NAME, ARGS]}]),
    ev([C1, C1, {"@data-type": "vector", "data": [NAME]}]),
    ev([C1, C1, {"@data-type": "vector", "data": [NAME, {"@data-type": "set", "data": []}]}]),
    ev([C1, C1, {"@data-type": "vector", "data": [{"@data-type": "enum-value", "data": "x"}, ARGS]}]),
    ev([C1, C1, {"@data-type": "vector", "data": [NAME, ARGS, {"@data-type": "vector", "data": [C1]}]}]),
    json.dumps({"type": "data-message", "topic": "t", "@data-type": "count", "data": 1}),
])
def test_bad_event_envelopes(frame):
    with pytest.raises(bj.WireError):
        messages.parse_event(frame)


def test_server_error_raises_zeekerror():
    with pytest.raises(messages.ZeekError) as e:
        messages.parse_event(messages.error_message("deserialization_failed", "failed to create Zeek event"))
    assert e.value.code == "deserialization_failed"


# ------------------------------------------------------------------------------ ETooL contract
def sample_flow(uid="CabcDEF0123456789", n=6) -> FlowRecord:
    pk = [Packet(i * 0.0015 + (0.000001 if i == 3 else 0), i % 2 == 0, 60 + i, i * 10, 0x18) for i in range(n)]
    return FlowRecord(uid, 1700000000.123, "192.168.1.2", 51234, "2001:db8::1", 443, "tcp", pk,
                      [Chunk(True, bytes(range(64))), Chunk(False, b"\x16\x03\x03")], False)


def test_flow_round_trip(schema, json_impl):
    rec = sample_flow()
    text = wire.encode_flow("etool/flows/", rec, "etool/verdicts/w1", network_time=1700000001.5)
    msg = json.loads(text)
    validate(schema, msg)
    fe = wire.parse_flow(text)
    assert fe.topic == "etool/flows/" and fe.reply_topic == "etool/verdicts/w1"
    assert fe.network_time == 1700000001.5
    r = fe.record
    assert (r.uid, r.orig_h, r.orig_p, r.resp_h, r.resp_p, r.proto, r.final) == \
           (rec.uid, rec.orig_h, rec.orig_p, rec.resp_h, rec.resp_p, rec.proto, rec.final)
    assert r.ts == pytest.approx(1700000000.123, abs=1e-3)  # Broker timestamps have ms resolution
    assert [(p.is_orig, p.ip_len, p.payload_len, p.tcp_flags) for p in r.packets] == \
           [(p.is_orig, p.ip_len, p.payload_len, p.tcp_flags) for p in rec.packets]
    assert [p.dt for p in r.packets] == pytest.approx([p.dt for p in rec.packets], abs=1e-9)
    assert [(c.is_orig, c.data) for c in r.payload] == [(c.is_orig, c.data) for c in rec.payload]


def test_flow_wire_layout():
    """Records travel as vectors of their fields in declaration order, with the documented types."""
    msg = json.loads(wire.encode_flow("etool/flows/", sample_flow(n=2), "etool/verdicts/"))
    assert msg["type"] == "data-message" and list(msg)[:2] == ["type", "topic"]
    fmt, kind, evv = msg["data"]
    assert fmt == kind == {"@data-type": "count", "data": 1}
    name, args = evv["data"]
    assert name == {"@data-type": "string", "data": "ETooL::flow"}
    (flow,) = args["data"]
    types = [f["@data-type"] for f in flow["data"]]
    assert types == ["string", "timestamp", "address", "port", "address", "port", "vector", "vector", "boolean",
                     "string"]
    assert flow["data"][3]["data"] == "51234/tcp" and flow["data"][5]["data"] == "443/tcp"
    pkt = flow["data"][6]["data"][1]["data"]
    assert [f["@data-type"] for f in pkt] == ["timespan", "boolean", "count", "count", "count"]
    assert pkt[0]["data"] == "1500us"
    chunk = flow["data"][7]["data"][1]["data"]
    assert chunk == [{"@data-type": "boolean", "data": False}, {"@data-type": "string", "data": "160303"}]


def test_verdict_encoding_exact():
    v = Verdict("CabcDEF0123456789", "TLS", "Signal", 0.93, False, ["Telegram", "WhatsApp"], "etool-int8@1")
    text = wire.encode_verdict("etool/verdicts/", v)
    expected = {
        "type": "data-message", "topic": "etool/verdicts/", "@data-type": "vector", "data": [
            {"@data-type": "count", "data": 1}, {"@data-type": "count", "data": 1},
            {"@data-type": "vector", "data": [
                {"@data-type": "string", "data": "ETooL::verdict"},
                {"@data-type": "vector", "data": [{"@data-type": "vector", "data": [
                    {"@data-type": "string", "data": "CabcDEF0123456789"},
                    {"@data-type": "string", "data": "TLS"},
                    {"@data-type": "string", "data": "Signal"},
                    {"@data-type": "real", "data": 0.93},
                    {"@data-type": "boolean", "data": False},
                    {"@data-type": "vector", "data": [{"@data-type": "string", "data": "Telegram"},
                                                      {"@data-type": "string", "data": "WhatsApp"}]},
                    {"@data-type": "string", "data": "etool-int8@1"}]}]}]}]}
    assert json.loads(text) == expected
    assert wire.verdict_from_event(messages.parse_event(text)) == v
    # a confidence of exactly 1 still travels as a real (with a fraction), never an integer
    v1 = Verdict("C1", "s", "a", 1, True, [], "m")
    assert '"data":1.0' in wire.encode_verdict("t", v1)
    with pytest.raises(bj.WireError):
        wire.encode_verdict("t", Verdict("C1", "s", "a", float("nan"), True, [], "m"))


def _mutate(path, value):
    msg = json.loads(wire.encode_flow("etool/flows/", sample_flow(), "r/"))
    node = msg["data"][2]["data"][1]["data"][0]
    for p in path[:-1]:
        node = node["data"][p]
    node["data"][path[-1]] = value
    return json.dumps(msg)


@pytest.mark.parametrize("path,value", [
    ((0,), {"@data-type": "count", "data": 5}),  # uid not a string
    ((1,), {"@data-type": "real", "data": 1.5}),  # ts not a timestamp
    ((2,), {"@data-type": "string", "data": "1.2.3.4"}),
    ((3,), {"@data-type": "port", "data": "443/udp"}),  # proto mismatch
    ((3,), {"@data-type": "port", "data": "0/icmp"}),
    ((6, 0, 0), {"@data-type": "real", "data": 0.1}),  # dt not an interval
    ((6, 0, 2), {"@data-type": "integer", "data": 60}),  # ip_len not a count
    ((6, 0, 4), {"@data-type": "count", "data": 300}),  # tcp_flags out of range
    ((7, 0, 1), {"@data-type": "string", "data": "zz"}),  # not hex
    ((7, 0, 1), {"@data-type": "string", "data": "abc"}),  # odd length
    ((8,), {"@data-type": "count", "data": 1}),
    ((9,), {"@data-type": "string", "data": ""}),  # empty reply topic
    ((9,), {"@data-type": "none", "data": {}}),
])
def test_flow_contract_violations(path, value):
    with pytest.raises(bj.WireError):
        wire.parse_flow(_mutate(path, value))


def test_flow_wrong_arity_and_foreign_event():
    rec_args = wire.flow_args(sample_flow(), "r/")
    with pytest.raises(bj.WireError):
        wire.parse_flow(messages.encode_event("t", "ETooL::flow", rec_args + rec_args))
    with pytest.raises(bj.WireError):
        wire.parse_flow(messages.encode_event("t", "ETooL::flow", [rec_args[0]["data"][:9]]))
    with pytest.raises(bj.WireError) as e:
        wire.parse_flow(messages.encode_event("t", "ping", ["x", bj.Count(1)]))
    assert e.value.reason == "foreign_event"


# ----------------------------------------------------------------------------------- client bits
def test_backoff_exponential_with_jitter():
    import random
    b = client.Backoff(0.5, 30, rng=random.Random(1))
    ds = [b.next() for _ in range(12)]
    assert all(0.5 <= d <= 30 for d in ds)
    assert ds[0] == 0.5 and max(ds[8:]) > 4
    caps = [min(30, 0.5 * 2**i) for i in range(12)]
    assert all(d <= c for d, c in zip(ds, caps))
    b.reset()
    assert b.next() == 0.5
    with pytest.raises(ValueError):
        client.Backoff(0, 1)


def test_app_name_and_tls():
    assert client.check_app_name("etool-sensor/1.0@host") == "etool-sensor/1.0@host"
    for bad in ("", "a b", "naïve", "x\r\nInjected: 1"):
        with pytest.raises(ValueError):
            client.check_app_name(bad)
    import ssl
    ctx = client.make_ssl_context("wss://zeek:27759/v1/messages/json")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert client.make_ssl_context("ws://127.0.0.1:1/v1/messages/json") is None
    with pytest.raises(ValueError):
        client.ZeekClient("http://x/")


# ------------------------------------------------------------------ the test peer vs Zeek's baselines
def _baseline_lines(name: str) -> list[str]:
    return [line for line in (_need_ref() / "baselines" / name).read_text().splitlines() if not line.startswith("###")]


def test_peer_reproduces_zeek_baselines():
    """Replay Zeek's own btest clients (bad-event-args, bad-subscriptions, bad-url) against tests/support/zeek_peer.py;
    it must print exactly what the baselines expect from real Zeek."""
    import asyncio

    from websockets.asyncio.client import connect

    from tests.support.zeek_peer import ZeekPeer

    def make_ping(args):
        return json.dumps({"type": "data-message", "topic": "/zeek/event/my_topic", "@data-type": "vector", "data": [
            {"@data-type": "count", "data": 1}, {"@data-type": "count", "data": 1},
            {"@data-type": "vector", "data": [{"@data-type": "string", "data": "ping"},
                                              {"@data-type": "vector", "data": args}]}]})

    async def pong(peer, ev, value):
        await peer.publish_event("/zeek/event/my_topic", "pong", value, network_time=1.0)

    async def main():
        out: list[str] = []
        async with ZeekPeer(handlers={"ping": pong}) as peer:
            async with connect(peer.url) as ws:
                out.append("Connected!")
                await ws.send(json.dumps(["/zeek/event/my_topic"]))
                ack = json.loads(await ws.recv())
                assert ack["type"] == "ack" and "endpoint" in ack and "version" in ack
                await ws.send(make_ping(42))
                out.append(f"err1 {json.loads(await ws.recv())}")
                await ws.send(make_ping([{"@data-type": "string", "data": "Hello"}]))
                out.append(f"err2 {json.loads(await ws.recv())}")
                await ws.send(make_ping([{"@data-type": "count", "data": 42}, {"@data-type": "string", "data": "Hello"}]))
                out.append(f"err3 {json.loads(await ws.recv())}")
                await ws.send(make_ping([{"@data-type": "string", "data": "Hello"}, {"@data-type": "count", "data": 42}]))
                name, args, _ = json.loads(await ws.recv())["data"][2]["data"]
                out.append(f"pong {name} {args}")
                await ws.send(make_ping([{"@data-type": "money", "data": 0}]))
                out.append(f"err4 {json.loads(await ws.recv())}")
            assert out == _baseline_lines("cluster.websocket.bad-event-args__..client.out")

            out = []
            for label, sub in [("broken array response", '["broken", "brrr'), ("non string error", "[1, 2]"),
                               ("mix error", '[1, "/my_topic"]')]:
                async with connect(peer.url) as ws:
                    await ws.send(sub)
                    out.append(f"{label} {json.loads(await ws.recv())}")
            async with connect(peer.url) as ws:
                await ws.send('["/topic/good", "/duplicate", "/duplicate", "/is/okay"]')
                out.append(f"ack {json.loads(await ws.recv())['type'] == 'ack'}")
            assert out == _baseline_lines("cluster.websocket.bad-subscriptions__..client.out")

            out = []
            async with connect(peer.url, additional_headers={"X-Application-Name": "hello-good"}) as ws:
                out.append("Connected ws_good!")
                await ws.send("[]")
                assert json.loads(await ws.recv())["type"] == "ack"
            async with connect(peer.url.replace("/v1/messages/json", "/v1/messages/jsonX")) as ws:
                out.append("Connected ws_bad!")
                out.append(f"Error for ws_bad {json.loads(await ws.recv())}")
            assert out == _baseline_lines("cluster.websocket.bad-url__..client.out")
            assert peer.app_names[-2] == "hello-good"

    asyncio.run(asyncio.wait_for(main(), 30))


# Each hostile frame and the reason the decoder itself gives it, whichever JSON parser is installed.
HOSTILE_REASONS = [
    ("[" * 700 + "]" * 700, "depth"),
    ('{"a":' * 70 + "1" + "}" * 70, "depth"),
    ('{"type":"data-message","topic":"t","@data-type":"vector","data":[' + '{"@data-type":"vector","data":[' * 40
     + "]}" * 40 + "]}", "depth"),
    ('["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]', None),
    ("How is it going?", "json"),
    ('{"a": NaN}', "json"),
    ('{"a": 1', "json"),
    ('{"type":"data-message","topic":"t\\ud800","@data-type":"vector","data":[]}', "encoding"),
    ('{"type":"data-message","topic":"t' + "\udc00" + '","@data-type":"vector","data":[]}', "encoding"),
    ("x" * 2000, "too_big"),
    (b"\xff\xfe", "binary"),
]


@pytest.mark.parametrize("frame,reason", HOSTILE_REASONS)
def test_hostile_reasons_do_not_depend_on_the_parser(json_impl, frame, reason):
    """The reason is decided by the decoder's own checks, not by a library's message text."""
    if reason is None:  # brackets inside a string do not nest
        assert bj.loads(frame) == [frame[2:-2]]
        return
    with pytest.raises(bj.WireError) as e:
        messages.parse_message(frame, max_bytes=1500)
    assert e.value.reason == reason, (json_impl, str(e.value))


def test_json_nesting_counts_structure_not_strings():
    assert bj.json_nesting("[]") == 1
    assert bj.json_nesting('{"a":[{"b":"[[[["}]}') == 3
    assert bj.json_nesting('["\\\\"]') == 1  # an escaped backslash ends before the closing quote
    assert bj.json_nesting('["\\"[["]') == 1  # an escaped quote does not end the string


def test_json_nesting_takes_an_unterminated_string_to_the_end():
    """A string that never closes ends the text (the frame then fails to parse): its brackets do not count,
    and the scan does not restart at each of its escaped quotes (that made a 48 KB frame block for seconds)."""
    assert bj.json_nesting('[[["abc') == 3
    assert bj.json_nesting('[[["ab\\"[[[[\\') == 3
    frame = "[" * 70 + '"\\' * 20000
    assert bj.json_nesting(frame) == 70
    with pytest.raises(bj.WireError) as e:
        bj.loads(frame)
    assert e.value.reason == "depth"
