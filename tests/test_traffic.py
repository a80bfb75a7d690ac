"""train/traffic.py: real client/server traffic in two network namespaces (needs root, ip, ethtool, curl, wget,
openssl and dumpcap or tcpdump; skipped where the machine cannot run it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etool_sensor.capture import reader
from etool_sensor.train import traffic as C


@pytest.mark.slow
def test_capture_makes_real_tls_and_http_flows(tmp_path: Path) -> None:
    try:
        C._require()
    except C.CaptureError as e:
        pytest.skip(str(e))
    p = C.capture(tmp_path, seconds=4, seed=1, log=lambda s: None)
    meta = json.loads(p.with_suffix(".json").read_text())
    assert meta["pcap"] == p.name and sum(meta["client_commands"].values()) >= 3
    conns: list[reader.ConnSummary] = []
    recs = list(reader.read_flows(p, on_conn=conns.append))
    ours = [c for c in conns if c.resp_h == C.SERVER_IP and c.orig_h == C.CLIENT_IP]
    assert len(ours) >= 3 and {c.resp_p for c in ours} <= {80, 443, 8443}
    assert all(c.proto == "tcp" for c in ours)
    # whole connections (handshake to FIN) with data both ways
    assert sum(c.conn_state == "SF" for c in ours) >= len(ours) // 2
    assert all(c.resp_bytes > 0 for c in ours if c.conn_state == "SF")
    # segmentation offload is off: every packet fits an Ethernet MTU, as on a real NIC
    assert max(pk.ip_len for r in recs for pk in r.packets) <= 1500
    # TLS on 443: the first client payload is a ClientHello
    tls = [r for r in recs if r.resp_p == 443 and r.payload]
    assert tls and all(r.payload[0].is_orig and r.payload[0].data[:1] == b"\x16" for r in tls)
    # the namespaces are gone afterwards
    assert C.CLIENT_NS not in C._run("ip", "netns", "list").stdout
