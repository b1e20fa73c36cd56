"""The server's identity: the installed JAX's versions, backend and default PRNG settings,
which every answer's provenance and every cache key carry."""

from __future__ import annotations

import dataclasses

import jax
import jaxlib.version

import jaxinit_server
from jaxinit.protocol.provenance import Provenance
from jaxinit_server.core.provenance import ServerIdentity, server_identity
from jaxinit_server.core.request import PrngDefaults


def test_the_identity_is_the_installed_jax() -> None:
    identity = server_identity()
    assert identity.jaxinit_version == jaxinit_server.__version__
    assert identity.jax_version == jax.__version__
    assert identity.jaxlib_version == jaxlib.version.__version__
    assert identity.backend == jax.default_backend()
    assert identity.device_kind == jax.devices()[0].device_kind
    assert identity.defaults == PrngDefaults(
        threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
        enable_x64=bool(jax.config.jax_enable_x64),
        jax_version=jax.__version__,
        backend=jax.default_backend(),
    )


def test_the_defaults_follow_jax_config() -> None:
    with jax.enable_x64(True):
        assert server_identity().defaults.enable_x64 is True
    with jax.threefry_partitionable(False):
        assert server_identity().defaults.threefry_partitionable is False


def test_as_dict_is_what_a_provenance_takes() -> None:
    identity = ServerIdentity("1", "0.10.0", "0.10.0", "cpu", "cpu", PrngDefaults(True, False))
    plain = identity.as_dict()
    assert plain == {
        "jaxinit_version": "1",
        "jax_version": "0.10.0",
        "jaxlib_version": "0.10.0",
        "backend": "cpu",
        "device_kind": "cpu",
    }
    assert set(plain) <= {f.name for f in dataclasses.fields(Provenance)}
    assert Provenance(**plain).jax_version == "0.10.0"


def test_the_fingerprint_names_everything_but_the_request_the_bytes_depend_on() -> None:
    base = ServerIdentity("1", "0.10.0", "0.10.1", "cpu", "cpu", PrngDefaults(True, False))
    assert base.fingerprint == "0.10.0/0.10.1/cpu/cpu"
    changes = [("jax_version", "0.9"), ("jaxlib_version", "0.9"), ("backend", "gpu"), ("device_kind", "H100")]
    for field, value in changes:
        assert dataclasses.replace(base, **{field: value}).fingerprint != base.fingerprint
    # The defaults are in every canonical request already; the jaxinit version is no input of JAX's.
    assert dataclasses.replace(base, jaxinit_version="2", defaults=PrngDefaults(False, True)).fingerprint == (
        base.fingerprint
    )
