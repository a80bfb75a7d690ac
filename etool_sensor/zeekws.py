"""Zeek WebSocket API v1 (Broker JSON) codec and an asyncio client.

The codec is small and strict: every ``@data-type`` Broker defines is encoded and decoded, values that
Broker itself would not produce or accept are refused with :class:`WireError`, and nothing in here
evaluates, imports or shells out on behalf of the peer. Reference: Zeek's ``zeek-websocket-api.rst``,
Broker's ``web-socket.rst`` and ``v1-broker-out.schema.json`` (see docs/zeek-wire.md, docs/security.md).

Python value model (decode gives these; encode accepts them):

=============  ==========================================================
@data-type     Python
=============  ==========================================================
none           ``None``
boolean        ``bool``
count          :class:`Count` (an ``int``; 0 .. 2**64-1)
integer        ``int`` (-2**63 .. 2**63-1)
real           ``float`` (finite)
timespan       :class:`Timespan` (an ``int`` of nanoseconds)
timestamp      :class:`Timestamp` (an ``int`` of nanoseconds since the epoch, UTC)
string         ``str``
enum-value     :class:`Enum` (a ``str``)
address        ``ipaddress.IPv4Address`` / ``IPv6Address``
subnet         ``ipaddress.IPv4Network`` / ``IPv6Network``
port           :class:`Port` (``number``, ``proto``)
vector         ``list`` (``tuple`` also encodes as a vector; records travel as vectors)
set            :class:`ZSet` (a ``tuple``; ``set``/``frozenset`` also encode as sets)
table          :class:`Table` (a ``tuple`` of ``(key, value)`` pairs; ``dict`` also encodes as a table)
=============  ==========================================================

zeekpy 0.3.1 was evaluated and not adopted: it renders timespans as float nanoseconds
(``"1.5e9ns"``, which Broker does not parse), timestamps with a UTC offset, raises bare
``KeyError``/``ValueError`` on malformed input, and has no reconnect or TLS options.
"""

from __future__ import annotations

import asyncio
import calendar
import ipaddress
import json
import logging
import math
import random
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, NamedTuple

from .compiled import compiled
from .flows import Chunk, FlowError, FlowParams, FlowRecord, Packet, Verdict

_flow_frame = compiled("flow_frame")  # the compiled decoder of the ETooL::flow frame (parse_flow), or None

try:  # orjson is ~5x faster; the standard library is the fallback and the judge of refused frames.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised via force_stdlib_json in tests
    _orjson = None

log = logging.getLogger(__name__)

WIRE_VERSION = 2  # 2: v1 + ETooL::drift (daemon -> Zeek)
FLOW_EVENT = "ETooL::flow"
VERDICT_EVENT = "ETooL::verdict"
DRIFT_EVENT = "ETooL::drift"
DRIFT_TOPIC = "etool/verdicts/drift"  # ETooL::verdict_topic + "drift": every node that handles verdicts subscribes
DEFAULT_URL = "ws://127.0.0.1:27759/v1/messages/json"
DEFAULT_TOPICS = ("etool/flows/",)
V1_PATH = "/v1/messages/json"
MAX_DEPTH = 32  # deepest legitimate message (flow event) is 7 levels of @data-type objects
_APP_NAME_RE = re.compile(r"[-/_.=:*@a-zA-Z0-9]+\Z")

COUNT_MAX = 2**64 - 1
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class WireError(ValueError):
    """Input that breaks the v1 wire format or the ETooL wire contract.

    ``reason`` is a short, fixed label for metrics (json, envelope, type, event, foreign_event,
    flow, depth, encoding, too_big, binary).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ZeekError(Exception):
    """The server answered with an error message (``{"type":"error",...}``) or broke the handshake."""

    def __init__(self, code: str, context: str = "") -> None:
        super().__init__(f"{code}: {context}")
        self.code = code
        self.context = context


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------


class Count(int):
    """A Broker ``count`` (unsigned 64-bit)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Count({int(self)})"


class Enum(str):
    """A Broker ``enum-value``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Enum({str.__repr__(self)})"


class Port(NamedTuple):
    number: int
    proto: str  # tcp | udp | icmp | ?

    def __str__(self) -> str:
        return f"{self.number}/{self.proto}"


class Timespan(int):
    """A Broker ``timespan`` in integer nanoseconds (Zeek ``interval``)."""

    __slots__ = ()

    @classmethod
    def from_seconds(cls, s: float) -> "Timespan":
        if not math.isfinite(s):
            raise WireError("type", f"timespan not finite: {s!r}")
        return cls(round(s * 1_000_000_000))

    @property
    def seconds(self) -> float:
        return int(self) / 1e9

    def __repr__(self) -> str:
        return f"Timespan({int(self)}ns)"


class Timestamp(int):
    """A Broker ``timestamp`` in integer nanoseconds since the epoch, UTC (Zeek ``time``)."""

    __slots__ = ()

    @classmethod
    def from_seconds(cls, s: float) -> "Timestamp":
        if not math.isfinite(s):
            raise WireError("type", f"timestamp not finite: {s!r}")
        return cls(round(s * 1_000_000_000))

    @property
    def seconds(self) -> float:
        return int(self) / 1e9

    def __repr__(self) -> str:
        return f"Timestamp({int(self)}ns)"


class ZSet(tuple):
    """A Broker ``set`` (order as received)."""

    __slots__ = ()


class Table(tuple):
    """A Broker ``table``: a tuple of ``(key, value)`` pairs in the order received."""

    __slots__ = ()

    def to_dict(self) -> dict:
        return dict(self)


# --------------------------------------------------------------------------------------------
# Scalar string formats
# --------------------------------------------------------------------------------------------

_TS_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000,
             "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_TIMESPAN_RE = re.compile(r"(-?[0-9]{1,20})(ns|us|ms|s|min|h|d)\Z")
_TIMESTAMP_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?\Z")
_PORT_RE = re.compile(r"([0-9]{1,5})/(tcp|udp|icmp|\?)\Z")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*\Z")


def format_timespan(ns: int) -> str:
    """Broker's rendering: an integer with the coarsest of ns/us/ms/s that loses nothing; 0 is "0s"."""
    ns = int(ns)
    if ns == 0:
        return "0s"
    if ns % 1000:
        return f"{ns}ns"
    ns //= 1000
    if ns % 1000:
        return f"{ns}us"
    ns //= 1000
    if ns % 1000:
        return f"{ns}ms"
    return f"{ns // 1000}s"


def parse_timespan(s: Any) -> Timespan:
    if type(s) is not str:
        raise WireError("type", "timespan data is not a string")
    m = _TIMESPAN_RE.match(s)
    if m is None:
        raise WireError("type", f"bad timespan {s[:40]!r}")
    v = int(m.group(1)) * _TS_UNITS[m.group(2)]
    if not INT_MIN <= v <= INT_MAX:
        raise WireError("type", "timespan out of range")
    return Timespan(v)


def format_timestamp(ns: int) -> str:
    """Broker's rendering: ISO 8601 ``YYYY-MM-DDThh:mm:ss.sss`` (millisecond resolution, UTC here)."""
    ns = int(ns)
    secs, rem = divmod(ns, 1_000_000_000)
    ms = rem // 1_000_000
    t = time.gmtime(secs)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ms:03d}"


def parse_timestamp(s: Any) -> Timestamp:
    """Accepts ``YYYY-MM-DDThh:mm:ss[.f{1,9}]``; read as UTC (Broker writes the server's local time,
    so run Zeek with TZ=UTC, as Zeek's own tests do)."""
    if type(s) is not str:
        raise WireError("type", "timestamp data is not a string")
    m = _TIMESTAMP_RE.match(s)
    if m is None:
        raise WireError("type", f"bad timestamp {s[:40]!r}")
    y, mo, d, h, mi, se = (int(g) for g in m.groups()[:6])
    if y < 1 or not 1 <= mo <= 12 or not 1 <= d <= calendar.monthrange(y, mo)[1] or h > 23 or mi > 59 or se > 60:
        raise WireError("type", f"bad timestamp {s[:40]!r}")
    frac = m.group(7) or ""
    ns = int(frac.ljust(9, "0")) if frac else 0
    secs = calendar.timegm((y, mo, d, h, mi, se, 0, 0, 0))
    return Timestamp(secs * 1_000_000_000 + ns)


def parse_port(s: Any) -> Port:
    if type(s) is not str:
        raise WireError("type", "port data is not a string")
    m = _PORT_RE.match(s)
    if m is None or int(m.group(1)) > 65535:
        raise WireError("type", f"bad port {s[:40]!r}")
    return Port(int(m.group(1)), m.group(2))


def parse_address(s: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if type(s) is not str or len(s) > 45 or "%" in s:
        raise WireError("type", "bad address")
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise WireError("type", f"bad address {s[:45]!r}") from None


def parse_subnet(s: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if type(s) is not str or len(s) > 49 or "/" not in s or "%" in s:
        raise WireError("type", "bad subnet")
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise WireError("type", f"bad subnet {s[:49]!r}") from None


def _check_str(s: str) -> str:
    # JSON escapes can smuggle lone surrogates past a UTF-8 frame check; refuse them.
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("encoding", "string is not valid Unicode") from None
    return s


# --------------------------------------------------------------------------------------------
# Generic encode / decode of @data-type objects
# --------------------------------------------------------------------------------------------


def encode_value(v: Any, _depth: int = 0) -> dict[str, Any]:
    """Python value -> ``{"@data-type": ..., "data": ...}``; raises WireError for what has no encoding."""
    if _depth > MAX_DEPTH:
        raise WireError("depth", "value nested too deeply")
    t = type(v)
    if v is None:
        return {"@data-type": "none", "data": {}}
    if t is bool:
        return {"@data-type": "boolean", "data": v}
    if t is Count:
        if not 0 <= v <= COUNT_MAX:
            raise WireError("type", f"count out of range: {int(v)}")
        return {"@data-type": "count", "data": int(v)}
    if t is Timespan:
        return {"@data-type": "timespan", "data": format_timespan(v)}
    if t is Timestamp:
        return {"@data-type": "timestamp", "data": format_timestamp(v)}
    if t is int:
        if not INT_MIN <= v <= INT_MAX:
            raise WireError("type", f"integer out of range: {v}")
        return {"@data-type": "integer", "data": v}
    if t is float:
        if not math.isfinite(v):
            raise WireError("type", f"real not finite: {v!r}")
        return {"@data-type": "real", "data": v}
    if t is Enum:
        return {"@data-type": "enum-value", "data": str(v)}
    if t is str:
        return {"@data-type": "string", "data": _check_str(v)}
    if t is Port:
        if not (0 <= v.number <= 65535 and v.proto in ("tcp", "udp", "icmp", "?")):
            raise WireError("type", f"bad port {v!r}")
        return {"@data-type": "port", "data": f"{v.number}/{v.proto}"}
    if t in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        return {"@data-type": "address", "data": str(v)}
    if t in (ipaddress.IPv4Network, ipaddress.IPv6Network):
        return {"@data-type": "subnet", "data": str(v)}
    if t is ZSet or t is set or t is frozenset:
        return {"@data-type": "set", "data": [encode_value(x, _depth + 1) for x in v]}
    if t is Table:
        return {"@data-type": "table", "data": [{"key": encode_value(k, _depth + 1), "value": encode_value(x, _depth + 1)}
                                                 for k, x in v]}
    if t is dict:
        return {"@data-type": "table", "data": [{"key": encode_value(k, _depth + 1), "value": encode_value(x, _depth + 1)}
                                                 for k, x in v.items()]}
    if t is list or t is tuple:
        return {"@data-type": "vector", "data": [encode_value(x, _depth + 1) for x in v]}
    raise WireError("type", f"no Broker encoding for {t.__name__}")


def _obj(o: Any) -> tuple[str, Any]:
    if type(o) is not dict:
        raise WireError("type", "value is not a JSON object")
    try:
        dt = o["@data-type"]
        d = o["data"]
    except KeyError:
        raise WireError("type", "value lacks @data-type or data") from None
    if type(dt) is not str:
        raise WireError("type", "@data-type is not a string")
    return dt, d


def decode_value(o: Any, _depth: int = 0) -> Any:
    """``{"@data-type": ..., "data": ...}`` -> Python value (see the module table)."""
    if _depth > MAX_DEPTH:
        raise WireError("depth", "value nested too deeply")
    dt, d = _obj(o)
    t = type(d)
    if dt == "none":
        if t is not dict or d:
            raise WireError("type", "none data must be {}")
        return None
    if dt == "boolean":
        if t is not bool:
            raise WireError("type", "boolean data is not true/false")
        return d
    if dt == "count":
        if t is not int or not 0 <= d <= COUNT_MAX:
            raise WireError("type", "count data is not an unsigned 64-bit integer")
        return Count(d)
    if dt == "integer":
        if t is not int or not INT_MIN <= d <= INT_MAX:
            raise WireError("type", "integer data is not a signed 64-bit integer")
        return d
    if dt == "real":
        if t is not float or not math.isfinite(d):
            raise WireError("type", "real data is not a finite JSON number with a fraction")
        return d
    if dt == "timespan":
        return parse_timespan(d)
    if dt == "timestamp":
        return parse_timestamp(d)
    if dt == "string":
        if t is not str:
            raise WireError("type", "string data is not a string")
        return _check_str(d)
    if dt == "enum-value":
        if t is not str:
            raise WireError("type", "enum-value data is not a string")
        return Enum(_check_str(d))
    if dt == "address":
        return parse_address(d)
    if dt == "subnet":
        return parse_subnet(d)
    if dt == "port":
        return parse_port(d)
    if dt == "vector":
        if t is not list:
            raise WireError("type", "vector data is not an array")
        return [decode_value(x, _depth + 1) for x in d]
    if dt == "set":
        if t is not list:
            raise WireError("type", "set data is not an array")
        items = ZSet(decode_value(x, _depth + 1) for x in d)
        try:
            if len(set(items)) != len(items):
                raise WireError("type", "set has duplicate elements")
        except TypeError:  # unhashable members (vectors): compare pairwise encodings
            enc = [json.dumps(x, sort_keys=True) for x in d]
            if len(set(enc)) != len(enc):
                raise WireError("type", "set has duplicate elements") from None
        return items
    if dt == "table":
        if t is not list:
            raise WireError("type", "table data is not an array")
        pairs = []
        for kv in d:
            if type(kv) is not dict or "key" not in kv or "value" not in kv:
                raise WireError("type", "table entry lacks key or value")
            pairs.append((decode_value(kv["key"], _depth + 1), decode_value(kv["value"], _depth + 1)))
        return Table(pairs)
    raise WireError("type", f"unknown @data-type {dt[:32]!r}")


# --------------------------------------------------------------------------------------------
# JSON text
# --------------------------------------------------------------------------------------------

_use_orjson = _orjson is not None


def force_stdlib_json(flag: bool = True) -> None:
    """Use the standard library's json even when orjson is installed (tests cover both)."""
    global _use_orjson
    _use_orjson = (not flag) and _orjson is not None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Deepest JSON nesting (arrays and objects) a frame may have: each @data-type level is an object holding
#: an array, plus the message object itself. The decoder checks this itself, before any parser runs, so the
#: reason for a deep frame is the same whichever JSON library is installed.
MAX_JSON_NESTING = 2 * MAX_DEPTH + 2
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")


def json_nesting(text: str) -> int:
    """Deepest nesting of JSON arrays and objects in ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET_RE.sub("", _JSON_STRING_RE.sub("", text))
    depth = peak = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            if depth > peak:
                peak = depth
        else:
            depth -= 1
    return peak


def loads(frame: str | bytes, max_bytes: int | None = None) -> Any:
    """Parse one WebSocket frame; raise WireError on anything that is not strict JSON text.

    The reason of a WireError comes from the decoder's own checks (size, frame type, nesting bound),
    never from a parser's message text: orjson is only a fast path, and a frame it refuses is parsed
    again by the standard library, whose result the same checks then judge."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("binary", "binary frame (the v1 API speaks text frames only)")
    if max_bytes is not None and len(frame) > max_bytes:  # len(str) <= len(utf-8 bytes)
        raise WireError("too_big", f"{len(frame)} characters > {max_bytes}")
    if (frame.count("[") + frame.count("{") > MAX_JSON_NESTING
            and json_nesting(frame) > MAX_JSON_NESTING):
        raise WireError("depth", f"JSON nested deeper than {MAX_JSON_NESTING}")
    if _use_orjson:
        try:
            return _orjson.loads(frame)
        except _orjson.JSONDecodeError:
            pass  # the standard library below decides what is wrong, as it does without orjson
    try:
        return json.loads(frame, parse_constant=_reject_constant)
    except ValueError as e:
        raise WireError("json", str(e)[:120]) from None


def dumps(obj: Any) -> str:
    if _use_orjson:
        return _orjson.dumps(obj).decode()
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Messages: ack, error, data-message, Zeek events
# --------------------------------------------------------------------------------------------


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
    inner = [{"@data-type": "string", "data": _check_str(name)},
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
        return DataMessage(_check_str(topic), msg)
    if ty == "error":
        # Zeek 7's WebSocket server named the field "message"; Broker and Zeek 8 say "context".
        code, ctx = msg.get("code"), msg.get("context", msg.get("message"))
        if type(code) is not str or type(ctx) is not str:
            raise WireError("envelope", "error message without string code/context")
        return ErrorMessage(code, ctx)
    if ty == "ack":
        ep, ver = msg.get("endpoint"), msg.get("version")
        if type(ep) is not str or type(ver) is not str:
            raise WireError("envelope", "ack without string endpoint/version")
        return Ack(ep, ver)
    raise WireError("envelope", f"unknown message type {str(ty)[:32]!r}")


def _expect(o: Any, dt: str) -> Any:
    """Fast typed access: the data of an @data-type object that must be of type ``dt``."""
    if type(o) is not dict or o.get("@data-type") != dt or "data" not in o:
        got = o.get("@data-type") if type(o) is dict else type(o).__name__
        raise WireError("type", f"expected {dt}, got {str(got)[:32]}")
    return o["data"]


def event_from_data(dm: DataMessage) -> Event:
    """Unpack the Zeek event structure ``[1, 1, [name, args, metadata?]]`` of a data-message."""
    top = _expect(dm.raw, "vector")
    if type(top) is not list or len(top) != 3:
        raise WireError("event", "event envelope is not a 3-element vector")
    fmt, kind = _expect(top[0], "count"), _expect(top[1], "count")
    if fmt != 1 or type(fmt) is not int:
        raise WireError("event", f"unsupported format number {fmt!r}")
    if kind != 1 or type(kind) is not int:
        raise WireError("event", f"message type {kind!r} is not an event")
    ev = _expect(top[2], "vector")
    if type(ev) is not list or len(ev) not in (2, 3):
        raise WireError("event", "event is not [name, args, metadata?]")
    name = _expect(ev[0], "string")
    args = _expect(ev[1], "vector")
    if type(name) is not str or type(args) is not list:
        raise WireError("event", "bad event name or args")
    meta: list[tuple[int, Any]] = []
    if len(ev) == 3:
        entries = _expect(ev[2], "vector")
        if type(entries) is not list:
            raise WireError("event", "metadata is not a vector")
        for e in entries:
            kv = _expect(e, "vector")
            if type(kv) is not list or len(kv) != 2:
                raise WireError("event", "metadata entry is not a pair")
            k = _expect(kv[0], "count")
            if type(k) is not int or k < 0:
                raise WireError("event", "metadata key is not a count")
            meta.append((k, decode_value(kv[1], 4)))
    return Event(dm.topic, _check_str(name), args, meta)


def parse_event(frame: str | bytes, max_bytes: int | None = None) -> Event:
    """Frame -> Event; an error message from the server raises ZeekError, anything else WireError."""
    m = parse_message(frame, max_bytes)
    if isinstance(m, ErrorMessage):
        raise ZeekError(m.code, m.context)
    if isinstance(m, Ack):
        raise WireError("envelope", "unexpected ack")
    return event_from_data(m)


# --------------------------------------------------------------------------------------------
# ETooL wire contract v1: ETooL::flow and ETooL::verdict
# --------------------------------------------------------------------------------------------

FLOW_FIELDS = ("uid", "ts", "orig_h", "orig_p", "resp_h", "resp_p", "packets", "payload", "final", "reply_topic")
PACKET_FIELDS = ("dt", "is_orig", "ip_len", "payload_len", "tcp_flags")
CHUNK_FIELDS = ("is_orig", "hex")
VERDICT_FIELDS = ("uid", "service", "app", "confidence", "unknown", "alternatives", "model")
MAX_FLOW_PACKETS = 1024  # FlowParams' upper bound
MAX_FLOW_CHUNKS = 64
#: What a flow event may hold: contract v1's bounds (docs/flow-record.md), not the default collection. Zeek's
#: ETooL::packets_per_flow, payload_bytes and payload_packets are &redef; the model reads its own window of
#: whatever arrives (the daemon warns when Zeek collects more or less than that).
WIRE_LIMITS = FlowParams(packets=MAX_FLOW_PACKETS, payload_bytes=65535, payload_packets=MAX_FLOW_CHUNKS)


@dataclass(slots=True)
class FlowEvent:
    record: FlowRecord
    reply_topic: str
    topic: str
    network_time: float | None = None


def _count(o: Any, what: str) -> int:
    d = _expect(o, "count")
    if type(d) is not int or not 0 <= d <= COUNT_MAX:
        raise WireError("type", f"{what} is not a count")
    return d


def _bool(o: Any, what: str) -> bool:
    d = _expect(o, "boolean")
    if type(d) is not bool:
        raise WireError("type", f"{what} is not a boolean")
    return d


def _string(o: Any, what: str) -> str:
    d = _expect(o, "string")
    if type(d) is not str:
        raise WireError("type", f"{what} is not a string")
    return _check_str(d)


def _record(o: Any, n: int, what: str) -> list[Any]:
    d = _expect(o, "vector")
    if type(d) is not list or len(d) != n:
        raise WireError("type", f"{what} is not a record of {n} fields")
    return d


_UNIT2 = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3}


def _packets(pk_raw: list[Any]) -> list[Packet]:
    """Hot path: ETooL::Packet records, checked field by field without a call per field."""
    out = []
    append = out.append
    try:
        for p in pk_raw:
            if p["@data-type"] != "vector":
                raise WireError("type", "ETooL::Packet is not a vector")
            a, b, c, d, e = p["data"]
            if (a["@data-type"] != "timespan" or b["@data-type"] != "boolean" or c["@data-type"] != "count"
                    or d["@data-type"] != "count" or e["@data-type"] != "count"):
                raise WireError("type", "ETooL::Packet field types are (interval, bool, count, count, count)")
            ts, io, ip_len, pl_len, flags = a["data"], b["data"], c["data"], d["data"], e["data"]
            if type(io) is not bool or type(ip_len) is not int or type(pl_len) is not int or type(flags) is not int:
                raise WireError("type", "ETooL::Packet field values do not match their types")
            if ip_len < 0 or pl_len < 0 or flags < 0 or ip_len > COUNT_MAX or pl_len > COUNT_MAX or flags > COUNT_MAX:
                raise WireError("type", "count out of range")
            if type(ts) is not str:
                raise WireError("type", "timespan data is not a string")
            unit = _UNIT2.get(ts[-2:])
            num = ts[:-2] if unit is not None else ts[:-1]
            if unit is None and ts[-1:] == "s":
                unit = 1.0
            if unit is not None and num.isascii() and num.isdigit() and len(num) <= 20:
                dt = int(num) * unit
            else:
                dt = parse_timespan(ts).seconds  # min/h/d, negative or malformed: the strict parser decides
            append(Packet(dt, io, ip_len, pl_len, flags))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError("type", "malformed ETooL::Packet") from None
    return out


def flow_from_event(ev: Event) -> FlowEvent:
    """ETooL::flow(f: ETooL::Flow) -> FlowRecord + reply_topic; WireError on any contract breach."""
    if ev.name != FLOW_EVENT:
        raise WireError("foreign_event", f"unexpected event {ev.name[:64]!r}")
    if len(ev.raw_args) != 1:
        raise WireError("type", f"{FLOW_EVENT} takes 1 argument, got {len(ev.raw_args)}")
    f = _record(ev.raw_args[0], len(FLOW_FIELDS), "ETooL::Flow")
    uid = _string(f[0], "uid")
    ts = parse_timestamp(_expect(f[1], "timestamp"))
    orig_h = str(parse_address(_expect(f[2], "address")))
    orig_p = parse_port(_expect(f[3], "port"))
    resp_h = str(parse_address(_expect(f[4], "address")))
    resp_p = parse_port(_expect(f[5], "port"))
    if orig_p.proto != resp_p.proto:
        raise WireError("flow", "orig_p and resp_p disagree on the transport protocol")
    pk_raw = _expect(f[6], "vector")
    ch_raw = _expect(f[7], "vector")
    if type(pk_raw) is not list or type(ch_raw) is not list:
        raise WireError("type", "packets/payload are not vectors")
    if len(pk_raw) > MAX_FLOW_PACKETS or len(ch_raw) > MAX_FLOW_CHUNKS:
        raise WireError("flow", "too many packets or payload chunks")
    packets = _packets(pk_raw)
    chunks = []
    for c in ch_raw:
        r = _record(c, 2, "ETooL::Chunk")
        h = _string(r[1], "hex")
        if len(h) > 2 * 65535 or not _HEX_RE.match(h):
            raise WireError("flow", "payload chunk is not even-length hex")
        chunks.append(Chunk(_bool(r[0], "is_orig"), bytes.fromhex(h)))
    final = _bool(f[8], "final")
    reply_topic = _string(f[9], "reply_topic")
    if not reply_topic:
        raise WireError("flow", "empty reply_topic")
    rec = FlowRecord(uid, ts.seconds, orig_h, orig_p.number, resp_h, resp_p.number, orig_p.proto,
                     packets, chunks, final)
    try:
        rec.validate(WIRE_LIMITS)
    except FlowError as e:
        raise WireError("flow", str(e)[:200]) from None
    nt = None
    for k, v in ev.metadata:
        if k == 1 and type(v) is Timestamp:
            nt = v.seconds
    return FlowEvent(rec, reply_topic, ev.topic, nt)


def parse_flow(frame: str | bytes, max_bytes: int | None = None) -> FlowEvent:
    """One frame carrying ``ETooL::flow`` -> FlowEvent (the daemon's hot path).

    A frame of the exact shape Zeek sends is decoded by ``_flow_fast``; anything it does not
    recognise, or any doubt, goes through the generic strict path (parse_message -> event_from_data
    -> flow_from_event), which accepts and refuses exactly what it did before."""
    if type(frame) is str and (max_bytes is None or len(frame) <= max_bytes):
        try:
            fe = _flow_compiled(frame) if _flow_frame is not None else None
            if fe is None:
                fe = _flow_text(frame)
        except Exception:  # noqa: BLE001 - any surprise: the decoders below give the verdict and the error
            fe = None
        if fe is not None:
            return fe
    msg = loads(frame, max_bytes)
    try:
        fe = _flow_fast(msg)
    except Exception:  # noqa: BLE001 - any surprise: the generic decoder gives the verdict and the error
        fe = None
    if fe is not None:
        return fe
    m = message_from_json(msg)
    if isinstance(m, ErrorMessage):
        raise ZeekError(m.code, m.context)
    if isinstance(m, Ack):
        raise WireError("envelope", "unexpected ack")
    return flow_from_event(event_from_data(m))


# Caches of already-validated wire strings (bounded; cleared when full). Values are what the strict
# parsers returned for the same string, so a hit is exactly equivalent to parsing again.
_CACHE_MAX = 8192
_addr_cache: dict[str, str] = {}
_port_cache: dict[str, Port] = {}
_second_cache: dict[str, int] = {}  # "YYYY-MM-DDThh:mm:ss" -> epoch seconds


# A dotted quad in canonical form (no leading zeros, octets <= 255): ipaddress accepts exactly these
# IPv4 strings and writes them back unchanged, so such a string is its own parse_address result.
_IPV4_CANON_RE = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                            r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z")


def _addr_str(s: Any) -> str:
    r = _addr_cache.get(s) if type(s) is str else None
    if r is None:
        r = s if type(s) is str and _IPV4_CANON_RE.match(s) else str(parse_address(s))
        if len(_addr_cache) >= _CACHE_MAX:
            _addr_cache.clear()
        _addr_cache[s] = r
    return r


def _port(s: Any) -> Port:
    r = _port_cache.get(s) if type(s) is str else None
    if r is None:
        r = parse_port(s)
        if len(_port_cache) >= _CACHE_MAX:
            _port_cache.clear()
        _port_cache[s] = r
    return r


def _timestamp(s: Any) -> Timestamp:
    """parse_timestamp with the date-time part's validation and conversion cached."""
    if type(s) is str and 21 <= len(s) <= 29 and s[19] == ".":
        frac = s[20:]
        if frac.isascii() and frac.isdigit():
            head = s[:19]
            secs = _second_cache.get(head)
            if secs is None:
                secs = int(parse_timestamp(head)) // 1_000_000_000
                if len(_second_cache) >= _CACHE_MAX:
                    _second_cache.clear()
                _second_cache[head] = secs
            return Timestamp(secs * 1_000_000_000 + int(frac.ljust(9, "0")))
    return parse_timestamp(s)


# The ETooL::flow frame exactly as Broker's JSON writer lays it out (compact, keys in this order), as a
# regular expression over the text: a frame it matches is valid JSON of the one shape _flow_fast reads,
# so decoding it needs no JSON parse and no dict walk. Values are confined to characters that need no
# JSON escape (printable ASCII without '"' and '\'), numbers to JSON integers. Anything else (other
# layout, whitespace, escapes, other metadata, negative or min/h/d intervals, ...) does not match and
# goes to the decoders that parse the JSON, which accept and refuse exactly what they did before.
_T_STR = r'[\x20\x21\x23-\x5b\x5d-\x7e]'
_T_CNT = r'(?:0|[1-9][0-9]{0,18})'  # at most 19 digits: always <= COUNT_MAX
_T_PKT = (r'\{"@data-type":"vector","data":\[\{"@data-type":"timespan","data":"([0-9]{1,20})(ns|us|ms|s)"\},'
          r'\{"@data-type":"boolean","data":(true|false)\},\{"@data-type":"count","data":(' + _T_CNT + r')\},'
          r'\{"@data-type":"count","data":(' + _T_CNT + r')\},\{"@data-type":"count","data":(' + _T_CNT
          + r')\}\]\}')
_T_CHUNK = (r'\{"@data-type":"vector","data":\[\{"@data-type":"boolean","data":(true|false)\},'
            r'\{"@data-type":"string","data":"((?:[0-9a-fA-F]{2})*)"\}\]\}')


# In the frame pattern a vector element is only skimmed (no ']' inside); _flow_text then finds the exact
# packet and chunk records in it and requires one per element (see there).
_T_SKIM = r'\{"@data-type":"vector","data":\[[^\]]*\]\}'
_T_ELEM = '{"@data-type":"vector"'


_FLOW_TEXT_RE = re.compile(
    r'\{"type":"data-message","topic":"(' + _T_STR + r'*)","@data-type":"vector","data":\['
    r'\{"@data-type":"count","data":1\},\{"@data-type":"count","data":1\},\{"@data-type":"vector","data":\['
    r'\{"@data-type":"string","data":"ETooL::flow"\},\{"@data-type":"vector","data":\['
    r'\{"@data-type":"vector","data":\['
    r'\{"@data-type":"string","data":"(' + _T_STR + r'*)"\},'
    r'\{"@data-type":"timestamp","data":"([-0-9T:.]{1,40})"\},'
    r'\{"@data-type":"address","data":"([0-9a-fA-F:.]{1,64})"\},'
    r'\{"@data-type":"port","data":"([0-9]{1,5}/(?:tcp|udp|icmp|\?))"\},'
    r'\{"@data-type":"address","data":"([0-9a-fA-F:.]{1,64})"\},'
    r'\{"@data-type":"port","data":"([0-9]{1,5}/(?:tcp|udp|icmp|\?))"\},'
    r'\{"@data-type":"vector","data":\[((?:' + _T_SKIM + r'(?:,' + _T_SKIM + r')*)?)\]\},'
    r'\{"@data-type":"vector","data":\[((?:' + _T_SKIM + r'(?:,' + _T_SKIM + r')*)?)\]\},'
    r'\{"@data-type":"boolean","data":(true|false)\},'
    r'\{"@data-type":"string","data":"(' + _T_STR + r'+)"\}'
    r'\]\}\]\}'
    r'(?:,\{"@data-type":"vector","data":\[(?:\{"@data-type":"vector","data":\['
    r'\{"@data-type":"count","data":(0|[1-9][0-9]{0,18})\},\{"@data-type":"timestamp","data":"([-0-9T:.]{1,40})"\}'
    r'\]\})?\]\})?'
    r'\]\}\]\}')
_PKT_TEXT_RE = re.compile(_T_PKT)
_CHUNK_TEXT_RE = re.compile(_T_CHUNK)
_UNIT_TEXT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def _flow_text(frame: str) -> FlowEvent | None:
    """ETooL::flow straight from the frame's text (see _FLOW_TEXT_RE); None when the text is not of that
    exact layout. Same checks, conversions and result as _flow_fast on the parsed JSON."""
    m = _FLOW_TEXT_RE.fullmatch(frame)
    if m is None:
        return None
    topic, uid, ts_s, oh, op, rh, rp, pk_s, ch_s, fin, reply_topic, mk, mts = m.groups()
    # Each skimmed element holds one ']' (its end) and an exact record holds one ']' (its end), so a
    # record found inside the vector text ends where an element ends: at most one per element. With as
    # many records as element openings, every element is exactly one record.
    pk = _PKT_TEXT_RE.findall(pk_s) if pk_s else []
    ch = _CHUNK_TEXT_RE.findall(ch_s) if ch_s else []
    if len(pk) != pk_s.count(_T_ELEM) or len(ch) != ch_s.count(_T_ELEM):
        return None
    units = _UNIT_TEXT
    packets = [Packet(int(num) * units[unit], io == "true", int(ipl), int(pll), int(fl))
               for num, unit, io, ipl, pll, fl in pk]
    chunks = [Chunk(io == "true", bytes.fromhex(h)) for io, h in ch]
    return _flow_event(topic, uid, ts_s, oh, op, rh, rp, packets, chunks, fin == "true", reply_topic, mk, mts)


def _flow_event(topic: str, uid: str, ts_s: str, oh: str, op: str, rh: str, rp: str, packets: list[Packet],
                chunks: list[Chunk], final: bool, reply_topic: str, mk: str | None, mts: str | None
                ) -> FlowEvent | None:
    """The second half of _flow_text (and of the compiled _fastpath.flow_frame): the text fields of a frame
    of the exact layout, checked and converted."""
    nt = None
    if mk is not None and int(mk) == 1:
        nt = _timestamp(mts).seconds
    elif mk is not None:
        _timestamp(mts)  # _flow_fast decodes every metadata timestamp: a bad one sends the frame to the generic path
    ts = _timestamp(ts_s)
    orig_h, resp_h = _addr_str(oh), _addr_str(rh)
    orig_p, resp_p = _port(op), _port(rp)
    if orig_p.proto != resp_p.proto:
        return None
    if len(packets) > MAX_FLOW_PACKETS or len(chunks) > MAX_FLOW_CHUNKS or any(len(c.data) > 65535 for c in chunks):
        return None
    rec = FlowRecord(uid, ts.seconds, orig_h, orig_p.number, resp_h, resp_p.number, orig_p.proto,
                     packets, chunks, final)
    rec.validate(WIRE_LIMITS)
    return FlowEvent(rec, reply_topic, topic, nt)


def _flow_compiled(frame: str) -> FlowEvent | None:
    """_flow_text with the frame's grammar and the Packet/Chunk objects done in C (_fastpath.flow_frame);
    None where the C decoder declines (the regex decoder then decides)."""
    t = _flow_frame(frame, Packet, Chunk)
    return None if t is None else _flow_event(*t)


def _flow_fast(msg: Any) -> FlowEvent | None:
    """The ETooL::flow frame as Zeek writes it, checked with the generic path's conditions; None (or an
    exception) for anything else, which parse_flow then hands to the generic path."""
    if type(msg) is not dict or msg.get("type") != "data-message" or msg["@data-type"] != "vector":
        return None
    topic = msg["topic"]
    top = msg["data"]
    if type(topic) is not str or not topic.isascii() or type(top) is not list or len(top) != 3:
        return None
    a, b, e = top
    if a["@data-type"] != "count" or b["@data-type"] != "count" or e["@data-type"] != "vector":
        return None
    if a["data"] != 1 or type(a["data"]) is not int or b["data"] != 1 or type(b["data"]) is not int:
        return None
    ev = e["data"]
    if type(ev) is not list or len(ev) not in (2, 3):
        return None
    n, g = ev[0], ev[1]
    if n["@data-type"] != "string" or n["data"] != FLOW_EVENT or g["@data-type"] != "vector":
        return None
    args = g["data"]
    if type(args) is not list or len(args) != 1:
        return None
    nt = None
    if len(ev) == 3:
        md = ev[2]
        if md["@data-type"] != "vector" or type(md["data"]) is not list:
            return None
        for ent in md["data"]:
            if ent["@data-type"] != "vector":
                return None
            kv = ent["data"]
            if type(kv) is not list or len(kv) != 2 or kv[0]["@data-type"] != "count":
                return None
            k = kv[0]["data"]
            if type(k) is not int or k < 0:
                return None
            v = kv[1]
            if type(v) is dict and v.get("@data-type") == "timestamp" and "data" in v:
                v = _timestamp(v["data"])
            else:
                v = decode_value(v, 4)
            if k == 1 and type(v) is Timestamp:
                nt = v.seconds
    r = args[0]
    if r["@data-type"] != "vector":
        return None
    f = r["data"]
    if type(f) is not list or len(f) != len(FLOW_FIELDS):
        return None
    fu, fts, foh, fop, frh, frp, fpk, fch, ffin, frt = f
    if (fu["@data-type"] != "string" or fts["@data-type"] != "timestamp" or foh["@data-type"] != "address"
            or fop["@data-type"] != "port" or frh["@data-type"] != "address" or frp["@data-type"] != "port"
            or fpk["@data-type"] != "vector" or fch["@data-type"] != "vector" or ffin["@data-type"] != "boolean"
            or frt["@data-type"] != "string"):
        return None
    uid, final, reply_topic = fu["data"], ffin["data"], frt["data"]
    if type(uid) is not str or not uid.isascii() or type(final) is not bool or type(reply_topic) is not str \
            or not reply_topic or not reply_topic.isascii():
        return None
    ts = _timestamp(fts["data"])
    orig_h, resp_h = _addr_str(foh["data"]), _addr_str(frh["data"])
    orig_p, resp_p = _port(fop["data"]), _port(frp["data"])
    if orig_p.proto != resp_p.proto:
        return None
    pk_raw, ch_raw = fpk["data"], fch["data"]
    if type(pk_raw) is not list or type(ch_raw) is not list or len(pk_raw) > MAX_FLOW_PACKETS \
            or len(ch_raw) > MAX_FLOW_CHUNKS:
        return None
    packets = _packets(pk_raw)
    chunks = []
    for c in ch_raw:
        if c["@data-type"] != "vector":
            return None
        cr = c["data"]
        if type(cr) is not list or len(cr) != 2:
            return None
        co, chx = cr
        if co["@data-type"] != "boolean" or chx["@data-type"] != "string":
            return None
        io, h = co["data"], chx["data"]
        if type(io) is not bool or type(h) is not str or not h.isascii() or len(h) > 2 * 65535 \
                or not _HEX_RE.match(h):
            return None
        chunks.append(Chunk(io, bytes.fromhex(h)))
    rec = FlowRecord(uid, ts.seconds, orig_h, orig_p.number, resp_h, resp_p.number, orig_p.proto,
                     packets, chunks, final)
    rec.validate(WIRE_LIMITS)
    return FlowEvent(rec, reply_topic, topic, nt)


def flow_args(rec: FlowRecord, reply_topic: str) -> list[Any]:
    """The single argument of ETooL::flow, encoded (record fields in wire order)."""
    pk = [{"@data-type": "vector", "data": [
        {"@data-type": "timespan", "data": format_timespan(Timespan.from_seconds(p.dt))},
        {"@data-type": "boolean", "data": bool(p.is_orig)},
        {"@data-type": "count", "data": int(p.ip_len)},
        {"@data-type": "count", "data": int(p.payload_len)},
        {"@data-type": "count", "data": int(p.tcp_flags)}]} for p in rec.packets]
    ch = [{"@data-type": "vector", "data": [
        {"@data-type": "boolean", "data": bool(c.is_orig)},
        {"@data-type": "string", "data": c.data.hex()}]} for c in rec.payload]
    proto = rec.proto if rec.proto in ("tcp", "udp", "icmp") else "?"
    return [{"@data-type": "vector", "data": [
        {"@data-type": "string", "data": rec.uid},
        {"@data-type": "timestamp", "data": format_timestamp(Timestamp.from_seconds(rec.ts))},
        encode_value(ipaddress.ip_address(rec.orig_h)),
        {"@data-type": "port", "data": f"{int(rec.orig_p)}/{proto}"},
        encode_value(ipaddress.ip_address(rec.resp_h)),
        {"@data-type": "port", "data": f"{int(rec.resp_p)}/{proto}"},
        {"@data-type": "vector", "data": pk},
        {"@data-type": "vector", "data": ch},
        {"@data-type": "boolean", "data": bool(rec.final)},
        {"@data-type": "string", "data": reply_topic}]}]


def encode_flow(topic: str, rec: FlowRecord, reply_topic: str, network_time: float | None = None) -> str:
    """The frame Zeek sends for ``ETooL::flow`` (with the network-time metadata Zeek >= 6 attaches)."""
    meta = None if network_time is None else [(1, Timestamp.from_seconds(network_time))]
    return encode_event(topic, FLOW_EVENT, flow_args(rec, reply_topic), meta)


def verdict_args(v: Verdict) -> list[Any]:
    conf = float(v.confidence)
    if not math.isfinite(conf):
        raise WireError("type", f"confidence not finite for {v.uid}")
    return [{"@data-type": "vector", "data": [
        {"@data-type": "string", "data": _check_str(str(v.uid))},
        {"@data-type": "string", "data": _check_str(str(v.service))},
        {"@data-type": "string", "data": _check_str(str(v.app))},
        {"@data-type": "real", "data": conf},
        {"@data-type": "boolean", "data": bool(v.unknown)},
        {"@data-type": "vector", "data": [{"@data-type": "string", "data": _check_str(str(a))} for a in v.alternatives]},
        {"@data-type": "string", "data": _check_str(str(v.model))}]}]


def encode_verdict(topic: str, v: Verdict) -> str:
    """The frame the daemon publishes: ``ETooL::verdict(v: ETooL::Verdict)`` on ``topic``.

    Written from fixed pieces: the same text as ``encode_event(topic, VERDICT_EVENT, verdict_args(v))``
    (kept as ``encode_verdict_generic``; tests compare the two) without building and serialising the
    nested dicts. Same checks in the same order, same errors."""
    conf = float(v.confidence)
    if not math.isfinite(conf):
        raise WireError("type", f"confidence not finite for {v.uid}")
    uid, service, app = _check_str(str(v.uid)), _check_str(str(v.service)), _check_str(str(v.app))
    alts = [_check_str(str(a)) for a in v.alternatives]
    model = _check_str(str(v.model))
    j = _json_str
    return (_V_HEAD + j(topic) + _V_MID + j(uid) + _V_STR + j(service) + _V_STR + j(app) + _V_REAL + dumps(conf)
            + (_V_TRUE if v.unknown else _V_FALSE)
            + ",".join(['{"@data-type":"string","data":' + j(a) + "}" for a in alts])
            + _V_MODEL + j(model) + _V_TAIL)


def encode_verdict_generic(topic: str, v: Verdict) -> str:
    return encode_event(topic, VERDICT_EVENT, verdict_args(v))


_V_HEAD = '{"type":"data-message","topic":'
_V_MID = (',"@data-type":"vector","data":[{"@data-type":"count","data":1},{"@data-type":"count","data":1},'
          '{"@data-type":"vector","data":[{"@data-type":"string","data":"ETooL::verdict"},'
          '{"@data-type":"vector","data":[{"@data-type":"vector","data":[{"@data-type":"string","data":')
_V_STR = '},{"@data-type":"string","data":'
_V_REAL = '},{"@data-type":"real","data":'
_V_TRUE = '},{"@data-type":"boolean","data":true},{"@data-type":"vector","data":['
_V_FALSE = '},{"@data-type":"boolean","data":false},{"@data-type":"vector","data":['
_V_MODEL = ']},{"@data-type":"string","data":'
_V_TAIL = "}]}]}]}]}"


def _json_str(s: str) -> str:
    """``dumps(s)``: printable ASCII without '"' and '\\' is written as is by either JSON encoder."""
    if type(s) is str and s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    return dumps(s)


DRIFT_FIELDS = ("daemon", "model", "score", "label_shift", "confidence_shift", "unknown_rate", "unknown_rate_ref",
                "table_hit_rate", "table_hit_rate_ref", "flows")


def _real(x: Any, what: str) -> dict[str, Any]:
    v = float(x)
    if not math.isfinite(v):
        raise WireError("type", f"{what} not finite")
    return {"@data-type": "real", "data": v}


def drift_args(daemon: str, model: str, d: Any) -> list[Any]:
    """The ETooL::Drift record (wire v2) of a drift.DriftScore `d` for daemon `daemon` and model `model`
    (name@version); table rates None (a package without a table) travel as -1."""
    def rate(x: Any, what: str) -> dict[str, Any]:
        return _real(-1.0 if x is None else x, what)

    return [{"@data-type": "vector", "data": [
        {"@data-type": "string", "data": _check_str(str(daemon))},
        {"@data-type": "string", "data": _check_str(str(model))},
        _real(d.score, "score"), _real(d.label_shift, "label_shift"), _real(d.confidence_shift, "confidence_shift"),
        _real(d.unknown_rate, "unknown_rate"), _real(d.unknown_rate_ref, "unknown_rate_ref"),
        rate(d.table_hit_rate, "table_hit_rate"), rate(d.table_hit_rate_ref, "table_hit_rate_ref"),
        encode_value(Count(int(d.flows)))]}]


def encode_drift(topic: str, daemon: str, model: str, d: Any) -> str:
    """The frame the daemon publishes every drift.interval_s: ``ETooL::drift(d: ETooL::Drift)`` on `topic`
    (DRIFT_TOPIC), Broker JSON laid out as encode_verdict's ETooL::verdict. Sent once a minute, so written
    by the generic encoder."""
    return encode_event(topic, DRIFT_EVENT, drift_args(daemon, model, d))


def drift_from_event(ev: Event) -> dict[str, Any]:
    """Strict inverse of encode_drift (the test peer type-checks the event as Zeek would): the record's fields
    by name, table rates -1 where there is no table."""
    if ev.name != DRIFT_EVENT:
        raise WireError("foreign_event", f"unexpected event {ev.name[:64]!r}")
    if len(ev.raw_args) != 1:
        raise WireError("type", f"{DRIFT_EVENT} takes 1 argument")
    r = _record(ev.raw_args[0], len(DRIFT_FIELDS), "ETooL::Drift")
    out: dict[str, Any] = {"daemon": _string(r[0], "daemon"), "model": _string(r[1], "model")}
    for name, o in zip(DRIFT_FIELDS[2:9], r[2:9]):
        v = _expect(o, "real")
        if type(v) is not float or not math.isfinite(v):
            raise WireError("type", f"{name} is not a real")
        out[name] = v
    out["flows"] = _count(r[9], "flows")
    return out


def verdict_from_event(ev: Event) -> Verdict:
    """Strict inverse of encode_verdict (used by the test peer the way Zeek type-checks the event)."""
    if ev.name != VERDICT_EVENT:
        raise WireError("foreign_event", f"unexpected event {ev.name[:64]!r}")
    if len(ev.raw_args) != 1:
        raise WireError("type", f"{VERDICT_EVENT} takes 1 argument")
    r = _record(ev.raw_args[0], len(VERDICT_FIELDS), "ETooL::Verdict")
    conf = _expect(r[3], "real")
    if type(conf) is not float or not math.isfinite(conf):
        raise WireError("type", "confidence is not a real")
    alts = _expect(r[5], "vector")
    if type(alts) is not list:
        raise WireError("type", "alternatives is not a vector")
    return Verdict(_string(r[0], "uid"), _string(r[1], "service"), _string(r[2], "app"), conf,
                   _bool(r[4], "unknown"), [_string(a, "alternative") for a in alts], _string(r[6], "model"))


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


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
