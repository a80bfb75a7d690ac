"""`etool-sensor serve`: classify flows that Zeek publishes over its WebSocket API.

Pipeline (one asyncio loop, inference in one worker thread so the loop keeps receiving)::

    WebSocket frame -> decode (zeek.wire, strict) -> per-client BURST context -> bounded queue
        -> micro-batch (batch_size or batch_deadline_ms) -> Model.classify in a thread
        -> ETooL::verdict on the flow's reply_topic

Every frame that is not used is counted: ``etool_decode_errors_total{reason}`` for input that breaks
the wire format or contract, ``etool_drops_total{reason}`` for good flows that got no verdict
(queue_full, rate_limited, duplicate, model_error, disconnected, shutdown). Warnings about them are
rate limited. SIGTERM/SIGINT: stop receiving, answer every flow already in hand, close with 1000.
SIGHUP: reload etool.yaml and the model package (``Daemon.request_reload``); a flow is answered by the
model that was serving when it arrived. Metrics (Prometheus text) on
http://metrics_addr:metrics_port/metrics, liveness on /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .flows import FlowRecord, Verdict
from .logfmt import LOG_FORMATS, ev
from .zeek.broker_json import WireError
from .zeek.client import DEFAULT_URL, ZeekClient, check_app_name
from .zeek.messages import ZeekError
from .zeek.wire import DEFAULT_TOPICS, encode_verdict, parse_flow

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
    zeek_url: str = DEFAULT_URL
    topics: tuple[str, ...] = DEFAULT_TOPICS
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
    log_format: str = "text"
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
            log_format=str(_get(cfg, "serve.log_format", d.log_format)),
            drift=_get(cfg, "drift", None),
        )
        if args is not None:
            if getattr(args, "workers", None):
                s.workers = args.workers
            if getattr(args, "zeek_url", None):
                s.zeek_url = args.zeek_url
            if getattr(args, "model", None):
                s.model_path = args.model
            if getattr(args, "log_format", None):
                s.log_format = args.log_format
        return s


#: Settings a reload cannot change: they shape the WebSocket session, the listening socket, the queue or
#: the process set. A reload that changes one keeps the running value and says so in the log.
RESTART_ONLY = ("zeek_url", "topics", "app_name", "ca_file", "verify", "max_message_bytes", "reconnect_min_s",
                "reconnect_max_s", "metrics_addr", "metrics_port", "queue_size", "workers", "log_format", "drift")


def _key(setting: str) -> str:
    """The etool.yaml key of a ServeSettings field that reload keeps (drift is its own section)."""
    return setting if setting == "drift" else f"serve.{setting}"


# ------------------------------------------------------------------------------------- metrics
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
        self.logger.warning(msg + (f" (+{n} more like it suppressed)" if n else ""), *args,
                            extra=ev(key.split(":", 1)[0], key=key, suppressed=n))


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
@dataclass(frozen=True, eq=False)
class Serving:
    """What answers a flow: the model and the classify settings in force when the flow arrived.

    One object per load or reload; each queued flow holds the one it arrived under, so a reload never
    changes the answer to a flow already in hand."""

    model: Any
    model_id: str  # name@version, as in the verdicts' model field
    thresholds: Any
    top_k: int
    mask_names: bool
    min_packets: int
    alert_labels: frozenset[str]
    window: Any  # what the model reads of a flow (runtime.model_window), None = all of it
    model_packets: int
    counters: dict[str, dict[str, Any]]  # Metrics.use_model: per-label verdict counters


def _serving(s: ServeSettings, model: Any, m: "Metrics", previous: Any = None) -> Serving:
    from .runtime import model_window

    window = model_window(getattr(model, "spec", None))
    return Serving(model=model, model_id=f"{getattr(model, 'name', '?')}@{getattr(model, 'version', '?')}",
                   thresholds=_thresholds(s), top_k=s.top_k, mask_names=s.mask_names, min_packets=s.min_packets,
                   alert_labels=s.alert_labels, window=window,
                   model_packets=window.packets if window is not None else 0,
                   counters=m.use_model(model, previous))


@dataclass(slots=True)
class _Item:
    record: FlowRecord
    context: Any
    reply_topic: str
    t_recv: float
    serving: Serving


_STOP = object()


class _NoContext:
    def observe(self, record: FlowRecord) -> None:
        return None


#: reload(): read the configuration and load its model package (in a thread); raise to refuse the reload
Reloader = Callable[[], "tuple[ServeSettings, Any]"]


class Daemon:
    """The serve pipeline. ``await Daemon(settings, model).run()`` until ``request_stop()``;
    ``request_reload()`` swaps in what ``reloader`` loads."""

    def __init__(self, settings: ServeSettings, model: Any, *, metrics: Metrics | None = None,
                 reloader: Reloader | None = None, on_listening: Callable[[int], None] | None = None) -> None:
        self.s = settings
        self.on_listening = on_listening  # given: serve metrics even on port 0 (a free one) and say which
        self.m = metrics or Metrics()
        # records Zeek collected beyond what the model reads are cut to it (FlowRecord.within)
        self.serving = _serving(settings, model, self.m)
        self.reloader = reloader
        self._reload_task: asyncio.Task | None = None
        self._reload_again = False
        self.last_reload: dict[str, Any] | None = None  # shown on /healthz
        self.warn = RateLimitedLog(log)
        self.tracker = _tracker(settings)
        self.client = ZeekClient(settings.zeek_url, settings.topics, app_name=settings.app_name,
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

    @property
    def model(self) -> Any:
        """The model answering new flows."""
        return self.serving.model

    # -------------------------------------------------------------- control
    def request_stop(self) -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            log.info("stopping: answering flows in hand, then closing", extra=ev("stopping"))
            self.stop_event.set()

    def request_reload(self) -> None:
        """SIGHUP: load the configuration and model again without stopping (one reload at a time; a
        request during a reload runs one more after it)."""
        if self.reloader is None:
            log.warning("reload asked for, but this daemon has no configuration to reload", extra=ev("reload_refused"))
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload(), name="etool-reload")

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            old = self.serving.model_id
            log.info("reloading configuration and model (serving %s)", old, extra=ev("reload_start", model=old))
            try:
                settings, model = await asyncio.to_thread(self.reloader)  # type: ignore[misc]
            except Exception as e:  # noqa: BLE001 - whatever fails to load is refused, the old one serves on
                self.m.reloads.labels("refused").inc()
                self.m.reload_ok.set(0)
                self.last_reload = {"ok": False, "time": time.time(), "error": _why(e)}
                log.error("reload refused: %s; still serving %s", _why(e), old,
                          extra=ev("reload_refused", error=_why(e), model=old))
            else:
                self._apply(settings, model)
            if not self._reload_again:
                return

    def _apply(self, new: ServeSettings, model: Any) -> None:
        """Make ``new`` and ``model`` answer the flows that arrive from now on."""
        old_s = self.s
        kept = {k: getattr(old_s, k) for k in RESTART_ONLY if getattr(new, k) != getattr(old_s, k)}
        for k, v in kept.items():
            log.warning("reload: %s changed to %r; it takes effect on restart, keeping %r", _key(k),
                        getattr(new, k), v, extra=ev("reload_needs_restart", key=_key(k), new=getattr(new, k),
                                                     running=v))
        new = dataclasses.replace(new, **{k: getattr(old_s, k) for k in RESTART_ONLY})
        previous = self.serving
        serving = _serving(new, model, self.m, previous.model)
        if (new.window, new.bursts) != (old_s.window, old_s.bursts):
            self.tracker = _tracker(new)  # the context history restarts under the new window
        if new.max_flows_per_s != old_s.max_flows_per_s:
            self.rate = TokenBucket(new.max_flows_per_s) if new.max_flows_per_s > 0 else None
        self.s = new
        self.serving = serving
        if serving.model is not previous.model:
            self.drift.set_model(serving.model)  # a fresh window against the new package's reference
        self.m.reloads.labels("ok").inc()
        self.m.reload_ok.set(1)
        self.last_reload = {"ok": True, "time": time.time(), "model": serving.model_id,
                            "kept": sorted(_key(k) for k in kept)}
        log.info("reloaded: new flows go to %s (was %s)", serving.model_id, previous.model_id,
                 extra=ev("reloaded", model=serving.model_id, previous=previous.model_id))

    async def run(self) -> int:
        self.queue = asyncio.Queue(self.s.queue_size)
        self.stop_event = asyncio.Event()
        if self.s.metrics_port or self.on_listening is not None:
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
            if self._reload_task is not None and not self._reload_task.done():
                self._reload_task.cancel()  # stopping: nothing new will be served by what it loads
            c = self.counts()
            log.info("stopped: %s", json.dumps(c, sort_keys=True), extra=ev("stopped", counts=c))
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
                if not smp.name.startswith("etool_") or not smp.name.endswith("_total"):
                    continue
                if smp.name == "etool_verdicts_total":
                    continue  # one series per label of the package: in /metrics only
                key = smp.name[len("etool_"):-len("_total")]
                for v in smp.labels.values():
                    key += "." + v
                out[key] = smp.value
        return out

    def _on_state(self, event: str, info: Any) -> None:
        if event == "connected":
            log.info("connected to %s (endpoint %s, Zeek %s), topics %s", self.s.zeek_url, info.endpoint,
                     info.version, list(self.s.topics),
                     extra=ev("connected", zeek_url=self.s.zeek_url, endpoint=info.endpoint, zeek_version=info.version,
                              topics=list(self.s.topics)))
        elif event == "connect_failed":
            self._count_attempt()
            if isinstance(info, ZeekError):
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
        sv = self.serving  # the flow is answered by what serves now, whatever a reload does meanwhile
        m.messages_in.inc()
        if self.stop_event.is_set():
            m.drops.labels("shutdown").inc()
            return
        if self.rate is not None and not self.rate.take():
            m.drops.labels("rate_limited").inc()
            self.warn.warn("rate", "more than %.0f flows/s: dropping", self.s.max_flows_per_s)
            return
        try:
            fe = parse_flow(frame, self.s.max_message_bytes)
        except ZeekError as e:
            m.server_errors.labels(e.code[:64]).inc()
            self.warn.warn("server_error:" + e.code[:64], "Zeek answered with an error: %s: %s", e.code, e.context[:200])
            return
        except WireError as e:
            m.decode_errors.labels(e.reason).inc()
            self.warn.warn("decode:" + e.reason, "refused a message from Zeek (%s): %s", e.reason, e.detail[:200])
            return
        except Exception as e:  # noqa: BLE001 - a decoder bug must not take the daemon down
            m.decode_errors.labels("internal").inc()
            self.warn.warn("decode:internal", "decoder failed: %r", e)
            return
        rec = fe.record
        n_pk = len(rec.packets)
        model_packets = sv.model_packets
        if n_pk != model_packets and model_packets:
            if not rec.final and n_pk < model_packets:
                # sent at Zeek's packet threshold: ETooL::packets_per_flow is below the model's window
                m.short_collection.inc()
                self.warn.warn("short_collection", "flows arrive after %d packets (ETooL::packets_per_flow) but the "
                               "model reads %d: verdicts are less accurate than the model card measured; raise it in "
                               "local.zeek", n_pk, model_packets)
            elif n_pk > model_packets:
                # cut to the model's window below: verdicts from the same packets, but Zeek waited for more
                self.warn.warn("long_collection", "flows arrive after %d packets (ETooL::packets_per_flow) but the "
                               "model reads only the first %d: verdicts come later than they need to; lower it to %d "
                               "in local.zeek", n_pk, model_packets, model_packets)
        if sv.window is not None:
            rec = rec.within(sv.window)
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
        q.put_nowait(_Item(rec, ctx, fe.reply_topic, t_recv, sv))
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
        stop = False
        while not stop:
            bs = self.s.batch_size  # read per batch: a reload may change them
            deadline = self.s.batch_deadline_ms / 1000.0
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
        encode = encode_verdict
        for it, v in zip(batch, verdicts):
            try:
                texts.append(encode(it.reply_topic, v))
            except WireError as e:
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
        self._sent(done, time.perf_counter())

    def _sent(self, done: list[tuple[_Item, Verdict]], t_sent: float) -> None:
        """Every verdict Zeek was sent passes here once, with the flow it answers (and, in ``it.serving``,
        the model that answered it): the place to observe verdicts."""
        m = self.m
        m.verdicts_out.inc(len(done))
        observe = m.latency.observe
        for it, v in done:
            observe(t_sent - it.t_recv)
            sv = it.serving
            by_label = sv.counters
            if v.unknown:
                by_label["service"]["unknown"].inc()
                by_label["app"]["unknown"].inc()
            else:
                for kind, label in (("service", v.service), ("app", v.app)):
                    c = by_label[kind].get(label)
                    if c is None:  # not in the package's label set: counted with unknown, keeping the bound
                        c = by_label[kind]["unknown"]
                    c.inc()
            if sv.alert_labels:
                hit = v.alert(sv.alert_labels)
                if hit:
                    m.alerts.labels(hit).inc()

    def _classify(self, batch: list[_Item]) -> list[Verdict]:
        """The verdicts of a batch, in order; each flow by the model it arrived under (a batch formed
        across a reload has two runs of flows, old model first)."""
        out: list[Verdict] = []
        for sv, run in itertools.groupby(batch, key=lambda it: it.serving):
            items = list(run)
            out += sv.model.classify([it.record for it in items], [it.context for it in items], sv.thresholds,
                                     mask_names=sv.mask_names, min_packets=sv.min_packets, top_k=sv.top_k)
        return out

    # -------------------------------------------------------------- metrics / health endpoint
    async def _start_http(self) -> None:
        self._http = await asyncio.start_server(self._http_conn, self.s.metrics_addr, self.s.metrics_port,
                                                limit=8192)
        self.metrics_port = self._http.sockets[0].getsockname()[1]
        if self.on_listening is not None:
            self.on_listening(self.metrics_port)
        else:
            log.info("metrics on http://%s:%d/metrics", self.s.metrics_addr, self.metrics_port,
                     extra=ev("metrics_listening", addr=self.s.metrics_addr, port=self.metrics_port))

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
                                       "queue_depth": self.queue.qsize() if self.queue else 0,
                                       "model": self.serving.model_id,
                                       "last_reload": self.last_reload}).encode() + b"\n"
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


def _tracker(s: ServeSettings) -> Any:
    try:
        from .context import ContextTracker
    except ImportError:  # pragma: no cover - context.py is part of the package
        return _NoContext()
    return ContextTracker(window=s.window, bursts=s.bursts)


def _thresholds(s: ServeSettings) -> Any:
    try:
        from .runtime import Thresholds
    except ImportError:
        return None
    return Thresholds(default=s.threshold, per_label=dict(s.label_thresholds))


# ------------------------------------------------------------------------------------------ CLI
def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="etool.yaml (default: built-in defaults, or $ETOOL_CONFIG); "
                   "SIGHUP reads it again")
    p.add_argument("--zeek-url", metavar="URL",
                   help=f"Zeek WebSocket API endpoint (default: serve.zeek_url, {DEFAULT_URL})")
    p.add_argument("--model", metavar="DIR", help="model package directory (default: model.path, the bundled model); "
                   "SIGHUP loads it again")
    p.add_argument("--workers", metavar="N", type=_positive_int,
                   help="event-loop processes (default: serve.workers, 1); with N > 1, worker i is the daemon "
                        "<app_name>-i to Zeek (ETooL::daemons) and subscribes to <topic><app_name>-i/")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="the daemon's log lines on stderr (default: serve.log_format, text); json: one object a line")


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
    name in the handshake (cluster.log), serves its metrics on a free loopback port for the supervisor to
    merge (workermetrics) and queues at most ``queue_size / N`` flows, so the N workers together hold no
    more than one daemon would."""
    n = n or s.workers
    name = f"{s.app_name or 'etool-sensor'}-{i}"
    return dataclasses.replace(s, topics=tuple(t + name + "/" for t in s.topics), app_name=name,
                               metrics_addr="127.0.0.1", metrics_port=0, workers=1,
                               queue_size=max(1, s.queue_size // n))


def config_path(args: argparse.Namespace | None) -> str | None:
    """The etool.yaml serve reads at start and on SIGHUP: --config, else $ETOOL_CONFIG, else none."""
    return (getattr(args, "config", None) if args is not None else None) or os.environ.get("ETOOL_CONFIG") or None


def _inference_threads(s: ServeSettings, workers: int) -> int:
    # null = one core for the event loop (decode, context, send), the others for inference; with
    # several workers, each gets its share of the cores
    return s.threads if s.threads is not None else max(1, (os.cpu_count() or 2) // workers - 1)


def make_reloader(args: argparse.Namespace | None, worker: tuple[int, int] | None = None) -> Reloader:
    """What SIGHUP loads: etool.yaml at its configured path (command-line options still override it) and the
    model package it names; for worker (i, n) of ``--workers n``, that worker's share. Raises on a file,
    value or package that does not load or validate."""
    def reload() -> tuple[ServeSettings, Any]:
        from .config import load_config
        from .runtime import load_model

        s = ServeSettings.from_config(load_config(config_path(args)), args)
        n = s.workers
        if worker is not None:
            s = worker_settings(s, worker[0], worker[1])
            n = worker[1]
        return s, load_model(s.model_path, threads=_inference_threads(s, n))
    return reload


_hup_pending = False  # a SIGHUP that came before the event loop could take it (see _note_hup)


def _note_hup(_sig: int = 0, _frame: Any = None) -> None:
    """SIGHUP while the model loads: remembered and handled once serving, instead of Python's default
    action for SIGHUP (terminate)."""
    global _hup_pending
    _hup_pending = True


def serve_main(args: argparse.Namespace, cfg: Any = None) -> int:
    try:
        signal.signal(signal.SIGHUP, _note_hup)
    except ValueError:  # not the main thread (embedded): the event loop's handler is all there is
        pass
    s = ServeSettings.from_config(cfg, args)
    from .logfmt import setup_logging

    if s.log_format == "json" or not logging.getLogger().handlers:
        setup_logging(s.log_format)
    try:
        check_app_name(s.app_name)
    except ValueError as e:
        print(f"etool-sensor serve: {e}", file=sys.stderr)
        return 2
    if not s.zeek_url.startswith(("ws://", "wss://")):
        print(f"etool-sensor serve: --zeek-url must be ws:// or wss://, got {s.zeek_url!r}", file=sys.stderr)
        return 2
    if s.workers > 1:
        return _serve_workers(s, args)
    return _serve_one(s, reloader=make_reloader(args))


def _serve_one(s: ServeSettings, workers: int = 1, reloader: Reloader | None = None,
               on_listening: Callable[[int], None] | None = None) -> int:
    try:
        from .runtime import GIL_SWITCH_S, load_model, tune_gc
    except ImportError as e:
        print(f"etool-sensor serve: the model runtime is not available: {e}", file=sys.stderr)
        return 2
    from . import logfmt

    logfmt.context["daemon"] = s.app_name
    if workers > 1:
        logfmt.context["worker"] = s.app_name
    try:
        model = load_model(s.model_path, threads=_inference_threads(s, workers))
    except Exception as e:  # noqa: BLE001 - a bad model package is an input error
        print(f"etool-sensor serve: cannot load model: {e}", file=sys.stderr)
        return 2
    log.info("model %s %s loaded", getattr(model, "name", "?"), getattr(model, "version", "?"),
             extra=ev("model_loaded", model=f"{getattr(model, 'name', '?')}@{getattr(model, 'version', '?')}",
                      path=str(getattr(model, "path", s.model_path))))
    sys.setswitchinterval(GIL_SWITCH_S)  # this process is the daemon: see runtime.GIL_SWITCH_S
    tune_gc()
    return asyncio.run(_serve(s, model, reloader, on_listening))


def _worker_main(s: ServeSettings, workers: int, i: int, args: argparse.Namespace | None, report: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, _note_hup)
    sys.exit(_serve_one(s, workers, make_reloader(args, (i, workers)), report.send if report is not None else None))


def _serve_workers(s: ServeSettings, args: argparse.Namespace | None = None) -> int:
    """``serve --workers N``: N forked processes, each a whole daemon (its own event loop, model,
    WebSocket session and topic), so decoding and inference use N cores instead of one GIL. The parent
    loads nothing; it forwards SIGTERM/SIGINT and SIGHUP (each worker reloads itself), and when one worker
    fails it stops the others and exits with that worker's status (a supervisor restarts the set). Exit
    status: that first failure's, else the largest of the workers'."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from .workermetrics import WorkerMetrics, serve_endpoint

    n = s.workers
    ws = [worker_settings(s, i, n) for i in range(n)]
    names = ", ".join(f'"{w.app_name}"' for w in ws)
    log.info("%d workers subscribing to %s; in Zeek: redef ETooL::daemons = vector(%s);", n,
             ", ".join(w.topics[0] for w in ws), names,
             extra=ev("workers", workers=[w.app_name for w in ws], topics=[w.topics[0] for w in ws]))
    merged = WorkerMetrics([w.app_name for w in ws])
    endpoint = None
    if s.metrics_port:
        try:
            endpoint = serve_endpoint(merged, s.metrics_addr, s.metrics_port)
        except OSError as e:  # e.g. the port is taken
            print(f"etool-sensor serve: metrics endpoint {s.metrics_addr}:{s.metrics_port}: {e}", file=sys.stderr)
            return 2
    ctx = mp.get_context("fork")  # nothing heavy is loaded yet: each worker loads its own model
    pipes = [ctx.Pipe(duplex=False) if s.metrics_port else (None, None) for _ in ws]
    procs = [ctx.Process(target=_worker_main, args=(w, n, i, args, pipes[i][1]), name=w.app_name, daemon=False)
             for i, w in enumerate(ws)]
    for p in procs:
        p.start()
    for _, w_end in pipes:
        if w_end is not None:
            w_end.close()  # the worker holds it: a worker that dies before reporting reads as EOF here
    reports = {r: w.app_name for (r, _), w in zip(pipes, ws) if r is not None}
    stopping = False
    failed: int | None = None

    def send(sig: int) -> None:
        for p in procs:
            if p.exitcode is None and p.pid is not None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def stop(_sig: int = 0, _frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        send(signal.SIGTERM)

    def reload(_sig: int = 0, _frame: Any = None) -> None:
        log.info("SIGHUP: each of the %d workers reloads", n, extra=ev("reload_forward", workers=n))
        _warn_process_settings(s, args)
        send(signal.SIGHUP)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    global _hup_pending
    if _hup_pending:  # came before this handler: a worker started before it may have read the old files
        _hup_pending = False
        reload()
    try:
        while any(p.exitcode is None for p in procs):
            ready = wait([p.sentinel for p in procs if p.exitcode is None] + list(reports), timeout=1.0)
            for r in ready:
                if r in reports:  # a worker's metrics port
                    try:
                        merged.set_port(reports[r], int(r.recv()))
                    except (EOFError, OSError, ValueError):
                        pass
                    del reports[r]
            for p in procs:
                if p.exitcode not in (None, 0) and not stopping:
                    log.error("worker %s exited with status %s: stopping the others", p.name, p.exitcode,
                              extra=ev("worker_failed", worker=p.name, exitcode=p.exitcode))
                    failed = _status(p.exitcode)
                    stop()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if endpoint is not None:
            endpoint.shutdown()
            endpoint.server_close()
    if failed is not None:
        return failed
    return max(_status(p.exitcode if p.exitcode is not None else 1) for p in procs)


def _warn_process_settings(s: ServeSettings, args: argparse.Namespace | None) -> None:
    """The supervisor's part of a reload: the number of workers and its metrics endpoint are fixed until
    restart; say so."""
    try:
        from .config import load_config

        new = ServeSettings.from_config(load_config(config_path(args)), args)
    except Exception:  # noqa: BLE001 - each worker refuses a bad file and logs why
        return
    for k in ("workers", "metrics_addr", "metrics_port"):
        if getattr(new, k) != getattr(s, k):
            log.warning("reload: serve.%s changed to %r; it takes effect on restart, keeping %r", k, getattr(new, k),
                        getattr(s, k), extra=ev("reload_needs_restart", key=f"serve.{k}", new=getattr(new, k),
                                                running=getattr(s, k)))


def _status(exitcode: int) -> int:
    """multiprocessing's exit code (-N: killed by signal N) as a shell status."""
    return exitcode if exitcode >= 0 else 128 - exitcode


async def _serve(s: ServeSettings, model: Any, reloader: Reloader | None = None,
                 on_listening: Callable[[int], None] | None = None) -> int:
    global _hup_pending
    d = Daemon(s, model, reloader=reloader, on_listening=on_listening)
    loop = asyncio.get_running_loop()
    for sig, handler in ((signal.SIGTERM, d.request_stop), (signal.SIGINT, d.request_stop),
                         (signal.SIGHUP, d.request_reload)):
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    if _hup_pending:  # a SIGHUP while the model loaded: the files may have changed since they were read
        _hup_pending = False
        loop.call_soon(d.request_reload)
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
    try:
        from .config import ConfigError, load_config
    except ImportError:
        load_config = None  # type: ignore[assignment]
    if load_config is not None:
        try:
            cfg = load_config(config_path(args))
        except ConfigError as e:
            print(f"etool-sensor serve: {e}", file=sys.stderr)
            return 2
    return serve_main(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
