"""Shared test fixtures (the shared helpers are in tests/support/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import NDPI, SHARED


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present")
    return SHARED


@pytest.fixture(scope="session")
def quick_package(tmp_path_factory):
    """`etool-sensor train --quick --no-teacher --no-forest` on real captures: the student package
    tests/test_model.py, tests/test_fuse.py and tests/test_hybrid.py check (trained once per session)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    if not (NDPI / "labels.csv").is_file():
        pytest.skip("shared/data not present")
    from etool_sensor.train.cli import main

    out = tmp_path_factory.mktemp("pkg") / "model"
    # one torch thread whatever the load: the package's weights (and its int8 parity) do not depend on it
    old = os.environ.get("ETOOL_TORCH_THREADS")
    os.environ["ETOOL_TORCH_THREADS"] = "1"
    try:
        rc = main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--out", str(out), "--quick",
                   "--no-teacher", "--no-forest", "--quick-pcaps", "30", "--name", "quick-test", "--version", "0.0.1"])
    finally:
        if old is None:
            os.environ.pop("ETOOL_TORCH_THREADS", None)
        else:
            os.environ["ETOOL_TORCH_THREADS"] = old
    assert rc == 0
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a freshly trained package is an integration test: it gets the `slow` marker, so
    `-m "not slow"` runs the unit tests without training anything."""
    for item in items:
        if "quick_package" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
