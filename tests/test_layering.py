"""The floor plan, checked: no import cycles (function-local imports included) and the runtime (classify,
serve) never imports the lab (training, evaluation, export). docs/architecture.md draws the layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ("etool_sensor.train", "etool_sensor.lab", "etool_sensor.export")
#: directory -> the package name it installs as (setup.py maps the checkout's export/ to etool_sensor.export)
PACKAGES = {"etool_sensor": "etool_sensor", "export": "etool_sensor.export"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for p in (ROOT / folder).rglob("*.py"):
            parts = [name] + list(p.relative_to(ROOT / folder).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        deps: set[str] = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in n.names]
            else:
                continue
            for x in names:
                while x and x not in mods:
                    x = x.rpartition(".")[0]
                if x and x != m and not m.startswith(x + "."):  # a package's own parents are not edges
                    deps.add(x)
        graph[m] = deps
    return graph


def _is_lab(m: str) -> bool:
    return any(m == lab or m.startswith(lab + ".") for lab in LAB)


def test_no_import_cycles() -> None:
    graph = import_graph()
    for start in graph:  # depth-first search for a path back to `start`
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                assert dep != start, "import cycle: " + " -> ".join(path + [dep])
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))


def test_runtime_never_imports_the_lab() -> None:
    graph = import_graph()
    for m, deps in graph.items():
        if not _is_lab(m):
            assert not [d for d in deps if _is_lab(d)], f"{m} imports the lab: {sorted(d for d in deps if _is_lab(d))}"


def _in(m: str, pkg: str) -> bool:
    return m == pkg or m.startswith(pkg + ".")


def test_package_arrows_point_one_way() -> None:
    """Between packages, not only modules: evaluation (lab/) uses training (train/), never the reverse; the
    core modules beside them do not reach into the daemon (sensor/)."""
    graph = import_graph()
    for m, deps in graph.items():
        if _in(m, "etool_sensor.train"):
            assert not [d for d in deps if _in(d, "etool_sensor.lab")], f"{m} imports lab/"
        entry = m in ("etool_sensor.cli", "etool_sensor.bench")  # the commands start the daemon
        if not _in(m, "etool_sensor.sensor") and not _is_lab(m) and not entry:
            assert not [d for d in deps if _in(d, "etool_sensor.sensor")], f"{m} imports sensor/"


def test_the_check_sees_function_local_imports(tmp_path) -> None:
    """The graph holds imports inside functions too (they are how cycles hide)."""
    graph = import_graph()
    assert "etool_sensor.parallel" in graph["etool_sensor.cli"]  # cli imports parallel inside classify_main


def test_bench_never_imports_the_tests() -> None:
    """bench/ runs from a bare checkout and against older ones (--roots): what it shares with the tests
    (bench/replay.py) lives on its side."""
    bad = []
    for p in (ROOT / "bench").glob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            bad += [f"{p.name}: {x}" for x in names if x == "tests" or x.startswith("tests.")]
    assert not bad, bad
