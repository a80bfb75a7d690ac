"""Zeek WebSocket API v1 messages over the Broker JSON codec: ack, error, data-message, and the Zeek event
inside a data-message (``[1, 1, [name, args, metadata?]]``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .broker_json import Count, WireError, check_str, decode_value, dumps, encode_value, expect_data, loads


class ZeekError(Exception):
    """The server answered with an error message (``{"type":"error",...}``) or broke the handshake."""

    def __init__(self, code: str, context: str = "") -> None:
        super().__init__(f"{code}: {context}")
        self.code = code
        self.context = context


@dataclass(slots=True)
class Ack:
    endpoint: str
    version: str


@dataclass(slots=True)
class ErrorMessage:
    code: str
    context: str


@dataclass(slots=True)
class DataMessage:
    topic: str
    raw: dict[str, Any]  # the @data-type object (the message minus type/topic)

    @property
    def value(self) -> Any:
        return decode_value(self.raw)


@dataclass(slots=True)
class Event:
    """A Zeek event: name, arguments, metadata as (key, value) pairs. ``raw_args`` are the undecoded
    @data-type objects (decode lazily with :attr:`args`)."""

    topic: str
    name: str
    raw_args: list[Any]
    metadata: list[tuple[int, Any]] = field(default_factory=list)

    @property
    def args(self) -> list[Any]:
        return [decode_value(a, 1) for a in self.raw_args]


def ack_message(endpoint: str, version: str) -> str:
    return dumps({"type": "ack", "endpoint": endpoint, "version": version})


def error_message(code: str, context: str) -> str:
    return dumps({"type": "error", "code": code, "context": context})


def data_message(topic: str, value: dict[str, Any]) -> dict[str, Any]:
    """Envelope an encoded value: ``type`` and ``topic`` first, then the value's keys (as Broker does)."""
    return {"type": "data-message", "topic": topic, **value}


def event_value(name: str, args: list[Any], metadata: list[tuple[int, Any]] | None = None) -> dict[str, Any]:
    """The @data-type object of a Zeek event: ``[1, 1, [name, args, metadata?]]``."""
    inner = [{"@data-type": "string", "data": check_str(name)},
             {"@data-type": "vector", "data": [a if _is_encoded(a) else encode_value(a, 2) for a in args]}]
    if metadata is not None:
        inner.append({"@data-type": "vector", "data": [
            {"@data-type": "vector", "data": [encode_value(Count(k)), encode_value(v, 3)]} for k, v in metadata]})
    return {"@data-type": "vector", "data": [
        {"@data-type": "count", "data": 1},
        {"@data-type": "count", "data": 1},
        {"@data-type": "vector", "data": inner},
    ]}


def _is_encoded(a: Any) -> bool:
    return type(a) is dict and "@data-type" in a and "data" in a and len(a) == 2


def encode_event(topic: str, name: str, args: list[Any], metadata: list[tuple[int, Any]] | None = None) -> str:
    """A complete data-message text frame carrying a Zeek event. ``args`` may mix Python values and
    already-encoded @data-type objects."""
    return dumps(data_message(topic, event_value(name, args, metadata)))


def parse_message(frame: str | bytes, max_bytes: int | None = None) -> Ack | ErrorMessage | DataMessage:
    """Classify one frame from the server."""
    msg = loads(frame, max_bytes)
    return message_from_json(msg)


def message_from_json(msg: Any) -> Ack | ErrorMessage | DataMessage:
    if type(msg) is not dict:
        raise WireError("envelope", "message is not a JSON object")
    ty = msg.get("type")
    if ty == "data-message":
        topic = msg.get("topic")
        if type(topic) is not str:
            raise WireError("envelope", "data-message without a string topic")
        return DataMessage(check_str(topic), msg)
    if ty == "error":
        # Zeek 7's WebSocket server named the field "message"; Broker and Zeek 8 say "context".
        code, ctx = msg.get("code"), msg.get("context", msg.get("message"))
        if type(code) is not str or type(ctx) is not str:
            raise WireError("envelope", "error message without string code/context")
        return ErrorMessage(check_str(code), check_str(ctx))
    if ty == "ack":
        ep, ver = msg.get("endpoint"), msg.get("version")
        if type(ep) is not str or type(ver) is not str:
            raise WireError("envelope", "ack without string endpoint/version")
        return Ack(ep, ver)
    raise WireError("envelope", f"unknown message type {str(ty)[:32]!r}")


def event_from_data(dm: DataMessage) -> Event:
    """Unpack the Zeek event structure ``[1, 1, [name, args, metadata?]]`` of a data-message."""
    top = expect_data(dm.raw, "vector")
    if type(top) is not list or len(top) != 3:
        raise WireError("event", "event envelope is not a 3-element vector")
    fmt, kind = expect_data(top[0], "count"), expect_data(top[1], "count")
    if fmt != 1 or type(fmt) is not int:
        raise WireError("event", f"unsupported format number {fmt!r}")
    if kind != 1 or type(kind) is not int:
        raise WireError("event", f"message type {kind!r} is not an event")
    ev = expect_data(top[2], "vector")
    if type(ev) is not list or len(ev) not in (2, 3):
        raise WireError("event", "event is not [name, args, metadata?]")
    name = expect_data(ev[0], "string")
    args = expect_data(ev[1], "vector")
    if type(name) is not str or type(args) is not list:
        raise WireError("event", "bad event name or args")
    meta: list[tuple[int, Any]] = []
    if len(ev) == 3:
        entries = expect_data(ev[2], "vector")
        if type(entries) is not list:
            raise WireError("event", "metadata is not a vector")
        for e in entries:
            kv = expect_data(e, "vector")
            if type(kv) is not list or len(kv) != 2:
                raise WireError("event", "metadata entry is not a pair")
            k = expect_data(kv[0], "count")
            if type(k) is not int or k < 0:
                raise WireError("event", "metadata key is not a count")
            meta.append((k, decode_value(kv[1], 4)))
    return Event(dm.topic, check_str(name), args, meta)


def parse_event(frame: str | bytes, max_bytes: int | None = None) -> Event:
    """Frame -> Event; an error message from the server raises ZeekError, anything else WireError."""
    m = parse_message(frame, max_bytes)
    if isinstance(m, ErrorMessage):
        raise ZeekError(m.code, m.context)
    if isinstance(m, Ack):
        raise WireError("envelope", "unexpected ack")
    return event_from_data(m)

