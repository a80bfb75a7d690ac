"""Static checks of the Zeek side of etool (no zeek binary needed).

* every .zeek file in the repository parses (zeek-format from zeekscript),
* zkg.meta is valid and complete,
* every btest uses a trace that exists,
* the btests themselves run only where `zeek` is on PATH.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTING = ROOT / "zeek-plugin" / "testing"
SKIP_DIRS = {".git", ".tmp", "node_modules", "build", ".pytest_cache"}


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


def test_zeek_files_exist():
    names = {p.relative_to(ROOT).as_posix() for p in zeek_files()}
    assert "zeek-plugin/scripts/__load__.zeek" in names
    assert "zeek-plugin/scripts/main.zeek" in names


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
