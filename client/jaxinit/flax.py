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

JAX and Flax are imported only when :func:`export` runs.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jaxinit.protocol.catalog import bind_arguments, lookup
from jaxinit.protocol.codec import dtype_name
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.expansion import linen_fold_in
from jaxinit.protocol.keys import Step, step_json

__all__ = ["export"]

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
# types lay them out (see jaxinit.protocol.expansion.outputs).
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


def export(
    module: Any,
    *sample_inputs: Any,
    mode: str = "linen",
    method: Any = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The plan of ``module``'s parameters (the raw form, explicit keys): what
    ``module.init(key, *sample_inputs, **kwargs)["params"]`` makes, for any key; for
    ``mode="nnx"``, what ``module(nnx.Rngs(...), **kwargs)`` holds as ``nnx.Param``
    (``rng_streams``: the Rngs' streams; the key is the ``params`` stream's, else
    ``default``'s).

    ``sample_inputs`` may be arrays or ``jax.ShapeDtypeStruct``\\ s (only their shapes and
    dtypes are used). The values come from :meth:`jaxinit.Client.init_model` with the
    plan and a root key; ``layout="torch"`` lays Dense, Conv, DenseGeneral, Embed and norm
    parameters out as PyTorch does, and stacked (``nn.scan``) layers as one module each.

    Raises:
        InvalidArgument: a parameter made by something other than a JAX initializer, or
            whose key jaxinit cannot follow (a transform other than ``nn.scan``), named.
        ImportError: JAX or Flax is not installed here.
    """
    if mode == "nnx":
        return _export_nnx(module, sample_inputs, rng_streams=kwargs.pop("rng_streams", ("params",)), **kwargs)
    if mode != "linen":
        raise InvalidArgument(f"mode is 'linen' or 'nnx', got {mode!r}")
    import jax

    recorder = _LinenRecorder()
    with _EXPORTING, recorder.active():

        def init(key: Any, *inputs: Any) -> Any:
            recorder.root(key)
            call = {"method": method} if method is not None else {}
            return module.init(key, *inputs, **call, **kwargs)

        variables = jax.eval_shape(init, jax.random.key(0), *sample_inputs)
    params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
    return recorder.plan(params, type(module).__name__)


class _LinenRecorder:
    """Hooks into linen while ``model.init`` is traced: every key's steps from the root, and
    every parameter's initializer call."""

    def __init__(self) -> None:
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
                previous = sys.getprofile()
                sys.setprofile(_profiler(calls))
                try:
                    value = init_fn(key, *args, **kw)
                finally:
                    sys.setprofile(previous)
                recorder.records[path] = {
                    "key": recorder.chains.get(id(key)),
                    "calls": calls,
                    "jit": recorder.scans > 0,
                    "off_axis": any(recorder.off_axis),
                    "owner": recorder.owner[-1] if recorder.owner else "",
                    # The initializer's own result is the parameter (or a Flax wrapper that only
                    # reshapes or boxes it made it): else the values are not the initializer's.
                    "made_by": _made_by(init_fn, value, calls),
                }
                return value

            return original(scope, name, recording, *init_args, **kwargs)

        return param

    # --- the plan ------------------------------------------------------------------------------

    def plan(self, params: Any, cls: str) -> dict[str, Any]:
        import jax
        from flax.core import meta

        params = meta.unbox(params)  # nn.with_partitioning's boxes: the arrays inside
        flat = {
            tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        unmade = [".".join(path) for path in flat if path not in self.records]
        if unmade:
            raise InvalidArgument(
                f"{unmade[0]}: a parameter not made by self.param (self.variable('params', ...) or put_variable); "
                "the exporter follows self.param only"
            )
        entries = []
        for path, record in self.records.items():
            if path not in flat:
                continue  # made, then not kept (a parameter of a discarded trace)
            name = ".".join(path)
            leaf = flat[path]
            shape, dtype = tuple(int(d) for d in leaf.shape), dtype_name(leaf.dtype)
            if record["made_by"] is not None:
                raise InvalidArgument(
                    f"{name}: made by {record['made_by']}, not a JAX initializer jaxinit serves (jax.nn.initializers "
                    "/ flax.nnx.initializers, possibly wrapped by Flax's DenseGeneral reshape or with_partitioning); "
                    "give the module a registry initializer"
                )
            initializer, args, call_shape = _initializer(record["calls"], name)
            steps = record["key"]
            if steps is None:
                raise InvalidArgument(
                    f"{name}: its key comes through a Flax transform jaxinit cannot follow (it follows plain "
                    "modules and nn.scan with split_rngs={'params': True}); describe it with jaxinit.models"
                )
            stack = tuple(step[1] for step in steps if step[0] == "stack")
            if record["off_axis"]:
                raise InvalidArgument(
                    f"{name}: made in an nn.scan whose variable_axes stack on an axis other than 0; jaxinit stacks "
                    "layers on axis 0 only"
                )
            if shape[: len(stack)] != stack or math.prod(shape) != math.prod(stack) * math.prod(call_shape):
                raise InvalidArgument(
                    f"{name}: a stacked parameter of shape {list(shape)} whose layers are {list(call_shape)}: only "
                    "variable_axes={'params': 0} is followed"
                )
            entry: dict[str, Any] = {
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
            owner = record["owner"]
            torch = _TORCH.get(owner, {}).get(path[-1])
            if torch is not None and len(stack) <= 1:
                entry["torch"] = list(torch)
                entry["module"] = owner
            entries.append(entry)
        if not entries:
            raise InvalidArgument(f"{cls}: init made no parameters")
        return {"params": entries}


def _stack_at(path: tuple[str, ...], flat: Mapping[tuple[str, ...], Any], stack: tuple[int, ...]) -> int:
    """Where the layer index goes in a PyTorch name: after the scanned module's name, the
    longest prefix of the path whose parameters are all stacked."""
    for depth in range(1, len(path)):
        prefix = path[:depth]
        under = [leaf for p, leaf in flat.items() if p[:depth] == prefix]
        if all(tuple(leaf.shape[: len(stack)]) == stack for leaf in under):
            return depth
    return len(path) - 1


def _profiler(calls: list[Any]) -> Any:
    """A profile function that records the outermost call into jax.nn.initializers: its
    qualified name, its locals at the call (arguments, closure) and what it returned."""
    file = _initializers_file()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if frame.f_code.co_filename != file:
            return
        if event == "call" and not calls:
            calls.append([frame.f_code.co_qualname, dict(frame.f_locals), None, frame])
        elif event == "return" and calls and calls[0][3] is frame:
            calls[0][2] = arg
            calls[0][3] = None  # done: later calls (none should come) change nothing

    return profile


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
    """(registry name, factory arguments, the call's shape) of a recorded JAX initializer call."""
    if not calls or calls[0][0] not in _INITIALIZERS:
        what = calls[0][0] if calls else "a function outside jax.nn.initializers"
        raise InvalidArgument(
            f"{name}: made by {what}, not a JAX initializer jaxinit serves (jax.nn.initializers / "
            "flax.nnx.initializers); give the module a registry initializer"
        )
    qualname, local = calls[0][0], calls[0][1]
    registry, names = _INITIALIZERS[qualname]
    args = {arg: _plain(local[arg]) for arg in names}
    spec = lookup(registry)
    bind_arguments(spec, args)
    return registry, args, tuple(int(d) for d in local["shape"])


def _plain(value: Any) -> Any:
    """A factory argument as JSON data (tuples as lists, numpy scalars as numbers)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# --- nnx -------------------------------------------------------------------------------------


def _export_nnx(
    build: Any, sample_inputs: tuple[Any, ...], *, rng_streams: Sequence[str] = ("params",), **kwargs: Any
) -> dict[str, Any]:
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
    calls: list[list[Any]] = []  # every outermost initializer call: [qualname, locals, result, frame]
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

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
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
            calls.append([code.co_qualname, dict(frame.f_locals), None, frame])
        elif event == "return" and calls and calls[-1][3] is frame:
            calls[-1][2] = arg
            calls[-1][3] = None

    found: dict[str, Any] = {}

    def make() -> Any:
        root = jax.random.key(0)
        chains[id(root)] = ()
        alive.append(root)
        keys = {s: root if s == params_stream else jax.random.key(i + 1) for i, s in enumerate(streams)}
        previous = sys.getprofile()
        sys.setprofile(profile)
        try:
            model = build(nnx.Rngs(**keys), **kwargs)
        finally:
            sys.setprofile(previous)
        if not isinstance(model, nnx.Module):
            raise InvalidArgument(f"nnx: the function made a {type(model).__name__}, not an nnx.Module")
        by_result = {id(call[2]): call for call in calls if call[2] is not None}
        by_result.update(reshaped)
        for path, value in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]:
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            call = by_result.get(id(value))
            found[name] = (
                tuple(int(d) for d in value.shape),
                dtype_name(value.dtype),
                None if call is None else (call[0], call[1], chains.get(id(call[1].get("key")))),
            )
        return model

    with _EXPORTING:
        _run_patched(rnglib.RngStream, stream_init, stream_call, lambda: nnx.eval_shape(make))
    entries = []
    for name, (shape, dtype, call) in found.items():
        if call is None:
            raise InvalidArgument(
                f"{name}: its value is not what a JAX initializer returned (a custom function, a result changed "
                "afterwards, or layers stacked by nnx.vmap/nnx.scan, which the exporter does not follow yet); give "
                "the module a registry initializer, or describe it with jaxinit.models (Scan for stacked layers)"
            )
        initializer, args, call_shape = _initializer([call], name)
        steps = call[2]
        if steps is None:
            raise InvalidArgument(
                f"{name}: its key comes from a stream or transform jaxinit cannot follow (it follows the parameters' "
                "stream of plain modules, forks included, not nnx.vmap/nnx.scan/split_rngs); describe it with "
                "jaxinit.models (Scan)"
            )
        if math.prod(call_shape) != math.prod(shape):
            raise InvalidArgument(f"{name}: made with shape {list(call_shape)}, held as {list(shape)}")
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
    if not entries:
        raise InvalidArgument("the model has no nnx.Param")
    return {"params": entries}


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
