"""Broker JSON, the data format of Zeek's WebSocket API v1: every ``@data-type`` encoded and decoded, and the
JSON text of a frame (messages.py builds the messages and events on it).

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
``KeyError``/``ValueError`` on malformed input, and has no reconnect or TLS options (client.py).
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import math
import re
import time
from typing import Any, NamedTuple

try:  # orjson is ~5x faster; the standard library is the fallback and the judge of refused frames.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised via force_stdlib_json in tests
    _orjson = None

V1_PATH = "/v1/messages/json"
MAX_DEPTH = 32  # deepest legitimate message (flow event) is 7 levels of @data-type objects

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


def check_str(s: str) -> str:
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
        return {"@data-type": "string", "data": check_str(v)}
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
        return check_str(d)
    if dt == "enum-value":
        if t is not str:
            raise WireError("type", "enum-value data is not a string")
        return Enum(check_str(d))
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


def expect_data(o: Any, dt: str) -> Any:
    """Fast typed access: the data of an @data-type object that must be of type ``dt``."""
    if type(o) is not dict or o.get("@data-type") != dt or "data" not in o:
        got = o.get("@data-type") if type(o) is dict else type(o).__name__
        raise WireError("type", f"expected {dt}, got {str(got)[:32]}")
    return o["data"]



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
# a string runs to its closing quote, or to the end of an unterminated frame (which then fails to parse):
# without the end as a way out, every quote of an unterminated string would rescan the rest (quadratic)
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)')
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
