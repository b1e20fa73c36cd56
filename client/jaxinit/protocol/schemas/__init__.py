"""JSON Schemas (draft-07) of the model description language and of plans, shipped with the package.

- ``model-description.schema.json``: a whole model, as ``POST /v1/models/init``'s
  ``"model"``, gRPC ``InitModel``, ``Client.init_model`` and ``jaxinit model FILE`` take
  it: a module (an object with a ``"type"``) or the raw form ``{"params": [...]}``.
- ``plan.schema.json``: the raw form alone, which is what ``jaxinit.flax.export`` and
  ``jaxinit export`` write (each parameter with its key as steps from the root key). It is
  the description's ``plan`` definition with what it refers to (:func:`plan_schema`), so
  the two cannot drift; each file stands alone (no reference leaves it).

The server serves both at ``GET /v1/schemas/{name}``. The model expansion
(``jaxinit.protocol.expansion``, the server's parser) is the authority: it also checks
what a schema cannot say (divisibility, initializer arguments, key limits, name clashes),
and a test holds the schema to never refuse what it accepts. The client validates every
description with the schema before sending it (:func:`check`, with ``fastjsonschema``): a
mistake is an :class:`InvalidArgument` naming its JSON path, without a round trip.

>>> SCHEMAS
('model-description.schema.json', 'plan.schema.json')
>>> check({"type": "Dense", "in_features": 784, "featurs": 256})
Traceback (most recent call last):
    ...
jaxinit.protocol.errors.InvalidArgument: model: 'features' is required; unknown field(s) ['featurs'] for Dense; \
Did you mean features, in_features? (the model-description schema)
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import reprlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jaxinit.protocol.errors import InvalidArgument, did_you_mean

__all__ = ["DESCRIPTION", "MEDIA_TYPE", "PLAN", "SCHEMAS", "check", "load", "plan_schema", "text", "validator"]

DESCRIPTION = "model-description.schema.json"
PLAN = "plan.schema.json"
SCHEMAS = (DESCRIPTION, PLAN)
MEDIA_TYPE = "application/schema+json"

_SHOWN = reprlib.Repr()  # a caller's value in a message, bounded whatever its size
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxdict = 6
_SHOWN.maxlevel = 2


@functools.cache
def text(name: str) -> str:
    """The schema file ``name`` (one of :data:`SCHEMAS`) as shipped.

    Raises:
        KeyError: no schema has that name.
    """
    if name not in SCHEMAS:
        raise KeyError(f"no schema {name!r};{did_you_mean(name, SCHEMAS)} the schemas: {', '.join(SCHEMAS)}")
    return importlib.resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` as a dict (a fresh copy)."""
    loaded: dict[str, Any] = json.loads(text(name))
    return loaded


def plan_schema(description: Mapping[str, Any]) -> dict[str, Any]:
    """``plan.schema.json`` as derived from the description schema: its ``plan`` definition
    at the root, with every definition that refers to, and no other."""
    definitions = description["definitions"]
    needed: list[str] = []
    pending = ["plan"]
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.append(name)
            pending.extend(_refs(definitions[name]))
    return {
        "$schema": description["$schema"],
        "title": "jaxinit plan (the raw form of a model description)",
        "description": "What jaxinit.flax.export and jaxinit export write, and the raw form of a model description: "
        "every parameter listed with its path, initializer, shape and dtype, and in an exported plan its key as steps "
        "from the root key. Derived from model-description.schema.json (its plan definition). docs/models.md "
        "describes the language.",
        "allOf": [{"$ref": "#/definitions/plan"}],
        "definitions": {name: definitions[name] for name in sorted(needed)},
    }


def _refs(node: Any) -> Iterator[str]:
    """The definitions ``node`` refers to (``#/definitions/NAME``), at any depth."""
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            yield ref.removeprefix("#/definitions/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


@functools.cache
def validator(name: str = DESCRIPTION) -> Callable[[Any], Any] | None:
    """A compiled validator of the schema ``name`` (``fastjsonschema``), or None where
    fastjsonschema is not installed (an install without the client's dependencies)."""
    try:
        import fastjsonschema
    except ImportError:
        return None
    compiled: Callable[[Any], Any] = fastjsonschema.compile(load(name))
    return compiled


def check(document: Any, name: str = DESCRIPTION, *, where: str = "model") -> bool:
    """Validate ``document`` (JSON data) against the schema ``name``.

    Returns:
        True when it was validated; False where fastjsonschema is not installed.

    Raises:
        InvalidArgument: naming the JSON path of the first problem (``model.children[1]``)
            and what is wrong there.
    """
    checker = validator(name)
    if checker is None:
        return False
    import fastjsonschema

    try:
        checker(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        place = where + str(exc.name).removeprefix("data")
        raise InvalidArgument(f"{place}: {_said(exc, load(name))} (the {name.split('.')[0]} schema)") from None
    except RecursionError:  # far deeper than the parser's limit, which refuses it too
        raise InvalidArgument(f"{where}: the description nests too deeply to check") from None
    return True


def _said(exc: Any, schema: Mapping[str, Any]) -> str:
    """What is wrong, in the words the server's parser uses, the caller's value quoted short."""
    rule, value, definition = exc.rule, exc.value, exc.definition
    if not isinstance(definition, Mapping):
        definition = {}
    if rule in ("required", "additionalProperties") and isinstance(value, Mapping):
        said: list[str] = []
        if rule == "required":
            missing = [k for k in exc.rule_definition if k not in value]
            said.append(f"{_SHOWN.repr(missing[0] if missing else exc.rule_definition)} is required")
        fields = definition.get("properties", {})
        known = sorted(k for k in fields if k != "rng_streams" or exc.name == "data")
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown or rule == "additionalProperties":
            hint = did_you_mean(unknown[0], known) if len(unknown) == 1 else ""
            what = f" for {value['type']}" if isinstance(value.get("type"), str) else ""
            said.append(f"unknown field(s) {_SHOWN.repr(unknown)}{what};{hint}")
            if rule == "additionalProperties":
                said[-1] += f" its fields: {', '.join(known)}"
        return "; ".join(said).rstrip(";")
    field = re.sub(r"\[\d+\]$", "", str(exc.name)).rsplit(".", 1)[-1]  # the field the value is in
    if rule in ("enum", "anyOf", "oneOf"):
        choices = [c for c in _choices(exc.rule_definition, schema) if c]
        if choices and isinstance(value, str):
            hint = did_you_mean(value, choices)
            return f"'{field}' is one of {', '.join(choices)}, got {_SHOWN.repr(value)};{hint}".rstrip(";")
        if rule == "enum":
            return f"'{field}' is one of {', '.join(map(repr, exc.rule_definition))}, got {_SHOWN.repr(value)}"
        expected = definition.get("description") or "valid by one of its forms"
        return f"must be {expected[0].lower()}{expected[1:].rstrip('.')}, got {_SHOWN.repr(value)}"
    if rule == "type":
        return f"must be {_types(exc.rule_definition)}, got {_SHOWN.repr(value)}"
    if rule in ("minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength"):
        bound = "at least" if rule.startswith("min") else "at most"
        unit = {"Items": " item", "Length": " character"}.get(rule[3:], "")
        unit += "s" if unit and exc.rule_definition != 1 else ""
        return f"must be {bound} {exc.rule_definition}{unit}, got {_SHOWN.repr(value)}"
    if rule == "not":
        why = definition.get("description")
        return "is not allowed here" + (f": {why}" if why else "")
    rest = re.sub(r"^\S*\s*", "", str(exc.message))  # fastjsonschema's, less the path it starts with
    return f"{rest[:300]}, got {_SHOWN.repr(value)}"


def _choices(alternatives: Any, schema: Mapping[str, Any], depth: int = 0) -> list[str]:
    """The strings an enum, or the alternatives of an anyOf/oneOf, allow (references followed)."""
    if depth > 8:
        return []
    if isinstance(alternatives, list) and all(not isinstance(a, Mapping) for a in alternatives):
        return [a for a in alternatives if isinstance(a, str)]  # an enum's values
    found: list[str] = []
    for alternative in alternatives if isinstance(alternatives, list) else [alternatives]:
        if not isinstance(alternative, Mapping):
            continue
        ref = alternative.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            alternative = schema["definitions"][ref.removeprefix("#/definitions/")]
        if "enum" in alternative:
            found += [c for c in alternative["enum"] if isinstance(c, str)]
        for key in ("anyOf", "oneOf"):
            if key in alternative:
                found += _choices(alternative[key], schema, depth + 1)
    return list(dict.fromkeys(found))


def _types(value: Any) -> str:
    names = {"integer": "an int", "number": "a number", "string": "a string", "boolean": "true or false"}
    names.update({"array": "a list", "object": "an object", "null": "null"})
    return " or ".join(names.get(v, str(v)) for v in ([value] if isinstance(value, str) else value))
