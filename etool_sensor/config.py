"""etool.yaml: schema, defaults and validation.

The schema is one table (``SCHEMA``): each section maps key names to an ``Opt`` (type, default, range,
one-line doc). The frozen ``Config`` dataclasses are generated from that table, so adding a key is a
one-line change here (and one in the example ``etool.yaml``). This module has no side effects: it
reads a file when asked and never touches anything else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

from .flows import FlowParams


class ConfigError(ValueError):
    """A bad etool.yaml; ``str(e)`` is one line naming the key path and what is allowed."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key {key}: {message}" if key else f"{where}{message}")


# --------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Opt:
    """One configuration key: kind, default, constraints and a one-line description."""

    kind: str  # int | float | bool | str | enum | str_list | label_floats
    default: Any
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None  # returns an error message or None

    def describe(self) -> str:
        """What values are allowed, for error messages and the README table."""
        if self.kind == "enum":
            s = "one of " + ", ".join(self.choices)
        elif self.kind in ("int", "float"):
            word = "an integer" if self.kind == "int" else "a number"
            if self.lo is not None and self.hi is not None:
                s = f"{word} in {_num(self.lo)}..{_num(self.hi)}"
            elif self.lo is not None:
                s = f"{word} >= {_num(self.lo)}"
            else:
                s = word
        elif self.kind == "bool":
            s = "true or false"
        elif self.kind == "str":
            s = "a string"
        elif self.kind == "str_list":
            s = "a list of strings"
        elif self.kind == "label_floats":
            s = f"a mapping of label to a number in {_num(self.lo)}..{_num(self.hi)}"
        else:  # pragma: no cover - schema bug
            s = self.kind
        return s + (" or null" if self.nullable else "")


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def _ws_url(v: str) -> str | None:
    if not (v.startswith("ws://") or v.startswith("wss://")) or len(v.split("://", 1)[1]) == 0:
        return "must be a ws:// or wss:// URL"
    return None


def _nonempty(v: Any) -> str | None:
    return "must not be empty" if len(v) == 0 else None


Int = lambda default, lo=None, hi=None, doc="", **kw: Opt("int", default, doc, lo, hi, **kw)  # noqa: E731
Float = lambda default, lo=None, hi=None, doc="", **kw: Opt("float", None if default is None else float(default), doc, lo, hi, **kw)  # noqa: E731
Bool = lambda default, doc="": Opt("bool", default, doc)  # noqa: E731
Str = lambda default, doc="", **kw: Opt("str", default, doc, **kw)  # noqa: E731
Enum = lambda default, choices, doc="": Opt("enum", default, doc, choices=tuple(choices))  # noqa: E731
StrList = lambda default, doc="", **kw: Opt("str_list", tuple(default), doc, **kw)  # noqa: E731

#: The whole schema. A nested dict is a sub-section (serve.tls). Order is the order of etool.yaml.
SCHEMA: dict[str, dict[str, Any]] = {
    "flow": {
        "packets": Int(32, 1, 1024, "N: packets recorded per connection (contract v1)"),
        "payload_bytes": Int(64, 0, 65535, "B: payload bytes kept from each payload packet"),
        "payload_packets": Int(3, 0, 64, "M: payload-carrying packets whose first B bytes are kept"),
        "hello_bytes": Int(1024, 0, 65535, "H: a chunk that starts a TLS ClientHello/ServerHello keeps the whole "
                           "hello, up to H bytes (0: cut at B like any other)"),
        "min_packets": Int(2, 1, 1024, "flows with fewer packets get status too_few_packets, no verdict"),
        "verify_checksums": Bool(False, "offline: drop packets with bad TCP/UDP checksums as Zeek does without -C"),
    },
    "privacy": {
        "mask_names": Bool(True, "replace TLS/QUIC SNI, certificate names, HTTP Host, DNS names before the model"),
    },
    "model": {
        "path": Str(None, "model package directory, or a bundled model by name (default, fast); null = the bundled "
                    "default model", nullable=True),
        "threads": Int(None, 1, 1024, "inference threads (classify: concurrent batches; serve: onnxruntime threads); null = by core count", nullable=True),
    },
    "classify": {
        "threshold": Float(0.5, 0.0, 1.0, "confidence below this marks a verdict unknown"),
        "label_thresholds": Opt("label_floats", {}, "per-label thresholds overriding threshold", 0.0, 1.0),
        "alert_labels": StrList([], "service/app labels that alert: counted by classify and in serve's etool_alerts_total"),
        "top_k": Int(3, 1, 64, "how many alternatives to report"),
        "workers": Int(1, 1, 1024, "classify processes, each reading the whole capture and keeping one shard of "
                       "the connections; 1 = one process (exact, the default); null = usable CPU cores",
                       nullable=True),
    },
    "context": {
        "window": Float(1.0, 0.001, 3600.0, "BURST window in seconds (per client)"),
        "bursts": Int(3, 1, 64, "how many recent bursts of a client form a flow's context"),
    },
    "serve": {
        "zeek_url": Str("ws://127.0.0.1:27759/v1/messages/json", "Zeek WebSocket API endpoint", check=_ws_url),
        "topics": StrList(["etool/flows/"], "Broker topics to subscribe to", check=_nonempty),
        "app_name": Str("etool-sensor", "X-Application-Name sent in the WebSocket handshake", check=_nonempty),
        "batch_size": Int(256, 1, 65536, "flows per inference batch"),
        "batch_deadline_ms": Float(5, 0, 10000, "longest wait to fill a batch (ms)"),
        "queue_size": Int(10000, 1, 10_000_000, "flows queued before new ones are dropped (and counted)"),
        "max_message_bytes": Int(1048576, 1024, 1 << 30, "largest WebSocket message accepted"),
        "reconnect_min_s": Float(0.5, 0.01, 3600, "first reconnect delay (s), doubled up to reconnect_max_s"),
        "reconnect_max_s": Float(30, 0.01, 86400, "longest reconnect delay (s)"),
        "max_flows_per_s": Float(0, 0, 10_000_000, "rate limit on incoming flows (excess dropped, counted); 0 = off"),
        "drain_timeout_s": Float(10, 0, 3600, "on shutdown, how long to keep answering flows already in hand (s)"),
        "workers": Int(1, 1, 64, "event-loop processes; N > 1: worker i is daemon <app_name>-i to Zeek "
                       "(ETooL::daemons), subscribed to <topic><app_name>-i/, queue_size / N each; one metrics "
                       "endpoint with a worker label"),
        "metrics_addr": Str("127.0.0.1", "address of the Prometheus metrics endpoint"),
        "metrics_port": Int(9464, 0, 65535, "port of the metrics endpoint; 0 disables it"),
        "log_format": Enum("text", ("text", "json"), "the daemon's own log lines on stderr: text, or json (one "
                           "object a line: time, level, event, message, fields); --log-format overrides"),
        "tls": {
            "ca_file": Str(None, "CA bundle to verify a wss:// Zeek endpoint; null = system CAs", nullable=True),
            "verify": Bool(True, "verify the server certificate of a wss:// endpoint"),
        },
    },
    "drift": {
        "window": Int(10000, 100, 10_000_000, "serve: the last N verdicts are compared with the model's drift "
                      "reference (etool_drift_score, ETooL::drift)"),
        "min_flows": Int(500, 1, 10_000_000, "fewer verdicts than this (serve's window, a classify run): no drift "
                         "score, it would be mostly noise; <= window"),
        "threshold": Float(0.3, 0.0, 1.0, "a drift score at or above this: classify's summary suggests "
                           "`etool-sensor adapt`, serve logs a warning (Zeek's notice has ETooL::drift_threshold)"),
        "interval_s": Float(60, 0, 86400, "serve: publish an ETooL::drift event every interval_s seconds (s); "
                            "0 = never (the metrics and the threshold warning stay)"),
        "topic": Str("etool/verdicts/drift", "serve: the topic of ETooL::drift events, the Zeek package's "
                     "ETooL::verdict_topic + \"drift\"", check=_nonempty),
    },
    "log": {
        "dir": Str(".", "directory for etool.log / conn.log (classify -o overrides)", check=_nonempty),
        "format": Enum("tsv", ("tsv", "json"), "Zeek ASCII (tsv) or Zeek JSON lines"),
    },
}


def _cross_checks(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Constraints between keys: (key path, message)."""
    errs = []
    if raw["flow"]["min_packets"] > raw["flow"]["packets"]:
        errs.append(("flow.min_packets", f"must be <= flow.packets ({raw['flow']['packets']}), "
                                         f"got {raw['flow']['min_packets']}"))
    if raw["flow"]["payload_packets"] > raw["flow"]["packets"]:
        errs.append(("flow.payload_packets", f"must be <= flow.packets ({raw['flow']['packets']}), "
                                             f"got {raw['flow']['payload_packets']}"))
    s = raw["serve"]
    if s["reconnect_min_s"] > s["reconnect_max_s"]:
        errs.append(("serve.reconnect_min_s", f"must be <= serve.reconnect_max_s ({s['reconnect_max_s']}), "
                                              f"got {s['reconnect_min_s']}"))
    d = raw["drift"]
    if d["min_flows"] > d["window"]:
        errs.append(("drift.min_flows", f"must be <= drift.window ({d['window']}), got {d['min_flows']}"))
    return errs


# ------------------------------------------------------------------------------------- dataclasses
def _class_name(path: str) -> str:
    return "".join(p.capitalize() for p in path.split(".")) + "Config"


def _make_classes(schema: dict[str, Any], path: str = "") -> dict[str, type]:
    """Build one frozen dataclass per (sub-)section, fields in schema order, defaults from the table."""
    classes: dict[str, type] = {}
    fields = []
    for key, opt in schema.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(opt, dict):
            classes.update(_make_classes(opt, sub))
            cls = classes[sub]
            fields.append((key, cls, dataclasses.field(default_factory=cls)))
        else:
            py = {"int": int, "float": float, "bool": bool, "str": str, "enum": str,
                  "str_list": tuple, "label_floats": Mapping}[opt.kind]
            if opt.kind == "label_floats":
                fields.append((key, py, dataclasses.field(default_factory=lambda d=opt.default: _FrozenDict(d))))
            else:
                fields.append((key, py | None if opt.nullable else py, dataclasses.field(default=opt.default)))
    if path:
        cls = dataclasses.make_dataclass(_class_name(path), fields, frozen=True)
        cls.__module__ = __name__
        classes[path] = cls
    return classes


class _FrozenDict(dict):
    """A read-only dict so a frozen Config stays immutable (and hashable)."""

    def _ro(self, *a: Any, **k: Any) -> None:
        raise TypeError("configuration values are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _ro  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple:
        # pickled with the Config (classify --workers under 'spawn'): rebuilt from a plain dict, since
        # dict's default unpickling sets items one by one
        return (_FrozenDict, (dict(self),))


_SECTION_CLASSES = _make_classes(SCHEMA)
FlowConfig = _SECTION_CLASSES["flow"]
PrivacyConfig = _SECTION_CLASSES["privacy"]
ModelConfig = _SECTION_CLASSES["model"]
ClassifyConfig = _SECTION_CLASSES["classify"]
ContextConfig = _SECTION_CLASSES["context"]
ServeConfig = _SECTION_CLASSES["serve"]
ServeTlsConfig = _SECTION_CLASSES["serve.tls"]
DriftConfig = _SECTION_CLASSES["drift"]
LogConfig = _SECTION_CLASSES["log"]


@dataclass(frozen=True)
class Config:
    """The validated configuration; every field has its default, so ``Config()`` is the default config."""

    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)  # type: ignore[valid-type]
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)  # type: ignore[valid-type]
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)  # type: ignore[valid-type]
    classify: ClassifyConfig = dataclasses.field(default_factory=ClassifyConfig)  # type: ignore[valid-type]
    context: ContextConfig = dataclasses.field(default_factory=ContextConfig)  # type: ignore[valid-type]
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)  # type: ignore[valid-type]
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)  # type: ignore[valid-type]
    log: LogConfig = dataclasses.field(default_factory=LogConfig)  # type: ignore[valid-type]
    source: str | None = dataclasses.field(default=None, compare=False)  # file it came from, if any

    @property
    def flow_params(self) -> FlowParams:
        f = self.flow
        return FlowParams(packets=f.packets, payload_bytes=f.payload_bytes, payload_packets=f.payload_packets,
                          hello_bytes=f.hello_bytes)

    @property
    def thresholds(self) -> Any:
        """runtime.Thresholds built from classify.threshold / classify.label_thresholds."""
        from .runtime import Thresholds  # lazy: config itself needs no runtime

        return Thresholds(default=self.classify.threshold, per_label=dict(self.classify.label_thresholds))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, dicts), the shape of etool.yaml."""
        def conv(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, Mapping):
                return dict(v)
            return v
        d = conv(self)
        d.pop("source", None)
        return d

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A new Config with dotted keys replaced (``{"model.path": "m/"}``), validated like the file."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            node = raw
            *parents, last = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        return _build(raw, self.source)


# -------------------------------------------------------------------------------------- validation
def _check_value(key: str, opt: Opt, v: Any, source: str | None) -> Any:
    def bad(msg: str | None = None) -> ConfigError:
        return ConfigError(key, msg or f"must be {opt.describe()}, got {v!r}", source)

    if v is None:
        if opt.nullable:
            return None
        raise bad()
    k = opt.kind
    if k == "bool":
        if not isinstance(v, bool):
            raise bad()
        return v
    if k in ("int", "float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad()
        if k == "int":
            if isinstance(v, float):
                if not v.is_integer():
                    raise bad()
                v = int(v)
        else:
            v = float(v)
            if not math.isfinite(v):
                raise bad()
        if (opt.lo is not None and v < opt.lo) or (opt.hi is not None and v > opt.hi):
            raise bad()
    elif k in ("str", "enum"):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k == "str":
            v = str(v)  # e.g. log.dir: 2026
        if not isinstance(v, str):
            raise bad()
        if k == "enum" and v not in opt.choices:
            raise bad()
    elif k == "str_list":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
            raise bad()
        v = tuple(v)
    elif k == "label_floats":
        if not isinstance(v, Mapping):
            raise bad()
        out = {}
        for label, t in v.items():
            if (not isinstance(label, str) or not label or isinstance(t, bool) or not isinstance(t, (int, float))
                    or not opt.lo <= t <= opt.hi):  # type: ignore[operator]
                raise ConfigError(f"{key}.{label}", f"must be a number in {_num(opt.lo)}..{_num(opt.hi)}, "
                                                    f"got {t!r}", source)
            out[label] = float(t)
        v = _FrozenDict(out)
    if opt.check is not None:
        msg = opt.check(v)
        if msg:
            raise bad(f"{msg}, got {v!r}")
    return v


def _validate_section(schema: dict[str, Any], given: Any, path: str, source: str | None) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        what = f"must be a mapping of {', '.join(schema)}; got {given!r}"
        raise ConfigError(path, what if path else "the top level " + what, source)
    for k in given:
        if k not in schema:
            raise ConfigError(f"{path}.{k}" if path else str(k),
                              "unknown key; allowed: " + ", ".join(schema), source)
    out: dict[str, Any] = {}
    for k, opt in schema.items():
        sub = f"{path}.{k}" if path else k
        if isinstance(opt, dict):
            out[k] = _validate_section(opt, given.get(k), sub, source)
        elif k in given:
            out[k] = _check_value(sub, opt, given[k], source)
        else:
            out[k] = opt.default
    return out


def _instantiate(schema: dict[str, Any], values: dict[str, Any], path: str) -> Any:
    kw = {}
    for k, opt in schema.items():
        sub = f"{path}.{k}" if path else k
        if isinstance(opt, dict):
            kw[k] = _instantiate(opt, values[k], sub)
        elif opt.kind == "label_floats":
            kw[k] = _FrozenDict(values[k])
        else:
            kw[k] = values[k]
    return _SECTION_CLASSES[path](**kw) if path else kw


def _build(raw: Any, source: str | None) -> Config:
    values = _validate_section(SCHEMA, raw, "", source)
    for key, msg in _cross_checks(values):
        raise ConfigError(key, msg, source)
    return Config(**_instantiate(SCHEMA, values, ""), source=source)


def config_from_dict(raw: Mapping[str, Any] | None, source: str | None = None) -> Config:
    """Validate a parsed etool.yaml (a mapping, or None for an empty file)."""
    return _build(raw, source)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate etool.yaml; ``None`` gives the defaults. Raises ConfigError (one line)."""
    if path is None:
        return Config()
    p = Path(path)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "no such config file", src) from None
    except IsADirectoryError:
        raise ConfigError("", "is a directory, not a config file", src) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read config file: {e}", src) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError("", f"not valid YAML{where}: {problem}", src) from None
    return _build(raw, src)


def iter_options(schema: dict[str, Any] | None = None, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, Opt) for every key, in schema order (used by docs and tests)."""
    for k, opt in (schema or SCHEMA).items():
        sub = f"{path}.{k}" if path else k
        if isinstance(opt, dict):
            yield from iter_options(opt, sub)
        else:
            yield sub, opt


def defaults_dict() -> dict[str, Any]:
    return Config().to_dict()
