"""Export a real Flax model's parameters as a jaxinit plan: run once where JAX and Flax
are installed, realise anywhere (any client, curl) with no JAX.

:func:`export` traces ``model.init`` shape-only (``jax.eval_shape``: no parameter is
made, so a 7-billion-parameter model exports on a laptop) and records, for every
parameter, its path, shape, dtype, the JAX initializer and arguments it was made with
(recognised from the call into ``jax.nn.initializers``; anything else is refused, naming
the parameter) and its key as steps from the root key (``fold_in`` of Flax's path hash,
and for ``nn.scan``-stacked layers a stack step). The plan is the raw form of a model
description with explicit keys::

    plan = jaxinit.flax.export(Transformer(cfg), jnp.zeros((1, 128), jnp.int32))
    client.init_model(plan, 0, layout="torch", path="init.safetensors")

The keys are steps from the root, so one plan serves every seed and both PRNG modes.
nnx (``mode="nnx"``): ``export(Model, mode="nnx", rng_streams=["default"])`` builds
``Model(nnx.Rngs(...))`` under ``nnx.eval_shape``, follows each stream's counts (forks by
Dropout and attention included) and matches every ``nnx.Param`` to the initializer call
that returned it; layers stacked by ``nnx.vmap``/``nnx.scan`` are refused (describe them
with :func:`jaxinit.models.Scan`).

Followed besides JAX's initializers: values that depend on no key (``jnp.ones(shape)`` as
HF's RMSNorm writes it, ``jnp.ones(s) * value``, ``nnx.Param(jnp.zeros(d))``): a broadcast
constant becomes ``zeros``/``ones``/``constant`` with the exact value, other arrays a
literal ``constant`` of at most ``max_literal`` elements; initializer arguments computed
with ``jnp``; ``nn.remat``/``nn.checkpoint``. Every parameter that cannot be exported is
listed in one ``InvalidArgument`` whose ``refused`` holds them all (path, shape, what made
it, why);
``partial=True`` returns the rest with that list in ``plan.refused``.

``jit=True`` records in the plan that its user initialises under ``jax.jit`` (most training
code does): the plan's default for :meth:`jaxinit.Client.init_model` (overridable per call).

JAX and Flax are imported only when :func:`export` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jaxinit.protocol.catalog import bind_arguments, lookup
from jaxinit.protocol.codec import dtype_name
from jaxinit.protocol.errors import MAX_MESSAGE, InvalidArgument
from jaxinit.protocol.keys import Step, step_json
from jaxinit.protocol.model import linen_fold_in

__all__ = ["Comparison", "Plan", "compare", "export"]

# A key-independent array that is not one value broadcast travels in the plan as a literal
# (a constant with a nested-list value) of at most this many elements, by default.
MAX_LITERAL = 4096

# The exporter patches JAX and Flax functions while it traces: one export at a time.
_EXPORTING = threading.Lock()

# JAX initializer (the function's qualified name in jax._src.nn.initializers) -> the
# registry name and the closure variables that are its factory's arguments.
_INITIALIZERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "variance_scaling.<locals>.init": (
        "variance_scaling",
        ("scale", "mode", "distribution", "in_axis", "out_axis", "batch_axis"),
    ),
    "normal.<locals>.init": ("normal", ("stddev",)),
    "uniform.<locals>.init": ("uniform", ("scale",)),
    "truncated_normal.<locals>.init": ("truncated_normal", ("stddev", "lower", "upper")),
    "orthogonal.<locals>.init": ("orthogonal", ("scale", "column_axis")),
    "delta_orthogonal.<locals>.init": ("delta_orthogonal", ("scale", "column_axis")),
    "constant.<locals>.init": ("constant", ("value",)),
    "zeros": ("zeros", ()),
    "ones": ("ones", ()),
}
# Flax module class -> {parameter: (PyTorch name, conversion)}: as jaxinit's own module
# types lay them out (see jaxinit.protocol.model.outputs).
_TORCH: dict[str, dict[str, tuple[str, str]]] = {
    "Dense": {"kernel": ("weight", "t"), "bias": ("bias", "")},
    "Conv": {"kernel": ("weight", "conv"), "bias": ("bias", "")},
    "DenseGeneral": {"kernel": ("weight", "flat_t"), "bias": ("bias", "flat")},
    "Embed": {"embedding": ("weight", "")},
    "LayerNorm": {"scale": ("weight", ""), "bias": ("bias", "")},
    "RMSNorm": {"scale": ("weight", "")},
    "GroupNorm": {"scale": ("weight", ""), "bias": ("bias", "")},
    "BatchNorm": {"scale": ("weight", ""), "bias": ("bias", "")},
}


class Plan(dict[str, Any]):
    """An exported plan: the raw form of a model description (``{"params": [...]}``, plus
    ``"jit": true`` when exported for a jitted init), JSON data as it is. ``refused``: the
    parameters left out of a partial export, each ``{"path", "shape", "dtype", "construct",
    "reason"}`` (empty when every parameter was followed)."""

    refused: list[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = []


def _export_refused(refused: list[dict[str, Any]], total: int) -> InvalidArgument:
    """The refusal of an export: an InvalidArgument naming the refused parameters (the paths
    first, then as many reasons as fit), every one in its ``refused`` attribute."""
    budget = MAX_MESSAGE - 160
    names = _fitting([f"{r['path']} ({r['construct']})" for r in refused], budget // 2, ", ")
    reasons = _fitting([f"{r['path']}: {r['reason']}" for r in refused], budget - len(names), "; ")
    error = InvalidArgument(
        f"{len(refused)} of {total} parameters cannot be exported exactly: {names}. Why: {reasons}. All in "
        ".refused; export(..., partial=True) (jaxinit export --partial) returns the others with this list"
    )
    # Not a class of its own: every JaxinitError class is one the wire carries (the error table).
    setattr(error, "refused", refused)  # noqa: B010
    return error


def _fitting(items: Sequence[str], budget: int, separator: str) -> str:
    """``items`` joined, as many as fit in ``budget`` characters (at least one), then how many more."""
    shown = [items[0][:budget]]
    for item in items[1:]:
        if sum(map(len, shown)) + len(separator) * len(shown) + len(item) > budget:
            break
        shown.append(item)
    more = len(items) - len(shown)
    return separator.join(shown) + (f"{separator}and {more} more" if more else "")


def export(
    module: Any,
    *sample_inputs: Any,
    mode: str = "linen",
    method: Any = None,
    jit: bool = False,
    partial: bool = False,
    max_literal: int = MAX_LITERAL,
    **kwargs: Any,
) -> Plan:
    """The plan of ``module``'s parameters (the raw form, explicit keys): what
    ``module.init(key, *sample_inputs, **kwargs)["params"]`` makes, for any key; for
    ``mode="nnx"``, what ``module(nnx.Rngs(...), **kwargs)`` holds as ``nnx.Param``
    (``rng_streams``: the Rngs' streams; the key is the ``params`` stream's, else
    ``default``'s).

    ``sample_inputs`` may be arrays or ``jax.ShapeDtypeStruct``\\ s (only their shapes and
    dtypes are used). The values come from :meth:`jaxinit.Client.init_model` with the
    plan and a root key; ``layout="torch"`` lays Dense, Conv, DenseGeneral, Embed and norm
    parameters out as PyTorch does, and stacked (``nn.scan``) layers as one module each.

    Args:
        jit: the plan's user initialises under ``jax.jit`` (``jax.jit(model.init)``, as most
            training code does): recorded in the plan as the default of ``init_model``'s
            ``jit`` (a call can override it). XLA's fusion gives some initializers (e.g.
            ``normal(stddev)``) other last bits under jit.
        partial: return what can be exported, the rest listed in the plan's ``refused``,
            rather than raising.
        max_literal: the most elements a key-independent array that is not a broadcast
            constant may have to travel in the plan as a literal value.

    Raises:
        InvalidArgument: a parameter made by something other than a JAX initializer or a
            key-independent value, or whose key jaxinit cannot follow; its ``refused``
            lists every one (``path``, ``shape``, ``dtype``, ``construct``, ``reason``).
        ImportError: JAX or Flax is not installed here.
    """
    if not isinstance(jit, bool) or not isinstance(partial, bool):
        raise InvalidArgument(f"jit and partial are true or false, got {jit!r}, {partial!r}")
    if not isinstance(max_literal, int) or isinstance(max_literal, bool) or max_literal < 0:
        raise InvalidArgument(f"max_literal must be a non-negative int, got {max_literal!r}")
    if mode == "nnx":
        entries, refused = _export_nnx(
            module, sample_inputs, rng_streams=kwargs.pop("rng_streams", ("params",)), max_literal=max_literal, **kwargs
        )
    elif mode != "linen":
        raise InvalidArgument(f"mode is 'linen' or 'nnx', got {mode!r}")
    else:
        call = {"method": method} if method is not None else {}
        recorder = _trace_linen(module, sample_inputs, {**call, **kwargs}, max_literal, False)
        entries, refused = recorder.plan()
        if recorder.traced_arguments:
            # An initializer argument computed with jnp (a tracer while init is traced): trace
            # again with what depends on no key computed as it goes (slower, only when needed).
            recorder = _trace_linen(module, sample_inputs, {**call, **kwargs}, max_literal, True)
            entries, refused = recorder.plan()
    return _finish(entries, refused, jit=jit, partial=partial)


def _trace_linen(
    module: Any, sample_inputs: tuple[Any, ...], kwargs: Mapping[str, Any], max_literal: int, eager: bool
) -> _LinenRecorder:
    """``module.init`` traced shape-only with the recorder's hooks; ``eager``: every value
    that depends on no key and no input is computed as it is traced (jnp arguments)."""
    import jax

    recorder = _LinenRecorder(max_literal)
    with _EXPORTING, recorder.active(), jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():

        def init(key: Any, *inputs: Any) -> Any:
            recorder.root(key)
            return module.init(key, *inputs, **kwargs)

        variables = jax.eval_shape(init, jax.random.key(0), *sample_inputs)
    recorder.params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
    recorder.cls = type(module).__name__
    return recorder


def _finish(entries: list[dict[str, Any]], refused: list[dict[str, Any]], *, jit: bool, partial: bool) -> Plan:
    """The plan of the exported entries, or the InvalidArgument naming every refused one."""
    if refused and not partial:
        raise _export_refused(refused, len(entries) + len(refused))
    if not entries and not refused:
        raise InvalidArgument("the model has no parameters")
    plan = Plan(params=entries)
    if jit:
        plan["jit"] = True
    plan.refused = refused
    return plan


def _refusal(path: str, leaf: Any, construct: str, reason: str) -> dict[str, Any]:
    return {
        "path": path,
        "shape": [int(d) for d in leaf.shape],
        "dtype": dtype_name(leaf.dtype),
        "construct": construct,
        "reason": reason,
    }


class _LinenRecorder:
    """Hooks into linen while ``model.init`` is traced: every key's steps from the root, and
    every parameter's initializer call."""

    def __init__(self, max_literal: int = MAX_LITERAL) -> None:
        self.max_literal = max_literal
        self.params: Any = {}  # what init made (shapes only)
        self.cls = ""  # the model's class, for messages
        self.traced_arguments = False  # an initializer argument was a tracer: worth tracing eagerly
        self.rngs_drawn = 0  # make_rng calls so far (one inside a parameter's init function: its own key)
        self.chains: dict[int, tuple[Step, ...] | None] = {}
        self.alive: list[Any] = []  # the tracers whose ids the chains name, kept alive
        self.records: dict[tuple[str, ...], dict[str, Any]] = {}
        self.scans = 0  # how deep inside nn.scan's body the trace is
        self.off_axis: list[bool] = []  # for each scan the trace is in: whether it stacks on an axis but 0
        self.owner: list[str] = []  # the Flax class of the module creating a parameter
        self.fix_separator = False

    def root(self, key: Any) -> None:
        self._chain(key, ())

    def _chain(self, value: Any, steps: tuple[Step, ...] | None) -> None:
        self.chains[id(value)] = steps
        self.alive.append(value)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        import flax
        import jax
        from flax import linen
        from flax.core import axes_scan
        from flax.core import scope as fscope

        self.fix_separator = bool(getattr(flax.config, "flax_fix_rng_separator", False))
        patches = [
            (jax.random, "split", self._split(jax.random.split)),
            (jax.random, "clone", self._clone(jax.random.clone)),
            # nn.remat / nn.checkpoint (flax.core.lift.checkpoint calls jax.remat): no key changes
            (jax, "remat", self._remat(jax.remat)),
            (jax, "checkpoint", self._remat(jax.checkpoint)),
            (axes_scan, "scan", self._scan(axes_scan.scan)),
            (fscope.Scope, "make_rng", self._make_rng(fscope.Scope.make_rng, fscope.LazyRng)),
            (fscope.Scope, "param", self._param(fscope.Scope.param)),
            (linen.Module, "param", self._module_param(linen.Module.param)),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, new in patches:
                setattr(owner, name, new)
            yield
        finally:
            for owner, name, old in saved:
                setattr(owner, name, old)

    # --- key steps ---------------------------------------------------------------------------

    def _split(self, original: Any) -> Any:
        def split(key: Any, num: Any = 2, *args: Any, **kwargs: Any) -> Any:
            out = original(key, num, *args, **kwargs)
            base = self.chains.get(id(key))
            if base is not None and isinstance(num, int):
                self._chain(out, (*base, ("split_all", num)))  # a batch: a scan slices it
            return out

        return split

    def _clone(self, original: Any) -> Any:
        def clone(key: Any) -> Any:
            out = original(key)
            if id(key) in self.chains:
                self._chain(out, self.chains[id(key)])
            return out

        return clone

    def _remat(self, original: Any) -> Any:
        """jax.remat / jax.checkpoint: inside, each key is the key passed in (a new tracer)."""
        recorder = self

        def remat(fun: Any, *args: Any, **kwargs: Any) -> Any:
            import jax

            outer: list[list[Any]] = []

            @functools.wraps(fun)
            def linked(*a: Any, **kw: Any) -> Any:
                recorder._link(jax.tree_util.tree_leaves((a, kw)), outer[-1] if outer else [])
                return fun(*a, **kw)

            checkpointed = original(linked, *args, **kwargs)

            @functools.wraps(fun)
            def call(*a: Any, **kw: Any) -> Any:
                outer.append(jax.tree_util.tree_leaves((a, kw)))
                try:
                    return checkpointed(*a, **kw)
                finally:
                    outer.pop()

            return call

        return remat

    def _link(self, inner: Sequence[Any], outer: Sequence[Any]) -> None:
        """Each inner value stands for the outer one at its place (a transform's new tracers)."""
        if len(inner) != len(outer):
            return
        for a, b in zip(inner, outer, strict=True):
            if id(b) in self.chains and getattr(a, "shape", None) == getattr(b, "shape", None):
                self._chain(a, self.chains[id(b)])

    def _scan(self, original: Any) -> Any:
        """axes_scan.scan, linen's scan: inside the body, a slice of a split key is one key
        of a stack, and a broadcast key the key itself. The body is compiled."""
        recorder = self

        def scan(fn: Any, *args: Any, **kwargs: Any) -> Any:
            outer: list[Any] = []

            def linked(broadcast: Any, carry: Any, *xs: Any) -> Any:
                import jax

                for inner_x, outer_x in zip(xs, outer[0] if outer else (), strict=False):
                    inner_leaves = jax.tree_util.tree_leaves(inner_x)
                    outer_leaves = jax.tree_util.tree_leaves(outer_x)
                    if len(inner_leaves) != len(outer_leaves):
                        continue
                    for a, b in zip(inner_leaves, outer_leaves, strict=True):
                        chain = recorder.chains.get(id(b))
                        if chain is None:
                            continue
                        if chain and chain[-1][0] == "split_all" and tuple(a.shape) == tuple(b.shape[1:]):
                            recorder._chain(a, (*chain[:-1], ("stack", chain[-1][1])))
                        elif tuple(a.shape) == tuple(b.shape):
                            recorder._chain(a, chain)
                recorder.scans += 1
                try:
                    return fn(broadcast, carry, *xs)
                finally:
                    recorder.scans -= 1

            import jax

            axes = kwargs.get("out_axes", args[1] if len(args) > 1 else None)
            variable_axes = axes[1] if isinstance(axes, tuple) and len(axes) == 2 else None
            # the scanned variable groups' axes (variable_axes): jaxinit stacks on axis 0 only
            off_axis = variable_axes is None or any(a != 0 for a in jax.tree_util.tree_leaves(variable_axes))

            def body(*a: Any) -> Any:
                recorder.off_axis.append(off_axis)
                try:
                    return linked(*a)
                finally:
                    recorder.off_axis.pop()

            scanned = original(body, *args, **kwargs)

            def call(broadcast: Any, init: Any, *xs: Any) -> Any:
                outer[:] = [xs]
                return scanned(broadcast, init, *xs)

            return call

        return scan

    def _make_rng(self, original: Any, lazy_rng: Any) -> Any:
        recorder = self

        def make_rng(scope: Any, name: str = "params") -> Any:
            recorder.rngs_drawn += 1
            key = original(scope, name)
            used = name if scope.has_rng(name) else "params"
            rng = scope.rngs[used]
            raw, suffix = (rng.rng, tuple(rng.suffix)) if isinstance(rng, lazy_rng) else (rng, ())
            base = recorder.chains.get(id(raw))
            fold = linen_fold_in((*suffix, scope.rng_counters[used]), fix_rng_separator=recorder.fix_separator)
            recorder._chain(key, None if base is None else (*base, ("fold_in", fold)))
            return key

        return make_rng

    # --- parameters ----------------------------------------------------------------------------

    def _module_param(self, original: Any) -> Any:
        recorder = self

        def param(module: Any, *args: Any, **kwargs: Any) -> Any:
            recorder.owner.append(type(module).__name__)
            try:
                return original(module, *args, **kwargs)
            finally:
                recorder.owner.pop()

        return param

    def _param(self, original: Any) -> Any:
        recorder = self

        def param(scope: Any, name: str, init_fn: Any, *init_args: Any, **kwargs: Any) -> Any:
            if scope.has_variable("params", name) or not scope.is_mutable_collection("params"):
                return original(scope, name, init_fn, *init_args, **kwargs)
            path = (*scope.path, name)

            def recording(key: Any, *args: Any, **kw: Any) -> Any:
                calls: list[Any] = []
                draws: list[tuple[str, Any]] = []
                previous = sys.getprofile()
                rngs_drawn = recorder.rngs_drawn
                sys.setprofile(_profiler(calls, draws))
                try:
                    value = init_fn(key, *args, **kw)
                finally:
                    sys.setprofile(previous)
                made_by = _made_by(init_fn, value, calls)
                if recorder.rngs_drawn != rngs_drawn:
                    draws.append(("make_rng", None))  # a key of its own, drawn from the scope
                known = value
                if made_by is not None and not draws:
                    # Not an initializer, no draw: maybe a value no key changes (jnp.ones(shape)).
                    # Made again with what depends on no key computed (the key stays traced);
                    # Flax keeps the traced one.
                    import jax

                    with jax.ensure_compile_time_eval():
                        known = init_fn(key, *args, **kw)
                recorder.records[path] = {
                    "key": recorder.chains.get(id(key)),
                    "calls": calls,
                    "jit": recorder.scans > 0,
                    "off_axis": any(recorder.off_axis),
                    "owner": recorder.owner[-1] if recorder.owner else "",
                    # The initializer's own result is the parameter (or a Flax wrapper that only
                    # reshapes or boxes it made it): else the values are not the initializer's.
                    "made_by": made_by,
                    "construct": _construct(init_fn),
                    # what else made it: a key-independent value (computed, not traced), or a
                    # draw from a key
                    "drawn": _drawn(draws, key) if made_by is not None else None,
                    "value": _key_independent(known, recorder.max_literal) if made_by is not None else None,
                }
                return value

            return original(scope, name, recording, *init_args, **kwargs)

        return param

    # --- the plan ------------------------------------------------------------------------------

    def plan(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the plan's entries, the refused parameters) of the traced init."""
        import jax
        from flax.core import meta

        cls = self.cls
        params = meta.unbox(self.params)  # nn.with_partitioning's boxes: the arrays inside
        flat = {
            tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        refused = [
            _refusal(
                ".".join(path),
                leaf,
                "self.variable('params', ...) or put_variable",
                "a parameter not made by self.param; the exporter follows self.param only",
            )
            for path, leaf in flat.items()
            if path not in self.records
        ]
        entries = []
        for path, record in self.records.items():
            if path not in flat:
                continue  # made, then not kept (a parameter of a discarded trace)
            try:
                entries.append(self._entry(path, record, flat))
            except _Refused as exc:
                self.traced_arguments = self.traced_arguments or isinstance(exc, _TracedArgument)
                construct = getattr(exc, "construct", record["construct"])
                refused.append(_refusal(".".join(path), flat[path], construct, exc.message))
        if not entries and not refused:
            raise InvalidArgument(f"{cls}: init made no parameters")
        return entries, refused

    def _entry(
        self, path: tuple[str, ...], record: dict[str, Any], flat: Mapping[tuple[str, ...], Any]
    ) -> dict[str, Any]:
        """One parameter's plan entry. Raises InvalidArgument (its reason) when it cannot be."""
        name = ".".join(path)
        leaf = flat[path]
        shape, dtype = tuple(int(d) for d in leaf.shape), dtype_name(leaf.dtype)
        steps = record["key"]
        if record["made_by"] is not None:
            if record["drawn"] is not None:
                raise _Refused(record["construct"], record["drawn"])
            value = record["value"]
            if value is None:
                raise _Refused(
                    record["construct"],
                    f"made by {record['made_by']} from its key, not by a JAX initializer jaxinit serves "
                    "(jax.nn.initializers / flax.nnx.initializers, possibly wrapped by Flax's DenseGeneral reshape "
                    "or with_partitioning); give the module a registry initializer",
                )
            initializer, args = _constant_entry(value, shape, dtype, self.max_literal, record["construct"])
            entry: dict[str, Any] = {"path": name, "initializer": initializer, "args": args}
            entry.update(shape=list(shape), dtype=dtype)
            if steps is not None:
                entry["key"] = [step_json(step) for step in steps]
            self._torch(entry, path, record, ())
            return entry
        initializer, args, call_shape = _initializer(record["calls"], name)
        if steps is None:
            raise _Refused(
                "a Flax transform",
                "its key comes through a Flax transform jaxinit cannot follow (it follows plain modules, "
                "nn.remat and nn.scan with split_rngs={'params': True}); describe it with jaxinit.models",
            )
        stack = tuple(step[1] for step in steps if step[0] == "stack")
        if record["off_axis"]:
            raise _Refused(
                "nn.scan",
                "made in an nn.scan whose variable_axes stack on an axis other than 0; jaxinit stacks layers on "
                "axis 0 only",
            )
        if shape[: len(stack)] != stack or math.prod(shape) != math.prod(stack) * math.prod(call_shape):
            raise _Refused(
                "nn.scan",
                f"a stacked parameter of shape {list(shape)} whose layers are {list(call_shape)}: only "
                "variable_axes={'params': 0} is followed",
            )
        entry = {
            "path": name,
            "initializer": initializer,
            "args": args,
            "shape": list(shape),
            "dtype": dtype,
            "key": [step_json(step) for step in steps],
        }
        init_shape = [*stack, *call_shape]
        if tuple(init_shape) != shape:
            entry["init_shape"] = init_shape
        if record["jit"]:
            entry["jit"] = True
        if stack:
            entry["stack_at"] = _stack_at(path, flat, stack)
        self._torch(entry, path, record, stack)
        return entry

    @staticmethod
    def _torch(entry: dict[str, Any], path: tuple[str, ...], record: Mapping[str, Any], stack: tuple[int, ...]) -> None:
        owner = record["owner"]
        torch = _TORCH.get(owner, {}).get(path[-1])
        if torch is not None and len(stack) <= 1:
            entry["torch"] = list(torch)
            entry["module"] = owner


class _Refused(Exception):  # noqa: N818 (internal: becomes an entry of the refused list)
    """One parameter's refusal: ``construct`` made it, ``message`` says why."""

    def __init__(self, construct: str, message: str) -> None:
        super().__init__(message)
        self.construct = construct
        self.message = message


class _TracedArgument(_Refused):
    """An initializer argument that is a tracer: computed from an input, a key or a
    parameter, or with jnp from constants (which an eager trace makes concrete)."""


def _construct(init_fn: Any) -> str:
    """What a parameter's init function is, for a refusal: its qualified name."""
    return str(getattr(init_fn, "__qualname__", type(init_fn).__name__))


def _drawn(draws: Sequence[tuple[str, Any]], key: Any) -> str | None:
    """Why a value made with ``jax.random`` is refused (None: nothing was drawn)."""
    if not draws:
        return None
    names = ", ".join(dict.fromkeys("self.make_rng" if n == "make_rng" else f"jax.random.{n}" for n, _ in draws))
    made = [name for name, _ in draws if name in _KEY_MAKERS]
    if made or any(first is not key for _, first in draws):
        return (
            f"drawn with {names} from a key other than the one Flax gives this parameter (a key the module makes "
            "or holds itself): its values do not follow from the model's key; jaxinit cannot serve them"
        )
    return (
        f"derived from a draw on its key ({names}, then computed on: log, exp, clip, ... as Mamba's dt_bias is), "
        "not a JAX initializer's result; jaxinit serves initializers' results only: give the module "
        "a registry initializer, or supply this parameter yourself (export(..., partial=True))"
    )


# jax.random functions that make a key rather than draw from one.
_KEY_MAKERS = frozenset({"key", "PRNGKey", "wrap_key_data"})


def _key_independent(value: Any, max_literal: int) -> Any:
    """A parameter's value when it depends on no key (computed as it was traced): a numpy
    array, or None when it was traced (it depends on the key, or on an input)."""
    import jax
    from flax.core import meta

    value = meta.unbox(value)
    if isinstance(value, jax.core.Tracer) or not hasattr(value, "dtype"):
        return None
    import numpy as np

    array = np.asarray(value)
    if array.size > max_literal and not _broadcast(array):
        return ("too large", array.size)  # its bytes are not kept: only that it was too large
    return array


def _broadcast(array: Any) -> bool:
    """Every element of ``array`` has the same bytes (an empty one too)."""
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.size == 0:
        return True
    rows = flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize)
    return bool((rows == rows[0]).all())


def _constant_entry(
    value: Any, shape: tuple[int, ...], dtype: str, max_literal: int, construct: str
) -> tuple[str, dict[str, Any]]:
    """(registry initializer, arguments) that make exactly ``value``, a key-independent array
    held with ``shape`` and ``dtype``: zeros, ones or constant (one value broadcast), or a
    literal constant of at most ``max_literal`` elements."""
    import numpy as np

    if isinstance(value, tuple):
        raise _Refused(
            construct,
            f"a key-independent array of {value[1]} elements that is not one value broadcast: over the "
            f"{max_literal} elements a plan holds as a literal (export's max_literal)",
        )
    array = np.asarray(value)
    if dtype_name(array.dtype) != dtype:
        raise _Refused(construct, f"a key-independent {dtype_name(array.dtype)} value held as {dtype}")
    if array.dtype.kind == "c":
        raise _Refused(construct, "a key-independent complex value: jaxinit's constant takes real values only")
    if array.shape != shape:
        if array.shape != shape[len(shape) - array.ndim :]:
            raise _Refused(construct, f"a key-independent value of shape {list(array.shape)} held as {list(shape)}")
        array = np.broadcast_to(array, shape)  # an nn.scan's layers: the same value in each
    if _broadcast(array):
        first = array.reshape(-1)[:1]
        if array.size == 0 or not first.tobytes().strip(b"\0"):
            return "zeros", {}
        if first.tobytes() == np.ones(1, array.dtype).tobytes():
            return "ones", {}
        literal: Any = first[0].item()
    elif array.size > max_literal:
        raise _Refused(
            construct,
            f"a key-independent array of {array.size} elements that is not one value broadcast: over the "
            f"{max_literal} elements a plan holds as a literal (export's max_literal)",
        )
    else:
        literal = array.tolist()
    back = np.asarray(literal, dtype=array.dtype)
    finite = array.dtype.kind not in "fc" or bool(np.isfinite(array.astype(np.float64)).all())
    if not finite or np.broadcast_to(back, shape).tobytes() != np.ascontiguousarray(array).tobytes():
        raise _Refused(construct, "a key-independent value that JSON cannot carry exactly (NaN, infinity)")
    return "constant", {"value": literal}


def _stack_at(path: tuple[str, ...], flat: Mapping[tuple[str, ...], Any], stack: tuple[int, ...]) -> int:
    """Where the layer index goes in a PyTorch name: after the scanned module's name, the
    longest prefix of the path whose parameters are all stacked."""
    for depth in range(1, len(path)):
        prefix = path[:depth]
        under = [leaf for p, leaf in flat.items() if p[:depth] == prefix]
        if all(tuple(leaf.shape[: len(stack)]) == stack for leaf in under):
            return depth
    return len(path) - 1


def _profiler(calls: list[Any], draws: list[tuple[str, Any]] | None = None) -> Any:
    """A profile function that records the outermost call into jax.nn.initializers: its
    qualified name, its locals at the call (arguments, closure) and what it returned; and in
    ``draws``, each call into ``jax.random`` from outside it and the initializers (its name
    and first argument: the key)."""
    file = _initializers_file()
    random_dir = _random_dir()

    def profile(frame: Any, event: str, arg: Any) -> None:
        filename = frame.f_code.co_filename
        if filename != file:
            if draws is not None and event == "call" and filename.startswith(random_dir):
                name = _drawn_by_model(frame)
                if name is not None:
                    draws.append((name, next(iter(frame.f_locals.values()), None)))
            return
        if event == "call" and not calls:
            calls.append([frame.f_code.co_qualname, dict(frame.f_locals), None, frame])
        elif event == "return" and calls and calls[0][3] is frame:
            calls[0][2] = arg
            calls[0][3] = None  # done: later calls (none should come) change nothing

    return profile


def _drawn_by_model(frame: Any) -> str | None:
    """The jax.random function this frame (one in jax.random's implementation) is, when the
    model's own code called it (not JAX or Flax); else None."""
    import flax
    import jax

    name = frame.f_code.co_name
    back = frame.f_back
    caller = back.f_code.co_filename if back is not None else ""
    libraries = (jax.__file__.rsplit("/", 1)[0] + "/", flax.__file__.rsplit("/", 1)[0] + "/")
    if name.startswith("_") or not hasattr(jax.random, name) or caller.startswith(libraries):
        return None
    return str(name)


def _random_dir() -> str:
    """The directory of jax.random's implementation, from a public function's code."""
    import jax

    return str(jax.random.uniform.__code__.co_filename).rsplit("/", 1)[0] + "/"


def _made_by(init_fn: Any, value: Any, calls: Sequence[Any]) -> str | None:
    """None when ``value`` is what the recorded JAX initializer returned, called by
    ``init_fn`` itself or through a Flax wrapper that only reshapes or boxes its result;
    else what made it (for the refusal)."""
    import flax

    initializers_file = _initializers_file()
    flax_dir = flax.__file__.rsplit("/", 1)[0]
    fn = init_fn
    for _ in range(4):  # with_partitioning(DenseGeneral's wrap(...)): a few levels at most
        code = getattr(fn, "__code__", None)
        if code is None:
            break
        if code.co_filename == initializers_file:
            if code.co_qualname not in _INITIALIZERS or not calls or calls[0][0] != code.co_qualname:
                break
            if fn is init_fn and calls[0][2] is not value:
                break  # called, then its result changed
            return None
        boxes = (f"{flax_dir}/core/meta.py", f"{flax_dir}/linen/spmd.py")
        if code.co_filename in boxes and code.co_name == "wrapper":
            # nn.with_partitioning, nn.with_logical_partitioning: the initializer's result, boxed
            fn = getattr(fn, "__wrapped__", None)
        elif code.co_filename == f"{flax_dir}/linen/linear.py" and code.co_name in (
            "kernel_init_wrap",
            "bias_init_wrap",
        ):
            cells = dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__ or ()), strict=True))
            owner = cells.get("self")  # DenseGeneral: its kernel_init / bias_init, reshaped
            fn = getattr(owner, "kernel_init" if code.co_name == "kernel_init_wrap" else "bias_init", None)
        else:
            break
    return getattr(init_fn, "__qualname__", type(init_fn).__name__)


def _initializer(calls: Sequence[Any], name: str) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    """(registry name, factory arguments, the call's shape) of a recorded JAX initializer call.

    Raises:
        _Refused: not an initializer jaxinit serves, or an argument that is not a concrete value.
    """
    if not calls or calls[0][0] not in _INITIALIZERS:
        what = calls[0][0] if calls else "a function outside jax.nn.initializers"
        raise _Refused(
            what,
            f"made by {what}, not a JAX initializer jaxinit serves (jax.nn.initializers / flax.nnx.initializers); "
            "give the module a registry initializer",
        )
    qualname, local = calls[0][0], calls[0][1]
    registry, names = _INITIALIZERS[qualname]
    args = {arg: _plain(local[arg], f"{registry}'s {arg}") for arg in names}
    spec = lookup(registry)
    try:
        bind_arguments(spec, args)
    except InvalidArgument as exc:
        raise _Refused(f"jax.nn.initializers.{registry}", exc.message) from None
    return registry, args, tuple(int(d) for d in local["shape"])


def _plain(value: Any, what: str) -> Any:
    """A factory argument as JSON data (tuples as lists, numpy and concrete JAX scalars as
    numbers: a stddev computed with jnp is the float32 value it holds)."""
    import jax

    if isinstance(value, (tuple, list)):
        return [_plain(v, what) for v in value]
    if isinstance(value, jax.core.Tracer):
        raise _TracedArgument(
            f"jax.nn.initializers ({what})",
            f"{what} is computed from a traced value (an input, a key or a parameter), not a concrete number",
        )
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# --- nnx -------------------------------------------------------------------------------------


def _export_nnx(
    build: Any,
    sample_inputs: tuple[Any, ...],
    *,
    rng_streams: Sequence[str] = ("params",),
    max_literal: int = MAX_LITERAL,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """nnx: ``build(rngs, **kwargs)`` makes the model from an ``nnx.Rngs`` whose streams
    are ``rng_streams``; the root key is the parameters' stream's (``params``, else
    ``default``). Constructed under ``nnx.eval_shape``: no parameter is made."""
    import jax
    from flax import linen, nnx
    from flax.nnx import rnglib

    if isinstance(build, linen.Module):
        raise InvalidArgument(f"{type(build).__name__} is a linen Module: export it with mode='linen'")
    if sample_inputs:
        raise InvalidArgument("nnx: a model's parameters are made when it is built; export takes no sample inputs")
    if not callable(build):
        raise InvalidArgument(f"nnx: export takes a function of an nnx.Rngs (a Module class), got {build!r:.80}")
    streams = tuple(rng_streams)
    if not streams or not all(isinstance(s, str) and s for s in streams) or len(set(streams)) != len(streams):
        raise InvalidArgument(f"rng_streams must be distinct stream names, got {rng_streams!r}")
    params_stream = "params" if "params" in streams else "default" if "default" in streams else None
    if params_stream is None:
        raise InvalidArgument(
            f"rng_streams {list(streams)} has neither 'params' nor 'default': no stream makes parameters"
        )
    chains: dict[int, tuple[Step, ...]] = {}
    alive: list[Any] = []
    counts: dict[int, int] = {}  # RngStream (by id) -> counts drawn so far: nnx's own are traced
    # every outermost initializer call: [qualname, locals, result, frame, the module being built]
    calls: list[list[Any]] = []
    draws: list[tuple[str, Any, int]] = []  # jax.random called by the model's code: (name, key, module)
    building: list[tuple[Any, int]] = []  # the nnx Modules whose __init__ runs: (frame, id(module))
    pending: dict[int, list[tuple[str, Any, int]]] = {}  # a module's draws since its last nnx.Param
    drawn_for: dict[int, list[tuple[str, Any, int]]] = {}  # id(an nnx.Param's value) -> the draws before it
    original_init, original_call = rnglib.RngStream.__init__, rnglib.RngStream.__call__

    def stream_init(stream: Any, key: Any, **kw: Any) -> None:
        original_init(stream, key, **kw)
        counts[id(stream)] = 0
        alive.append(stream)

    def stream_call(stream: Any) -> Any:
        base = chains.get(id(stream.key[...]))
        n = counts.get(id(stream))
        out = original_call(stream)
        if n is not None:
            counts[id(stream)] = n + 1
        if base is not None and n is not None and not (base and base[-1][0] == "split_all"):
            chains[id(out)] = (*base, ("fold_in", n))
            alive.append(out)
        return out

    import flax

    file = _initializers_file()
    # Flax's wrappers that only reshape an initializer's result (LinearGeneral's): what they
    # return is that call's tensor, the same bytes.
    reshaping = (flax.__file__.rsplit("/", 1)[0] + "/nnx/nn/linear.py", ("kernel_init_wrap", "bias_init_wrap"))
    wrappers: list[tuple[Any, int]] = []  # (the wrapper's frame, calls recorded before it)
    reshaped: dict[int, list[Any]] = {}  # id(a wrapper's result) -> the initializer call inside

    random_dir = _random_dir()

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        owner = building[-1][1] if building else 0
        if code.co_name == "__init__":
            made = frame.f_locals.get("self") if event == "call" else None
            kinds = type(made).__mro__  # not isinstance: nnx.Variable's own check runs JAX code
            if nnx.Module in kinds:
                building.append((frame, id(made)))
            elif nnx.Variable in kinds and "value" in frame.f_locals:
                # the draws this module made since its last variable: what this value may come from
                drawn_for[id(frame.f_locals["value"])] = pending.pop(owner, [])
                alive.append(frame.f_locals["value"])
            elif event == "return" and building and building[-1][0] is frame:
                building.pop()
        if code.co_filename.startswith(random_dir):
            drawn = _drawn_by_model(frame) if event == "call" else None
            if drawn is not None:
                draws.append((drawn, next(iter(frame.f_locals.values()), None), owner))
                pending.setdefault(owner, []).append(draws[-1])
                alive.append(draws[-1][1])
            return
        if code.co_filename == reshaping[0] and code.co_name in reshaping[1]:
            if event == "call":
                wrappers.append((frame, len(calls)))
            elif event == "return" and wrappers and wrappers[-1][0] is frame:
                _, before = wrappers.pop()
                if len(calls) == before + 1 and arg is not None:
                    reshaped[id(arg)] = calls[-1]
                    alive.append(arg)
            return
        if code.co_filename != file:
            return
        if event == "call" and not (calls and calls[-1][3] is not None):
            calls.append([code.co_qualname, dict(frame.f_locals), None, frame, owner])
        elif event == "return" and calls and calls[-1][3] is frame:
            calls[-1][2] = arg
            calls[-1][3] = None

    found: dict[str, Any] = {}
    modules: dict[str, int] = {}  # a module's path -> id(the module), as built

    def make() -> Any:
        root = jax.random.key(0)
        chains[id(root)] = ()
        alive.append(root)
        keys = {s: root if s == params_stream else jax.random.key(i + 1) for i, s in enumerate(streams)}
        previous = sys.getprofile()
        sys.setprofile(profile)
        try:
            # key-independent values (nnx.Param(jnp.ones(d))) are computed; the rest stays traced
            with jax.ensure_compile_time_eval():
                model = build(nnx.Rngs(**keys), **kwargs)
        finally:
            sys.setprofile(previous)
        if not isinstance(model, nnx.Module):
            raise InvalidArgument(f"nnx: the function made a {type(model).__name__}, not an nnx.Module")
        for module_path, module in nnx.iter_modules(model):
            modules[".".join(str(k) for k in module_path)] = id(module)
        by_result = {id(call[2]): call for call in calls if call[2] is not None}
        by_result.update(reshaped)
        for path, value in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]:
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            call = by_result.get(id(value))
            found[name] = (
                value,
                None if call is None else (call[0], call[1], chains.get(id(call[1].get("key")))),
                None if call is not None else _key_independent(value, max_literal),
                drawn_for.get(id(value), []),
            )
        return model

    with _EXPORTING:
        _run_patched(rnglib.RngStream, stream_init, stream_call, lambda: nnx.eval_shape(make))
    entries = []
    refused = []
    for name, (leaf, call, value, drawn) in found.items():
        shape, dtype = tuple(int(d) for d in leaf.shape), dtype_name(leaf.dtype)
        try:
            if call is None:
                construct, why = _nnx_made_by(name, modules, calls, drawn, chains, value is not None)
                if why is not None:
                    raise _Refused(construct, why)
                initializer, args = _constant_entry(value, shape, dtype, max_literal, construct)
                # a key-independent value drew no count: no key
                entries.append(
                    {"path": name, "initializer": initializer, "args": args, "shape": list(shape), "dtype": dtype}
                )
                continue
            initializer, args, call_shape = _initializer([call], name)
            steps = call[2]
            if steps is None:
                raise _Refused(
                    "an rng stream",
                    "its key comes from a stream or transform jaxinit cannot follow (it follows the parameters' "
                    "stream of plain modules, forks included, not nnx.vmap/nnx.scan/split_rngs); describe it with "
                    "jaxinit.models (Scan)",
                )
            if math.prod(call_shape) != math.prod(shape):
                raise _Refused(call[0], f"made with shape {list(call_shape)}, held as {list(shape)}")
        except _Refused as exc:
            refused.append(_refusal(name, leaf, exc.construct, exc.message))
            continue
        entry: dict[str, Any] = {
            "path": name,
            "initializer": initializer,
            "args": args,
            "shape": list(shape),
            "dtype": dtype,
            "key": [step_json(step) for step in steps],
        }
        if tuple(call_shape) != shape:
            entry["init_shape"] = list(call_shape)
        entries.append(entry)
    if not entries and not refused:
        raise InvalidArgument("the model has no nnx.Param")
    return entries, refused


def _nnx_made_by(
    name: str,
    modules: Mapping[str, int],
    calls: Sequence[Sequence[Any]],
    draws: Sequence[tuple[str, Any, int]],
    chains: Mapping[int, Any],
    concrete: bool,
) -> tuple[str, str | None]:
    """(the construct, why it is refused; None for a key-independent value) of an nnx
    parameter that no initializer call returned, from what ran while its module was built
    (``draws``: the jax.random calls its module made before creating it)."""
    owner = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
    mine = list(draws)
    if concrete and not any(d[0] in _KEY_MAKERS for d in mine):
        return "nnx.Param(value)", None  # computed without any key: served as the value it is
    if mine:
        names = ", ".join(dict.fromkeys(f"jax.random.{d[0]}" for d in mine))
        if any(d[0] in _KEY_MAKERS or id(d[1]) not in chains for d in mine):
            return names, (
                f"drawn with {names} from a key other than the parameters' stream's (a key the module makes or "
                "holds itself): its values do not follow from the model's key; jaxinit cannot serve them"
            )
        return names, (
            f"derived from a draw on the parameters' stream ({names}, then computed on: log, exp, clip, ... as "
            "Mamba's dt_bias is), not a JAX initializer's result; jaxinit serves initializers' results only: give "
            "the module a registry initializer, or supply this parameter yourself (partial=True)"
        )
    batched = [c for c in calls if "Batch" in type(c[1].get("key")).__name__]
    if batched or owner is None:
        return "nnx.vmap / nnx.scan", (
            "made in layers stacked by nnx.vmap/nnx.scan, which the exporter does not follow yet; describe them "
            "with jaxinit.models (Scan)"
        )
    changed = [c for c in calls if c[4] == owner]
    if changed:
        return changed[0][0], (
            f"computed from the result of a JAX initializer ({changed[0][0].split('.')[0]}) that was changed "
            "afterwards; give the module a registry initializer, or supply this parameter yourself (partial=True)"
        )
    return "nnx.Param(value)", (
        "computed by the model's own code from a traced value, not returned by a JAX initializer; give the module "
        "a registry initializer"
    )


def _run_patched(cls: Any, init: Any, call: Any, run: Any) -> Any:
    """``run()`` with ``cls.__init__`` and ``cls.__call__`` replaced, restored however it ends."""
    original = cls.__dict__["__init__"], cls.__dict__["__call__"]
    setattr(cls, "__init__", init)  # noqa: B010
    setattr(cls, "__call__", call)  # noqa: B010
    try:
        return run()
    finally:
        setattr(cls, "__init__", original[0])  # noqa: B010
        setattr(cls, "__call__", original[1])  # noqa: B010


def _initializers_file() -> str:
    """The source file of JAX's initializers (where jax.nn.initializers' closures live),
    read from a public one rather than imported from JAX's internals."""
    import jax

    return str(jax.nn.initializers.normal.__code__.co_filename)


# --- comparing local parameters with served ones ------------------------------------------------

# Under jax.jit XLA fuses an initializer's scale into its sampler: the values move by a
# unit or two in the last place. A difference this small is that, not another key.
_LAST_BITS = 4


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found: the leaves equal byte for byte, those that differ (and
    whether only in their last bits), and the names only one side has."""

    equal: list[str]
    differ: list[str]
    last_bits: bool  # every differing leaf is a float within a few units in the last place
    missing: list[str]  # in local, not served
    extra: list[str]  # served, not in local
    served_jit: bool | None  # the served values' jit (their metadata), when known

    @property
    def same(self) -> bool:
        return not (self.differ or self.missing or self.extra)

    def __str__(self) -> str:
        total = len(self.equal) + len(self.differ)
        if self.missing or self.extra:
            return (
                f"the names differ: {len(self.missing)} only local ({', '.join(self.missing[:3])}), "
                f"{len(self.extra)} only served ({', '.join(self.extra[:3])}); same layout (flax or torch) and model?"
            )
        if not self.differ:
            return f"all {total} leaves are equal, byte for byte"
        head = f"{len(self.differ)} of {total} leaves differ ({', '.join(self.differ[:3])}"
        head += ", ...)" if len(self.differ) > 3 else ")"
        if not self.last_bits:
            return (
                f"{head}, beyond their last bits: another key, seed, mode (linen/nnx), PRNG setting "
                "(threefry_partitionable, enable_x64) or model"
            )
        if self.served_jit:
            return (
                f"{head}, in their last bits only: the local ones are eager model.init's, the served ones "
                "jax.jit(model.init)'s: ask with jit=False"
            )
        return (
            f"{head}, in their last bits only: these match jax.jit(model.init) (XLA fuses the initializer's scale "
            "into the sampler under jit): ask with jit=True (init_model(..., jit=True), `jaxinit model --jit`, or "
            "export(..., jit=True) for a plan's default)"
        )


def compare(local: Any, served: Any) -> Comparison:
    """Compare parameters made locally (``model.init(key, x)["params"]``, nested or flat,
    or ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``) with the served ones (what
    :meth:`jaxinit.Client.init_model` returned), byte for byte, and say why they differ:
    ``str(compare(...))`` names the leaves and, when they differ in their last bits only,
    that one side is ``jax.jit(model.init)``'s (ask with ``jit=True``, or ``jit=False``).
    Needs numpy only."""
    import numpy as np

    mine, theirs = _flat_arrays(local), _flat_arrays(served)
    equal, differ, last_bits = [], [], True
    for name in mine.keys() & theirs.keys():
        a, b = np.asarray(mine[name]), np.asarray(theirs[name])
        if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
            equal.append(name)
            continue
        differ.append(name)
        last_bits = last_bits and _within_last_bits(a, b)
    metadata = getattr(served, "metadata", None) or {}
    jit = metadata.get("jit")
    return Comparison(
        equal=sorted(equal),
        differ=sorted(differ),
        last_bits=bool(differ) and last_bits,
        missing=sorted(mine.keys() - theirs.keys()),
        extra=sorted(theirs.keys() - mine.keys()),
        served_jit=None if jit is None else jit == "true",
    )


def _flat_arrays(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat_arrays(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = getattr(value, "value", value)  # an nnx Variable's value
    return out


def _within_last_bits(a: Any, b: Any) -> bool:
    """Both arrays are floats of one dtype and shape, each pair of elements a few units in
    the last place apart (compared as ordered integers of their bits)."""
    import numpy as np

    if a.dtype != b.dtype or a.shape != b.shape or a.dtype.kind != "f" and "float" not in str(a.dtype):
        return False
    width = a.dtype.itemsize * 8
    if width not in (16, 32, 64):
        return False
    ints = {16: np.int16, 32: np.int32, 64: np.int64}[width]

    def ordered(x: Any) -> Any:
        bits = np.ascontiguousarray(x).view(ints).astype(np.int64)
        magnitude = bits & ((1 << (width - 1)) - 1)
        return np.where(bits < 0, -magnitude, magnitude)

    return bool((np.abs(ordered(a) - ordered(b)) <= _LAST_BITS).all())
