"""The serve pipeline: classify flows that Zeek publishes over its WebSocket API.

One asyncio loop, inference in worker threads so the loop keeps receiving::

    WebSocket frame -> decode (zeek.wire, strict) -> per-client BURST context -> bounded queue
        -> micro-batch (batch_size or batch_deadline_ms) -> Model.classify in a thread
        -> ETooL::verdict on the flow's reply_topic

Every frame that is not used is counted: ``etool_decode_errors_total{reason}`` for input that breaks
the wire format or contract, ``etool_drops_total{reason}`` for good flows that got no verdict
(queue_full, rate_limited, duplicate, model_error, disconnected, shutdown). Warnings about them are
rate limited. ``request_stop`` (SIGTERM/SIGINT): stop receiving, answer every flow already in hand, close
with 1000. ``request_reload`` (SIGHUP): swap in the configuration and model package the reloader loads; a
flow is answered by the model that was serving when it arrived. The daemon reads the sections of the
validated ``config.Config`` it is given (serve, classify, context, privacy, flow.min_packets, drift); the
defaults live in config.SCHEMA only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ..zeek.broker_json import WireError
from ..zeek.client import ZeekClient
from ..zeek.messages import ZeekError
from ..zeek.wire import encode_verdict, parse_flow
from ..config import Config
from ..context import ContextTracker
from ..session import Session
from ..flows import FlowRecord, Verdict
from .limits import RateLimitedLog, TokenBucket
from .logfmt import DAEMON_LOGGER, ev
from .metrics import Metrics, start_endpoint

log = logging.getLogger(DAEMON_LOGGER)


#: etool_server_errors_total labels: Zeek's and Broker's error codes are short snake_case names
MAX_ERROR_CODES = 16
_ERROR_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,47}")

#: Settings a reload cannot change: they shape the WebSocket session, the listening socket, the queue or
#: the process set. A reload that changes one keeps the running value and says so in the log.
RESTART_ONLY = ("serve.zeek_url", "serve.topics", "serve.app_name", "serve.tls.ca_file", "serve.tls.verify",
                "serve.max_message_bytes", "serve.reconnect_min_s", "serve.reconnect_max_s", "serve.metrics_addr",
                "serve.metrics_port", "serve.queue_size", "serve.workers", "serve.log_format", "drift")


def config_value(cfg: Any, key: str) -> Any:
    """The value of a dotted etool.yaml key (``serve.tls.verify``) in a Config."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_value(cfg: Any, key: str, value: Any) -> Any:
    """``cfg`` with the dotted key replaced (the sections are frozen dataclasses; nothing is validated again)."""
    head, _, rest = key.partition(".")
    return dataclasses.replace(cfg, **{head: with_value(getattr(cfg, head), rest, value) if rest else value})


INFLIGHT = 2  # batches in inference at once (see Daemon._pool)


def _task_done(t: asyncio.Task, running: set, slots: asyncio.Semaphore, failed: list) -> None:
    running.discard(t)
    slots.release()
    if not t.cancelled() and t.exception() is not None:
        failed.append(t.exception())


# -------------------------------------------------------------------------------------- daemon
class Serving(Session):
    """What answers a flow: the Session (model, classify settings, context) in force when the flow arrived,
    and the model's per-label verdict counters (Metrics.use_model).

    One object per load or reload; each queued flow holds the one it arrived under, so a reload never
    changes the answer to a flow already in hand. Records from Zeek are cut to the model's window whatever
    their length (the collection is Zeek's, not flow.*)."""

    def __init__(self, cfg: Config, model: Any, counters: dict[str, dict[str, Any]],
                 tracker: ContextTracker | None = None) -> None:
        super().__init__(model, classify=cfg.classify, privacy=cfg.privacy, flow=cfg.flow, context=cfg.context,
                         collection=None, tracker=tracker)
        self.counters = counters


@dataclass(slots=True)
class _Item:
    record: FlowRecord
    context: Any
    reply_topic: str
    t_recv: float
    serving: Serving


_STOP = object()


#: reload(): read the configuration and load its model package (in a thread); raise to refuse the reload
Reloader = Callable[[], "tuple[Config, Any]"]


class Daemon:
    """The serve pipeline. ``await Daemon(config, model).run()`` until ``request_stop()``;
    ``request_reload()`` swaps in what ``reloader`` loads."""

    def __init__(self, cfg: Config, model: Any, *, metrics: Metrics | None = None,
                 reloader: Reloader | None = None, on_listening: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        serve = cfg.serve
        self.on_listening = on_listening  # given: serve metrics even on port 0 (a free one) and say which
        self.m = metrics or Metrics()
        # records Zeek collected beyond what the model reads are cut to it (FlowRecord.within)
        self.serving = Serving(cfg, model, self.m.use_model(model, None))
        self.reloader = reloader
        self._reload_task: asyncio.Task | None = None
        self._reload_again = False
        self.last_reload: dict[str, Any] | None = None  # shown on /healthz
        self.warn = RateLimitedLog(log)
        self.client = ZeekClient(serve.zeek_url, serve.topics, app_name=serve.app_name,
                                   ca_file=serve.tls.ca_file, verify=serve.tls.verify,
                                   max_size=serve.max_message_bytes, reconnect_min_s=serve.reconnect_min_s,
                                   reconnect_max_s=serve.reconnect_max_s, on_state=self._on_state)
        self.rate = TokenBucket(serve.max_flows_per_s) if serve.max_flows_per_s > 0 else None
        self.queue: asyncio.Queue | None = None
        self.stop_event: asyncio.Event | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_max = max(4 * serve.queue_size, 100_000)
        # INFLIGHT batches are classified side by side (onnxruntime releases the GIL), so the next batch
        # does not wait for the previous one's inference; verdicts are independent messages keyed by uid.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=INFLIGHT, thread_name_prefix="etool-infer")
        self._http: asyncio.AbstractServer | None = None
        self.metrics_port: int | None = None
        self._attempts = 0
        self._fill: asyncio.Future | None = None  # the batcher waits on it for a batch to fill
        self._fill_need = 0
        self._error_codes: set[str] = set()  # the labels etool_server_errors_total has used (_error_label)
        self._in_hand = 0  # flows taken from the queue whose batch has not finished (forming or inferring)
        self._running: set[asyncio.Task] = set()  # the batches being inferred and sent
        self.m.queue_depth.set_function(lambda: self.queue.qsize() if self.queue is not None else 0)
        self.m.connected.set_function(lambda: 1 if self.client.connected else 0)
        from .drift import ServeDrift  # the verdicts' drift from the model's reference: gauges, ETooL::drift

        self.drift = ServeDrift(cfg.drift, serve.app_name, model, self.m.registry, log)

    @property
    def model(self) -> Any:
        """The model answering new flows."""
        return self.serving.model

    @property
    def tracker(self) -> ContextTracker:
        """The BURST context of the flows that arrive."""
        return self.serving.tracker

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
                cfg, model = await asyncio.to_thread(self.reloader)  # type: ignore[misc]
            except Exception as e:  # noqa: BLE001 - whatever fails to load is refused, the old one serves on
                self.m.reloads.labels("refused").inc()
                self.m.reload_ok.set(0)
                why = _why(e, limit=None)  # the whole reason: a config error lists the allowed keys
                self.last_reload = {"ok": False, "time": time.time(), "error": why}
                log.error("reload refused: %s; still serving %s", why, old,
                          extra=ev("reload_refused", error=why, model=old))
            else:
                self._apply(cfg, model)
            if not self._reload_again:
                return

    def _apply(self, new: Config, model: Any) -> None:
        """Make ``new`` and ``model`` answer the flows that arrive from now on."""
        old = self.cfg
        kept = {k: config_value(old, k) for k in RESTART_ONLY if config_value(new, k) != config_value(old, k)}
        for k, v in kept.items():
            log.warning("reload: %s changed to %r; it takes effect on restart, keeping %r", k, config_value(new, k),
                        v, extra=ev("reload_needs_restart", key=k, new=config_value(new, k), running=v))
        for k in RESTART_ONLY:
            new = with_value(new, k, config_value(old, k))
        previous = self.serving
        # the context history restarts under a new context window, else it goes on
        serving = Serving(new, model, self.m.use_model(model, previous.model),
                          tracker=previous.tracker if new.context == old.context else None)
        if new.serve.max_flows_per_s != old.serve.max_flows_per_s:
            rate = new.serve.max_flows_per_s
            self.rate = TokenBucket(rate) if rate > 0 else None
        self.cfg = new
        self.serving = serving
        self.drift.set_model(serving.model)  # another package: a fresh window against its reference
        self.m.reloads.labels("ok").inc()
        self.m.reload_ok.set(1)
        self.last_reload = {"ok": True, "time": time.time(), "model": serving.model_id,
                            "kept": sorted(kept)}
        log.info("reloaded: new flows go to %s (was %s)", serving.model_id, previous.model_id,
                 extra=ev("reloaded", model=serving.model_id, previous=previous.model_id))

    async def run(self) -> int:
        serve = self.cfg.serve  # restart-only settings: a reload does not change them
        self.queue = asyncio.Queue(serve.queue_size)
        self.stop_event = asyncio.Event()
        if serve.metrics_port or self.on_listening is not None:
            await self._start_http()
        batcher = asyncio.create_task(self._batcher(), name="etool-batcher")
        drift = asyncio.create_task(self.drift.run(self.client, self.stop_event), name="etool-drift")
        try:
            await self.client.run(self._on_frame, self.stop_event)
        finally:
            # Graceful: nothing new comes in; everything queued is answered, then the session closes.
            self._put_stop() if not self.queue.full() else None
            try:
                await asyncio.wait_for(self._finish(batcher), self.cfg.serve.drain_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                # what is still queued, forming a batch or being inferred gets no verdict: counted here, and
                # the batches are cancelled so that none of them sends or counts anything after this line
                left = sum(it is not _STOP for it in self.queue._queue) + self._in_hand  # type: ignore[attr-defined]
                batcher.cancel()
                for t in list(self._running):
                    t.cancel()
                if left:
                    self.m.drops.labels("shutdown").inc(left)
                log.warning("drain timed out after %.1fs; %d flows unanswered", self.cfg.serve.drain_timeout_s,
                            left, extra=ev("drain_timeout", flows=left))
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
        return self.m.counts()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """/healthz: ok while a session with Zeek is acked; the body says with whom, the queue, the model and
        the last reload."""
        ok = self.client.connected
        return ok, {"status": "ok" if ok else "disconnected", "connected": ok, "zeek_url": self.cfg.serve.zeek_url,
                    "endpoint": self.client.ack.endpoint if ok and self.client.ack else None,
                    "queue_depth": self.queue.qsize() if self.queue else 0, "model": self.serving.model_id,
                    "last_reload": self.last_reload}

    def _on_state(self, event: str, info: Any) -> None:
        serve = self.cfg.serve
        if event == "connected":
            log.info("connected to %s (endpoint %s, Zeek %s), topics %s", serve.zeek_url, info.endpoint,
                     info.version, list(serve.topics),
                     extra=ev("connected", zeek_url=serve.zeek_url, endpoint=info.endpoint, zeek_version=info.version,
                              topics=list(serve.topics)))
        elif event == "connect_failed":
            self._count_attempt()
            if isinstance(info, ZeekError):
                self.m.server_errors.labels(self._error_label(info.code)).inc()
            self.warn.warn("connect", "cannot connect to %s: %s", serve.zeek_url, _why(info))
        elif event == "disconnected":
            self._count_attempt()
            sent = getattr(info, "sent", None)
            if sent is not None and sent.code == 1009:
                self.m.decode_errors.labels("too_big").inc()
                self.warn.warn("too_big", "a message from Zeek exceeded max_message_bytes=%d; reconnecting",
                               serve.max_message_bytes)
            elif sent is not None and sent.code == 1007:
                self.m.decode_errors.labels("encoding").inc()
                self.warn.warn("utf8", "Zeek sent a text frame that is not UTF-8; reconnecting")
            else:
                self.warn.warn("disconnected", "connection to Zeek lost: %s", _why(info))

    def _error_label(self, code: str) -> str:
        """etool_server_errors_total's label for an error code: Zeek's and Broker's codes are short snake_case
        names (deserialization_failed, invalid_uri, ...); anything else, and any code past the first
        MAX_ERROR_CODES, is "other", so a peer cannot grow the series or the log without bound."""
        if code in self._error_codes:
            return code
        if len(self._error_codes) < MAX_ERROR_CODES and _ERROR_CODE_RE.fullmatch(code):
            self._error_codes.add(code)
            return code
        return "other"

    def _count_attempt(self) -> None:
        self.m.reconnects.inc()

    # -------------------------------------------------------------- receive side (hot path)
    def _on_frame(self, frame: str | bytes, t_recv: float) -> None:
        m = self.m
        serve = self.cfg.serve
        sv = self.serving  # the flow is answered by what serves now, whatever a reload does meanwhile
        m.messages_in.inc()
        if self.stop_event.is_set():
            m.drops.labels("shutdown").inc()
            return
        try:
            fe = parse_flow(frame, serve.max_message_bytes)
        except ZeekError as e:
            label = self._error_label(e.code)
            m.server_errors.labels(label).inc()
            self.warn.warn("server_error:" + label, "Zeek answered with an error: %s: %s", e.code[:64], e.context[:200])
            return
        except WireError as e:
            m.decode_errors.labels(e.reason).inc()
            self.warn.warn("decode:" + e.reason, "refused a message from Zeek (%s): %s", e.reason, e.detail[:200])
            return
        except Exception as e:  # noqa: BLE001 - a decoder bug must not take the daemon down
            m.decode_errors.labels("internal").inc()
            self.warn.warn("decode:internal", "decoder failed: %r", e)
            return
        # the limit counts flows, after decoding: refused frames and Zeek's errors are counted as such
        if self.rate is not None and not self.rate.take():
            m.drops.labels("rate_limited").inc()
            self.warn.warn("rate", "more than %.0f flows/s: dropping", serve.max_flows_per_s)
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
        rec = sv.cut(rec)
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
            self.warn.warn("queue_full", "queue full (%d): dropping flows; inference is behind", serve.queue_size)
            return
        try:
            ctx = sv.context(rec)
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
        running = self._running
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
            serve = self.cfg.serve  # read per batch: a reload may change them
            bs = serve.batch_size
            deadline = serve.batch_deadline_ms / 1000.0
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
            self._in_hand += 1
            batch = [first]
            t_end = first.t_recv + deadline
            while len(batch) < bs:
                while len(batch) < bs and not q.empty():
                    it = q.get_nowait()
                    if it is _STOP:
                        stop = True
                        continue
                    self._in_hand += 1
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
                        self._in_hand += 1
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
        try:
            await self._answer(batch)
        finally:
            self._in_hand -= len(batch)

    async def _answer(self, batch: list[_Item]) -> None:
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
                hit = sv.alert(v)
                if hit:
                    m.alerts.labels(hit).inc()

    def _classify(self, batch: list[_Item]) -> list[Verdict]:
        """The verdicts of a batch, in order; each flow by the model it arrived under (a batch formed
        across a reload has two runs of flows, old model first)."""
        out: list[Verdict] = []
        for sv, run in itertools.groupby(batch, key=lambda it: it.serving):
            items = list(run)
            out += sv.classify([it.record for it in items], [it.context for it in items])
        return out

    # -------------------------------------------------------------- metrics / health endpoint
    async def _start_http(self) -> None:
        serve = self.cfg.serve
        self._http = await start_endpoint(serve.metrics_addr, serve.metrics_port, self.m, self.health)
        self.metrics_port = self._http.sockets[0].getsockname()[1]
        if self.on_listening is not None:
            self.on_listening(self.metrics_port)
        else:
            log.info("metrics on http://%s:%d/metrics", serve.metrics_addr, self.metrics_port,
                     extra=ev("metrics_listening", addr=serve.metrics_addr, port=self.metrics_port))


def _set_done(f: asyncio.Future) -> None:
    if not f.done():
        f.set_result(None)


def _why(e: Any, limit: int | None = 200) -> str:
    """The first line of an error, cut to `limit` characters (None: whole) for log lines repeated by peers."""
    s = (str(e) or type(e).__name__).splitlines()[0]
    return s if limit is None else s[:limit]


