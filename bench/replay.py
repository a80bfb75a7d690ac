"""What a load generator replays, and where it sends it: FlowRecords from the shared nDPI captures, and
the Zeek script's rendezvous (HRW) choice of daemon for a client address.

The bench scripts and the tests (tests/support/zeek_peer.py's users) both use these, so they live here, on
the side that does not import the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from etool_sensor.flows import FlowParams, FlowRecord

PCAPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ndpi" / "pcap"


def default_captures(n: int = 12) -> list[Path]:
    """A fixed, varied handful of the nDPI captures (TLS, QUIC, DNS, ...)."""
    prefer = ["443-chrome.pcap", "443-firefox.pcap", "443-curl.pcap", "quic-mvfst-22.pcap", "dns_long_domainname.pcap",
              "signal.pcap", "telegram.pcap", "whatsapp_voice_and_message.pcap", "ssh.pcap", "tls_verylong_certificate.pcap",
              "youtube_quic.pcap", "netflix.pcap", "1kxun.pcap", "443-git.pcap", "443-opvn.pcap"]
    have = [PCAPS / p for p in prefer if (PCAPS / p).is_file()]
    if len(have) < n and PCAPS.is_dir():
        have += [p for p in sorted(PCAPS.iterdir()) if p.suffix in (".pcap", ".pcapng") and p not in have]
    return have[:n]


def flows_from_captures(paths: Iterable[Path] | None = None, limit: int | None = None,
                        params: FlowParams = FlowParams()) -> list[FlowRecord]:
    """FlowRecords from real captures via etool_sensor.capture.reader.read_flows (the offline reader)."""
    from etool_sensor.capture.reader import PcapError, read_flows

    out: list[FlowRecord] = []
    seen: set[str] = set()
    for p in (list(paths) if paths is not None else default_captures()):
        try:
            for r in read_flows(p, params):
                if r.uid in seen:
                    continue
                seen.add(r.uid)
                out.append(r)
                if limit is not None and len(out) >= limit:
                    return out
        except PcapError:
            continue
    return out


# ------------------------------------------------------------------------------ several daemons
def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def hrw_weight(key_digest: int, site_id: int) -> int:
    """The rendezvous weight of a 31-bit key digest for one site, as Zeek's ``hrw_weight`` BIF computes it
    (Thaler & Ravishankar's function, a=1103515245, b=12345, mod 2**31; written from that description,
    not checked bit for bit against a Zeek binary)."""
    a, b, m = 1103515245, 12345, 2**31
    d = key_digest & 0x7FFFFFFF
    si = site_id & 0xFFFFFFFF
    si = si - 2**32 if si >= 2**31 else si  # int32_t in Zeek
    return (a * ((a * si + b) ^ d) + b) % m


def pick_daemon(orig_h: str, daemons: list[str] | tuple[str, ...]) -> str:
    """``ETooL::pick_daemon`` (zeek-plugin/scripts/publish.zeek): rendezvous (HRW) hashing of the originator
    address over the daemon names, highest weight wins, the first daemon on a tie.

    Same algorithm as the script (FNV-1a 32 digests of the address and of each name, the HRW weight);
    the digest here is taken over the address's packed bytes and the name's UTF-8, which need not be
    byte-identical to what Zeek's ``fnv1a32(any)`` hashes, so the exact daemon a given host lands on may
    differ from a real Zeek's. The properties the scale-out relies on are the same: one client
    always goes to the same daemon, clients spread over all daemons, and removing a daemon moves only its
    own clients."""
    import ipaddress

    key = fnv1a32(ipaddress.ip_address(orig_h).packed)
    best, best_w = 0, -1
    for i, name in enumerate(daemons):
        w = hrw_weight(key, fnv1a32(name.encode()))
        if w > best_w:
            best, best_w = i, w
    return daemons[best]


def daemon_topic(orig_h: str, daemons: list[str] | tuple[str, ...], flow_topic: str = "etool/flows/") -> str:
    """The topic the Zeek script publishes a flow of ``orig_h`` on (``ETooL::flow_topic`` when
    ``ETooL::daemons`` is empty)."""
    return flow_topic + pick_daemon(orig_h, daemons) + "/" if daemons else flow_topic
