"""Reading captures: pcap/pcapng(.gz) files -> Zeek-like connections -> FlowRecords (contract v1).

One module per layer; each imports only modules listed above it:

- ``stats``: ReadStats, the counters of one read.
- ``shard``: which of n shards owns a packet (``classify --workers``), and the kinds of read_shard's events.
- ``tcp``: Zeek's TCP endpoint analysis: a connection's state, the endpoint state machine, Zeek's timeouts.
- ``ip``: IPv4/IPv6 decoding: header checks, fragment reassembly, IPv6 extension headers.
- ``linklayer``: the link-layer types a capture may hold, decoded down to IPv4/IPv6.
- ``formats``: capture files (pcap, pcapng, either gzip-compressed) walked record by record; PcapError.
- ``conntrack``: the connection table with Zeek's TCP/UDP session semantics -> FlowRecord + ConnSummary.
- ``native``: glue to the compiled packet path (``etool_sensor/_native/capture.c``), which ports the layers above.
- ``reader``: the public API: read_flows, read_shard, check_capture, PcapError, ReadStats, ConnSummary.
"""
