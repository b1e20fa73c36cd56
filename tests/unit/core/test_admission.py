"""Admission's bookkeeping: the server's caps, each caller's share, tickets given back."""

from __future__ import annotations

import gc

import pytest

from jaxinit.protocol.errors import Overloaded
from jaxinit_server.core.admission import Admission


def test_admission_accounts_each_caller() -> None:
    """The bookkeeping: shares by caller, the server's caps on top, a caller holding nothing is
    admitted whatever its request's size, and everything returns to zero."""
    admission = Admission(4, 100, max_caller_streams=2, max_caller_bytes=30)
    a1 = admission.admit(20, "a")
    with pytest.raises(Overloaded, match="--max-caller-bytes"):
        admission.admit(20, "a")
    a2 = admission.admit(10, "a")
    with pytest.raises(Overloaded, match="--max-caller-streams"):
        admission.admit(0, "a")
    b1 = admission.admit(60, "b")  # over its share, but it holds nothing
    with pytest.raises(Overloaded, match="bytes in flight"):
        admission.admit(20, "c")  # the server's cap: 90 + 20 > 100
    anonymous = admission.admit(5)  # no caller: only the server's caps
    assert (admission.streams, admission.bytes) == (4, 95)
    assert admission.callers == {"a": [2, 30], "b": [1, 60]}
    with pytest.raises(Overloaded, match="its limit"):
        admission.admit(0, "d")  # the server's stream cap
    for ticket in (a1, a2, b1, anonymous):
        ticket.release()
        ticket.release()  # idempotent
    assert (admission.streams, admission.bytes, admission.callers) == (0, 0, {})


def test_a_ticket_nobody_released_is_given_back_when_collected() -> None:
    admission = Admission(1, 100, max_caller_streams=1)
    admission.admit(10, "a")  # dropped at once
    gc.collect()
    assert (admission.streams, admission.bytes, admission.callers) == (0, 0, {})


def test_one_request_over_the_byte_cap_alone_is_admitted_only_when_nothing_else_is() -> None:
    admission = Admission(4, 100)
    big = admission.admit(150)  # the size limits, not admission, decide what is too large
    with pytest.raises(Overloaded, match="bytes in flight"):
        admission.admit(1)
    big.release()
    admission.admit(1).release()


def test_a_held_ticket_keeps_its_share_until_the_last_hold_lets_go() -> None:
    """A generation shared with other callers outlives the stream of the caller who paid for
    it: its ticket's bytes stay counted until the generation ends, then go back once."""
    admission = Admission(max_streams=4, max_bytes=100)
    ticket = admission.admit(60, "a")
    let_go = ticket.hold()
    ticket.release()  # the paying caller's stream ended
    assert (admission.streams, admission.bytes) == (1, 60)
    with pytest.raises(Overloaded):
        admission.admit(50, "b")
    let_go()
    let_go()  # idempotent
    assert (admission.streams, admission.bytes, admission.callers) == (0, 0, {})
    ticket.release()
    assert (admission.streams, admission.bytes) == (0, 0)
