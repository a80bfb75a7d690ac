"""deploy/etool-sensor.service: the systemd unit shipped in the repository and the wheel."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "etool-sensor.service"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_is_the_one_in_the_wheel_and_asks_for_the_hardening_the_docs_promise():
    shipped = importlib.resources.files("etool_sensor").joinpath("data/etool-sensor.service").read_text()
    assert UNIT.read_text() == shipped
    d = _directives(shipped)
    assert d["ExecStart"][0].split()[1:3] == ["serve", "--config"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and d["DynamicUser"] == ["yes"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["yes"]
    # it must still reach Zeek's WebSocket port and serve metrics: TCP over IPv4/IPv6 stays allowed
    assert {"AF_INET", "AF_INET6"} <= set(d["RestrictAddressFamilies"][0].split())
    assert "PrivateNetwork" not in d and "IPAddressDeny" not in d


def test_systemd_analyze_verifies_the_unit(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # the unit names /opt/etool/bin/etool-sensor; verify checks that ExecStart is executable, so point it at
    # this interpreter's etool-sensor (nothing else in the unit changes)
    wrapper = tmp_path / "etool-sensor"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m etool_sensor "$@"\n')
    wrapper.chmod(0o755)
    text = UNIT.read_text().replace("/opt/etool/bin/etool-sensor", str(wrapper))
    assert str(wrapper) in text
    unit = tmp_path / "etool-sensor.service"
    unit.write_text(text)
    p = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    # verify exits 0 on unknown keys and bad values too; it names them on stderr
    assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), (p.returncode, p.stdout, p.stderr)


def test_the_units_command_line_parses():
    """ExecStart's arguments are ones `etool-sensor serve` accepts (--help exits 0 after parsing them)."""
    args = _directives(UNIT.read_text())["ExecStart"][0].split()[1:]
    p = subprocess.run([sys.executable, "-m", "etool_sensor", *args, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "--log-format" in p.stdout, p.stderr
