"""etool.yaml: the shipped example equals the defaults; every bad value is named by its key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from etool_sensor.config import (SCHEMA, Config, ConfigError, config_from_dict, defaults_dict, iter_options,
                                 load_config)
from etool_sensor.flows import FlowParams

REPO = Path(__file__).resolve().parents[1]


def test_example_file_loads_and_equals_defaults() -> None:
    cfg = load_config(REPO / "etool.yaml")
    assert cfg == Config()
    assert cfg.to_dict() == defaults_dict()
    # and it shows every option: same keys, same values, nothing left out
    raw = yaml.safe_load((REPO / "etool.yaml").read_text())
    assert raw == defaults_dict()


def test_example_file_documents_every_key() -> None:
    text = (REPO / "etool.yaml").read_text()
    for dotted, _ in iter_options():
        leaf = dotted.rsplit(".", 1)[-1]
        i = text.index(f"\n{' ' * (2 * dotted.count('.'))}{leaf}:")
        assert "#" in text[max(0, i - 400):i], f"{dotted} has no comment above it"


def test_defaults() -> None:
    c = load_config(None)
    assert c.flow_params == FlowParams(32, 64, 3)
    assert c.flow.min_packets == 2 and c.privacy.mask_names is True
    assert c.model.path is None and c.model.threads is None
    assert (c.classify.threshold, dict(c.classify.label_thresholds), c.classify.alert_labels, c.classify.top_k) \
        == (0.5, {}, (), 3)
    assert (c.context.window, c.context.bursts) == (1.0, 3)
    s = c.serve
    assert s.zeek_url == "ws://127.0.0.1:27759/v1/messages/json" and s.topics == ("etool/flows/",)
    assert (s.app_name, s.batch_size, s.batch_deadline_ms, s.queue_size, s.max_message_bytes) == \
        ("etool-sensor", 256, 5, 10000, 1048576)
    assert (s.reconnect_min_s, s.reconnect_max_s, s.metrics_addr, s.metrics_port) == (0.5, 30, "127.0.0.1", 9464)
    assert s.tls.ca_file is None and s.tls.verify is True
    assert (c.log.dir, c.log.format) == (".", "tsv")


def test_frozen_and_hashable() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.flow.packets = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.classify.label_thresholds["x"] = 0.1  # type: ignore[index]
    assert hash(c) == hash(Config())


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    p = tmp_path / "e.yaml"
    p.write_text("flow:\n  packets: 16\nclassify:\n  label_thresholds: {VPN: 0.8}\n  alert_labels: [VPN]\n"
                 "serve:\n  tls: {verify: false}\nlog: {format: json}\n")
    c = load_config(p)
    assert c.flow.packets == 16 and c.flow.payload_bytes == 64
    assert c.flow_params == FlowParams(16, 64, 3)
    assert dict(c.classify.label_thresholds) == {"VPN": 0.8} and c.classify.alert_labels == ("VPN",)
    assert c.serve.tls.verify is False and c.serve.tls.ca_file is None and c.log.format == "json"
    assert c.source == str(p)


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    p = tmp_path / "e.yaml"
    p.write_text("# nothing\n")
    assert load_config(p) == Config()


@pytest.mark.parametrize("raw, key, allowed", [
    ({"flow": {"pakets": 3}}, "flow.pakets", "allowed: packets, payload_bytes, payload_packets, hello_bytes, min_packets"),
    ({"flows": {}}, "flows", "allowed: flow, privacy, model"),
    ({"flow": {"packets": 0}}, "flow.packets", "an integer in 1..1024"),
    ({"flow": {"packets": "32"}}, "flow.packets", "an integer in 1..1024"),
    ({"flow": {"packets": True}}, "flow.packets", "an integer"),
    ({"flow": {"payload_bytes": 70000}}, "flow.payload_bytes", "0..65535"),
    ({"flow": {"min_packets": 33}}, "flow.min_packets", "<= flow.packets"),
    ({"privacy": {"mask_names": "yes"}}, "privacy.mask_names", "true or false"),
    ({"model": {"threads": 0}}, "model.threads", "1..1024 or null"),
    ({"classify": {"threshold": 1.5}}, "classify.threshold", "a number in 0..1"),
    ({"classify": {"label_thresholds": {"VPN": -1}}}, "classify.label_thresholds.VPN", "0..1"),
    ({"classify": {"label_thresholds": [1]}}, "classify.label_thresholds", "a mapping of label"),
    ({"classify": {"alert_labels": [1]}}, "classify.alert_labels", "a list of strings"),
    ({"classify": {"top_k": 0}}, "classify.top_k", "1..64"),
    ({"context": {"window": 0}}, "context.window", "0.001..3600"),
    ({"context": {"window": float("nan")}}, "context.window", "a number"),
    ({"serve": {"zeek_url": "http://localhost"}}, "serve.zeek_url", "ws:// or wss://"),
    ({"serve": {"topics": []}}, "serve.topics", "must not be empty"),
    ({"serve": {"batch_size": 0}}, "serve.batch_size", "1..65536"),
    ({"serve": {"metrics_port": 70000}}, "serve.metrics_port", "0..65535"),
    ({"serve": {"reconnect_min_s": 60, "reconnect_max_s": 30}}, "serve.reconnect_min_s", "<= serve.reconnect_max_s"),
    ({"serve": {"tls": {"verify": "no"}}}, "serve.tls.verify", "true or false"),
    ({"serve": {"tls": {"cafile": "x"}}}, "serve.tls.cafile", "allowed: ca_file, verify"),
    ({"serve": {"tls": 3}}, "serve.tls", "a mapping of ca_file, verify"),
    ({"log": {"format": "xml"}}, "log.format", "one of tsv, json"),
    ({"log": None, "flow": 7}, "flow", "a mapping of packets"),
])
def test_errors_name_the_key_and_the_allowed_values(raw, key, allowed) -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw, "etool.yaml")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"etool.yaml: config key {key}:"), msg
    assert allowed in msg, msg
    assert ei.value.key == key


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow:\n  packets: [1,\n")
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert "not valid YAML at line" in str(ei.value) and "\n" not in str(ei.value)
    top = tmp_path / "top.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("flow: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_overrides_are_validated() -> None:
    c = Config().with_overrides({"model.path": "m/", "log.format": "json"})
    assert c.model.path == "m/" and c.log.format == "json" and c.flow == Config().flow
    with pytest.raises(ConfigError, match="log.format"):
        Config().with_overrides({"log.format": "csv"})


def test_schema_table_drives_the_dataclasses() -> None:
    # Adding a key is one entry in SCHEMA: every key there is a field with its default, and vice versa.
    c = Config()
    for dotted, opt in iter_options():
        node = c
        for part in dotted.split("."):
            node = getattr(node, part)
        want = opt.default
        assert (dict(node) if isinstance(want, dict) else node) == want, dotted
    assert set(SCHEMA) == {f.name for f in dataclasses.fields(Config)} - {"source"}


def test_thresholds_property_when_runtime_present() -> None:
    runtime = pytest.importorskip("etool_sensor.runtime")
    c = config_from_dict({"classify": {"threshold": 0.4, "label_thresholds": {"Chat": 0.9}}})
    t = c.thresholds
    assert isinstance(t, runtime.Thresholds)
    assert t.default == 0.4 and dict(t.per_label) == {"Chat": 0.9}


def test_readme_config_table_lists_every_key() -> None:
    readme = (REPO / "README.md").read_text()
    for dotted, opt in iter_options():
        row = [ln for ln in readme.splitlines() if ln.startswith(f"| `{dotted}` |")]
        assert len(row) == 1, f"README.md has no config table row for {dotted}"
        default = "null" if opt.default is None else opt.default
        if isinstance(default, bool):
            default = str(default).lower()
        if isinstance(default, tuple):
            default = "[" + ", ".join(default) + "]"
        assert f"| `{dotted}` | {default} |" in row[0], (dotted, row[0])


def test_serve_takes_classify_keys(tmp_path: Path) -> None:
    """The daemon answers with the same top_k, thresholds and alert labels as classify."""
    from etool_sensor.sensor.daemon import Daemon
    from bench.stub_daemon import StubModel

    p = tmp_path / "etool.yaml"
    p.write_text("classify: {top_k: 5, threshold: 0.7, alert_labels: [VPN]}\nserve: {max_flows_per_s: 100}\n")
    d = Daemon(load_config(p), StubModel())
    sv = d.serving
    assert (sv.top_k, sv.thresholds.default, sv.alert_labels, d.rate.rate) == (5, 0.7, frozenset({"VPN"}), 100.0)
