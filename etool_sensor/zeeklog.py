"""Zeek log writers: the ASCII (TSV) format of Zeek's Ascii writer and its JSON-lines format.

A writer takes a field spec (``[(name, zeek_type), ...]``) and rows (a mapping by field name or a sequence
in field order; ``None`` or a missing key is an unset field). It writes what a Zeek logger would write:

* ASCII: the ``#separator``/``#set_separator``/``#empty_field``/``#unset_field``/``#path``/``#open``/
  ``#fields``/``#types`` header, tab-separated rows, ``#close`` at the end. ``time`` and ``interval`` as
  ``%.6f``; ``double`` with trailing zeros trimmed; ``bool`` as ``T``/``F``; sets and vectors joined by
  ``,`` (``(empty)`` when empty); an empty string is ``(empty)``, an unset value ``-``. Non-printable
  characters, backslash, the separator and (inside containers) the set separator are escaped ``\\xNN``;
  a value that is exactly ``-`` or ``(empty)`` has its first character escaped.
* JSON: one object per line with Zeek's flattened names (``id.orig_h``), ``time`` as epoch seconds,
  unset fields left out, containers as arrays.

Rows are buffered and flushed every ``flush_rows`` rows or ``flush_seconds`` seconds. A failing write
(disk full, ENOSPC, or any OSError) raises ``LogWriteError`` with how many rows reached the file and how
many did not; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .compiled import compiled

Field = tuple[str, str]  # (name, zeek type) e.g. ("id.orig_h", "addr")

_tsv_row = compiled("tsv_row")  # the compiled row writer for the common case, or None

SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY_FIELD = "(empty)"
UNSET_FIELD = "-"

_SCALAR_TYPES = {"time", "interval", "double", "count", "int", "port", "addr", "subnet", "string", "enum", "bool"}


class LogWriteError(OSError):
    """A log could not be written; ``written``/``unwritten`` count rows."""

    def __init__(self, path: str, reason: str, written: int, unwritten: int, errno_: int | None = None) -> None:
        self.path = path
        self.reason = reason
        self.written = written
        self.unwritten = unwritten
        super().__init__(errno_, f"cannot write {path}: {reason} ({written} rows written, {unwritten} not written)")

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason} ({self.written} rows written, {self.unwritten} not written)"


def _check_type(t: str) -> str:
    base = t
    for prefix in ("set[", "vector["):
        if t.startswith(prefix) and t.endswith("]"):
            base = t[len(prefix):-1]
    if base not in _SCALAR_TYPES:
        raise ValueError(f"unsupported zeek type {t!r}")
    return base


def _is_container(t: str) -> bool:
    return t.startswith("set[") or t.startswith("vector[")


# ------------------------------------------------------------------------------------------ ASCII
def escape(s: str, extra: str = SEPARATOR) -> str:
    """Zeek's ODesc escaping (UTF-8 output): non-printables, backslash and the separators as ``\\xNN``."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\" or ch in extra or o < 0x20 or o == 0x7F or (0x80 <= o < 0xA0):
            out.append(f"\\x{o:02x}" if o < 0x100 else ch)
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _escape_reserved(s: str) -> str:
    # A value equal to the unset/empty marker gets its first character escaped so it stays unambiguous.
    if s == UNSET_FIELD or s == EMPTY_FIELD:
        return f"\\x{ord(s[0]):02x}" + s[1:]
    return s


def format_double(v: float) -> str:
    """Zeek's ``double`` rendering: up to 6 decimals, trailing zeros trimmed, at least one decimal."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    s = f"{v:.6f}".rstrip("0")
    if s.endswith("."):
        s += "0"
    if s == "-0.0":
        s = "0.0"
    return s


def _scalar_ascii(base: str, v: Any, in_container: bool) -> str:
    if base in ("time", "interval"):
        return f"{float(v):.6f}"
    if base == "double":
        return format_double(float(v))
    if base == "bool":
        return "T" if v else "F"
    if base in ("count", "int", "port"):
        return str(int(v))
    if base in ("addr", "subnet"):
        return str(v)
    s = v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)
    if not s:
        return EMPTY_FIELD
    extra = SEPARATOR + SET_SEPARATOR if in_container else SEPARATOR
    if not _plain(s, extra):
        s = escape(s, extra)
    return _escape_reserved(s)


def _plain(s: str, extra: str) -> bool:
    """True when escape(s, extra) would return s unchanged (the common case: printable ASCII)."""
    return s.isascii() and s.isprintable() and "\\" not in s and (extra == SEPARATOR or SET_SEPARATOR not in s)


def ascii_formatter(ztype: str) -> Callable[[Any], str]:
    """A function equal to ``lambda v: format_ascii(ztype, v)``, with the type resolved once (writers
    call it per value)."""
    base = _check_type(ztype)
    if _is_container(ztype):
        return lambda v, _t=ztype: format_ascii(_t, v)
    if base in ("time", "interval"):
        return lambda v: UNSET_FIELD if v is None else f"{float(v):.6f}"
    if base == "double":
        return lambda v: UNSET_FIELD if v is None else format_double(float(v))
    if base == "bool":
        return lambda v: UNSET_FIELD if v is None else ("T" if v else "F")
    if base in ("count", "int", "port"):
        return lambda v: UNSET_FIELD if v is None else str(int(v))
    if base in ("addr", "subnet"):
        return lambda v: UNSET_FIELD if v is None else str(v)

    def fmt_string(v: Any) -> str:
        if v is None:
            return UNSET_FIELD
        if type(v) is str and v and _plain(v, SEPARATOR):
            return _escape_reserved(v)
        return _scalar_ascii(base, v, False)

    return fmt_string


def ascii_row_formatter(types: Sequence[str]) -> Callable[[Sequence[Any]], str]:
    """A function row -> the TSV line of these field types, equal to joining ``format_ascii(t, v)`` with tabs.

    Generated once per log (as dataclasses generate __init__), so a row costs one call and the scalar
    cases are inlined; anything unusual (escaping, containers, non-native types) goes to the generic code."""
    env: dict[str, Any] = {"_fa": format_ascii, "_fd": format_double, "_sa": _scalar_ascii, "_U": UNSET_FIELD,
                           "_E": EMPTY_FIELD, "_fs": _plain_strings}
    exprs = []
    for i, t in enumerate(types):
        base = _check_type(t)
        v = f"v{i}"
        if _is_container(t) and base in ("string", "enum"):
            # the common case (etool.log's alternatives): plain strings, joined as they are
            e = f"((_fs({v}) if type({v}) is list and {v} else None) or _fa({t!r}, {v}))"
        elif _is_container(t):
            e = f"_fa({t!r}, {v})"
        elif base in ("time", "interval"):
            e = f"'%.6f' % (({v}) if type({v}) is float else float({v}))"
        elif base == "double":
            e = f"_fd(float({v}))"
        elif base == "bool":
            e = f"('T' if {v} else 'F')"
        elif base in ("count", "int", "port"):
            e = f"(str({v}) if type({v}) is int else str(int({v})))"
        elif base in ("addr", "subnet"):
            e = f"({v} if type({v}) is str else str({v}))"
        else:
            env[f"_b{i}"] = base
            e = (f"({v} if type({v}) is str and {v} and {v}.isascii() and {v}.isprintable() and '\\\\' not in {v} "
                 f"and {v} != _U and {v} != _E else _sa(_b{i}, {v}, False))")
        if not _is_container(t):
            e = f"(_U if {v} is None else {e})"
        exprs.append(e)
    names = ", ".join(f"v{i}" for i in range(len(types)))
    src = (f"def row({'r' if types else '_r'}):\n"
           + (f"    {names}{',' if len(types) == 1 else ''} = r\n" if types else "")
           + f"    return {SEPARATOR!r}.join(({', '.join(exprs)}{',' if len(exprs) == 1 else ''}))\n")
    exec(compile(src, f"<ascii row formatter {len(types)} fields>", "exec"), env)
    py_row = env["row"]
    codes = [_TSV_CODES.get(_check_type(t) + ("[]" if _is_container(t) else "")) for t in types]
    if _tsv_row is None or not types or None in codes:
        return py_row
    code = "".join(codes).encode()

    def row(r: Sequence[Any], _c=code, _t=_tsv_row, _py=py_row) -> str:
        s = _t(_c, r)
        return _py(r) if s is None else s

    return row


#: zeeklog field types -> _fastpath.tsv_row's type codes (containers of other types stay in Python)
_TSV_CODES = {"time": "t", "interval": "t", "double": "d", "bool": "b", "count": "c", "int": "c", "port": "c",
              "addr": "a", "subnet": "a", "string": "s", "enum": "s", "string[]": "v", "enum[]": "v"}


def _plain_strings(items: list) -> str | None:
    """format_ascii of a non-empty container of strings when no item needs escaping (printable ASCII, no
    backslash or separator, not empty and not a reserved marker); None otherwise (format_ascii decides)."""
    try:
        s = SET_SEPARATOR.join(items)
    except TypeError:  # an item that is not a str (None, bytes, ...)
        return None
    if (s.isascii() and s.isprintable() and "\\" not in s and s.count(SET_SEPARATOR) == len(items) - 1
            and "" not in items and UNSET_FIELD not in items and EMPTY_FIELD not in items):
        return s
    return None


def format_ascii(ztype: str, v: Any) -> str:
    """One field value as Zeek's Ascii writer prints it."""
    if v is None:
        return UNSET_FIELD
    base = _check_type(ztype)
    if _is_container(ztype):
        items = list(v)
        if not items:
            return EMPTY_FIELD
        return SET_SEPARATOR.join(UNSET_FIELD if x is None else _scalar_ascii(base, x, True) for x in items)
    return _scalar_ascii(base, v, False)


# ------------------------------------------------------------------------------------------- JSON
def _scalar_json(base: str, v: Any) -> Any:
    if base in ("time", "interval", "double"):
        f = float(v)
        return f if math.isfinite(f) else None
    if base == "bool":
        return bool(v)
    if base in ("count", "int", "port"):
        return int(v)
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "backslashreplace")
    return str(v)


def format_json(ztype: str, v: Any) -> Any:
    base = _check_type(ztype)
    if _is_container(ztype):
        return [_scalar_json(base, x) for x in v]
    return _scalar_json(base, v)


# ----------------------------------------------------------------------------------------- writers
def _open_stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(t))


class LogWriter:
    """Base: buffered, counted writes to one file. Use ``open_log`` or the subclasses; a context manager."""

    ext = ".log"

    def __init__(self, path: str | Path, fields: Sequence[Field], *, log_path: str | None = None,
                 flush_rows: int = 1000, flush_seconds: float = 1.0, open_time: float | None = None) -> None:
        self.path = str(path)
        self.fields = [(str(n), str(t)) for n, t in fields]
        for _, t in self.fields:
            _check_type(t)
        self.names = [n for n, _ in self.fields]
        self._nameset = frozenset(self.names)
        self.log_path = log_path or Path(self.path).name.split(".")[0]
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = flush_seconds
        self.open_time = time.time() if open_time is None else open_time
        self.written = 0  # rows known to be in the file
        self.unwritten = 0  # rows given to us that never reached the file
        self.closed = False
        self._failed: LogWriteError | None = None
        self._buf: list[bytes] = []
        self._buf_rows: list[bool] = []  # True where the buffered chunk is a row (False: header/footer)
        self._pending = 0
        self._last_flush = time.monotonic()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            self.closed = True
            raise LogWriteError(self.path, e.strerror or str(e), 0, 0, e.errno) from None
        header = self._header()
        if header:
            self._queue(header, is_row=False)

    # subclasses
    def _header(self) -> str:
        return ""

    def _footer(self) -> str:
        return ""

    def _format(self, row: Sequence[Any]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # public
    @property
    def pending(self) -> int:
        """Rows buffered, not yet in the file."""
        return self._pending

    def _values(self, row: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        if type(row) is list:  # classify's rows: no copy, no ABC check (isinstance(row, Mapping) costs ~1 us)
            if len(row) != len(self.names):
                raise ValueError(f"{self.log_path}: row has {len(row)} values, the log has {len(self.names)} fields")
            return row
        if type(row) is dict or isinstance(row, Mapping):
            if not self._nameset.issuperset(row):
                unknown = set(row) - self._nameset
                raise KeyError(f"{self.log_path}: unknown field(s) {sorted(unknown)}")
            return list(map(row.get, self.names))
        vals = list(row)
        if len(vals) != len(self.names):
            raise ValueError(f"{self.log_path}: row has {len(vals)} values, the log has {len(self.names)} fields")
        return vals

    def write(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        """Add one row (a mapping by field name, or a sequence in field order)."""
        self.write_formatted(self._format(self._values(row)))

    def format_row(self, row: Mapping[str, Any] | Sequence[Any]) -> str:
        """The text `write` would add for this row, without the newline (see row_formatter)."""
        return self._format(self._values(row))

    def write_formatted(self, text: str) -> None:
        """Add one row already formatted by format_row/row_formatter for this log's fields and format."""
        if self._failed is not None:
            self._failed.unwritten += 1
            self.unwritten += 1
            raise self._failed
        if self.closed:
            raise ValueError(f"{self.path}: write to a closed log")
        self._queue(text + "\n", is_row=True)
        if self._pending >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def write_many(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> None:
        for r in rows:
            self.write(r)

    def _queue(self, text: str, *, is_row: bool) -> None:
        self._buf.append(text.encode("utf-8", "surrogateescape"))
        self._buf_rows.append(is_row)
        self._pending += is_row

    def flush(self) -> None:
        """Write buffered rows; on failure count what did not reach the file and raise LogWriteError."""
        if self._failed is not None:
            raise self._failed
        if not self._buf:
            return
        data = b"".join(self._buf)
        done = 0
        try:
            while done < len(data):
                n = os.write(self._fd, data[done:])
                if n <= 0:  # pragma: no cover - not expected from a regular file
                    raise OSError(0, "short write")
                done += n
        except OSError as e:
            ok = off = 0
            for chunk, is_row in zip(self._buf, self._buf_rows):
                off += len(chunk)
                if off <= done and is_row:
                    ok += 1
            lost = self.pending - ok
            self.written += ok
            self.unwritten += lost
            self._buf.clear()
            self._buf_rows.clear()
            self._pending = 0
            self._failed = LogWriteError(self.path, e.strerror or str(e), self.written, self.unwritten, e.errno)
            self._close_fd()
            raise self._failed from None
        self.written += self.pending
        self._buf.clear()
        self._buf_rows.clear()
        self._pending = 0
        self._last_flush = time.monotonic()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        self.closed = True
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Flush, write the footer and close. Raises LogWriteError if rows could not be written."""
        if self._failed is not None:
            self._close_fd()
            raise self._failed
        if self.closed:
            return
        footer = self._footer()
        if footer:
            self._queue(footer, is_row=False)
        try:
            self.flush()
            try:
                os.fsync(self._fd)
            except OSError:
                pass  # not every file supports fsync (pipes, /dev/full): the data was written
        finally:
            self._close_fd()

    def abort(self) -> None:
        """Close without raising (after another error); buffered rows are flushed if possible."""
        try:
            self.close()
        except LogWriteError:
            pass

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class AsciiLogWriter(LogWriter):
    """Zeek's default TSV log format, header and footer included."""

    def _header(self) -> str:
        return "\n".join([
            "#separator \\x09",
            f"#set_separator{SEPARATOR}{SET_SEPARATOR}",
            f"#empty_field{SEPARATOR}{EMPTY_FIELD}",
            f"#unset_field{SEPARATOR}{UNSET_FIELD}",
            f"#path{SEPARATOR}{self.log_path}",
            f"#open{SEPARATOR}{_open_stamp(self.open_time)}",
            "#fields" + SEPARATOR + SEPARATOR.join(self.names),
            "#types" + SEPARATOR + SEPARATOR.join(t for _, t in self.fields),
        ]) + "\n"

    def _footer(self) -> str:
        return f"#close{SEPARATOR}{_open_stamp(time.time())}\n"

    def _format(self, row: Sequence[Any]) -> str:
        fmt = self.__dict__.get("_row_fmt")
        if fmt is None:
            fmt = self._row_fmt = ascii_row_formatter([t for _, t in self.fields])
        return fmt(row)


class JsonLogWriter(LogWriter):
    """Zeek's JSON-lines format (``LogAscii::use_json=T``): no header, unset fields left out."""

    def _format(self, row: Sequence[Any]) -> str:
        obj = {}
        for (name, t), v in zip(self.fields, row):
            if v is None:
                continue
            jv = format_json(t, v)
            if jv is None:
                continue
            obj[name] = jv
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def row_formatter(fields: Sequence[Field], fmt: str = "tsv") -> Callable[[Mapping[str, Any] | Sequence[Any]], str]:
    """A function row -> the text a writer of these fields and format writes for it (no file is opened).

    For processes that format rows for a writer in another process (``LogWriter.write_formatted``)."""
    cls = {"tsv": AsciiLogWriter, "json": JsonLogWriter}.get(fmt)
    if cls is None:
        raise ValueError(f"unknown log format {fmt!r}; allowed: tsv, json")
    w = cls.__new__(cls)  # the formatting state only: no file, no header
    w.fields = [(str(n), str(t)) for n, t in fields]
    for _, t in w.fields:
        _check_type(t)
    w.names = [n for n, _ in w.fields]
    w._nameset = frozenset(w.names)
    w.log_path = "-"
    return w.format_row


def open_log(directory: str | Path, name: str, fields: Sequence[Field], fmt: str = "tsv", **kw: Any) -> LogWriter:
    """Open ``DIR/NAME.log`` in the given format (tsv or json); ``#path`` is NAME."""
    cls = {"tsv": AsciiLogWriter, "json": JsonLogWriter}.get(fmt)
    if cls is None:
        raise ValueError(f"unknown log format {fmt!r}; allowed: tsv, json")
    return cls(Path(directory) / f"{name}.log", fields, log_path=name, **kw)


# ------------------------------------------------------------------------------------------ reading
def read_ascii_log(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Parse a Zeek ASCII log into (header, rows as {field: raw string}); for tests and tooling."""
    header: dict[str, str] = {}
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                if line.startswith("#separator "):
                    header["separator"] = line.split(" ", 1)[1]
                    continue
                key, _, val = line[1:].partition(SEPARATOR)
                header[key] = val
                if key == "fields":
                    fields = val.split(SEPARATOR)
                continue
            rows.append(dict(zip(fields, line.split(SEPARATOR))))
    return header, rows


def read_json_log(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------- field specs
#: The connection columns every Zeek log keyed by a connection starts with.
CONN_ID_FIELDS: list[Field] = [
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
]

#: etool.log, as written by `etool-sensor classify`: the columns (and order) of the Zeek package's
#: ETooL::Info (zeek-plugin/scripts/log.zeek), so offline and online logs read the same. Offline,
#: latency is unset and status is ok or too_few_packets (online: ok or timeout).
ETOOL_FIELDS: list[Field] = [
    *CONN_ID_FIELDS,
    ("service", "string"),
    ("app", "string"),
    ("confidence", "double"),
    ("unknown", "bool"),
    ("alternatives", "vector[string]"),
    ("model", "string"),
    ("latency", "interval"),
    ("status", "string"),
]

#: conn.log: Zeek's columns that a capture reader can fill (service, local_*, tunnel_parents stay unset).
CONN_FIELDS: list[Field] = [
    *CONN_ID_FIELDS,
    ("service", "string"),
    ("duration", "interval"),
    ("orig_bytes", "count"),
    ("resp_bytes", "count"),
    ("conn_state", "string"),
    ("local_orig", "bool"),
    ("local_resp", "bool"),
    ("missed_bytes", "count"),
    ("history", "string"),
    ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"),
    ("resp_pkts", "count"),
    ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"),
]
