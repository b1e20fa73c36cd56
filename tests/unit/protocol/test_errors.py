from __future__ import annotations

import grpc

import jaxinit
from jaxinit.protocol import errors as _errors


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_every_domain_error_is_in_the_one_table() -> None:
    assert _all_subclasses(_errors.JaxinitError) == set(_errors.ERROR_TABLE)


def test_table_entries_are_real_codes() -> None:
    for cls, mapping in _errors.ERROR_TABLE.items():
        assert grpc.StatusCode[mapping.grpc_code]
        assert 400 <= mapping.http_status < 600, cls
    # Bad input is never a 5xx.
    for cls in (
        _errors.InvalidArgument,
        _errors.UnknownDtype,
        _errors.JaxError,
        _errors.UnknownInitializer,
        _errors.TooLarge,
        _errors.NotAcceptable,
    ):
        assert _errors.ERROR_TABLE[cls].http_status < 500


def test_errors_round_trip_by_type_name() -> None:
    for cls in _errors.ERROR_TABLE:
        error = _errors.error_from_wire("m", type_name=cls.__name__, http_status=418)
        assert type(error) is cls and error.message == "m"


def test_errors_fall_back_to_status() -> None:
    assert type(_errors.error_from_wire("x", http_status=404)) is jaxinit.UnknownInitializer
    assert type(_errors.error_from_wire("x", grpc_code="RESOURCE_EXHAUSTED")) is jaxinit.TooLarge
    assert type(_errors.error_from_wire("x", http_status=500)) is jaxinit.InternalError
