"""Helpers the tests share: where ../shared lives (CI clones the repository beside it), the Zeek-like
WebSocket peer (zeek_peer), and the daemon with a stand-in model (stub_daemon)."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
NDPI = SHARED / "data" / "ndpi"
ZEEK_TRACES = SHARED / "data" / "zeek-traces"
