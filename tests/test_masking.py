"""Name masking on real captures: no server name survives, everything else does."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

import etool_sensor
from etool_sensor.flows import FlowParams
from etool_sensor.masking import mask_cert_names, mask_dns, mask_payload, mask_tls_client_hello
from etool_sensor.train.data import flow_key

from tests.support import NDPI

WIDE = FlowParams(packets=32, payload_bytes=1500, payload_packets=3)


def _sni_flows(limit_pcaps: int = 60):
    """(record, sni) for flows whose nDPI row names an SNI, from the first captures that have any."""
    from etool_sensor.capture.reader import read_flows

    rows = defaultdict(dict)
    with open(NDPI / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            sni = row["sni"]
            if sni and "." in sni and not sni.startswith("[") and ":" not in sni and len(sni) >= 6:
                rows[row["pcap"]][flow_key(row["l4"], row["src"], row["sport"], row["dst"], row["dport"])] = sni
    out = []
    for name in sorted(rows)[:limit_pcaps]:
        for r in read_flows(NDPI / "pcap" / name, WIDE, checksums=False):
            sni = rows[name].get(flow_key(r.proto, r.orig_h, r.orig_p, r.resp_h, r.resp_p))
            if sni:
                out.append((r, sni.encode()))
    return out


@pytest.fixture(scope="module")
def sni_flows(shared):
    flows = _sni_flows()
    assert len(flows) > 100, "expected many flows with a server name in the nDPI corpus"
    return flows


def test_names_visible_before_masking_gone_after(sni_flows):
    """TLS handshakes and DNS messages keep no trace of the name; HTTP loses its Host value.

    Cleartext HTTP also carries names in Location, Referer and bodies; those are not masked (the
    product's target is encrypted traffic, and the labeller's name comes from Host).
    """
    visible = {"tls": 0, "dns": 0, "http": 0}
    for r, sni in sni_flows:
        wire = b"".join(bytes([len(label)]) + label for label in sni.split(b"."))
        for c in r.payload:
            if wire in c.data and 53 in (r.resp_p, r.orig_p) and not sni.replace(b".", b"").isdigit():
                visible["dns"] += 1
                m = mask_payload(c.data, r.proto, r.orig_p, r.resp_p)
                assert wire not in m, f"{r.uid}: {sni!r} survives in a DNS question"
                continue
            if sni not in c.data:
                continue
            m = mask_payload(c.data, r.proto, r.orig_p, r.resp_p)
            assert len(m) == len(c.data), "masking must keep lengths"
            where = f"{r.uid} {r.orig_h}->{r.resp_h}:{r.resp_p}/{r.proto}"
            if c.data[0] == 0x16:
                visible["tls"] += 1
                assert sni not in m, f"{where}: {sni!r} survives in a TLS handshake"
            elif c.is_orig and b"\nHost:" in c.data:
                visible["http"] += 1
                line = m[m.index(b"\nHost:"):].split(b"\r")[0]
                assert sni not in line, f"{where}: Host {sni!r} survives"
    assert visible["tls"] > 100 and visible["http"] > 20 and visible["dns"] > 20, visible
    print(f"\nname masking: names masked in {visible}")


def test_masking_leaves_other_bytes_alone(sni_flows):
    changed = total = 0
    for r, _ in sni_flows[:300]:
        for c in r.payload:
            m = mask_payload(c.data, r.proto, r.orig_p, r.resp_p)
            diff = sum(a != b for a, b in zip(m, c.data))
            changed += diff
            total += len(c.data)
            assert all(b == 0x2A for a, b in zip(c.data, m) if a != b), "only '*' may be written"
    assert 0 < changed < total * 0.2


def test_truncated_client_hello_is_tolerated():
    hello = bytearray.fromhex("16030100c8010000c40303") + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    name = b"www.etool.test"
    ext = (b"\x00\x00" + (len(name) + 5).to_bytes(2, "big") + (len(name) + 3).to_bytes(2, "big") + b"\x00"
           + len(name).to_bytes(2, "big") + name)
    hello += len(ext).to_bytes(2, "big") + ext
    for cut in range(len(hello) + 1):
        buf = bytearray(hello[:cut])
        mask_tls_client_hello(buf)  # must never raise
        assert b"etool.test" not in bytes(buf) or cut < len(hello) - 10
    full = bytearray(hello)
    assert mask_tls_client_hello(full) and b"www.etool.test" not in full and b"*" * 14 in full


def test_dns_query_name_masked_keeps_label_lengths():
    q = bytearray.fromhex("abcd01000001000000000000") + b"\x03www\x05etool\x04test\x00" + b"\x00\x01\x00\x01"
    assert mask_dns(q)
    assert bytes(q[12:]) == b"\x03***\x05*****\x04****\x00\x00\x01\x00\x01"


def test_normalize_random_zeroes_session_fields_only():
    from etool_sensor.masking import normalize_random

    rnd, sid = bytes(range(1, 33)), bytes(range(100, 132))
    hello = bytes([0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3]) + rnd + bytes([32]) + sid + b"\x00\x02\x13\x01"
    out = normalize_random(hello, "tcp", 50000, 443)
    assert len(out) == len(hello)
    assert out[:11] == hello[:11] and out[11:43] == bytes(32)  # header kept, Random zeroed
    assert out[43] == 32 and out[44:76] == bytes(32)  # session id length kept, id zeroed
    assert out[76:] == hello[76:]  # cipher suites (the fingerprint) kept
    assert normalize_random(hello[:30], "tcp")[11:] == bytes(19)  # truncated chunk: what is there
    server = bytearray(hello)
    server[5] = 2
    assert bytes(normalize_random(bytes(server), "tcp")[11:43]) == bytes(32)
    quic = bytes([0xC3, 0, 0, 0, 1, 8]) + b"ABCDEFGH" + bytes([4]) + b"WXYZ" + b"rest"
    assert normalize_random(quic, "udp", 50000, 443) == bytes([0xC3, 0, 0, 0, 1, 8]) + bytes(8) + bytes([4]) + bytes(4) + b"rest"
    dns = b"\xab\xcd\x01\x00\x00\x01" + bytes(6)
    assert normalize_random(dns, "udp", 50000, 53)[:2] == b"\0\0"
    http = b"GET / HTTP/1.1\r\n"
    assert normalize_random(http, "tcp", 50000, 80) == http


_HOSTNAME = re.compile(rb"(?:[a-z0-9_-]+\.)+[a-z]{2,}")


def _known_names(rec, sni: str) -> set[bytes]:
    """The flow's own server names: its nDPI SNI and the commonName / subjectAltName values of the certificate
    in its server stream (parsed from the stream's start, where the structure is whole), lower-cased, without a
    wildcard label, kept where they read as a host name (at least 4 characters, a dot, a letter TLD)."""
    raw = {sni.encode("utf-8", "ignore")} if sni else set()
    stream = b"".join(c.data for c in rec.payload if not c.is_orig)
    masked = bytearray(stream)
    mask_cert_names(masked)
    i = 0
    while i < len(stream):
        if masked[i] == stream[i]:
            i += 1
            continue
        j = i
        while j < len(stream) and masked[j] != stream[j]:
            j += 1
        raw.add(stream[i:j])
        i = j
    out = set()
    for n in raw:
        n = n.strip().lower().removeprefix(b"*.")
        if len(n) >= 4 and _HOSTNAME.fullmatch(n):
            out.add(n)
    return out


def _window_names(data_dir, labels_csv, captures) -> tuple[int, list, list]:
    """(flows with a known name, leaks before masking, leaks after): a leak is a known name of the flow found in
    the bytes the bundled model reads of it (features.encode's `byt`, the 64-byte windows of its first chunks)."""
    from etool_sensor.features import FeatureSpec, encode
    from etool_sensor.capture.reader import read_flows
    from etool_sensor.runtime import model_window

    manifest = json.loads((Path(etool_sensor.__file__).parent / "models/default/manifest.json").read_text())
    spec = FeatureSpec.from_dict(manifest["features"])
    window = model_window(spec)
    bb = spec.payload_bytes
    sni: dict = defaultdict(dict)
    if labels_csv is not None:
        with open(labels_csv, newline="") as f:
            for row in csv.DictReader(f):
                sni[row["pcap"]][flow_key(row["l4"], row["src"], row["sport"], row["dst"], row["dport"])] = row["sni"]
    flows, before, after = 0, [], []
    for path in captures:
        name = str(path.relative_to(data_dir))
        wide = list(read_flows(path, FlowParams(packets=spec.packets, payload_bytes=4096, payload_packets=6),
                               checksums=False))
        named = [(r, _known_names(r, sni[name].get(flow_key(r.proto, r.orig_h, r.orig_p, r.resp_h, r.resp_p), "")))
                 for r in wide]
        named = [(r.within(window), n) for r, n in named if n]
        if not named:
            continue
        flows += len(named)
        recs = [r for r, _ in named]
        for mask, leaks in ((False, before), (True, after)):
            byt = encode(recs, None, spec, mask_names=mask)["byt"]
            for (r, names), row in zip(named, byt):
                chunks = [bytes(int(v) - 1 for v in row[c * bb:(c + 1) * bb] if v).lower()
                          for c in range(spec.payload_packets)]
                hit = sorted(n for n in names if any(n in ch for ch in chunks))
                if hit:
                    leaks.append((name, r.uid, hit))
    return flows, before, after


@pytest.mark.parametrize("corpus", ["ndpi", "more", "zeek-traces"])
def test_no_known_server_name_in_the_models_window(shared, corpus):
    """Every shared capture: no flow's own server name (its SNI, its certificate's names) is left in the bytes
    the bundled model reads, also where a chunk starts mid-certificate (a subjectAltName list's continuation,
    an authorityInfoAccess URL) or the name sits in another protocol's field (a banner, an agora 'sni' tag)."""
    root = shared / "data" / corpus
    if corpus == "zeek-traces":  # every capture, labelled or not (unlabelled: the certificates' names only)
        data_dir, labels = root, root / "labels.csv"
        caps = sorted(p for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng", ".trace") and p.is_file())
    else:
        data_dir, labels = root / "pcap", root / "labels.csv"
        with open(labels, newline="") as f:
            caps = [data_dir / n for n in sorted({row["pcap"] for row in csv.DictReader(f)})]
    flows, before, after = _window_names(data_dir, labels, caps)
    print(f"\n{corpus}: {flows} flows with a known name; in the model's window {len(before)} unmasked, "
          f"{len(after)} masked")
    assert before, "no name was visible unmasked: the scan found nothing to check"
    assert not after, after[:5]


def test_name_runs_mid_structure():
    """Names in a chunk that starts inside a certificate; version strings and addresses stay."""
    from etool_sensor.masking import mask_name_runs

    san_tail = bytearray(b"lueservice.icloud.com\x82\x1ep35-keyvalueservice.icloud.com\x82\x1ep42-keyva")
    assert mask_name_runs(san_tail)
    # both whole names go; a fragment cut before its first dot cannot be told from other bytes and stays
    assert bytes(san_tail) == b"*" * 21 + b"\x82\x1e" + b"*" * 30 + b"\x82\x1ep42-keyva"
    aia = bytearray(b"+\x06\x01\x05\x05\x070\x02\x86\x1fhttp://pki.google.com/giag2.crt0+\x06")
    mask_name_runs(aia)
    assert b"google" not in aia and aia.startswith(b"+\x06\x01\x05\x05\x070\x02\x86\x1fhttp://**")
    for keep in (b"SSH-2.0-OpenSSH_5.3\r\n", b"220 sendmail 8.8.7/8.8.7;", b"host: 239.255.255.250:1900\r\n", b"a.b"):
        buf = bytearray(keep)
        assert not mask_name_runs(buf) and buf == keep
    assert mask_payload(b"GET /index.php HTTP/1.0\r\n", "tcp", 50000, 80) == b"GET /index.php HTTP/1.0\r\n"
