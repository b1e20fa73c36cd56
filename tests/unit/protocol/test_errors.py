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


def test_a_long_message_is_cut_saying_how_long_it_was() -> None:
    error = _errors.InvalidArgument("x" * 100_000)
    assert len(error.message) <= _errors.MAX_MESSAGE and str(error) == error.message
    assert error.message.endswith("... [100000 characters, cut]")
    assert _errors.InvalidArgument("short").message == "short"
    assert _errors.InvalidArgument(42).message == "42"  # type: ignore[arg-type]


def test_a_subclass_maps_as_its_nearest_entry() -> None:
    class Local(_errors.TooLarge):
        pass

    assert _errors.mapping_for(Local("x")) == _errors.ERROR_TABLE[_errors.TooLarge]
    assert _errors.mapping_for(_errors.JaxinitError("x")) == _errors.ERROR_TABLE[_errors.InternalError]
    assert _errors.mapping_for(_errors.Interrupted("x")).grpc_code == "UNAVAILABLE"


def test_retryable_errors_carry_what_a_retry_needs() -> None:
    overloaded = _errors.Overloaded("busy", retry_after=1.5)
    assert overloaded.retry_after == 1.5 and _errors.Overloaded("busy").retry_after is None
    interrupted = _errors.Interrupted("broke", partial="the elements so far")
    assert interrupted.partial == "the elements so far" and isinstance(interrupted, _errors.ServerUnavailable)


def test_retry_after_is_delay_seconds_within_an_hour() -> None:
    assert _errors.retry_after_seconds("2") == 2.0
    assert _errors.retry_after_seconds("0.25") == 0.25
    assert _errors.retry_after_seconds("3600") == 3600.0
    for value in (None, "", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "3601", "nan", "inf"):
        assert _errors.retry_after_seconds(value) is None, value


def test_a_type_name_wins_over_a_status_and_unknown_ones_fall_back() -> None:
    assert type(_errors.error_from_wire("x", type_name="JaxError", http_status=500)) is jaxinit.JaxError
    assert type(_errors.error_from_wire("x", type_name="NoSuchError", http_status=429)) is jaxinit.Overloaded
    assert type(_errors.error_from_wire("x", http_status=418)) is jaxinit.InvalidArgument  # a 4xx: the caller's
    assert type(_errors.error_from_wire("x", http_status=599)) is jaxinit.InternalError
    assert type(_errors.error_from_wire("x", grpc_code="DEADLINE_EXCEEDED")) is jaxinit.ServerUnavailable
    assert type(_errors.error_from_wire("x", grpc_code="ABORTED")) is jaxinit.InternalError
    assert type(_errors.error_from_wire("x")) is jaxinit.InternalError
    # a proxy's 502/504 is the server being unreachable (retryable), not the protocol broken
    assert type(_errors.error_from_wire("x", http_status=502)) is jaxinit.ServerUnavailable
