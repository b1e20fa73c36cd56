"""The supported JAX versions (deploy/jax_versions.py) against the install lines, and the
refusals of what the installed JAX lacks (core/_jax_compat.py). Cheap: no venv is built
here (tests/integration/test_jax_versions.py, release tier, builds them)."""

from __future__ import annotations

import re
import sys

import jax
import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from helpers import ROOT
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.keys import KEY_IMPLS, Key
from jaxinit_server.core import GenerateParams, Limits, _jax_compat
from jaxinit_server.core.request import PrngDefaults, resolve

sys.path.insert(0, str(ROOT / "deploy"))
import jax_versions  # noqa: E402


def _jax_range() -> SpecifierSet:
    found = re.search(r'^\s*"jax([<>=!~][^"]*)",', (ROOT / "server" / "pyproject.toml").read_text(), re.M)
    assert found, "server/pyproject.toml names no jax range"
    return SpecifierSet(found.group(1))


def test_the_server_admits_every_supported_version_and_the_default_is_the_newest() -> None:
    supported = [Version(v) for v in jax_versions.SUPPORTED]
    assert supported == sorted(supported) and jax_versions.SUPPORTED[-1] == jax_versions.DEFAULT
    assert all(v in _jax_range() for v in supported)
    # The default install (constraints.txt, this venv) is the newest supported version, and
    # nothing newer than its minor series is admitted unproven.
    assert re.search(rf"(?m)^jax=={re.escape(jax_versions.DEFAULT)}$", (ROOT / "constraints.txt").read_text())
    assert jax.__version__ == jax_versions.DEFAULT
    newest = supported[-1]
    assert Version(f"{newest.major}.{newest.minor + 1}.0") not in _jax_range()
    # One release before the 0.5.0 flip of jax_threefry_partitionable, at least.
    assert supported[0] < Version("0.5.0")


def test_a_pool_installs_the_default_line_with_jax_pinned() -> None:
    text = (ROOT / "constraints.txt").read_text()
    pinned = jax_versions.constraints_for("0.4.38", text)
    assert "jax==0.4.38\n" in pinned and "jaxlib==0.4.38\n" in pinned
    changed = [line for line in zip(text.splitlines(), pinned.splitlines(), strict=True) if line[0] != line[1]]
    assert [old.split("==")[0] for old, _ in changed] == ["jax", "jaxlib"]
    with pytest.raises(ValueError, match="jaxlib"):
        jax_versions.constraints_for("0.4.38", "jax==0.10.2\n")
    assert [jax_versions.pool_name(v) for v in ("0.4.38", "0.10.2")] == ["jax-0-4-38", "jax-0-10-2"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG JAX_VERSION" in dockerfile  # the image of a pool: the same rule, in sed


def test_this_jax_has_everything_the_protocol_names() -> None:
    assert all(_jax_compat.unsupported(dtype=name) is None for name in DTYPE_NAMES)
    assert all(_jax_compat.unsupported(impl=impl) is None for impl in KEY_IMPLS)
    assert jax.__version__ == _jax_compat.JAX_VERSION


def test_what_the_jax_lacks_is_refused_naming_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """As an older JAX (0.4.38 has threefry2x32, rbg and unsafe_rbg, and no float8_e8m0fnu)."""
    monkeypatch.setattr(_jax_compat, "KEY_IMPLS", frozenset({"threefry2x32", "rbg", "unsafe_rbg"}))
    monkeypatch.setattr(_jax_compat, "JAX_VERSION", "0.4.38")
    monkeypatch.setattr(_jax_compat, "_dtype_known", lambda name: name != "float8_e8m0fnu")
    defaults = PrngDefaults(threefry_partitionable=False, enable_x64=False)
    with pytest.raises(InvalidArgument, match=r"key implementation philox4x32 is not in JAX 0\.4\.38"):
        resolve(GenerateParams("normal", (2, 2), key=Key(seed=1, impl="philox4x32")), Limits(), defaults)
    with pytest.raises(InvalidArgument, match=r"dtype float8_e8m0fnu is not in JAX 0\.4\.38"):
        resolve(GenerateParams("normal", (2, 2), dtype="float8_e8m0fnu", key=Key(seed=1)), Limits(), defaults)
    # A keyless initializer takes no key, so no implementation is asked of JAX.
    assert resolve(GenerateParams("zeros", (2,), dtype="float32"), Limits(), defaults).key is None
    assert resolve(GenerateParams("normal", (2,), key=Key(seed=1, impl="rbg")), Limits(), defaults).key is not None


def test_the_bridges_are_jaxs_own_on_this_version() -> None:
    """enable_x64 and the monitoring unregisters: the public ones where JAX has them."""
    with _jax_compat.enable_x64(True):
        assert jax.numpy.zeros((), "float64").dtype == jax.numpy.float64
    with _jax_compat.enable_x64(False):
        assert jax.numpy.zeros((), "float64").dtype == jax.numpy.float32
    seen: list[str] = []

    def listen(event: str, **_: object) -> None:
        seen.append(event)

    jax.monitoring.register_event_listener(listen)
    jax.monitoring.record_event("/jaxinit/test")
    _jax_compat.unregister_event_listener(listen)
    jax.monitoring.record_event("/jaxinit/test")
    assert seen == ["/jaxinit/test"]
