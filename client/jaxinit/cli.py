"""The ``jaxinit`` command: fetch tensors and whole models from a jaxinit server.

    jaxinit get lecun_normal --shape 784,256 --seed 0 --dtype bfloat16 -o w.npy
    jaxinit model mlp.json --seed 0 --layout torch -o mlp.safetensors
    jaxinit export mypkg.models:Transformer --input-shape 1,128 --input-dtype int32 -o plan.json
    jaxinit verify mlp.safetensors
    jaxinit list
    jaxinit describe variance_scaling

The server is ``--url`` or ``$JAXINIT_URL`` (default ``grpc://127.0.0.1:50051``).
Files: ``.npy``, ``.npz``, ``.safetensors`` or ``.bin`` (raw little-endian bytes, C
order). A progress bar shows on a terminal (``--no-progress`` hides it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from jaxinit._client import Client, arrays_file
from jaxinit._verify import digest_entries, refetch_metadata, verify_file
from jaxinit.protocol import __version__
from jaxinit.protocol.catalog import args_from_text, unknown_message
from jaxinit.protocol.codec import dtype_name, npy_dtype, to_wire_bytes
from jaxinit.protocol.errors import InvalidArgument, JaxinitError, UnknownDtype, UnknownInitializer, did_you_mean
from jaxinit.protocol.keys import Key, derive_from_text

__all__ = ["main"]

DEFAULT_URL = "grpc://127.0.0.1:50051"
SUFFIXES = (".npy", ".npz", ".safetensors", ".bin")
MODEL_SUFFIXES = (".safetensors", ".npz")
EXAMPLES = """examples:
  jaxinit get lecun_normal --shape 784,256 --seed 0 -o w.npy
  jaxinit get variance_scaling --shape 3,3,64,128 --seed 7 --arg scale=2.0 --arg mode=fan_out \\
      --arg distribution=normal --dtype bfloat16 -o k.safetensors
  jaxinit get normal --shape 4 --seed 0 --format bin -o - | xxd | head    # to stdout
  jaxinit model mlp.json --seed 0 --layout torch -o mlp.safetensors
  jaxinit export mypkg.models:Transformer --input-shape 1,128 --input-dtype int32 -o plan.json  # needs JAX, Flax
  jaxinit model plan.json --seed 0 --layout torch -o init.safetensors    # anywhere, no JAX
  jaxinit verify mlp.safetensors        # fetch every tensor again (same JAX version) and compare
  jaxinit --url http://127.0.0.1:8000 list                               # over HTTP
  jaxinit describe variance_scaling
"""


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class _Parser(argparse.ArgumentParser):
    """argparse, with "Did you mean ...?" on a word outside a closed set (a subcommand, a
    --mode, a --layout, a --format), as Python 3.12's suggest_on_error does."""

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match:
            message += did_you_mean(match.group(1), re.findall(r"'([^']*)'", match.group(2)))
        super().error(message)


def _dtype(text: str) -> str:
    """A dtype name, checked here (with a suggestion) before anything is sent."""
    try:
        return dtype_name(text)
    except UnknownDtype as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxinit",
        description="Fetch JAX-exact initial weights from a jaxinit server.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jaxinit {__version__}")
    parser.add_argument(
        "--url",
        default=os.environ.get("JAXINIT_URL", DEFAULT_URL),
        help="grpc(s)://host:port or http(s)://host:port (default: $JAXINIT_URL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per attempt (default %(default)s)")
    parser.add_argument(
        "--token",
        default=os.environ.get("JAXINIT_TOKEN"),
        help="bearer token for a server with API keys (default: $JAXINIT_TOKEN)",
    )
    parser.add_argument(
        "--ca-bundle",
        default=os.environ.get("JAXINIT_CA_BUNDLE"),
        help="PEM file of CAs to trust for grpcs:// and https:// (default: $JAXINIT_CA_BUNDLE, else the system's)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries when the server is unreachable, overloaded or a stream breaks (default 3)",
    )
    parser.add_argument(
        "--cacheable",
        action="store_true",
        help="HTTP: fetch with the GET form at a canonical URL, so HTTP caches can answer",
    )
    parser.add_argument(
        "--shared-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="take tensors through same-host shared memory where the server offers it (default: for a server "
        "on a loopback address); --no-shared-memory: always in the stream",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    commands.add_parser("list", help="the server's initializers")
    describe = commands.add_parser("describe", help="one initializer's arguments, types and defaults")
    describe.add_argument("name", help="an initializer, e.g. variance_scaling")

    def pin_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--jax-version",
            help="answered only by this JAX version (0.10 takes any 0.10.x; 'local': the JAX installed here), "
            "else refused (412 / FAILED_PRECONDITION)",
        )
        p.add_argument("--backend", help="answered only on this JAX backend (cpu, gpu, tpu)")

    def key_options(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--seed", type=int, help="jax.random.key(seed) on the server")
        group.add_argument("--key-data", type=_ints, metavar="W,W", help="raw key data (uint32 words)")
        p.add_argument(
            "--key-impl",
            default="threefry2x32",
            help="key implementation: threefry2x32, rbg, ... (default %(default)s)",
        )
        p.add_argument(
            "--threefry-partitionable",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="JAX's jax_threefry_partitionable for this request (default: the server's)",
        )
        p.add_argument(
            "--enable-x64",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="JAX's jax_enable_x64 for this request: float64 and int64 defaults (default: the server's)",
        )
        pin_options(p)
        formats = MODEL_SUFFIXES if p.prog.endswith("model") else SUFFIXES
        stdout_format = _stdout_suffix(formats).lstrip(".")
        p.add_argument(
            "-o",
            "--output",
            required=True,
            help=f"output file: {', '.join(formats)} (by its suffix), or - for stdout (with --format)",
        )
        p.add_argument(
            "--format",
            choices=[f.lstrip(".") for f in formats],
            help=f"the file's format when its name does not say it (default: from the suffix; {stdout_format} for -)",
        )
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="a progress bar (default: when stderr is a terminal)",
        )

    get = commands.add_parser("get", help="one tensor")
    get.add_argument("name", help="initializer, e.g. lecun_normal")
    get.add_argument("--shape", type=_ints, required=True, metavar="D,D", help="e.g. 784,256 ('' for a scalar)")
    get.add_argument("--dtype", type=_dtype, help="e.g. float32, bfloat16 (default: JAX's)")
    get.add_argument(
        "--arg",
        type=_arg,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a factory argument, a JSON literal or a string: --arg scale=2.0 --arg mode=fan_in",
    )
    get.add_argument(
        "--fold-in",
        type=int,
        action="append",
        default=[],
        metavar="X",
        help="fold this uint32 into the key (repeatable, in order)",
    )
    get.add_argument(
        "--derive",
        default="",
        metavar="STEPS",
        help="then these key steps, in order: fold_in:X, split:NUM:INDEX (jax.random.split(key, NUM)[INDEX]) and "
        "stack:NUM (every key of the split, a batch: the shape starts with NUM, one slice per key), "
        "comma-separated: --derive split:4:2,fold_in:7",
    )
    get.add_argument("--offset", type=int, help="first flat element of a range")
    get.add_argument("--count", type=int, help="flat elements in the range")
    get.add_argument("--parallel", type=int, help="fetch as this many ranges at once")
    get.add_argument("--name", dest="tensor_name", help="the tensor's name in .npz/.safetensors (default: NAME)")
    key_options(get)

    model = commands.add_parser("model", help="a whole model's parameters (see the README's model section)")
    model.add_argument("description", help="a JSON file with the model description ('-' for stdin)")
    model.add_argument(
        "--mode", default="linen", choices=["linen", "nnx"], help="the description's Flax API (default %(default)s)"
    )
    model.add_argument(
        "--layout",
        default="flax",
        choices=["flax", "torch"],
        help="flax: Flax's names and shapes; torch: a PyTorch state_dict's (default %(default)s)",
    )
    model.add_argument(
        "--fix-rng-separator",
        action="store_true",
        help="Flax's flax_fix_rng_separator setting, for models made with it on",
    )
    model.add_argument(
        "--param-dtype", type=_dtype, default="float32", help="the modules' param_dtype (default %(default)s)"
    )
    model.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="jax.jit(model.init)'s values: ask for them if your code initialises under jax.jit, as most training "
        "code does (default: the plan's, else eager model.init's)",
    )
    key_options(model)

    verify = commands.add_parser(
        "verify",
        help="fetch a file's tensors again, pinned to the JAX version and backend that made them, and compare",
    )
    verify.add_argument("file", help="a .safetensors file written by jaxinit (get, model, or init_model(path=...))")

    export = commands.add_parser(
        "export",
        help="trace a linen model shape-only into a plan (needs JAX and Flax here; `jaxinit model` realises it)",
    )
    export.add_argument(
        "target",
        help="MODULE:NAME: linen, a Module class or instance, or a function making one; nnx, a Module class or "
        "function called with rngs=nnx.Rngs(...)",
    )
    export.add_argument(
        "--mode", default="linen", choices=["linen", "nnx"], help="the model's Flax API (default %(default)s)"
    )
    export.add_argument(
        "--rng-streams",
        default="params",
        metavar="NAMES",
        help="nnx: the streams of the model's nnx.Rngs, comma-separated (default params; default for nnx.Rngs(0))",
    )
    export.add_argument(
        "--input-shape",
        action="append",
        type=_ints,
        default=[],
        metavar="DIMS",
        help="a sample input's shape, one per input of __call__ (repeat): --input-shape 1,128",
    )
    export.add_argument(
        "--input-dtype",
        action="append",
        type=_dtype,
        default=[],
        metavar="DTYPE",
        help="each input's dtype, in --input-shape order (default float32; int32 for token ids)",
    )
    export.add_argument("--module-kwargs", default="{}", metavar="JSON", help="arguments for the class or function")
    export.add_argument("--init-kwargs", default="{}", metavar="JSON", help='more arguments of init: {"train": false}')
    export.add_argument(
        "--jit", action="store_true", help="the plan's users initialise under jax.jit: their default (see model --jit)"
    )
    export.add_argument(
        "--partial", action="store_true", help="write what can be exported; list the refused parameters on stderr"
    )
    export.add_argument("-o", "--output", default="-", help="the plan's JSON file (default: stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 server/transport error, 2 bad usage)."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command == "export":  # needs no server
        try:
            _export(ns)
        except (InvalidArgument, ValueError, TypeError, ImportError, AttributeError) as exc:
            print(f"jaxinit: error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        with Client(
            ns.url,
            timeout=ns.timeout,
            token=ns.token,
            ca_bundle=ns.ca_bundle,
            retries=ns.retries,
            cacheable=ns.cacheable,
            shared_memory=ns.shared_memory,
        ) as client:
            if ns.command == "list":
                for entry in client.list_initializers()["initializers"]:
                    print(f"{entry['name']:<20} {entry['summary']}")
            elif ns.command == "describe":
                print(_describe(client.list_initializers(), ns.name))
            elif ns.command == "get":
                _get(client, ns)
            elif ns.command == "verify":
                return _verify(client, ns)
            else:
                _model(client, ns)
    except (InvalidArgument, UnknownInitializer) as exc:
        print(f"jaxinit: error: {exc}", file=sys.stderr)
        return 2
    except JaxinitError as exc:
        print(f"jaxinit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # an extra this call needs is not installed; the message names it
        hint = ""
        if ns.url.startswith("grpc") and "grpc" in str(exc):
            hint = "; or use the HTTP gateway, which needs nothing more: --url http://HOST:8000"
        print(f"jaxinit: error: {exc}{hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `jaxinit ... -o - | head`: the reader has gone, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"jaxinit: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _export(ns: argparse.Namespace) -> None:
    import importlib

    module_name, sep, attr = ns.target.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgument(f"the target is MODULE:NAME (mypkg.models:Transformer), got {ns.target!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` finds the caller's own packages
    try:
        import jax
        import jax.numpy as jnp
        from flax import linen
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"jaxinit export traces the model on this machine, so it needs JAX and Flax here ({exc}): "
            "pip install jax flax (the versions your model is written for); `jaxinit model` then needs neither"
        ) from None
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"cannot import {module_name!r} ({exc}): run jaxinit from the directory that holds it, or install it"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            names = [n for n in dir(target) if not n.startswith("_")]
            raise InvalidArgument(
                f"{module_name} has no {attr!r}.{did_you_mean(part, names)} (the target is MODULE:NAME)"
            ) from None

    module_kwargs, init_kwargs = json.loads(ns.module_kwargs), json.loads(ns.init_kwargs)
    from jaxinit.flax import export

    if ns.mode == "nnx":
        streams = [s for s in ns.rng_streams.split(",") if s]
        plan = export(
            lambda rngs: target(rngs=rngs, **module_kwargs),
            mode="nnx",
            rng_streams=streams,
            jit=ns.jit,
            partial=ns.partial,
        )
        _write_plan(plan, ns.output)
        return
    module = target if isinstance(target, linen.Module) else target(**module_kwargs)
    if not isinstance(module, linen.Module):
        raise InvalidArgument(f"{ns.target} made a {type(module).__name__}, not a linen Module")
    dtypes = ns.input_dtype or []
    if len(dtypes) > len(ns.input_shape):
        raise InvalidArgument("more --input-dtype than --input-shape")
    inputs = [
        jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtypes[i] if i < len(dtypes) else "float32"))  # type: ignore[no-untyped-call]
        for i, shape in enumerate(ns.input_shape)
    ]
    try:
        plan = export(module, *inputs, jit=ns.jit, partial=ns.partial, **init_kwargs)
    except (TypeError, ValueError) as exc:
        if "integer" in str(exc) and not ns.input_dtype:
            raise InvalidArgument(
                f"{exc} -- this model takes integer inputs (token ids, say): pass --input-dtype int32 "
                "for each such input, in --input-shape order"
            ) from None
        raise
    _write_plan(plan, ns.output)


def _write_plan(plan: dict[str, Any], output: str) -> None:
    for item in getattr(plan, "refused", []):
        print(f"jaxinit: refused {item['path']} ({item['construct']}): {item['reason']}", file=sys.stderr)
    text = json.dumps(plan, indent=1)
    if output == "-":
        print(text)
    else:
        with open(output, "w") as out:
            out.write(text + "\n")
        print(f"{output}: {len(plan['params'])} parameters", file=sys.stderr)


def _describe(registry: dict[str, Any], name: str) -> str:
    entry = next((e for e in registry["initializers"] if e["name"] == name), None)
    if entry is None:
        raise UnknownInitializer(unknown_message(name))
    lines = [f"{entry['name']} ({entry['source']}, {entry['kind']}): {entry['summary']}"]
    for a in entry["arguments"]:
        default = "required" if a["required"] else f"default {a['default_json']}"
        choices = f" one of {', '.join(a['choices'])};" if a["choices"] else ""
        lines.append(f"  {a['name']}: {a['type']},{choices} {default}. {a['doc']}".rstrip())
    return "\n".join(lines)


def _key(ns: argparse.Namespace, fold_in: Sequence[int] = (), derive: str = "") -> Key:
    steps = derive_from_text(derive)
    if ns.seed is not None:
        return Key(seed=ns.seed, impl=ns.key_impl, fold_in=tuple(fold_in), derive=steps)
    return Key(data=tuple(ns.key_data), impl=ns.key_impl, fold_in=tuple(fold_in), derive=steps)


def _settings(client: Client, ns: argparse.Namespace) -> None:
    client.threefry_partitionable = ns.threefry_partitionable
    client.enable_x64 = ns.enable_x64
    client.jax_version = ns.jax_version
    client.backend = ns.backend
    client.progress = sys.stderr.isatty() if ns.progress is None else ns.progress
    if ns.progress is None and client.progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            client.progress = False  # a bar was not asked for: do without


def _stdout_suffix(formats: Sequence[str]) -> str:
    """What ``-o -`` writes without --format: npy for a tensor, safetensors for a model."""
    return ".npy" if ".npy" in formats else formats[0]


def _suffix(ns: argparse.Namespace, formats: Sequence[str] = SUFFIXES) -> str:
    if ns.format:
        return f".{ns.format}"
    if ns.output == "-":
        return _stdout_suffix(formats)
    for suffix in formats:
        if ns.output.endswith(suffix):
            return suffix
    raise InvalidArgument(f"cannot tell the format of {ns.output!r}: end it in {', '.join(formats)} or give --format")


def _write(ns: argparse.Namespace, data: bytes) -> None:
    if ns.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(ns.output, "wb") as file:
            file.write(data)


def _report(ns: argparse.Namespace, line: str) -> None:
    """What was written; on stderr when the data itself goes to stdout."""
    print(
        f"wrote {'stdout' if ns.output == '-' else ns.output}: {line}",
        file=sys.stderr if ns.output == "-" else sys.stdout,
    )


def _get(client: Client, ns: argparse.Namespace) -> None:
    suffix = _suffix(ns)
    _settings(client, ns)
    tensor = client.generate(
        ns.name,
        _key(ns, ns.fold_in, ns.derive),
        ns.shape,
        ns.dtype,
        args=args_from_text(dict(ns.arg)),
        offset=ns.offset,
        count=ns.count,
        parallel=ns.parallel,
    )
    array, name = tensor.array, ns.tensor_name or ns.name
    provenance = tensor.provenance
    metadata = {
        "request": provenance.canonical_request,
        "request_digest": provenance.request_digest,
        "jax_version": provenance.jax_version,
        "backend": provenance.backend,
        **digest_entries({name: array}),
    }
    if suffix in (".npz", ".safetensors"):
        _write(ns, arrays_file(suffix, {name: array}, metadata))
    elif suffix == ".npy":  # bfloat16/float8 are stored as void, as the REST .npy does
        buffer = io.BytesIO()
        np.save(buffer, array.view(npy_dtype(array.dtype)))
        _write(ns, buffer.getvalue())
    else:
        _write(ns, to_wire_bytes(array).tobytes())
    _report(
        ns,
        f"{ns.name} {dtype_name(array.dtype)}{list(array.shape)}, {array.nbytes} bytes; "
        f"jax {provenance.jax_version} on {provenance.backend}; request {provenance.request_digest[:16]}; "
        f"{_how(tensor.shared_memory, {tensor.cache: 1} if tensor.cache else {})}",
    )


# How the server came by a tensor (Tensor.cache), as the wrote line says it.
_CACHES = {
    "hit": "from the server's memory cache",
    "disk": "from the server's disk cache",
    "shared": "joined an identical request in flight",
    "miss": "made for this request",
    "none": "made for this request",
}


def _how(shared_memory: bool, caches: dict[str, int]) -> str:
    """``through shared memory`` or ``streamed``, then how the server came by the tensor(s)."""
    parts = ["through shared memory" if shared_memory else "streamed"]
    total = sum(caches.values())
    said: dict[str, int] = {}
    for cache, count in caches.items():
        if cache in _CACHES:
            said[_CACHES[cache]] = said.get(_CACHES[cache], 0) + count
    for words, count in said.items():
        parts.append(words if total == 1 else f"{count} {words}")
    return ", ".join(parts)


def _model(client: Client, ns: argparse.Namespace) -> None:
    suffix = _suffix(ns, MODEL_SUFFIXES)
    try:
        if ns.description == "-":
            text = sys.stdin.read()
        else:
            with open(ns.description, encoding="utf-8") as file:
                text = file.read()
        description = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{ns.description} is not JSON: {exc}") from None
    _settings(client, ns)
    # A file named for its format is written by init_model (a .safetensors as the bytes arrive).
    to_file = ns.output != "-" and ns.output.endswith(suffix)
    params = client.init_model(
        description,
        _key(ns),
        mode=ns.mode,
        layout=ns.layout,
        fix_rng_separator=ns.fix_rng_separator,
        param_dtype=ns.param_dtype,
        flat=True,
        jit=ns.jit,
        path=ns.output if to_file else None,
    )
    if not to_file:  # (a file init_model wrote carries its request already)
        request = _model_request(client, ns, description)
        metadata = {**params.metadata, **refetch_metadata(params, model_request=request)}
        _write(ns, arrays_file(suffix, dict(params), metadata))
    size = sum(a.nbytes for a in params.values())
    _report(
        ns,
        f"{len(params)} tensors, {size} bytes of parameters; "
        f"jax {params.metadata['jax_version']}; model {params.metadata['model_digest'][:16]}; "
        f"{_how(params.shared_memory, params.caches)}",
    )


def _model_request(client: Client, ns: argparse.Namespace, description: Any) -> dict[str, Any]:
    """The model request as sent (what a model file carries to be verified)."""
    request = client._model_request(
        description,
        _key(ns),
        ns.mode,
        ns.layout,
        ns.fix_rng_separator,
        ns.param_dtype,
        jit=ns.jit,
    )
    return request.to_json()


def _verify(client: Client, ns: argparse.Namespace) -> int:
    """Re-fetch every tensor of ns.file and compare; 0 when all match, 1 when any differs."""
    with open(ns.file, "rb") as file:
        data = file.read()
    metadata, findings = verify_file(client, data)
    differ = [f for f in findings if not f.ok]
    for finding in findings:
        print(f"{'ok' if finding.ok else 'DIFFERS'}  {finding.name}{'' if finding.ok else ': ' + finding.why}")
    where = f"jax {metadata.get('jax_version', '?')} on {metadata.get('backend', '?')}"
    if differ:
        print(f"{ns.file}: {len(differ)} of {len(findings)} tensors differ ({where})", file=sys.stderr)
        return 1
    print(f"{ns.file}: all {len(findings)} tensors match ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
