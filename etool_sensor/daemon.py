"""`etool-sensor serve`: classify flows that Zeek publishes over its WebSocket API.

Pipeline (one asyncio loop, inference in one worker thread so the loop keeps receiving)::

    WebSocket frame -> decode (zeekws, strict) -> per-client BURST context -> bounded queue
        -> micro-batch (batch_size or batch_deadline_ms) -> Model.classify in a thread
        -> ETooL::verdict on the flow's reply_topic

Every frame that is not used is counted: ``etool_decode_errors_total{reason}`` for input that breaks
the wire format or contract, ``etool_drops_total{reason}`` for good flows that got no verdict
(queue_full, rate_limited, duplicate, model_error, disconnected, shutdown). Warnings about them are
rate limited. SIGTERM/SIGINT: stop receiving, answer every flow already in hand, close with 1000.
Metrics (Prometheus text) on http://metrics_addr:metrics_port/metrics, liveness on /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import zeekws as z
from .flows import FlowRecord, Verdict

log = logging.getLogger("etool_sensor.daemon")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384)


# ------------------------------------------------------------------------------------ settings
def _get(obj: Any, path: str, default: Any) -> Any:
    """Read ``a.b.c`` from a Config dataclass, a namespace or nested dicts; default when absent."""
    cur = obj
    for part in path.split("."):
        if cur is None:
            return default
        if isinstance(cur, Mapping):
            if part not in cur:
                return default
            cur = cur[part]
        else:
            if not hasattr(cur, part):
                return default
            cur = getattr(cur, part)
    return default if cur is None and default is not None else cur


@dataclass
class ServeSettings:
    zeek_url: str = z.DEFAULT_URL
    topics: tuple[str, ...] = z.DEFAULT_TOPICS
    app_name: str | None = "etool-sensor"
    batch_size: int = 256
    batch_deadline_ms: float = 5.0
    queue_size: int = 10000
    max_message_bytes: int = 1 << 20
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 disables the endpoint
    ca_file: str | None = None
    verify: bool = True
    max_flows_per_s: float = 0.0  # 0 = no rate limit
    drain_timeout_s: float = 10.0
    threshold: float = 0.5
    label_thresholds: dict[str, float] = field(default_factory=dict)
    alert_labels: frozenset[str] = frozenset()
    top_k: int = 3
    window: float = 1.0
    bursts: int = 3
    mask_names: bool = True
    min_packets: int = 2
    model_path: str | None = None
    threads: int | None = None
    workers: int = 1
    drift: Any = None  # config.DriftConfig (drift.*); None = its defaults

    @classmethod
    def from_config(cls, cfg: Any = None, args: argparse.Namespace | None = None) -> "ServeSettings":
        d = cls()
        s = cls(
            zeek_url=_get(cfg, "serve.zeek_url", d.zeek_url),
            topics=tuple(_get(cfg, "serve.topics", d.topics)),
            app_name=_get(cfg, "serve.app_name", d.app_name),
            batch_size=int(_get(cfg, "serve.batch_size", d.batch_size)),
            batch_deadline_ms=float(_get(cfg, "serve.batch_deadline_ms", d.batch_deadline_ms)),
            queue_size=int(_get(cfg, "serve.queue_size", d.queue_size)),
            max_message_bytes=int(_get(cfg, "serve.max_message_bytes", d.max_message_bytes)),
            reconnect_min_s=float(_get(cfg, "serve.reconnect_min_s", d.reconnect_min_s)),
            reconnect_max_s=float(_get(cfg, "serve.reconnect_max_s", d.reconnect_max_s)),
            metrics_addr=_get(cfg, "serve.metrics_addr", d.metrics_addr),
            metrics_port=int(_get(cfg, "serve.metrics_port", d.metrics_port)),
            ca_file=_get(cfg, "serve.tls.ca_file", None),
            verify=bool(_get(cfg, "serve.tls.verify", d.verify)),
            max_flows_per_s=float(_get(cfg, "serve.max_flows_per_s", d.max_flows_per_s)),
            drain_timeout_s=float(_get(cfg, "serve.drain_timeout_s", d.drain_timeout_s)),
            threshold=float(_get(cfg, "classify.threshold", d.threshold)),
            label_thresholds=dict(_get(cfg, "classify.label_thresholds", {}) or {}),
            alert_labels=frozenset(_get(cfg, "classify.alert_labels", ()) or ()),
            top_k=int(_get(cfg, "classify.top_k", d.top_k)),
            window=float(_get(cfg, "context.window", d.window)),
            bursts=int(_get(cfg, "context.bursts", d.bursts)),
            mask_names=bool(_get(cfg, "privacy.mask_names", d.mask_names)),
            min_packets=int(_get(cfg, "flow.min_packets", d.min_packets)),
            model_path=_get(cfg, "model.path", None),
            threads=_get(cfg, "model.threads", None),
            workers=int(_get(cfg, "serve.workers", d.workers)),
            drift=_get(cfg, "drift", None),
        )
        if args is not None:
            if getattr(args, "workers", None):
                s.workers = args.workers
            if getattr(args, "zeek_url", None):
                s.zeek_url = args.zeek_url
            if getattr(args, "model", None):
                s.model_path = args.model
        return s


# ------------------------------------------------------------------------------------- metrics
class Metrics:
    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self.queue_depth = Gauge("etool_queue_depth", "flows waiting for inference", registry=r)
        self.connected = Gauge("etool_connected", "1 while a WebSocket session with Zeek is acked", registry=r)
        for reason in ("queue_full", "rate_limited", "duplicate", "model_error", "disconnected", "shutdown"):
            self.drops.labels(reason)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


INFLIGHT = 2  # batches in inference at once (see Daemon._pool)


def _task_done(t: asyncio.Task, running: set, slots: asyncio.Semaphore, failed: list) -> None:
    running.discard(t)
    slots.release()
    if not t.cancelled() and t.exception() is not None:
        failed.append(t.exception())


class RateLimitedLog:
    """At most one warning per key every ``every`` seconds, with the count of what was suppressed."""

    def __init__(self, logger: logging.Logger, every: float = 5.0) -> None:
        self.logger, self.every = logger, every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 1024:
            self._last.clear()
        self.logger.warning(msg + (f" (+{n} more like it suppressed)" if n else ""), *args)


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.t = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# -------------------------------------------------------------------------------------- daemon
@dataclass(slots=True)
class _Item:
    record: FlowRecord
    context: Any
    reply_topic: str
    t_recv: float


_STOP = object()


class _NoContext:
    def observe(self, record: FlowRecord) -> None:
        return None


class Daemon:
    """The serve pipeline. ``await Daemon(settings, model).run()`` until ``request_stop()``."""

    def __init__(self, settings: ServeSettings, model: Any, *, thresholds: Any = None,
                 metrics: Metrics | None = None) -> None:
        self.s = settings
        self.model = model
        from .runtime import model_window

        # what the model reads of a flow: records Zeek collected beyond it are cut to it (FlowRecord.within)
        self._window = model_window(getattr(model, "spec", None))
        self._model_packets = self._window.packets if self._window is not None else 0
        self.thresholds = thresholds if thresholds is not None else _thresholds(settings)
        self.m = metrics or Metrics()
        self.warn = RateLimitedLog(log)
        try:
            from .context import ContextTracker

            self.tracker: Any = ContextTracker(window=settings.window, bursts=settings.bursts)
        except ImportError:  # pragma: no cover - context.py is part of the package
            self.tracker = _NoContext()
        self.client = z.ZeekClient(settings.zeek_url, settings.topics, app_name=settings.app_name,
                                   ca_file=settings.ca_file, verify=settings.verify,
                                   max_size=settings.max_message_bytes, reconnect_min_s=settings.reconnect_min_s,
                                   reconnect_max_s=settings.reconnect_max_s, on_state=self._on_state)
        self.rate = TokenBucket(settings.max_flows_per_s) if settings.max_flows_per_s > 0 else None
        self.queue: asyncio.Queue | None = None
        self.stop_event: asyncio.Event | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_max = max(4 * settings.queue_size, 100_000)
        # INFLIGHT batches are classified side by side (onnxruntime releases the GIL), so the next batch
        # does not wait for the previous one's inference; verdicts are independent messages keyed by uid.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=INFLIGHT, thread_name_prefix="etool-infer")
        self._http: asyncio.AbstractServer | None = None
        self.metrics_port: int | None = None
        self._attempts = 0
        self._fill: asyncio.Future | None = None  # the batcher waits on it for a batch to fill
        self._fill_need = 0
        self.m.queue_depth.set_function(lambda: self.queue.qsize() if self.queue is not None else 0)
        self.m.connected.set_function(lambda: 1 if self.client.connected else 0)
        from .drift import ServeDrift  # the verdicts' drift from the model's reference: gauges, ETooL::drift

        self.drift = ServeDrift(settings, model, self.m.registry, log)

    # -------------------------------------------------------------- control
    def request_stop(self) -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            log.info("stopping: answering flows in hand, then closing")
            self.stop_event.set()

    async def run(self) -> int:
        self.queue = asyncio.Queue(self.s.queue_size)
        self.stop_event = asyncio.Event()
        if self.s.metrics_port:
            await self._start_http()
        batcher = asyncio.create_task(self._batcher(), name="etool-batcher")
        drift = asyncio.create_task(self.drift.run(self.client, self.stop_event), name="etool-drift")
        try:
            await self.client.run(self._on_frame, self.stop_event)
        finally:
            # Graceful: nothing new comes in; everything queued is answered, then the session closes.
            self._put_stop() if not self.queue.full() else None
            try:
                await asyncio.wait_for(self._finish(batcher), self.s.drain_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                batcher.cancel()
                left = self.queue.qsize()
                if left:
                    self.m.drops.labels("shutdown").inc(left)
                log.warning("drain timed out after %.1fs; %d flows unanswered", self.s.drain_timeout_s, left)
            drift.cancel()
            await self.client.close(1000, "")
            log.info("stopped: %s", json.dumps(self.counts(), sort_keys=True))
            if self._http is not None:
                self._http.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
        return 0

    async def _finish(self, batcher: asyncio.Task) -> None:
        while not batcher.done():
            if self.queue.full():
                await asyncio.sleep(0.01)
                continue
            if _STOP not in self.queue._queue:  # type: ignore[attr-defined]
                self._put_stop()
            await asyncio.wait({batcher}, timeout=0.05)
        batcher.result()

    def counts(self) -> dict[str, float]:
        """Current counter values (flat), e.g. {"flows_in": 10, "drops.queue_full": 2, ...}."""
        out: dict[str, float] = {}
        for fam in self.m.registry.collect():
            for smp in fam.samples:
                if not smp.name.endswith("_total"):
                    continue
                key = smp.name[len("etool_"):-len("_total")]
                for v in smp.labels.values():
                    key += "." + v
                out[key] = smp.value
        return out

    def _on_state(self, event: str, info: Any) -> None:
        if event == "connected":
            log.info("connected to %s (endpoint %s, Zeek %s), topics %s", self.s.zeek_url, info.endpoint,
                     info.version, list(self.s.topics))
        elif event == "connect_failed":
            self._count_attempt()
            if isinstance(info, z.ZeekError):
                self.m.server_errors.labels(info.code[:64]).inc()
            self.warn.warn("connect", "cannot connect to %s: %s", self.s.zeek_url, _why(info))
        elif event == "disconnected":
            self._count_attempt()
            sent = getattr(info, "sent", None)
            if sent is not None and sent.code == 1009:
                self.m.decode_errors.labels("too_big").inc()
                self.warn.warn("too_big", "a message from Zeek exceeded max_message_bytes=%d; reconnecting",
                               self.s.max_message_bytes)
            elif sent is not None and sent.code == 1007:
                self.m.decode_errors.labels("encoding").inc()
                self.warn.warn("utf8", "Zeek sent a text frame that is not UTF-8; reconnecting")
            else:
                self.warn.warn("disconnected", "connection to Zeek lost: %s", _why(info))

    def _count_attempt(self) -> None:
        self.m.reconnects.inc()

    # -------------------------------------------------------------- receive side (hot path)
    def _on_frame(self, frame: str | bytes, t_recv: float) -> None:
        m = self.m
        m.messages_in.inc()
        if self.stop_event.is_set():
            m.drops.labels("shutdown").inc()
            return
        if self.rate is not None and not self.rate.take():
            m.drops.labels("rate_limited").inc()
            self.warn.warn("rate", "more than %.0f flows/s: dropping", self.s.max_flows_per_s)
            return
        try:
            fe = z.parse_flow(frame, self.s.max_message_bytes)
        except z.ZeekError as e:
            m.server_errors.labels(e.code[:64]).inc()
            self.warn.warn("server_error:" + e.code[:64], "Zeek answered with an error: %s: %s", e.code, e.context[:200])
            return
        except z.WireError as e:
            m.decode_errors.labels(e.reason).inc()
            self.warn.warn("decode:" + e.reason, "refused a message from Zeek (%s): %s", e.reason, e.detail[:200])
            return
        except Exception as e:  # noqa: BLE001 - a decoder bug must not take the daemon down
            m.decode_errors.labels("internal").inc()
            self.warn.warn("decode:internal", "decoder failed: %r", e)
            return
        rec = fe.record
        n_pk = len(rec.packets)
        if n_pk != self._model_packets and self._model_packets:
            if not rec.final and n_pk < self._model_packets:
                # sent at Zeek's packet threshold: ETooL::packets_per_flow is below the model's window
                m.short_collection.inc()
                self.warn.warn("short_collection", "flows arrive after %d packets (ETooL::packets_per_flow) but the "
                               "model reads %d: verdicts are less accurate than the model card measured; raise it in "
                               "local.zeek", n_pk, self._model_packets)
            elif n_pk > self._model_packets:
                # cut to the model's window below: verdicts from the same packets, but Zeek waited for more
                self.warn.warn("long_collection", "flows arrive after %d packets (ETooL::packets_per_flow) but the "
                               "model reads only the first %d: verdicts come later than they need to; lower it to %d "
                               "in local.zeek", n_pk, self._model_packets, self._model_packets)
        if self._window is not None:
            rec = rec.within(self._window)
        uid = rec.uid
        if uid in self._seen:
            m.drops.labels("duplicate").inc()
            return
        self._seen[uid] = None
        if len(self._seen) > self._seen_max:
            self._seen.popitem(last=False)
        m.flows_in.inc()
        if self.queue.full():
            m.drops.labels("queue_full").inc()
            self.warn.warn("queue_full", "queue full (%d): dropping flows; inference is behind", self.s.queue_size)
            return
        try:
            ctx = self.tracker.observe(rec)
        except Exception as e:  # noqa: BLE001
            ctx = None
            self.warn.warn("context", "context tracker failed: %r", e)
        q = self.queue
        q.put_nowait(_Item(rec, ctx, fe.reply_topic, t_recv))
        f = self._fill
        if f is not None and q.qsize() >= self._fill_need and not f.done():
            f.set_result(None)

    def _put_stop(self) -> None:
        self.queue.put_nowait(_STOP)
        f = self._fill
        if f is not None and not f.done():
            f.set_result(None)

    # -------------------------------------------------------------- batch, infer, send
    async def _batcher(self) -> None:
        slots = asyncio.Semaphore(INFLIGHT)
        running: set[asyncio.Task] = set()
        failed: list[BaseException] = []
        try:
            await self._batches(slots, running, failed)
        finally:
            if running:  # drain: every batch taken from the queue is answered before the batcher ends
                await asyncio.gather(*running, return_exceptions=True)
        if failed:  # an unexpected error in a batch task ends the batcher, as it did when awaited inline
            raise failed[0]

    async def _batches(self, slots: asyncio.Semaphore, running: set, failed: list) -> None:
        """Form batches and start their inference, INFLIGHT at a time.

        A batch is formed once an inference slot is free, and its deadline runs from its first flow's
        arrival. On a quiet sensor a batch waits up to batch_deadline_ms for company, as before. Under load,
        a batch closed before its slot was free would leave the flows that arrive during that wait to the
        next batch and the next free slot; formed at the free slot, it takes them along, and a backlog goes
        out without a further deadline wait."""
        q = self.queue
        bs = self.s.batch_size
        deadline = self.s.batch_deadline_ms / 1000.0
        stop = False
        while not stop:
            await slots.acquire()
            if failed:
                slots.release()
                return
            first = await q.get()
            if first is _STOP:
                slots.release()
                if q.empty():
                    return
                continue
            batch = [first]
            t_end = first.t_recv + deadline
            while len(batch) < bs:
                while len(batch) < bs and not q.empty():
                    it = q.get_nowait()
                    if it is _STOP:
                        stop = True
                        continue
                    batch.append(it)
                if len(batch) >= bs or stop:
                    break
                rest = t_end - time.perf_counter()
                if rest <= 0:
                    break
                # sleep until the batch can be filled, a stop comes, or the deadline: one wake-up per
                # batch instead of polling the queue every millisecond
                loop = asyncio.get_running_loop()
                f = self._fill = loop.create_future()
                self._fill_need = bs - len(batch)
                timer = loop.call_later(rest, _set_done, f)
                try:
                    await f
                finally:
                    timer.cancel()
                    self._fill = None
            if stop:  # drain everything still queued behind the stop marker
                while not q.empty():
                    it = q.get_nowait()
                    if it is not _STOP:
                        batch.append(it)
            for i in range(0, len(batch), bs):
                if i:  # the first piece has its slot already
                    await slots.acquire()
                    if failed:
                        slots.release()
                        return
                t = asyncio.create_task(self._infer_and_send(batch[i:i + bs]))
                running.add(t)
                t.add_done_callback(lambda t: _task_done(t, running, slots, failed))

    async def _infer_and_send(self, batch: list[_Item]) -> None:
        m = self.m
        m.batch_size.observe(len(batch))
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            verdicts = await loop.run_in_executor(self._pool, self._classify, batch)
            if len(verdicts) != len(batch):
                raise RuntimeError(f"model returned {len(verdicts)} verdicts for {len(batch)} flows")
        except Exception as e:  # noqa: BLE001 - a model failure costs this batch, not the daemon
            m.drops.labels("model_error").inc(len(batch))
            self.warn.warn("model", "inference failed for %d flows: %r", len(batch), e)
            return
        m.infer_seconds.observe(time.perf_counter() - t0)
        self.drift.observe_all(verdicts)
        texts: list[str] = []
        done: list[tuple[_Item, Verdict]] = []
        encode = z.encode_verdict
        for it, v in zip(batch, verdicts):
            try:
                texts.append(encode(it.reply_topic, v))
            except z.WireError as e:
                m.drops.labels("model_error").inc()
                self.warn.warn("encode", "cannot encode verdict for %s: %s", it.record.uid, e)
                continue
            done.append((it, v))
        if not texts:
            return
        try:
            # the whole batch in one write (one flow-control wait), not a send() per verdict
            await self.client.send_many(texts)
        except Exception as e:  # noqa: BLE001 - ConnectionClosed
            m.drops.labels("disconnected").inc(len(texts))
            self.warn.warn("send", "cannot send verdicts (%d dropped): %s", len(texts), _why(e))
            return
        t_sent = time.perf_counter()
        m.verdicts_out.inc(len(texts))
        observe = m.latency.observe
        labels = self.s.alert_labels
        for it, v in done:
            observe(t_sent - it.t_recv)
            if labels:
                hit = v.alert(labels)
                if hit:
                    m.alerts.labels(hit).inc()

    def _classify(self, batch: list[_Item]) -> list[Verdict]:
        return self.model.classify([it.record for it in batch], [it.context for it in batch], self.thresholds,
                                   mask_names=self.s.mask_names, min_packets=self.s.min_packets,
                                   top_k=self.s.top_k)

    # -------------------------------------------------------------- metrics / health endpoint
    async def _start_http(self) -> None:
        self._http = await asyncio.start_server(self._http_conn, self.s.metrics_addr, self.s.metrics_port,
                                                limit=8192)
        self.metrics_port = self._http.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.s.metrics_addr, self.metrics_port)

    async def _http_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                    status, ctype, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", self.m.render()
                elif path == "/healthz":
                    ok = self.client.connected
                    body = json.dumps({"status": "ok" if ok else "disconnected", "connected": ok,
                                       "zeek_url": self.s.zeek_url,
                                       "endpoint": self.client.ack.endpoint if ok and self.client.ack else None,
                                       "queue_depth": self.queue.qsize() if self.queue else 0}).encode() + b"\n"
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


def _set_done(f: asyncio.Future) -> None:
    if not f.done():
        f.set_result(None)


def _why(e: Any) -> str:
    s = str(e) or type(e).__name__
    return s.splitlines()[0][:200]


def _thresholds(s: ServeSettings) -> Any:
    try:
        from .runtime import Thresholds
    except ImportError:
        return None
    return Thresholds(default=s.threshold, per_label=dict(s.label_thresholds))


# ------------------------------------------------------------------------------------------ CLI
def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="etool.yaml (default: built-in defaults, or $ETOOL_CONFIG)")
    p.add_argument("--zeek-url", metavar="URL",
                   help=f"Zeek WebSocket API endpoint (default: serve.zeek_url, {z.DEFAULT_URL})")
    p.add_argument("--model", metavar="DIR", help="model package directory (default: model.path, the bundled model)")
    p.add_argument("--workers", metavar="N", type=_positive_int,
                   help="event-loop processes (default: serve.workers, 1); with N > 1, worker i is the daemon "
                        "<app_name>-i to Zeek (ETooL::daemons) and subscribes to <topic><app_name>-i/")


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..64, got {v!r}")
    return n


def worker_settings(s: ServeSettings, i: int, n: int | None = None) -> ServeSettings:
    """Worker i of ``serve --workers N``: one of N daemons to Zeek, named ``<app_name>-<i>``.

    It subscribes to ``<topic><name>/`` for each of serve.topics (``etool/flows/etool-sensor-0/`` by
    default: what the Zeek package publishes to with ``ETooL::daemons`` listing the names), says its
    name in the handshake (cluster.log), serves metrics on ``metrics_port + i`` and queues at most
    ``queue_size / N`` flows, so the N workers together hold no more than one daemon would."""
    n = n or s.workers
    name = f"{s.app_name or 'etool-sensor'}-{i}"
    return dataclasses.replace(s, topics=tuple(t + name + "/" for t in s.topics), app_name=name,
                               metrics_port=s.metrics_port + i if s.metrics_port else 0, workers=1,
                               queue_size=max(1, s.queue_size // n))


def serve_main(args: argparse.Namespace, cfg: Any = None) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = ServeSettings.from_config(cfg, args)
    try:
        z.check_app_name(s.app_name)
    except ValueError as e:
        print(f"etool-sensor serve: {e}", file=sys.stderr)
        return 2
    if not s.zeek_url.startswith(("ws://", "wss://")):
        print(f"etool-sensor serve: --zeek-url must be ws:// or wss://, got {s.zeek_url!r}", file=sys.stderr)
        return 2
    if s.workers > 1:
        return _serve_workers(s)
    return _serve_one(s)


def _serve_one(s: ServeSettings, workers: int = 1) -> int:
    try:
        from .runtime import GIL_SWITCH_S, load_model, tune_gc
    except ImportError as e:
        print(f"etool-sensor serve: the model runtime is not available: {e}", file=sys.stderr)
        return 2
    try:
        # null = one core for the event loop (decode, context, send), the others for inference; with
        # several workers, each gets its share of the cores
        threads = s.threads if s.threads is not None else max(1, (os.cpu_count() or 2) // workers - 1)
        model = load_model(s.model_path, threads=threads)
    except Exception as e:  # noqa: BLE001 - a bad model package is an input error
        print(f"etool-sensor serve: cannot load model: {e}", file=sys.stderr)
        return 2
    log.info("model %s %s loaded", getattr(model, "name", "?"), getattr(model, "version", "?"))
    sys.setswitchinterval(GIL_SWITCH_S)  # this process is the daemon: see runtime.GIL_SWITCH_S
    tune_gc()
    return asyncio.run(_serve(s, model))


def _worker_main(s: ServeSettings, workers: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_serve_one(s, workers))


def _serve_workers(s: ServeSettings) -> int:
    """``serve --workers N``: N forked processes, each a whole daemon (its own event loop, model,
    WebSocket session and topic), so decoding and inference use N cores instead of one GIL. The parent
    loads nothing; it forwards SIGTERM/SIGINT, and when one worker fails it stops the others and exits
    with that worker's status (a supervisor restarts the set). Exit status: that first failure's, else
    the largest of the workers'."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    n = s.workers
    if s.metrics_port and s.metrics_port + n - 1 > 65535:
        print(f"etool-sensor serve: metrics ports {s.metrics_port}..{s.metrics_port + n - 1} exceed 65535",
              file=sys.stderr)
        return 2
    ws = [worker_settings(s, i, n) for i in range(n)]
    names = ", ".join(f'"{w.app_name}"' for w in ws)
    log.info("%d workers subscribing to %s; in Zeek: redef ETooL::daemons = vector(%s);", n,
             ", ".join(w.topics[0] for w in ws), names)
    ctx = mp.get_context("fork")  # nothing heavy is loaded yet: each worker loads its own model
    procs = [ctx.Process(target=_worker_main, args=(w, n), name=w.app_name, daemon=False) for w in ws]
    for p in procs:
        p.start()
    stopping = False
    failed: int | None = None

    def stop(_sig: int = 0, _frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.exitcode is None and p.pid is not None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.exitcode is None for p in procs):
            wait([p.sentinel for p in procs if p.exitcode is None], timeout=1.0)
            for p in procs:
                if p.exitcode not in (None, 0) and not stopping:
                    log.error("worker %s exited with status %s: stopping the others", p.name, p.exitcode)
                    failed = _status(p.exitcode)
                    stop()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if failed is not None:
        return failed
    return max(_status(p.exitcode if p.exitcode is not None else 1) for p in procs)


def _status(exitcode: int) -> int:
    """multiprocessing's exit code (-N: killed by signal N) as a shell status."""
    return exitcode if exitcode >= 0 else 128 - exitcode


async def _serve(s: ServeSettings, model: Any) -> int:
    d = Daemon(s, model)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, d.request_stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        return await d.run()
    except OSError as e:  # e.g. the metrics port is taken
        print(f"etool-sensor serve: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etool_sensor.daemon", description=__doc__.splitlines()[0])
    add_serve_arguments(p)
    args = p.parse_args(argv)
    cfg = None
    path = args.config
    if path is None:
        import os

        path = os.environ.get("ETOOL_CONFIG") or None
    try:
        from .config import ConfigError, load_config
    except ImportError:
        load_config = None  # type: ignore[assignment]
    if load_config is not None:
        try:
            cfg = load_config(path)
        except ConfigError as e:
            print(f"etool-sensor serve: {e}", file=sys.stderr)
            return 2
    return serve_main(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
