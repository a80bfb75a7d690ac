"""TLS hellos kept whole (flows.chunk_length, flow.hello_bytes, ETooL::hello_bytes), flow fingerprints (the
hellos, else the opening bytes) and the tables (fingerprints.py). The rule cuts the same bytes in the Python
and the compiled reader and in FlowRecord.within; the fields are codes only, so a hidden or changed server
name does not move them."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from tests.test_model import PCAPS, needs_data

# a real ClientHello (164 bytes) and ServerHello (66 bytes) from zeek-plugin/testing/Traces/tls-ecdhe.pcap
TRACE = os.path.join(os.path.dirname(__file__), "..", "zeek-plugin", "testing", "Traces", "tls-ecdhe.pcap")


def _hello_chunks():
    from etool_sensor.flows import FlowParams
    from etool_sensor.capture.reader import read_flows

    r = next(iter(read_flows(TRACE, FlowParams(packets=8, hello_bytes=4096))))
    return r.payload[0].data, r.payload[1].data, r.payload[2].data


def test_chunk_length_keeps_a_hello_whole_up_to_h():
    from etool_sensor.flows import chunk_length, hello_end

    client, server, cert = _hello_chunks()
    assert (len(client), len(server), hello_end(client), hello_end(server)) == (164, 66, 164, 66)
    assert hello_end(cert) == 0 and chunk_length(cert, 64, 1024) == 64  # not a hello: cut at B
    assert chunk_length(client, 64, 1024) == 164 and chunk_length(server, 64, 1024) == 66
    assert chunk_length(client, 64, 100) == 100  # cut at H
    assert chunk_length(client, 64, 0) == 64 and chunk_length(client, 64, 32) == 64  # H <= B: B, as before
    assert chunk_length(client, 200, 1024) == 164  # B beyond the hello: what there is
    assert chunk_length(client[:8], 64, 1024) == 8 and hello_end(client[:8]) == 0  # too short to tell
    not_hello = bytearray(client)
    not_hello[5] = 11  # a Certificate handshake message: not a hello
    assert chunk_length(bytes(not_hello), 64, 1024) == 64


def test_validate_accepts_a_whole_hello_and_refuses_other_long_chunks():
    from etool_sensor.flows import Chunk, FlowError, FlowParams, FlowRecord, Packet

    client, _, cert = _hello_chunks()
    pk = [Packet(0.0, True, 216, 164, 24)]
    ok = FlowRecord("Cx", 1.0, "10.0.0.1", 5000, "10.0.0.2", 443, "tcp", pk, [Chunk(True, client)])
    ok.validate(FlowParams())
    with pytest.raises(FlowError, match="H=100"):
        ok.validate(FlowParams(hello_bytes=100))
    bad = FlowRecord("Cy", 1.0, "10.0.0.1", 5000, "10.0.0.2", 443, "tcp", pk, [Chunk(True, cert + cert)])
    with pytest.raises(FlowError, match="longer than B=64"):
        bad.validate(FlowParams())


@needs_data
def test_readers_and_within_cut_by_the_same_rule(monkeypatch):
    """The compiled and the Python reader give the same records with hellos whole; a record read with H cut
    to a smaller window (FlowRecord.within) is the record read with that window."""
    from etool_sensor.capture import native
    from etool_sensor.flows import FlowParams, chunk_length, hello_end
    from etool_sensor.capture.reader import read_flows

    if not native.fast_path_available():
        pytest.skip("compiled reader not built")
    names = [PCAPS / n for n in ("chrome.pcap", "tls_verylong_certificate.pcap", "signal.pcap", "1kxun.pcap",
                                 "long_tls_certificate.pcap")]
    big = FlowParams(hello_bytes=1024)
    fast = [r.to_dict() for r in read_flows(names, big)]
    monkeypatch.setenv("ETOOL_PURE_PYTHON", "1")
    slow = list(read_flows(names, big))
    assert fast == [r.to_dict() for r in slow]
    whole = [c for r in slow for c in r.payload if len(c.data) > 64]
    assert len(whole) >= 20 and all(len(c.data) == min(hello_end(c.data), 1024) for c in whole)
    for h in (0, 100):
        small = FlowParams(hello_bytes=h)
        want = [r.to_dict() for r in read_flows(names, small)]
        assert [r.within(small).to_dict() for r in slow] == want
        assert all(len(c.data) == chunk_length(c.data, 64, h) for r in slow for c in r.within(small).payload)


def test_fingerprint_reads_codes_not_names():
    from etool_sensor.fingerprints import canonical, fingerprint, fingerprints
    from etool_sensor.flows import Chunk, FlowParams
    from etool_sensor.masking import mask_chunk
    from etool_sensor.capture.reader import read_flows

    recs = list(read_flows(TRACE, FlowParams()))
    c = canonical(recs[0])
    # TLS 1.2 hellos: 2 suites offered, ECDHE-RSA-AES256-SHA taken; extension types sorted, no names
    assert c == "c771:00ff,c014:10,11,13,15,35|s771:c014:11,35,65281"
    assert canonical(recs[0], 1) == c.split("|")[0] + "|"  # the first chunk holds only the ClientHello
    fp = fingerprint(recs[0])
    assert fp > 0 and fingerprints(recs).tolist()[0] == fp and fingerprints([]).shape == (0,)
    # the server name masked (and the Random zeroed): the same fingerprint
    data = recs[0].payload[0].data
    masked = mask_chunk(data, "tcp", 1, 443, True)
    assert masked != data
    assert fingerprint(dataclasses.replace(recs[0], payload=[Chunk(True, masked)] + recs[0].payload[1:])) == fp
    # no payload: 0
    assert fingerprint(dataclasses.replace(recs[0], payload=[])) == 0 and canonical(recs[0], 0) is None


def test_flows_without_a_hello_are_keyed_by_their_opening_bytes():
    """A flow with no TLS hello gets the fingerprint of its protocol and the first OPENING_BYTES of its first
    chunk each way, as the model reads them (names masked): the same for every flow of a protocol's opening,
    whatever follows, and never a hello's."""
    from etool_sensor.fingerprints import OPENING_BYTES, canonical, fingerprint
    from etool_sensor.flows import Chunk, FlowRecord
    from etool_sensor.capture.reader import read_flows

    assert OPENING_BYTES == 2
    whatsapp = [r for r in read_flows(PCAPS / "whatsapp.pcap") if r.payload]
    ops = {canonical(r) for r in whatsapp}
    # the messenger's routing header 'ED' (0x4544) on every one of its connections to port 5222
    assert {canonical(r) for r in whatsapp if r.resp_p == 5222} == {"o:tcp:4544|-"} and len(whatsapp) > 50
    assert len({fingerprint(r) for r in whatsapp if r.resp_p == 5222}) == 1 and "o:tcp:4544|-" in ops

    def rec(proto, *chunks):
        return FlowRecord(uid="C1", ts=0.0, orig_h="10.0.0.1", orig_p=50000, resp_h="10.0.0.2", resp_p=443, proto=proto,
                          payload=[Chunk(o, d) for o, d in chunks])

    get = rec("tcp", (True, b"GET /a HTTP/1.1"), (False, b"HTTP/1.1 200 OK"))
    assert canonical(get) == "o:tcp:4745|4854"
    assert fingerprint(get) == fingerprint(rec("tcp", (True, b"GET /b"), (False, b"HTTP/1.0 404"), (True, b"x")))
    # one side only; the other protocol; other bytes: other keys
    keys = {fingerprint(f) for f in (get, rec("tcp", (True, b"GET /a")), rec("udp", (True, b"GET /a"), (False, b"HT")),
                                     rec("tcp", (True, b"POST /"), (False, b"HTTP/1.1")), rec("tcp", (False, b"HT")))}
    assert len(keys) == 5 and 0 not in keys
    assert canonical(rec("tcp", (False, b"220 mail"))) == "o:tcp:-|3232"


def test_hello_table_counts_and_log_probabilities(tmp_path):
    from etool_sensor.fingerprints import HelloTable

    labels = ["Chat", "VPN", "Web"]
    keys = np.array([5, 5, 5, 7, 0, 9], np.uint64)
    y = ["Web", "Web", "Chat", "VPN", "Web", "Other"]  # key 0 (no hello) and a label outside: left out
    t = HelloTable.fit(keys, y, labels)
    assert sorted(t.counts) == [5, 7] and t.counts[5].tolist() == [1, 0, 2]
    lp = t.log_proba(np.array([5, 7, 0, 8], np.uint64))
    want = np.log((np.array([1, 0, 2]) + 1 / 3) / 4)
    assert np.allclose(lp[0], want) and lp[2:].tolist() == [[0, 0, 0], [0, 0, 0]]  # unseen, none: no evidence
    assert lp[1].argmax() == 1
    assert not HelloTable(labels, {}).log_proba(keys).any() and t.log_proba(np.array([], np.uint64)).shape == (0, 3)
    t.save(tmp_path / "t.json")
    back = HelloTable.load(tmp_path / "t.json")
    assert back.labels == labels and np.array_equal(back.log_proba(keys), t.log_proba(keys))
    # rows are written sparse: label index -> count
    assert t.to_json()["version"] == 3 and t.to_json()["counts"]["0000000000000005"] == {"0": 1, "2": 2}
    assert "near" not in t.to_json()  # a table without near hellos writes none (0.7.0's answers)
    assert np.array_equal(HelloTable.from_json({**t.to_json(), "version": 2}).log_proba(keys), t.log_proba(keys))
    bad = t.to_json()
    bad["counts"]["0000000000000005"] = {"3": 1}
    with pytest.raises(ValueError, match="label index 3 of 3 labels"):
        HelloTable.from_json(bad)
    bad["counts"]["0000000000000005"] = {"1": -1}
    with pytest.raises(ValueError, match="negative"):
        HelloTable.from_json(bad)
    # 0.6.0 wrote version 1, dense rows: still read, with the same answers
    v1 = {**t.to_json(), "version": 1, "counts": {f"{k:016x}": c.tolist() for k, c in t.counts.items()}}
    assert np.array_equal(HelloTable.from_json(v1).log_proba(keys), t.log_proba(keys))
    v1["counts"]["0000000000000005"] = [1, 2]
    with pytest.raises(ValueError, match="2 counts for 3 labels"):
        HelloTable.from_json(v1)
    with pytest.raises(ValueError, match="version"):
        HelloTable.from_json({**t.to_json(), "version": 9})
    with pytest.raises(ValueError, match="malformed"):
        HelloTable.from_json({"version": 1})


@needs_data
def test_bundled_table_holds_its_training_fingerprints():
    """The default model's tables were built from the labelled flows: every one of them that carries payload
    finds its fingerprint in both (its hellos, else its opening bytes); a changed fingerprint definition, or
    a table built with another one, fails here."""
    from etool_sensor.fingerprints import fingerprints
    from etool_sensor.flows import FlowParams
    from etool_sensor.runtime import load_model
    from etool_sensor.train.data import load_labelled

    model = load_model(threads=1)
    names = [p.name for p in sorted(PCAPS.glob("*.pcap*")) if any(k in p.name for k in ("tls", "chrome", "signal"))]
    ds = load_labelled(PCAPS, PCAPS.parent / "labels.csv", params=FlowParams(hello_bytes=model.spec.hello_bytes),
                       pcaps=names)
    keys = [k for k in fingerprints(ds.records).tolist() if k]
    assert len(keys) >= 30
    assert all(k in model._tables["service"].counts and k in model._tables["app"].counts for k in keys)


def test_compiled_hello_key_matches_python():
    """_fastpath.hello_key against fingerprints._hello_key_py on every chunk of the shared captures that could
    start a hello, cut at every length and with bytes changed."""
    import random

    from etool_sensor import fingerprints as F
    from etool_sensor.compiled import compiled

    fast = compiled("hello_key")
    if fast is None:
        pytest.skip("compiled extension not built")
    from etool_sensor.flows import FlowParams
    from etool_sensor.capture.reader import read_flows

    files = sorted(PCAPS.glob("*.pcap*")) if PCAPS.is_dir() else [TRACE]
    chunks = [c.data for r in read_flows(files, FlowParams()) for c in r.payload
              if len(c.data) >= 44 and c.data[0] == 0x16]
    assert chunks
    rng = random.Random(0)
    cases = list(chunks)
    for d in chunks[:300]:
        for _ in range(10):
            b = bytearray(d[:rng.randint(0, len(d))])
            for _ in range(rng.randint(0, 3)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            cases.append(bytes(b))
    assert sum(F._hello_key_py(d) is not None for d in chunks) >= len(chunks) // 2
    assert [fast(d) for d in cases] == [F._hello_key_py(d) for d in cases]
    with pytest.raises(TypeError):
        fast("not bytes")


def _flow(*chunks, proto="tcp"):
    from etool_sensor.flows import Chunk, FlowRecord

    return FlowRecord(uid="C1", ts=0.0, orig_h="10.0.0.1", orig_p=50000, resp_h="10.0.0.2", resp_p=443, proto=proto,
                      payload=[Chunk(o, d) for o, d in chunks])


def test_hello_tokens_are_the_fingerprints_fields():
    from etool_sensor.fingerprints import canonical, hello_tokens
    from tests.test_hello import CH, SH

    toks = hello_tokens(_flow((True, CH), (False, SH))).tolist()
    client = [0x0303] + [1 << 16 | v for v in (0x1301, 0x1302, 0xC02F)] + [2 << 16 | v for v in (0, 16, 43)]
    server = [0x0303, 1 << 16 | 0x1301, 2 << 16 | 43, 2 << 16 | 51]
    assert toks == sorted(client + [1 << 18 | v for v in server])  # GREASE 0x1A1A / 0x3A3A dropped
    assert hello_tokens(_flow((True, b"GET / HTTP/1.1"))) is None and hello_tokens(_flow()) is None
    # a real hello: the same fields canonical() prints
    ch, sh, _ = _hello_chunks()
    r = _flow((True, ch), (False, sh))
    c_side, s_side = canonical(r).split("|")
    n = len(c_side.split(":")[1].split(",")) + len(c_side.split(":")[2].split(",")) + 1
    n += len(s_side.split(":")[1].split(",")) + len(s_side.split(":")[2].split(",")) + 1
    assert len(hello_tokens(r)) == n


def _ch(suites, exts):
    from tests.test_hello import _hello

    return _hello(1, suites, [(e, b"") for e in exts])


def test_near_hellos_back_off_only_for_hellos_the_table_lacks(tmp_path):
    from etool_sensor.fingerprints import HelloTable, fingerprints, hello_tokens

    labels = ["Chat", "Web"]
    a = _ch([0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F], [0, 10, 11, 13, 16, 23, 43, 51])  # a browser build
    b = _ch([0x002F, 0x0035], [0, 65281])  # an old client
    train = [_flow((True, a)), _flow((True, a)), _flow((True, b)), _flow((True, b"ED\x00\x01"))]
    y = ["Web", "Web", "Chat", "Chat"]
    t = HelloTable.fit(fingerprints(train), y, labels, near_tokens=[hello_tokens(r) for r in train])
    assert t.near is not None and sorted(t.near.counts.tolist()) == [[0, 2], [1, 0]]  # two distinct hellos
    next_build = _flow((True, _ch([0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F], [0, 10, 11, 13, 16, 23, 43, 51, 45])))
    stranger = _flow((True, _ch([0x0004], [0xFF01])))  # nothing like either: Jaccard < NEAR_TAU
    test = [next_build, stranger, _flow((True, a)), _flow((True, b"ZZ"))]
    keys = fingerprints(test)
    assert keys[0] not in t.counts and keys[2] in t.counts
    lp = t.log_proba(keys, test)
    k = len(labels)
    assert np.allclose(lp[0], np.log((np.array([0, 2]) + 1 / k) / 3))  # the browser's next build: Web's evidence
    assert not lp[1].any() and not lp[3].any()  # too far, and no hello: nothing
    assert np.allclose(lp[2], t.log_proba(keys[2:3])[0])  # known exactly: the exact row alone
    assert not t.log_proba(keys)[0].any()  # without the records the table cannot read the hellos
    # answers are kept per fingerprint: asked again (and with a cache of one entry) they are the same
    assert np.array_equal(t.log_proba(keys, test), lp) and keys[0] in t._near_cache
    import etool_sensor.fingerprints as F

    old_size, F.NEAR_CACHE = F.NEAR_CACHE, 1
    t._near_cache.clear()
    try:
        assert np.array_equal(t.log_proba(keys, test), lp) and len(t._near_cache) == 1
    finally:
        F.NEAR_CACHE = old_size
    # the file keeps it, and the same flows in another order write the same file
    t.save(tmp_path / "t.json")
    assert np.array_equal(HelloTable.load(tmp_path / "t.json").log_proba(keys, test), lp)
    order = [3, 2, 1, 0]
    t2 = HelloTable.fit(fingerprints([train[i] for i in order]), [y[i] for i in order], labels,
                        near_tokens=[hello_tokens(train[i]) for i in order])
    assert t2.to_json() == t.to_json()
    bad = t.to_json()
    bad["near"]["counts"] = bad["near"]["counts"][:1]
    with pytest.raises(ValueError, match="2 hellos but 1 count rows"):
        HelloTable.from_json(bad)
    with pytest.raises(ValueError, match="records for"):
        t.log_proba(keys, test[:2])


def test_near_hellos_keep_every_tie_and_respect_tau():
    from etool_sensor.fingerprints import NearHellos

    tok = lambda *v: np.array(v, np.uint32)  # noqa: E731
    near = NearHellos([tok(1, 2, 3, 4), tok(1, 2, 3, 5), tok(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)],
                      np.array([[1.0, 0], [0, 1.0], [0, 5.0]]), tau=0.5, m=1)
    # 1,2,3 is 3/4 like each of the first two (a tie at the top: both kept), 3/10 like the third
    assert near.summed(tok(1, 2, 3)).tolist() == [1, 1]
    assert NearHellos(near.tokens, near.counts, tau=0.5, m=2).summed(tok(1, 2, 3)).tolist() == [1, 1]
    assert NearHellos(near.tokens, near.counts, tau=0.2, m=2).summed(tok(1, 2, 3)).tolist() == [1, 6]
    assert near.summed(tok(20, 21)) is None  # shares nothing
    assert NearHellos([], np.zeros((0, 2))).summed(tok(1)) is None


@needs_data
def test_near_hellos_match_the_plain_definition_on_real_flows():
    """The vectorised neighbour search against Jaccard over Python sets, on the hellos of real captures: one
    capture's flows looked up in a table of the others'."""
    from etool_sensor.fingerprints import NEAR_M, NEAR_TAU, HelloTable, fingerprints, hello_tokens
    from etool_sensor.flows import FlowParams
    from etool_sensor.train.data import load_labelled

    ds = load_labelled(PCAPS, PCAPS.parent / "labels.csv", params=FlowParams(hello_bytes=1024), encrypted_only=True)
    toks = [hello_tokens(r) for r in ds.records]
    held = {"alexa-app.pcapng", "reddit.pcap", "teams.pcap", "sites.pcapng"}  # hold out four hello-rich captures
    tr = [i for i, p in enumerate(ds.pcap) if p not in held]
    te = [i for i, p in enumerate(ds.pcap) if p in held and toks[i] is not None]
    labels = sorted(set(ds.service))
    t = HelloTable.fit(fingerprints([ds.records[i] for i in tr]), [ds.service[i] for i in tr], labels,
                       near_tokens=[toks[i] for i in tr])
    groups: dict = {}
    for i in tr:
        if toks[i] is not None:
            groups.setdefault(frozenset(toks[i].tolist()), np.zeros(len(labels)))[labels.index(ds.service[i])] += 1
    checked = 0
    for i in te:
        q = frozenset(toks[i].tolist())
        sims = {g: len(q & g) / len(q | g) for g in groups}
        levels = sorted(set(sims.values()), reverse=True)
        cut = max(levels[min(NEAR_M, len(levels)) - 1], NEAR_TAU)
        want = sum((c for g, c in groups.items() if sims[g] >= cut), np.zeros(len(labels)))
        got = t.near.summed(toks[i])
        assert (got is None and not want.any()) or np.array_equal(got, want)
        checked += got is not None
    assert len(te) >= 100 and checked >= 50


@needs_data
def test_encode_keys_are_the_plain_definitions_on_real_flows():
    """features.encode_keyed works a flow's table keys out once (hellos parsed once, openings read from the
    chunks it masked for byt); they must be what fingerprint() and hello_tokens() give alone, on every flow of
    the shared captures, masked or not, and for a chunk longer than the window whose opening masks otherwise."""
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.features import FeatureSpec, encode, encode_keyed
    from etool_sensor.fingerprints import fingerprint, fingerprints, hello_tokens
    from etool_sensor.masking import mask_chunk

    recs = list(read_flows(sorted(PCAPS.glob("*.pcap*"))))
    spec = FeatureSpec(hello_bytes=1024)
    feats, keys = encode_keyed(recs, None, spec)
    want = fingerprints(recs)
    assert np.array_equal(keys.hfp, want) and np.array_equal(feats["hfp"], want)
    assert np.array_equal(encode(recs, None, spec)["hfp"], want)
    assert np.array_equal(encode_keyed(recs, None, spec, mask_names=False)[1].hfp, want)
    openings = [i for i, h in enumerate(keys.hellos) if h == [None, None] and want[i]]
    assert len(openings) > 1000 and sum(h != [None, None] for h in keys.hellos) > 500
    for i, r in enumerate(recs):
        t, w = keys.tokens(i), hello_tokens(r)
        assert (t is None and w is None) or np.array_equal(t, w)
    # a name run from byte 0 that the window cuts reads as a name only when cut: the opening masks the chunk
    data = b"xy." + b"a" * 70 + b"_"
    assert mask_chunk(data[:64], "tcp", 50000, 443)[:2] != mask_chunk(data, "tcp", 50000, 443)[:2]
    odd = _flow((True, data), (False, data[:60]))
    assert encode_keyed([odd], None, spec)[1].hfp[0] == fingerprint(odd)
