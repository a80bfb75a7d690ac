"""An asyncio client of Zeek's WebSocket API v1: one session at a time, reconnects with backoff and jitter,
TLS with verification on, the X-Application-Name checked before it is sent."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import time
from typing import Any, Awaitable, Callable

from .broker_json import WireError, dumps
from .messages import Ack, ErrorMessage, ZeekError, parse_message
from .wire import DEFAULT_TOPICS

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:27759/v1/messages/json"
_APP_NAME_RE = re.compile(r"[-/_.=:*@a-zA-Z0-9]+\Z")


class Backoff:
    """Exponential backoff with full jitter: delay_n = uniform(min, min(max, min * 2**n))."""

    def __init__(self, min_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        self.min_s, self.max_s = float(min_s), float(max_s)
        self.attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next(self) -> float:
        cap = min(self.max_s, self.min_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._rng.uniform(self.min_s, cap) if cap > self.min_s else self.min_s


def check_app_name(name: str | None) -> str | None:
    """Zeek (8.0+) rejects an X-Application-Name outside ``[-/_.=:*@a-zA-Z0-9]+``."""
    if name is None:
        return None
    if not _APP_NAME_RE.match(name):
        raise ValueError(f"app_name {name!r} must match [-/_.=:*@a-zA-Z0-9]+")
    return name


def make_ssl_context(url: str, ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext | None:
    """TLS for wss:// URLs with certificate and host name verification on (system CAs or ``ca_file``)."""
    if not url.startswith("wss://"):
        if ca_file:
            log.warning("tls.ca_file is set but %s is not a wss:// URL; it is not used", url)
        return None
    ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        log.warning("TLS certificate verification is OFF for %s: anyone on the path can read and forge flows", url)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ZeekClient:
    """One WebSocket v1 session at a time to Zeek, with reconnects.

    ``run(on_message, stop)`` connects, subscribes, waits for the ack, hands every later frame to
    ``on_message(frame, t_recv)`` (a plain callable; keep it quick) and reconnects with exponential
    backoff + jitter until ``stop`` is set. ``send(text)`` publishes on the current session.
    """

    def __init__(self, url: str = DEFAULT_URL, topics: list[str] | tuple[str, ...] = DEFAULT_TOPICS, *,
                 app_name: str | None = "etool-sensor", ca_file: str | None = None, verify: bool = True,
                 max_size: int = 1 << 20, reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 on_state: Callable[[str, Any], None] | None = None) -> None:
        if not (url.startswith("ws://") or url.startswith("wss://")):
            raise ValueError(f"zeek_url must be ws:// or wss://, got {url!r}")
        if any(type(t) is not str for t in topics):
            raise ValueError("topics must be strings")
        self.url = url
        self.topics = list(topics)
        self.app_name = check_app_name(app_name)
        self.ssl = make_ssl_context(url, ca_file, verify)
        self.max_size = int(max_size)
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.on_state = on_state or (lambda _event, _info: None)
        self.ws: Any = None
        self.ack: Ack | None = None
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.ack is not None

    async def connect(self) -> Ack:
        """One attempt: open, send the subscription array, wait for the ack. Raises ZeekError,
        WireError, OSError, TimeoutError or a websockets exception."""
        from websockets.asyncio.client import connect

        headers = {"X-Application-Name": self.app_name} if self.app_name else None
        ws = await connect(self.url, additional_headers=headers, ssl=self.ssl, max_size=self.max_size,
                           open_timeout=self.open_timeout, ping_interval=self.ping_interval,
                           close_timeout=5, compression=None, max_queue=64)
        from websockets.exceptions import ConnectionClosed

        try:
            try:
                await ws.send(dumps(self.topics))
            except ConnectionClosed:
                pass  # Zeek may refuse (error message + close) before reading: read what it said
            frame = await asyncio.wait_for(ws.recv(), self.open_timeout)
            m = parse_message(frame, self.max_size)
            if isinstance(m, ErrorMessage):
                raise ZeekError(m.code, m.context)
            if not isinstance(m, Ack):
                raise WireError("envelope", "first message from the server is not an ack")
        except BaseException:
            await ws.close()
            raise
        self.ws, self.ack = ws, m
        self.connects += 1
        return m

    async def send(self, text: str) -> None:
        ws = self.ws
        if ws is None or self.ack is None:
            from websockets.exceptions import ConnectionClosed
            raise ConnectionClosed(None, None)
        await ws.send(text)

    async def send_many(self, texts: list[str]) -> None:
        """Publish several messages at once: the frames are queued in one step and written with one
        flow-control wait, instead of a write context and a drain per message. All or none of them
        reach the transport (raises ConnectionClosed like ``send``)."""
        ws = self.ws
        if ws is None or self.ack is None:
            from websockets.exceptions import ConnectionClosed
            raise ConnectionClosed(None, None)
        proto, ctx = getattr(ws, "protocol", None), getattr(ws, "send_context", None)
        if proto is None or ctx is None or getattr(ws, "send_in_progress", None) is not None:
            for t in texts:  # another websockets layout, or a fragmented message going out: one by one
                await ws.send(t)
            return
        async with ctx():
            send_text = proto.send_text
            for t in texts:
                send_text(t.encode())

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws, self.ws, self.ack = self.ws, None, None
        if ws is not None:
            await ws.close(code, reason)

    async def run(self, on_message: Callable[[str | bytes, float], None], stop: asyncio.Event,
                  on_connect: Callable[[Ack], Awaitable[None] | None] | None = None) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        while not stop.is_set():
            try:
                ack = await self.connect()
            except (OSError, TimeoutError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed,
                    ZeekError, WireError) as e:
                self.on_state("connect_failed", e)
            except InvalidURI:
                raise
            else:
                self.backoff.reset()
                self.on_state("connected", ack)
                if on_connect is not None:
                    r = on_connect(ack)
                    if asyncio.iscoroutine(r):
                        await r
                await self._pump(on_message, stop)
                if stop.is_set():
                    return
            delay = self.backoff.next()
            self.on_state("backoff", delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def _pump(self, on_message: Callable[[str | bytes, float], None], stop: asyncio.Event) -> None:
        """Receive until the session ends or ``stop`` is set (cancelling recv() is safe in websockets)."""
        pump = asyncio.ensure_future(self._recv_loop(on_message))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({pump, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not pump.done():
                pump.cancel()
                try:
                    await pump
                except asyncio.CancelledError:
                    pass
            elif pump.exception() is not None:
                raise pump.exception()

    async def _recv_loop(self, on_message: Callable[[str | bytes, float], None]) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self.ws
        perf = time.perf_counter
        try:
            while True:
                frame = await ws.recv()
                on_message(frame, perf())
        except ConnectionClosed as e:
            self.ws, self.ack = None, None
            self.on_state("disconnected", e)
