"""Signatures with real annotations for the public API.

The package's modules postpone evaluating annotations (``from __future__ import
annotations``), so ``inspect.signature`` and ``help()`` would show each one as a string
(``key: 'Any'``). :func:`resolve` evaluates them once, in the module that wrote them, when a
public name is first loaded (``jaxinit.__getattr__``); an annotation naming what only a type
checker imports stays as written. A generic base's type variables become each subclass's
own types (``Client.generate`` returns ``Tensor``, ``AsyncClient.generate`` a coroutine of one).
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from typing import Any

__all__ = ["resolve"]

_SPECIAL = ("__init__", "__call__")


def resolve(obj: Any) -> None:
    """Give ``obj`` (a function or class; a class's public methods) real annotations."""
    if isinstance(obj, type):
        _resolve_class(obj)
    elif inspect.isfunction(obj):
        _resolve_function(obj)


def _resolve_class(cls: type) -> None:
    if cls.__dict__.get("_annotations_resolved"):
        return
    typevars = _typevars(cls)
    for klass in reversed(cls.__mro__[:-1]):
        for name, member in list(vars(klass).items()):
            if name.startswith("_") and name not in _SPECIAL:
                continue
            function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            if not inspect.isfunction(function):
                continue
            _resolve_function(function)
            if klass is not cls and typevars and name not in vars(cls):
                specialised = _specialised(function, typevars)
                if specialised is not None:
                    setattr(cls, name, specialised)
    type.__setattr__(cls, "_annotations_resolved", True)


def _resolve_function(function: Any) -> None:
    signature = function.__signature__ if "__signature__" in vars(function) else inspect.signature(function)
    namespace = dict(getattr(function, "__globals__", {}))

    def real(annotation: Any) -> Any:
        if not isinstance(annotation, str):
            return annotation
        try:
            return eval(annotation, namespace)  # noqa: S307 - the package's own annotation text
        except Exception:  # a name only type checkers import: left as written
            return annotation

    parameters = [p.replace(annotation=real(p.annotation)) for p in signature.parameters.values()]
    function.__signature__ = signature.replace(
        parameters=parameters, return_annotation=real(signature.return_annotation)
    )


def _typevars(cls: type) -> dict[Any, Any]:
    """A generic base's type variables -> what ``cls`` binds them to."""
    bound: dict[Any, Any] = {}
    namespace = vars(sys.modules[cls.__module__])
    for base in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        parameters = getattr(origin, "__parameters__", ())
        for variable, value in zip(parameters, typing.get_args(base), strict=False):
            if isinstance(value, typing.ForwardRef):
                value = _evaluated(value, namespace)
            elif isinstance(value, str):
                value = _evaluated(typing.ForwardRef(value), namespace)
            bound[variable] = value
    return bound


def _evaluated(ref: typing.ForwardRef, namespace: dict[str, Any]) -> Any:
    try:
        return eval(ref.__forward_arg__, dict(namespace))  # noqa: S307
    except Exception:
        return ref.__forward_arg__


def _ref(value: str | typing.ForwardRef) -> typing.ForwardRef:
    return value if isinstance(value, typing.ForwardRef) else typing.ForwardRef(value)


def _specialised(function: Any, typevars: dict[Any, Any]) -> Any:
    """A subclass's own copy of an inherited method whose return annotation is one of the
    base's type variables, annotated with what the subclass binds it to; None otherwise."""
    signature: inspect.Signature = function.__signature__
    returned = signature.return_annotation
    if returned not in typevars:
        return None
    value = typevars[returned]
    origin, args = typing.get_origin(value), typing.get_args(value)
    if origin is not None and any(isinstance(a, (str, typing.ForwardRef)) for a in args):
        namespace = vars(sys.modules[function.__module__])
        value = origin[
            tuple(_evaluated(_ref(a), namespace) if isinstance(a, (str, typing.ForwardRef)) else a for a in args)
        ]

    @functools.wraps(function)
    def method(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    method.__signature__ = signature.replace(return_annotation=value)  # type: ignore[attr-defined]
    return method
