"""A description's type names are strings: a list or an object where one is expected is
refused with a message naming the field (not a TypeError, which a server answers 500)."""

from __future__ import annotations

from typing import Any

import pytest

from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.model import expand


@pytest.mark.parametrize("bad", [[], ["Dense"], {"a": 1}, 3])
def test_a_type_that_is_not_a_string_is_refused_by_name(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"'type' must be a string"):
        expand({"type": bad})
    with pytest.raises(InvalidArgument, match=r"'type' must be a string"):
        expand({"type": "Module", "children": [{"type": bad}]})


@pytest.mark.parametrize("bad", [[], ["Block"], {"a": 1}, 3])
def test_a_modules_class_that_is_not_a_string_is_refused_by_name(bad: Any) -> None:
    description = {"type": "Module", "class": bad, "children": [{"type": "Dense", "in_features": 2, "features": 2}]}
    with pytest.raises(InvalidArgument, match=r"'class' must be a string"):
        expand(description)
