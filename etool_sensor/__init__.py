"""etool: encrypted-traffic classification (ETooL method) for Zeek sensors and pcap files."""

__version__ = "0.1.0"
