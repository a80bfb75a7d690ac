"""What a daemon tells the outside: its Prometheus series, and the HTTP endpoint that serves them
(``/metrics``) with its health (``/healthz``).

The series names are the daemon's contract with dashboards and alerts (docs/sensor.md): they do not change.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384)


class Metrics:
    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                                       ProcessCollector)

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # the process_*, python_gc_* and python_info series prometheus_client's default registry carries
        # (this process's CPU, memory, open files, GC): a private registry gets them only when asked
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        self.messages_in = Counter("etool_messages_in", "WebSocket data frames received", registry=r)
        self.flows_in = Counter("etool_flows_in", "ETooL::flow events decoded", registry=r)
        self.verdicts_out = Counter("etool_verdicts_out", "ETooL::verdict events sent", registry=r)
        self.drops = Counter("etool_drops", "flows that got no verdict, by reason", ["reason"], registry=r)
        self.decode_errors = Counter("etool_decode_errors", "frames refused by the decoder, by reason",
                                     ["reason"], registry=r)
        self.server_errors = Counter("etool_server_errors", "error messages from Zeek, by code", ["code"],
                                     registry=r)
        self.reconnects = Counter("etool_reconnects", "WebSocket (re)connection attempts after the first",
                                  registry=r)
        self.batch_size = Histogram("etool_batch_size", "flows per inference batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.latency = Histogram("etool_verdict_latency_seconds", "frame received -> verdict sent",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.infer_seconds = Histogram("etool_inference_seconds", "Model.classify time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.alerts = Counter("etool_alerts", "verdicts whose label is in classify.alert_labels, by label",
                              ["label"], registry=r)
        self.short_collection = Counter(
            "etool_short_collection", "flows sent at a packet threshold below the model's window "
            "(ETooL::packets_per_flow too low)", registry=r)
        self.verdicts = Counter("etool_verdicts", "verdicts sent, by head (kind: service, app) and label; label "
                                "'unknown' for verdicts below the threshold. Labels are the model packages' "
                                "label sets, so the series are bounded", ["kind", "label"], registry=r)
        self.model_info = Gauge("etool_model_info", "the model package answering new flows (value 1)",
                                ["name", "version"], registry=r)
        self.reloads = Counter("etool_reloads", "SIGHUP reloads, by result (ok, refused)", ["result"], registry=r)
        self.reload_ok = Gauge("etool_config_last_reload_successful",
                               "1 if the last reload was applied (or none was asked for), 0 if it was refused",
                               registry=r)
        self.reload_ok.set(1)
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        self.queue_depth = Gauge("etool_queue_depth", "flows waiting for inference", registry=r)
        self.connected = Gauge("etool_connected", "1 while a WebSocket session with Zeek is acked", registry=r)
        for reason in ("queue_full", "rate_limited", "duplicate", "model_error", "disconnected", "shutdown"):
            self.drops.labels(reason)

    def use_model(self, model: Any, previous: Any = None) -> dict[str, dict[str, Any]]:
        """Point etool_model_info at ``model`` and create its per-label verdict counters (at 0, so every
        label's series exists from the start). Returns {kind: {label: counter}} for the verdict path."""
        if previous is not None:
            try:
                self.model_info.remove(str(getattr(previous, "name", "?")), str(getattr(previous, "version", "?")))
            except KeyError:
                pass
        self.model_info.labels(str(getattr(model, "name", "?")), str(getattr(model, "version", "?"))).set(1)
        sets = getattr(model, "label_sets", None) or {}
        out: dict[str, dict[str, Any]] = {}
        for kind in ("service", "app"):
            out[kind] = {label: self.verdicts.labels(kind, label) for label in list(sets.get(kind, ())) + ["unknown"]}
        return out

    def counts(self) -> dict[str, float]:
        """Current counter values (flat), e.g. {"flows_in": 10, "drops.queue_full": 2, ...}."""
        out: dict[str, float] = {}
        for fam in self.registry.collect():
            for smp in fam.samples:
                if not smp.name.startswith("etool_") or not smp.name.endswith("_total"):
                    continue
                if smp.name == "etool_verdicts_total":
                    continue  # one series per label of the package: in /metrics only
                key = smp.name[len("etool_"):-len("_total")]
                for v in smp.labels.values():
                    key += "." + v
                out[key] = smp.value
        return out

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


#: health(): (ok, the /healthz body); ok answers 200, else 503
Health = Callable[[], "tuple[bool, dict[str, Any]]"]


async def start_endpoint(addr: str, port: int, metrics: Metrics, health: Health) -> asyncio.AbstractServer:
    """Serve ``/metrics`` and ``/healthz`` on addr:port (0: a free port) from the event loop: GET and HEAD on
    those two paths only, request line and headers bounded by an 8 KiB reader limit and 5 s timeouts."""

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while True:  # headers, bounded by the reader limit and the timeout
                h = await asyncio.wait_for(reader.readline(), 5)
                if h in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            else:
                path = parts[1].split("?", 1)[0]
                if path == "/metrics":
                    status, ctype, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()
                elif path == "/healthz":
                    ok, obj = health()
                    body = json.dumps(obj).encode() + b"\n"
                    status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "application/json"
                else:
                    status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
                if parts[0] == "HEAD":
                    body = b""
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(conn, addr, port, limit=8192)
