"""Version and backend pins, decided once in request resolution: the match rule, the
refusal naming both versions, a pin's form, and the header that must agree with the field."""

from __future__ import annotations

import pytest

from jaxinit.protocol.errors import ERROR_TABLE, InvalidArgument, VersionMismatch
from jaxinit.protocol.keys import Key
from jaxinit.protocol.provenance import version_matches
from jaxinit_server.core.model_init import InitModelParams, resolve_model
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, check_pin, pinned, resolve

SERVED = PrngDefaults(threefry_partitionable=True, enable_x64=False, jax_version="0.10.2", backend="cpu")


@pytest.mark.parametrize(
    ("pin", "version", "matches"),
    [
        ("0.10.2", "0.10.2", True),
        ("0.10", "0.10.2", True),
        ("0", "0.10.2", True),
        ("0.1", "0.10.2", False),
        ("0.10.2", "0.10", False),
        ("0.10.20", "0.10.2", False),
        ("0.4.38", "0.10.2", False),
        ("", "0.10.2", False),
        ("0.10.2", "0.10.2.dev1", True),
    ],
)
def test_the_match_rule_is_exact_or_a_prefix_on_a_dot_boundary(pin: str, version: str, matches: bool) -> None:
    assert version_matches(pin, version) is matches


def test_a_mismatch_is_412_failed_precondition_naming_both_versions_and_backends() -> None:
    assert (ERROR_TABLE[VersionMismatch].http_status, ERROR_TABLE[VersionMismatch].grpc_code) == (
        412,
        "FAILED_PRECONDITION",
    )
    with pytest.raises(VersionMismatch) as caught:
        check_pin("0.4.38", None, SERVED)
    assert "JAX 0.4.38" in caught.value.message and "JAX 0.10.2 on backend cpu" in caught.value.message
    with pytest.raises(VersionMismatch, match="pinned to JAX 0.10 on backend gpu; this server runs JAX 0.10.2"):
        check_pin("0.10", "gpu", SERVED)
    check_pin("0.10", "cpu", SERVED)
    check_pin(None, None, PrngDefaults(True, False))  # unpinned: any server
    with pytest.raises(VersionMismatch, match=r"\(unknown\)"):
        check_pin("0.10.2", None, PrngDefaults(True, False))  # a server that does not know its version answers no pin


@pytest.mark.parametrize("pin", ["local", "0.10; rm", 10, "x" * 65, " "])
def test_a_pin_that_is_not_a_version_is_invalid(pin: object) -> None:
    with pytest.raises(InvalidArgument):
        check_pin(pin, None, SERVED)


def test_the_header_and_the_field_must_agree() -> None:
    assert pinned(None, None) is None and pinned("0.10", "0.10") == "0.10"
    assert pinned("", "0.10") == "0.10" and pinned("0.10", "") == "0.10"
    with pytest.raises(InvalidArgument, match="x-jaxinit-jax-version"):
        pinned("0.10.2", "0.4.38")


def test_resolution_checks_the_pin_first_for_tensors_and_models() -> None:
    # another version may accept what this one refuses: the mismatch is what the caller must hear
    with pytest.raises(VersionMismatch):
        resolve(GenerateParams("no_such_initializer", [2], jax_version="0.4.38"), Limits(), SERVED)
    with pytest.raises(VersionMismatch):
        resolve_model(InitModelParams({"type": "Nope"}, None, jax_version="0.4.38"), Limits(), SERVED)
    same = resolve(GenerateParams("lecun_normal", [2, 2], key=Key(seed=0), jax_version="0.10"), Limits(), SERVED)
    plain = resolve(GenerateParams("lecun_normal", [2, 2], key=Key(seed=0)), Limits(), SERVED)
    assert same.canonical == plain.canonical  # a pin is a precondition: the request's identity is unchanged
