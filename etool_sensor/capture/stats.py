"""ReadStats: the counters of one read of captures (read_flows or read_shard, all files)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadStats:
    """Counters over one read_flows call (all files)."""

    files: int = 0
    packets: int = 0  # capture records read
    bytes: int = 0  # captured bytes of those records
    flows: int = 0  # connections (uids) created
    truncated: bool = False  # any file ended inside a record / corrupt tail
    skipped_linktypes: dict[int, int] = field(default_factory=dict)  # link type -> packets skipped
    non_ip: int = 0  # link layer fine but no IPv4/IPv6 inside (ARP, LLDP, ...)
    non_tcp_udp: int = 0  # IP but neither TCP nor UDP (ICMP, ESP, SCTP, ...)
    malformed: int = 0  # headers that do not parse (too short, bad lengths)
    fragments: int = 0  # IP fragments seen (reassembled when complete)
    bad_checksums: int = 0  # IP/TCP/UDP checksum failures (dropped, as Zeek does)
    truncated_files: list[str] = field(default_factory=list)

    def skip_linktype(self, linktype: int) -> None:
        self.skipped_linktypes[linktype] = self.skipped_linktypes.get(linktype, 0) + 1

    def mark_truncated(self, path: object) -> None:
        """A file ended inside a record or had a corrupt record header: reading it stopped there."""
        self.truncated = True
        self.truncated_files.append(str(path))

    def add_counts(self, other: "ReadStats") -> None:
        """Add other's per-packet counters (not files/packets/bytes/truncation: see read_shard)."""
        self.flows += other.flows
        self.non_ip += other.non_ip
        self.non_tcp_udp += other.non_tcp_udp
        self.malformed += other.malformed
        self.fragments += other.fragments
        self.bad_checksums += other.bad_checksums
        for lt, n in other.skipped_linktypes.items():
            self.skipped_linktypes[lt] = self.skipped_linktypes.get(lt, 0) + n
