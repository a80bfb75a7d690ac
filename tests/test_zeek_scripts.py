"""Static checks of the Zeek side of etool (no zeek binary needed).

* every .zeek file in the repository parses (zeek-format from zeekscript),
* the package is one file per concern, all loaded by __load__.zeek,
* every setting in config.zeek is documented (``##``) and in docs/sensor.md,
  and the analyst-facing ones are ``option``s,
* the wire records in types.zeek match docs/zeek-wire.md and its JSON examples,
* zkg.meta is valid and complete,
* every btest uses a trace that exists,
* the btests themselves run only where `zeek` is on PATH.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTING = ROOT / "zeek-plugin" / "testing"
SCRIPTS = ROOT / "zeek-plugin" / "scripts"
DOCS = ROOT / "docs"
SKIP_DIRS = {".git", ".tmp", "node_modules", "build", ".pytest_cache", ".venv"}  # .venv: the README commands make it


def zeek_files() -> list[Path]:
    return sorted(
        p
        for p in ROOT.rglob("*.zeek")
        if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
    )


def zeek_format_errors(path: Path) -> str | None:
    """Return zeek-format's complaint about `path`, or None if it parses.

    zeek-format exits 1 and prints "cannot parse line ..." (plus, for
    recoverable errors, "missing grammar node ...") on stderr when the
    tree-sitter parse has errors; it exits 0 otherwise.
    """
    exe = shutil.which("zeek-format")
    if exe is None:
        pytest.skip("zeek-format not installed (pip install zeekscript)")
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0 or "cannot parse" in proc.stderr:
        return proc.stderr.strip() or f"exit status {proc.returncode}"
    return None


PACKAGE_FILES = ["config", "types", "metrics", "publish", "collect", "log", "alerts", "health", "drift", "listen"]


def test_zeek_files_exist():
    names = {p.relative_to(ROOT).as_posix() for p in zeek_files()}
    assert "zeek-plugin/scripts/__load__.zeek" in names
    for f in PACKAGE_FILES:
        assert f"zeek-plugin/scripts/{f}.zeek" in names


def test_load_loads_every_script():
    loads = re.findall(r"^@load \./(\w+)\s*$", (SCRIPTS / "__load__.zeek").read_text(), re.M)
    present = sorted(p.stem for p in SCRIPTS.glob("*.zeek") if p.name != "__load__.zeek")
    assert sorted(loads) == present
    assert loads == PACKAGE_FILES  # dependency order: settings, wire, metrics, then the users


# One setting in config.zeek: its `##` doc lines, then `const NAME ... &redef;` or `option NAME ...;`.
_SETTING = re.compile(r"((?:^\t##.*\n)*)^\t(const|option) (\w+)\b[^\n]*?;", re.M)


def config_settings() -> dict[str, tuple[str, str]]:
    """name -> (kind, doc) for every setting declared in config.zeek."""
    text = (SCRIPTS / "config.zeek").read_text()
    return {m.group(3): (m.group(2), m.group(1)) for m in _SETTING.finditer(text)}


def test_config_settings_documented():
    settings = config_settings()
    assert len(settings) >= 20, sorted(settings)
    sensor_md = (DOCS / "sensor.md").read_text()
    for name, (kind, doc) in settings.items():
        assert doc.strip(), f"config.zeek: {name} has no ## doc"
        if kind == "const":
            assert re.search(rf"^\tconst {name}\b.*&redef;", (SCRIPTS / "config.zeek").read_text(), re.M), name
        assert re.search(rf"^\| `{name}`", sensor_md, re.M) or f"`{name}` /" in sensor_md \
            or f"/ `{name}`" in sensor_md, f"docs/sensor.md: no table row for ETooL::{name}"


def test_analyst_settings_are_options():
    settings = config_settings()
    for name in ("alert_labels", "label_thresholds", "alert_notice_interval", "daemon_down_after",
                 "timeout_share", "timeout_min_flows", "health_interval", "daemon_down_notice_interval",
                 "drift_threshold", "drift_notice_interval"):
        assert settings.get(name, ("missing",))[0] == "option", f"ETooL::{name} must be an option"
    # The model's window and the wiring need a restart: they stay constants.
    for name in ("packets_per_flow", "payload_bytes", "payload_packets", "hello_bytes", "flow_topic", "daemons"):
        assert settings[name][0] == "const", name
    # Settings live in config.zeek only.
    for p in SCRIPTS.glob("*.zeek"):
        if p.name != "config.zeek":
            assert not re.search(r"^\s*(option |const \w+ .*&redef)", p.read_text(), re.M), p.name


def test_one_alert_default():
    """Zeek's alerts follow the daemon's threshold: no second default in the scripts or the docs."""
    for p in [*SCRIPTS.glob("*.zeek"), DOCS / "sensor.md"]:
        assert "default_threshold" not in p.read_text(), p.name


_ZEEK_TO_BROKER = {"string": "string", "double": "real", "count": "count", "bool": "boolean", "time": "timestamp",
                   "interval": "timespan", "addr": "address", "port": "port"}


def record_fields(text: str, name: str) -> list[tuple[str, str]]:
    """[(field, type)] of `type [ETooL::]name: record { ... };` in text (comments dropped)."""
    m = re.search(rf"type (?:ETooL::)?{name}: record \{{(.*?)\}};", text, re.S)
    assert m, f"record {name} not found"
    body = re.sub(r"#[^\n]*", "", m.group(1))
    return re.findall(r"(\w+): ([\w: ]+?);", body)


def test_wire_records_match_docs():
    types = (SCRIPTS / "types.zeek").read_text()
    wire = (DOCS / "zeek-wire.md").read_text()
    version = int(re.search(r"const wire_version = (\d+);", types).group(1))
    assert re.search(rf"^# Zeek wire contract v{version}$", wire, re.M)
    for rec in ("Packet", "Chunk", "Flow", "Verdict", "DriftReport"):
        fields = record_fields(types, rec)
        documented = [(f, t.replace("ETooL::", "")) for f, t in record_fields(wire, rec)]
        assert fields == documented, rec
    for ev, arg in (("flow", "Flow"), ("verdict", "Verdict"), ("drift", "DriftReport")):
        assert f"global {ev}: event(" in types and f"event ETooL::{ev}(" in wire, ev
    from etool_sensor.zeek import wire as contract

    assert contract.WIRE_VERSION == version, "the daemon and the Zeek package speak the same wire version"
    for rec, fields in (("Flow", contract.FLOW_FIELDS), ("Verdict", contract.VERDICT_FIELDS),
                        ("DriftReport", contract.DRIFT_FIELDS)):
        assert [f for f, _ in record_fields(types, rec)] == list(fields), rec


def test_wire_examples_match_records():
    """Each JSON example frame in docs/zeek-wire.md has the field types of its record in types.zeek."""
    types = (SCRIPTS / "types.zeek").read_text()
    wire = (DOCS / "zeek-wire.md").read_text()
    frames = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", wire, re.S)]
    seen = set()
    for frame in frames:
        name = frame["data"][2]["data"][0]["data"]
        record = {"ETooL::flow": "Flow", "ETooL::verdict": "Verdict", "ETooL::drift": "DriftReport"}[name]
        args = frame["data"][2]["data"][1]["data"]
        assert len(args) == 1
        values = args[0]["data"]
        fields = record_fields(types, record)
        assert len(values) == len(fields), name
        for (field, ztype), value in zip(fields, values):
            expected = "vector" if ztype.startswith("vector") else _ZEEK_TO_BROKER[ztype]
            assert value["@data-type"] == expected, (name, field)
        seen.add(name)
    assert seen == {"ETooL::flow", "ETooL::verdict", "ETooL::drift"}


@pytest.mark.parametrize(
    "path", zeek_files(), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_zeek_file_parses(path: Path):
    err = zeek_format_errors(path)
    assert err is None, f"{path.relative_to(ROOT)}: {err}"


@pytest.mark.parametrize(
    "text",
    [
        'event zeek_init() { print "x" \n',  # missing ';' and '}'
        "module X;\nexport { const a = ; }\n",
        "event zeek_init()\n\t{\n\tlocal x = 1 +;\n\t}\n",
    ],
)
def test_parse_check_catches_broken_script(tmp_path: Path, text: str):
    bad = tmp_path / "broken.zeek"
    bad.write_text(text)
    assert zeek_format_errors(bad) is not None


def test_parse_check_accepts_valid_script(tmp_path: Path):
    ok = tmp_path / "ok.zeek"
    ok.write_text('event zeek_init()\n\t{\n\tprint "ok";\n\t}\n')
    assert zeek_format_errors(ok) is None


def test_zkg_meta():
    meta = ROOT / "zkg.meta"
    cp = configparser.ConfigParser(interpolation=None)
    assert cp.read(meta), "zkg.meta missing or unreadable"
    assert cp.has_section("package")
    pkg = cp["package"]
    for key in ("summary", "description", "tags", "script_dir", "depends", "test_command"):
        assert pkg.get(key, "").strip(), f"zkg.meta: {key} missing or empty"
    script_dir = ROOT / pkg["script_dir"].strip()
    assert (script_dir / "__load__.zeek").is_file()
    assert re.search(r"\bzeek\s*>=\s*8\.", pkg["depends"])
    assert "btest" in pkg["test_command"]
    assert (TESTING / "btest.cfg").is_file()


def btests() -> list[Path]:
    return sorted((TESTING / "tests").glob("*.zeek"))


def test_there_are_btests():
    assert len(btests()) >= 5


@pytest.mark.parametrize("path", btests(), ids=lambda p: p.name)
def test_btest_traces_exist(path: Path):
    text = path.read_text()
    assert "@TEST-REQUIRES: which zeek" in text, "btests must skip without zeek"
    traces = re.findall(r"\$TRACES/([\w./-]+)", text)
    assert traces, f"{path.name} references no trace"
    for t in traces:
        assert (TESTING / "Traces" / t).is_file(), f"{path.name}: missing trace {t}"


@pytest.mark.parametrize("path", btests(), ids=lambda p: p.name)
def test_btest_has_baseline(path: Path):
    base = TESTING / "Baseline" / f"tests.{path.stem}"
    diffs = re.findall(r"btest-diff\s+(\S+)", path.read_text())
    for d in diffs:
        assert (base / d).is_file(), f"missing baseline {base / d}"


@pytest.mark.skipif(shutil.which("zeek") is None, reason="zeek not on PATH: btests need a Zeek >= 8.0 installation")
@pytest.mark.skipif(shutil.which("btest") is None, reason="btest not on PATH (pip install btest)")
def test_btests_pass():
    proc = subprocess.run(
        ["btest", "-c", "btest.cfg", "-d"],
        cwd=TESTING,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_module_names_are_unique():
    """Types, enum values and globals of module ETooL share one namespace in Zeek: a record type named like a
    notice (both ETooL::X) stops Zeek at load ("conflicting definition of enum value"), which zeekscript's
    parse check cannot see."""
    seen: dict[str, str] = {}
    for path in sorted(SCRIPTS.glob("*.zeek")):
        text = re.sub(r"#[^\n]*", "", path.read_text())
        names = re.findall(r"^\s*type (\w+):", text, re.M)
        names += re.findall(r"^\s*(?:global|const|option) (\w+)\s*[:=]", text, re.M)
        for block in re.findall(r"enum(?: Notice::Type \+=)? \{(.*?)\}", text, re.S):
            names += re.findall(r"^\s*(\w+)\s*,?\s*$", block, re.M)
        for name in names:
            assert name not in seen, f"ETooL::{name} is declared in {seen.get(name)} and again in {path.name}"
            seen[name] = path.name
    assert {"Drift", "DriftReport", "Alert", "Flow", "flow"} <= set(seen)


def test_notices_and_metrics_documented():
    sensor_md = (DOCS / "sensor.md").read_text()
    scripts = {p.name: p.read_text() for p in SCRIPTS.glob("*.zeek")}
    notices = [n for text in scripts.values()
               for block in re.findall(r"redef enum Notice::Type \+= \{(.*?)\};", text, re.S)
               for n in re.findall(r"^\s*(\w+),", re.sub(r"##[^\n]*", "", block), re.M)]
    assert sorted(notices) == ["Alert", "Daemon_Down", "Drift"]
    for n in notices:
        assert f"`ETooL::{n}`" in sensor_md, n
    families = re.findall(r"register_(counter|gauge)_family\(.*?\$name=\"(\w+)\"", scripts["metrics.zeek"], re.S)
    assert len(families) == 6
    for kind, name in families:
        prom = f"zeek_{name}" + ("_total" if kind == "counter" else "")
        assert f"`{prom}`" in sensor_md, prom
