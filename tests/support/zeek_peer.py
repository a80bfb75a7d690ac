"""A test WebSocket server that plays Zeek's side of the WebSocket API v1.

It follows Zeek 8's server (src/cluster/websocket/WebSocket.cc + Broker's JSON v1 format) as the
reference docs and baselines describe it:

* URI other than ``/v1/messages/json``: error ``invalid_uri`` / "Invalid URI - use /v1/messages/json",
  then close 1008. A bad ``X-Application-Name``: error ``invalid_application_name``, close 1008.
* First client message = subscriptions: not a JSON array -> ``deserialization_failed`` /
  "subscriptions not an array"; a non-string entry -> "individual subscription not a string" (the
  connection stays open and is never acked, as in Zeek). Otherwise ``{"type":"ack","endpoint":...,
  "version":...}``.
* Later messages: malformed JSON or values Broker cannot convert -> "failed to decode JSON object";
  no topic -> "no topic in top-level JSON object"; an event Zeek does not know or whose arguments do
  not type-check -> "failed to create Zeek event". Good events are published: to every *other* client
  whose subscription is a prefix of the topic, and to the peer's own handlers (ETooL::verdict is
  type-checked like Zeek does against the record type, and collected in ``verdicts``).
* Everything the peer sends is validated against ``v1-broker-out.schema.json`` (when present).

It replays ETooL::flow events built from real captures (``bench.replay.flows_from_captures``).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from etool_sensor.zeek import broker_json as bj, client, messages, wire
from etool_sensor.flows import FlowRecord, Verdict
from tests.support import SHARED

ERR_BAD_JSON = ("deserialization_failed", "failed to decode JSON object")
ERR_BAD_EVENT = ("deserialization_failed", "failed to create Zeek event")
ERR_NO_TOPIC = ("deserialization_failed", "no topic in top-level JSON object")
ERR_NOT_ARRAY = ("deserialization_failed", "subscriptions not an array")
ERR_NOT_STRING = ("deserialization_failed", "individual subscription not a string")
ERR_BAD_URI = ("invalid_uri", "Invalid URI - use /v1/messages/json")
ERR_BAD_APP = ("invalid_application_name", "Invalid X-Application-Name")

REF = SHARED / "reference" / "zeek-websocket"
VERSION = "8.0.0-etool-peer"

_schema_validator = None


def schema_validator():
    """Draft 2020-12 validator of v1-broker-out.schema.json, with the timespan pattern fixed to allow
    ``us`` (Broker's encoder emits it; the upstream schema forgot it). None when unavailable."""
    global _schema_validator
    if _schema_validator is None:
        try:
            import jsonschema
            s = json.loads((REF / "v1-broker-out.schema.json").read_text())
        except (ImportError, OSError):
            _schema_validator = False
        else:
            s = copy.deepcopy(s)
            s["definitions"]["Timespan"]["properties"]["data"]["pattern"] = "^-?[0-9]+(ns|us|ms|s|min|h|d)$"
            _schema_validator = jsonschema.Draft202012Validator(s)
    return _schema_validator or None


# Zeek's view of the events it knows: name -> argument checker (raises WireError when the args do
# not convert to the declared Zeek types). Zeek refuses events it has no declaration for.
def _check_verdict(ev: messages.Event) -> Any:
    return wire.verdict_from_event(ev)


def _check_flow(ev: messages.Event) -> Any:
    return wire.flow_from_event(ev)


def _check_drift(ev: messages.Event) -> Any:  # wire v2
    return wire.drift_from_event(ev)


def _check_ping(ev: messages.Event) -> Any:  # global ping: event(msg: string, c: count) from Zeek's tests
    a = ev.args
    if len(a) != 2 or type(a[0]) is not str or type(a[1]) is not bj.Count:
        raise bj.WireError("type", "ping(msg: string, c: count)")
    return a


KNOWN_EVENTS: dict[str, Callable[[messages.Event], Any]] = {
    wire.VERDICT_EVENT: _check_verdict, wire.FLOW_EVENT: _check_flow, wire.DRIFT_EVENT: _check_drift,
    "ping": _check_ping, "pong": _check_ping,
}


@dataclass
class Client:
    cid: int
    ws: Any
    app_name: str | None
    subscriptions: list[str] = field(default_factory=list)
    acked: bool = False
    rejected: bool = False


@dataclass
class Received:
    topic: str
    name: str
    value: Any
    t: float
    client: int


class ZeekPeer:
    """``async with ZeekPeer() as peer: ...``; ``peer.url`` is the v1 endpoint."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context=None, validate: bool = True,
                 handlers: dict[str, Callable[["ZeekPeer", messages.Event, Any], Any]] | None = None,
                 max_size: int | None = 16 << 20, validate_data: int = 10) -> None:
        self.host, self.port = host, port
        self.ssl = ssl_context
        self.validate = validate and schema_validator() is not None
        self.handlers = dict(handlers or {})
        self.max_size = max_size
        self.validate_data = validate_data  # data-messages checked against the schema (it is slow)
        self.validated = 0
        self.node_id = str(uuid.uuid4())
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)
        self.server = None
        self.received: list[Received] = []
        self.verdicts: list[tuple[str, Verdict, float]] = []
        self.errors_sent: list[tuple[int, str, str]] = []
        self.app_names: list[str | None] = []
        self.connections = 0
        self.sent = 0
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> "ZeekPeer":
        from websockets.asyncio.server import serve

        self.server = await serve(self._handle, self.host, self.port, ssl=self.ssl, max_size=self.max_size,
                                  compression=None, ping_interval=None, max_queue=None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl else "ws"
        return f"{scheme}://{self.host}:{self.port}/v1/messages/json"

    async def stop(self, code: int = 1001, reason: str = "Terminating") -> None:
        """Zeek's Terminate(): close every client with 1001 "Terminating", stop listening."""
        if self.server is None:
            return
        await self.drop_clients(code, reason)
        self.server.close()
        await self.server.wait_closed()
        self.server = None

    async def __aenter__(self) -> "ZeekPeer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def drop_clients(self, code: int = 1001, reason: str = "Terminating") -> None:
        for c in list(self.clients.values()):
            try:
                await asyncio.wait_for(c.ws.close(code, reason), 5)
            except Exception:  # noqa: BLE001 - the client may already be gone
                pass

    # ------------------------------------------------------------------ sending
    async def _send(self, c: Client, text: str | bytes, *, check: bool = True) -> None:
        if check and self.validate and isinstance(text, str):
            is_data = text.startswith('{"type":"data-message"')
            if not is_data or self.validated < self.validate_data:
                schema_validator().validate(json.loads(text))
                self.validated += is_data
        await c.ws.send(text)
        self.sent += 1

    async def send_error(self, c: Client, code: str, context: str) -> None:
        self.errors_sent.append((c.cid, code, context))
        await self._send(c, messages.error_message(code, context))

    def subscribers(self, topic: str, exclude: int | None = None) -> list[Client]:
        return [c for c in self.clients.values()
                if c.acked and c.cid != exclude and any(topic.startswith(s) for s in c.subscriptions)]

    async def publish(self, topic: str, frame: str, exclude: int | None = None) -> int:
        """Send an already encoded data-message to every acked client subscribed to a prefix of topic."""
        n = 0
        for c in self.subscribers(topic, exclude):
            try:
                await self._send(c, frame)
                n += 1
            except Exception:  # noqa: BLE001 - ConnectionClosed: Zeek drops it silently
                pass
        return n

    async def publish_event(self, topic: str, name: str, args: list[Any], network_time: float | None = None) -> int:
        meta = None if network_time is None else [(1, bj.Timestamp.from_seconds(network_time))]
        return await self.publish(topic, messages.encode_event(topic, name, args, meta))

    async def publish_flow(self, rec: FlowRecord, reply_topic: str = "etool/verdicts/",
                           topic: str = "etool/flows/") -> int:
        return await self.publish(topic, wire.encode_flow(topic, rec, reply_topic, network_time=time.time()))

    async def send_raw(self, payload: str | bytes, *, text: bool | None = None) -> int:
        """Hostile injection: send a frame as is (not schema-checked) to every acked client.
        ``text=True`` with bytes sends them in a text frame without UTF-8 validation."""
        n = 0
        for c in [c for c in self.clients.values() if c.acked]:
            try:
                await c.ws.send(payload, text=text)
                n += 1
            except Exception:  # noqa: BLE001
                pass
        return n

    async def send_error_all(self, code: str, context: str) -> int:
        n = 0
        for c in [c for c in self.clients.values() if c.acked]:
            await self.send_error(c, code, context)
            n += 1
        return n

    # ------------------------------------------------------------------ waiting
    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        async def _w() -> None:
            async with self._changed:
                await self._changed.wait_for(pred)
        try:
            await asyncio.wait_for(_w(), timeout)
            return True
        except (asyncio.TimeoutError, TimeoutError):
            return pred()

    async def wait_connected(self, n: int = 1, timeout: float = 10.0) -> bool:
        return await self.wait_for(lambda: sum(c.acked for c in self.clients.values()) >= n, timeout)

    async def wait_verdicts(self, n: int, timeout: float = 10.0) -> bool:
        return await self.wait_for(lambda: len(self.verdicts) >= n, timeout)

    # ------------------------------------------------------------------ per connection
    async def _handle(self, ws) -> None:
        cid = next(self._ids)
        app = ws.request.headers.get("X-Application-Name")
        c = Client(cid, ws, app)
        self.clients[cid] = c
        self.connections += 1
        self.app_names.append(app)
        try:
            if ws.request.path != bj.V1_PATH:
                await self.send_error(c, *ERR_BAD_URI)
                await ws.close(1008, ERR_BAD_URI[1])
                return
            if app is not None and not client._APP_NAME_RE.match(app):
                await self.send_error(c, *ERR_BAD_APP)
                await ws.close(1008, ERR_BAD_APP[1])
                return
            async for msg in ws:
                if c.rejected:
                    continue  # Zeek queues messages of a never-acked client forever
                if not c.acked:
                    await self._subscriptions(c, msg)
                else:
                    await self._event(c, msg)
        except Exception:  # noqa: BLE001 - ConnectionClosed and friends end this client only
            pass
        finally:
            self.clients.pop(cid, None)
            await self._notify()

    async def _subscriptions(self, c: Client, msg: str | bytes) -> None:
        try:
            subs = json.loads(msg)
        except ValueError:
            subs = None
        if not isinstance(subs, list):
            c.rejected = True
            await self.send_error(c, *ERR_NOT_ARRAY)
            return
        if not all(isinstance(s, str) for s in subs):
            c.rejected = True
            await self.send_error(c, *ERR_NOT_STRING)
            return
        c.subscriptions = list(dict.fromkeys(subs))
        c.acked = True
        await self._send(c, messages.ack_message(f"{self.node_id}-websocket-{c.cid}", VERSION))
        await self._notify()

    async def _event(self, c: Client, msg: str | bytes) -> None:
        t = time.perf_counter()
        # 1. Broker's JSON decode: strict JSON, every @data-type convertible, a data-message object.
        try:
            obj = bj.loads(msg)
            if type(obj) is not dict:
                raise bj.WireError("envelope", "not an object")
            bj.decode_value(obj)
        except bj.WireError:
            await self.send_error(c, *ERR_BAD_JSON)
            return
        topic = obj.get("topic")
        if type(topic) is not str:
            await self.send_error(c, *ERR_NO_TOPIC)
            return
        # 2. Zeek's to_zeek_event: the event envelope, a declared event, args of the declared types.
        try:
            ev = messages.event_from_data(messages.DataMessage(topic, obj))
            check = KNOWN_EVENTS.get(ev.name)
            if check is None:
                raise bj.WireError("foreign_event", ev.name)
            value = check(ev)
        except bj.WireError:
            await self.send_error(c, *ERR_BAD_EVENT)
            return
        self.received.append(Received(topic, ev.name, value, t, c.cid))
        if ev.name == wire.VERDICT_EVENT:
            self.verdicts.append((topic, value, t))
        await self.publish(topic, msg if isinstance(msg, str) else msg.decode(), exclude=c.cid)
        h = self.handlers.get(ev.name)
        if h is not None:
            r = h(self, ev, value)
            if asyncio.iscoroutine(r):
                await r
        await self._notify()
