"""Fuzzing the config loader: any file content ends in a Config or a one-line ConfigError, nothing else."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etool_sensor.config import Config, ConfigError, iter_options, load_config

KEYS = [k for k, _ in iter_options()]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.floats(allow_nan=True), max_size=3))


def nest(flat: dict[str, object]) -> dict:
    out: dict = {}
    for dotted, v in flat.items():
        d = out
        *parents, last = dotted.split(".")
        for p in parents:
            d = d.setdefault(p, {}) if isinstance(d.get(p, {}), dict) else {}
        d[last] = v
    return out


def _check(path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and str(path) in msg
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(KEYS + ["flow.bogus", "nope", "serve.tls.extra"]), scalars, max_size=6))
def test_typed_garbage_in_known_keys(tmp_path: Path, flat: dict) -> None:
    p = tmp_path / "etool.yaml"
    p.write_text(yaml.safe_dump(nest(flat), allow_unicode=True))
    _check(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=400))
def test_arbitrary_bytes(tmp_path: Path, blob) -> None:
    p = tmp_path / "etool.yaml"
    p.write_bytes(blob if isinstance(blob, bytes) else blob.encode("utf-8", "surrogatepass"))
    _check(p)


def test_yaml_bombs_and_tags_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "etool.yaml"
    for text in ("a: &a [*a, *a]\n",  # recursive alias
                 "flow: !!python/object/apply:os.system ['true']\n",
                 "lol: &x ['lol','lol']\nb: &y [*x,*x,*x,*x,*x,*x,*x,*x]\nc: [*y,*y,*y,*y,*y,*y,*y,*y]\n"):
        p.write_text(text)
        _check(p)
