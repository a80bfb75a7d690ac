"""Helpers the tests share: where ../shared lives (CI clones the repository beside it) and the Zeek-like
WebSocket peer (zeek_peer). The daemon with a stand-in model is bench/stub_daemon.py, shared with the bench."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
NDPI = SHARED / "data" / "ndpi"
ZEEK_TRACES = SHARED / "data" / "zeek-traces"


def full_length(model) -> dict[str, int]:
    """Token granules that keep each of a runtime.Model's token inputs at its full length: the graph run over
    the padded arrays, against which the runtime's cut runs are checked."""
    s = model.spec
    full = {"pkt": s.packets, "byt": s.payload_packets * s.payload_bytes, "seg": s.payload_packets * s.payload_bytes,
            "ctx": s.context}
    return {k: full[k] for k in model._granules}
