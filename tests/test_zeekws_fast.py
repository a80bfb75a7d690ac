"""zeek.wire.parse_flow's text decoders (the compiled one and its Python reference _flow_text) against the
generic strict path that parses the JSON.

Whatever frame comes in, parse_flow must return the same FlowEvent or raise the same error (type,
reason, message) as the generic strict path alone: ``reference`` below is that path (orjson/json parse ->
message_from_json -> event_from_data -> flow_from_event). Checked on every flow of the nDPI captures
the tests use, on hand-made edge cases and on thousands of randomly mutated real frames.
"""

from __future__ import annotations

import random
import time

import pytest

from etool_sensor.zeek import broker_json as bj, messages, wire
from etool_sensor.flows import Chunk, FlowRecord, Packet


def reference(frame, max_bytes=None):
    """The generic strict path alone: what parse_flow accepts and refuses without the text decoders."""
    m = messages.message_from_json(bj.loads(frame, max_bytes))
    if isinstance(m, messages.ErrorMessage):
        raise messages.ZeekError(m.code, m.context)
    if isinstance(m, messages.Ack):
        raise bj.WireError("envelope", "unexpected ack")
    return wire.flow_from_event(messages.event_from_data(m))


def outcome(fn, frame, max_bytes=None):
    try:
        return ("ok", fn(frame, max_bytes))
    except (bj.WireError, messages.ZeekError) as e:
        return ("err", type(e).__name__, getattr(e, "reason", getattr(e, "code", None)), str(e))


def same(frame, max_bytes=None):
    a, b = outcome(wire.parse_flow, frame, max_bytes), outcome(reference, frame, max_bytes)
    assert a == b, frame[:300]
    return a


@pytest.fixture(scope="module")
def real_frames():
    from bench.replay import flows_from_captures

    flows = flows_from_captures()
    if not flows:
        pytest.skip("no nDPI captures beside the checkout")
    return [wire.encode_flow("etool/flows/", r, "etool/verdicts/worker-1/", network_time=1700000000.25 + i)
            for i, r in enumerate(flows)]


def sample(n=6, **kw) -> FlowRecord:
    pk = [Packet(i * 0.0015 + (0.000001 if i == 3 else 0), i % 2 == 0, 60 + i, i * 10, 0x18) for i in range(n)]
    d = dict(uid="CabcDEF0123456789", ts=1700000000.123, orig_h="192.168.1.2", orig_p=51234, resp_h="2001:db8::1",
             resp_p=443, proto="tcp", packets=pk, payload=[Chunk(True, bytes(range(64))), Chunk(False, b"\x16\x03")],
             final=False)
    d.update(kw)
    return FlowRecord(**d)


def test_real_flows_take_the_text_path_and_decode_identically(real_frames):
    assert len(real_frames) > 100
    for f in real_frames:
        fe = wire._flow_text(f)
        assert fe is not None
        assert fe == reference(f)
        assert wire.parse_flow(f) == fe


def test_layouts_the_text_path_leaves_to_the_json_decoders():
    rec = sample()
    base = wire.encode_flow("etool/flows/", rec, "r/", network_time=1700000001.5)
    assert wire._flow_text(base) is not None
    no_meta = wire.encode_flow("etool/flows/", rec, "r/")
    assert wire._flow_text(no_meta) is not None
    empty_meta = no_meta[:-4] + ',{"@data-type":"vector","data":[]}]}]}'
    assert wire._flow_text(empty_meta) is not None and same(empty_meta)[0] == "ok"
    variants = {
        "spaces": base.replace('","data":', '", "data": ', 1),
        "escaped uid": base.replace('"CabcDEF0123456789"', '"\\u0043abcDEF0123456789"'),
        "minutes": base.replace('"data":"0s"', '"data":"0min"', 1),
        "negative dt": base.replace('"data":"0s"', '"data":"-1s"', 1),
        "20-digit count": base.replace('"data":60}', '"data":18446744073709551615}', 1),
        "count too big": base.replace('"data":60}', '"data":18446744073709551616}', 1),
        "leading zero": base.replace('"data":60}', '"data":060}', 1),
        "real count": base.replace('"data":60}', '"data":60.0}', 1),
        "two metadata": base.replace('"data":[{"@data-type":"vector","data":[{"@data-type":"count","data":1}',
                                     '"data":[{"@data-type":"vector","data":[{"@data-type":"count","data":2},'
                                     '{"@data-type":"string","data":"x"}]},'
                                     '{"@data-type":"vector","data":[{"@data-type":"count","data":1}'),
        "metadata key 2": base.replace('[{"@data-type":"count","data":1},{"@data-type":"timestamp"',
                                       '[{"@data-type":"count","data":2},{"@data-type":"timestamp"'),
        "bad metadata time": base.replace('"timestamp","data":"2023-11-14T22:13:21.500"',
                                          '"timestamp","data":"2023-13-14T22:13:21.500"'),
        "trailing comma": base.replace('"data":24}]}]},{"@data-type":"vector","data":[{"@data-type":"vector"',
                                       '"data":24}]},]},{"@data-type":"vector","data":[{"@data-type":"vector"'),
        "upper hex": base.replace("000102030405", "000102030A0B"),
        "odd hex": base.replace('"data":"1603"', '"data":"160"'),
        "empty reply": base.replace('"data":"r/"', '"data":""'),
        "empty uid": base.replace('"CabcDEF0123456789"', '""'),
        "bad address": base.replace('"192.168.1.2"', '"192.168.1.256"'),
        "port proto": base.replace('"51234/tcp"', '"51234/udp"'),
        "port range": base.replace('"51234/tcp"', '"65536/tcp"'),
        "tcp flags": base.replace('"data":24}', '"data":256}', 1),
        "nested packet": base.replace('{"@data-type":"vector","data":[{"@data-type":"timespan","data":"0s"}',
                                      '{"@data-type":"vector","data":[{"@data-type":"vector","data":[]},'
                                      '{"@data-type":"timespan","data":"0s"}', 1),
        "no packets": base.replace(base[base.index('{"@data-type":"vector","data":[{"@data-type":"vector","data":'
                                                   '[{"@data-type":"timespan"'):base.index(']},{"@data-type":"vector",'
                                                                                           '"data":[{"@data-type":'
                                                                                           '"vector","data":[{"@data-'
                                                                                           'type":"boolean"')],
                                   '{"@data-type":"vector","data":[', 1),
        "ack": '{"type":"ack","endpoint":"e","version":"v"}',
        "error": messages.error_message("deserialization_failed", "x"),
    }
    for name, f in variants.items():
        assert f != base or name in ("upper hex",), name
        same(f)
        same(f, 1024)
    # the text path does not take what it cannot decide on its own
    for name in ("spaces", "escaped uid", "minutes", "negative dt", "20-digit count", "two metadata", "nested packet"):
        assert wire._flow_text(variants[name]) is None, name
    assert same(variants["escaped uid"])[0] == "ok"
    assert same(variants["minutes"])[0] == "ok"
    assert same(variants["upper hex"])[0] == "ok"
    assert same(variants["metadata key 2"])[1].network_time is None
    assert same(base.encode())[2] == "binary"
    assert same(base, 100)[2] == "too_big"


def mutate(rng: random.Random, f: str, chars: str, times: int) -> str:
    """`times` random edits of a frame: a digit for a digit (keeps the layout: exercises the decoded values),
    a character replaced, deleted or inserted, or a span repeated."""
    for _ in range(times):
        k = rng.randrange(len(f))
        op = rng.random()
        if op < 0.35:
            j = k
            while j < len(f) and not f[j].isdigit():
                j += 1
            if j < len(f):
                f = f[:j] + rng.choice("0123456789") + f[j + 1:]
        elif op < 0.6:
            f = f[:k] + rng.choice(chars) + f[k + 1:]
        elif op < 0.75:
            f = f[:k] + f[k + 1:]
        elif op < 0.9:
            f = f[:k] + rng.choice(chars) + f[k:]
        else:
            m = rng.randrange(k, min(len(f), k + 400) + 1)
            f = f[:k] + f[k:m] + f[k:]
    return f


def test_random_mutations_of_real_frames(real_frames):
    rng = random.Random(20261126)
    chars = '0123456789"\\,[]{}: .-aAfFxsmunT/\x7f\u00e9'
    frames = real_frames[:64] + [wire.encode_flow("etool/flows/", sample(n=n), "r/", network_time=time.time())
                                 for n in (1, 2, 32)]
    taken = ok = 0
    for i in range(3000):
        f = mutate(rng, rng.choice(frames), chars, rng.choice((1, 1, 1, 2, 3)))
        try:
            taken += wire._flow_text(f) is not None
        except Exception:  # noqa: BLE001 - parse_flow hands these to the other decoders
            pass
        ok += same(f)[0] == "ok"
    assert taken > 300 and ok > taken  # the text path saw many of them; the rest went the other ways


# ------------------------------------------------------------------------------ the compiled decoder
needs_c = pytest.mark.skipif(wire._flow_frame is None, reason="etool_sensor._fastpath not built")


def c_outcome(fn, frame):
    try:
        return ("ok", fn(frame))
    except Exception as e:  # noqa: BLE001 - parse_flow treats any exception of these as "not mine"
        return ("raised", type(e).__name__, str(e))


@needs_c
def test_compiled_decoder_takes_every_real_frame_and_agrees(real_frames):
    for f in real_frames:
        fe = wire._flow_compiled(f)
        assert fe is not None and fe == wire._flow_text(f)
        assert all(type(p) is Packet for p in fe.record.packets) and all(type(c) is Chunk for c in fe.record.payload)


@needs_c
def test_record_objects_built_in_c_are_the_classes_own():
    """flows.Packet / Chunk are filled slot by slot in C (no __init__ call); any class whose __init__ might do
    more (a __post_init__, keyword-only or non-init fields, no slots, a hand-written __init__) is called."""
    import dataclasses
    import gc

    frame = wire.encode_flow("etool/flows/", sample(), "etool/verdicts/w/")
    t = wire._flow_frame(frame, Packet, Chunk)
    pk, ch = t[7], t[8]
    ref = wire._flow_text(frame).record  # the regular-expression decoder builds them by calling the classes
    assert pk == ref.packets and ch == ref.payload and len(pk) == 6
    assert all(type(p) is Packet and gc.is_tracked(p) for p in pk)
    p = pk[2]
    p.tcp_flags = 7  # an ordinary, writable instance
    assert dataclasses.replace(p, dt=1.0).tcp_flags == 7 and p.__slots__ == Packet.__slots__

    calls = []

    @dataclasses.dataclass(slots=True)
    class Post:
        dt: float
        is_orig: bool
        ip_len: int
        payload_len: int
        tcp_flags: int = 0

        def __post_init__(self):
            calls.append(self.ip_len)

    @dataclasses.dataclass(slots=True)
    class KwOnly:
        is_orig: bool
        data: bytes = dataclasses.field(kw_only=True, default=b"")

    class Plain:
        def __init__(self, *a):
            calls.append(a)

    @dataclasses.dataclass(slots=True)
    class OwnInit:
        is_orig: bool
        data: bytes

    def own(self, is_orig, data):
        calls.append("own")
        self.is_orig, self.data = is_orig, data
    OwnInit.__init__ = own

    t = wire._flow_frame(frame, Post, Plain)
    assert calls[:6] == [60, 61, 62, 63, 64, 65] and len(calls) == 8  # 6 __post_init__ and 2 Plain calls
    assert [type(x) for x in t[7]] == [Post] * 6 and [type(x) for x in t[8]] == [Plain] * 2
    calls.clear()
    t = wire._flow_frame(frame, Packet, OwnInit)
    assert calls == ["own", "own"] and t[8][1].data == b"\x16\x03"
    with pytest.raises(TypeError):  # called positionally, as the class demands: not filled behind its back
        wire._flow_frame(frame, Packet, KwOnly)


@needs_c
def test_compiled_decoder_declines_what_it_cannot_decide_exactly():
    rec = sample()
    base = wire.encode_flow("etool/flows/", rec, "r/", network_time=1700000001.5)
    no_meta = wire.encode_flow("etool/flows/", rec, "r/")
    empty_meta = no_meta[:-4] + ',{"@data-type":"vector","data":[]}]}]}'
    for f in (base, no_meta, empty_meta, base.replace("000102030405", "000102030A0B")):
        assert wire._flow_compiled(f) == wire._flow_text(f) is not None
    # 16 significant digits of a timespan: int * float in Python, not necessarily double * double in C
    long_dt = base.replace('"data":"0s"', '"data":"9007199254740993ns"', 1)
    assert wire._flow_frame(long_dt, Packet, Chunk) is None and wire._flow_text(long_dt) is not None
    padded = base.replace('"data":"0s"', '"data":"00000000000000000001ns"', 1)  # leading zeros are fine
    assert wire._flow_compiled(padded) == wire._flow_text(padded) is not None
    for bad in (base[:-1], base + " ", base.replace('"r/"', '""'), base.replace('"data":"1603"', '"data":"160"'),
                base.replace('"51234/tcp"', '"512345/tcp"'), "é" + base[1:], base.replace('"data":60}', '"data":060}', 1)):
        assert wire._flow_frame(bad, Packet, Chunk) is None
    with pytest.raises(TypeError):
        wire._flow_frame(base.encode(), Packet, Chunk)


@needs_c
def test_compiled_decoder_on_random_mutations_of_real_frames(real_frames):
    """Whatever the C decoder accepts (or raises on) the regular-expression decoder decodes the same."""
    rng = random.Random(20261127)
    chars = '0123456789"\\,[]{}: .-aAfFxsmunT/\x7f\u00e9'
    frames = real_frames[:64] + [wire.encode_flow("etool/flows/", sample(n=n), "r/", network_time=time.time())
                                 for n in (1, 2, 32)]
    taken = 0
    for i in range(4000):
        f = mutate(rng, rng.choice(frames), chars, rng.choice((1, 1, 2)))
        c = c_outcome(wire._flow_compiled, f)
        if c == ("ok", None):
            continue
        taken += 1
        assert c == c_outcome(wire._flow_text, f), f[:300]
    assert taken > 1000


def test_pure_python_switch_turns_the_compiled_decoder_off():
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import etool_sensor.zeek.wire as w; print(w._flow_frame is None)"],
                         env=dict(os.environ, ETOOL_PURE_PYTHON="1"), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# ------------------------------------------------------------------------------ verdict encoding
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from etool_sensor.flows import Verdict  # noqa: E402

_texts = st.one_of(st.sampled_from(["", "Web", "Google", "etool-student@0.3.0", "Web:0.712", 'a"b', "a\\b", "é",
                                    "\u2028", "\x7f", "\x00", "\ud800"]), st.text(max_size=12))


@settings(max_examples=400, deadline=None)
@given(topic=_texts, uid=_texts, service=_texts, app=_texts, model=_texts, alts=st.lists(_texts, max_size=4),
       conf=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 1),
                      st.sampled_from([1e-05, 0.1, 1 / 3, 5e-324])),
       unknown=st.booleans(), stdlib=st.booleans())
def test_encode_verdict_is_the_generic_encoding(topic, uid, service, app, model, alts, conf, unknown, stdlib):
    bj.force_stdlib_json(stdlib)
    try:
        v = Verdict(uid, service, app, conf, unknown, alts, model)
        a = outcome(lambda t, _: wire.encode_verdict(t, v), topic)
        b = outcome(lambda t, _: wire.encode_verdict_generic(t, v), topic)
    except Exception as e:  # noqa: BLE001 - other errors (JSON encoder refusing a string) must match too
        a = b = None
        with pytest.raises(type(e)):
            wire.encode_verdict_generic(topic, v)
        with pytest.raises(type(e)):
            wire.encode_verdict(topic, v)
    finally:
        bj.force_stdlib_json(False)
    assert a == b


def test_canonical_ipv4_shortcut_is_parse_address():
    import itertools

    octets = ["0", "00", "01", "9", "99", "100", "199", "249", "250", "255", "256", "1000", "", "\u0663"]
    for p in itertools.product(octets, repeat=4):
        for s in (".".join(p), ".".join(p) + "\n"):
            wire._addr_cache.clear()
            assert outcome(lambda t, _: wire._addr_str(t), s) == outcome(lambda t, _: str(bj.parse_address(t)), s), s


def test_collections_up_to_the_contracts_bounds_decode_alike_on_every_path():
    """Zeek's ETooL::packets_per_flow, payload_bytes and payload_packets are &redef: a flow event may carry
    up to contract v1's bounds (1024 packets, 64 chunks of up to 65,535 bytes), not only the default
    32 / 3 / 64 the bundled models read. Every decoder takes such a frame alike; one packet more is refused
    alike."""
    pk = [Packet(i * 1e-3, i % 2 == 0, 60 + i, i % 7, 0x18) for i in range(64)]
    chunks = [Chunk(i % 2 == 0, bytes(range(256)) * 2) for i in range(5)]
    rec = FlowRecord("CWideCollection01", 1700000000.25, "10.1.2.3", 40000, "192.0.2.9", 443, "tcp", pk, chunks)
    frame = wire.encode_flow("etool/flows/", rec, "etool/verdicts/")
    fe = wire.parse_flow(frame)
    assert len(fe.record.packets) == 64 and fe.record.payload == chunks  # (times go through Zeek's formats)
    assert outcome(lambda f, mb: wire.parse_flow(f, mb), frame) == outcome(reference, frame)
    assert wire._flow_text(frame) == fe
    if wire._flow_frame is not None:
        assert wire._flow_compiled(frame) == fe
    most = FlowRecord("CWideCollection02", 1700000000.25, "10.1.2.3", 40001, "192.0.2.9", 443, "tcp",
                      [Packet(0.0, True, 60, 0, 2)] * 1024, [Chunk(True, b"\x16" * 65535)] * 2)
    got = wire.parse_flow(wire.encode_flow("etool/flows/", most, "etool/verdicts/"), 1 << 24).record
    assert len(got.packets) == 1024 and got.payload == most.payload
    over = wire.encode_flow("etool/flows/", FlowRecord("CWideCollection03", 1700000000.25, "10.1.2.3", 40002,
                                                       "192.0.2.9", 443, "tcp", [Packet(0.0, True, 60, 0, 2)] * 1025),
                            "etool/verdicts/")
    got = outcome(lambda f, mb: wire.parse_flow(f, mb), over, 1 << 24)
    assert got[0] == "err" and got == outcome(reference, over, 1 << 24)
