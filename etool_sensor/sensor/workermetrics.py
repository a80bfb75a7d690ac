"""One metrics and health endpoint for ``serve --workers N``.

Each worker serves its own /metrics and /healthz on a loopback port it picks and reports to the
supervisor; the supervisor serves ``serve.metrics_addr:serve.metrics_port`` and answers a scrape by
fetching every worker's and merging them, each sample labelled ``worker="<app_name>-i"``. Per worker,
not summed: each worker is a daemon of its own to Zeek (its own session, queue, model and process), and
its ``etool_connected``, queue depth and ``process_*`` series are what tells an operator which one is
stuck; ``sum without (worker)`` gives the totals. (prometheus_client's multiprocess mode would sum
counters but cannot carry the callback gauges or the process collector.)
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .logfmt import DAEMON_LOGGER, ev

log = logging.getLogger(DAEMON_LOGGER)

FETCH_TIMEOUT_S = 2.0


def _fetch(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=FETCH_TIMEOUT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class WorkerMetrics:
    """A prometheus_client collector: the workers' metrics, each sample labelled with its worker."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.ports: dict[str, int] = {}  # filled in as workers report their ports
        self.lock = threading.Lock()

    def set_port(self, name: str, port: int) -> None:
        with self.lock:
            self.ports[name] = port

    def _ports(self) -> list[tuple[str, int | None]]:
        with self.lock:
            return [(n, self.ports.get(n)) for n in self.names]

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        up = GaugeMetricFamily("etool_worker_up", "1 if the supervisor could read this worker's metrics",
                               labels=["worker"])
        for name, port in self._ports():
            text = None
            if port is not None:
                try:
                    status, body = _fetch(port, "/metrics")
                    text = body.decode() if status == 200 else None
                except (OSError, ValueError):
                    text = None
            up.add_metric([name], 1 if text is not None else 0)
            if text is None:
                continue
            for fam in text_string_to_metric_families(text):
                out = families.get(fam.name)
                if out is None:
                    out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "worker": name}, s.value, s.timestamp, s.exemplar)
        yield up
        yield from families.values()

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 when every worker is connected to Zeek, else 503; the body has each worker's /healthz."""
        workers: dict[str, Any] = {}
        for name, port in self._ports():
            try:
                if port is None:
                    raise OSError("not started")
                _, body = _fetch(port, "/healthz")
                workers[name] = json.loads(body)
            except (OSError, ValueError) as e:
                workers[name] = {"status": "unreachable", "connected": False, "error": str(e)[:200]}
        ok = all(w.get("connected") for w in workers.values())
        return (200 if ok else 503), {"status": "ok" if ok else "degraded", "connected": ok, "workers": workers}


def serve_endpoint(collector: WorkerMetrics, addr: str, port: int) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz for the workers in a daemon thread; ``.shutdown()`` stops it."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # seconds a client may take to send its request (socket timeout)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, ctype, body = 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)
            elif path == "/healthz":
                status, obj = collector.health()
                ctype, body = "application/json", json.dumps(obj).encode() + b"\n"
            else:
                status, ctype, body = 404, "text/plain", b"try /metrics or /healthz\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes are not log lines
            pass

    class Server(ThreadingHTTPServer):
        # IPv4 or IPv6 as serve.metrics_addr is (::1 too, as the single daemon's asyncio endpoint takes it)
        address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    srv = Server((addr, port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="etool-metrics", daemon=True).start()
    log.info("metrics of %d workers on http://%s:%d/metrics", len(collector.names), addr, srv.server_address[1],
             extra=ev("metrics_listening", addr=addr, port=srv.server_address[1], workers=collector.names))
    return srv
