"""The core's exactness under the JAX of the venv that runs this script (one per supported
version: tests/integration/test_jax_versions.py), against that same JAX called directly.

    python jax_version_matrix.py REPORT.json [COMPILATION_CACHE_DIR]

A reduced matrix: every initializer x a dtype of each class (float32, float16, bfloat16,
float64, complex64, int32, a float8) x both PRNG modes; every key implementation this JAX
has (and a refusal naming the version for each it lacks, and for a dtype it lacks);
derived and stacked keys; ranges; a tensor of several chunks; jit values. Also the
warm-up self-check's verdict. Each answer is compared byte for byte, its provenance's
jax_version with this JAX's. Writes a JSON report; exits 1 if anything differs.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib.version
import numpy as np

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPES, to_wire_bytes
from jaxinit.protocol.errors import InvalidArgument, JaxError
from jaxinit.protocol.keys import KEY_IMPLS, Key
from jaxinit_server.core import GenerateParams, Limits, Service, engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from in_core import Ask, make_all  # noqa: E402

DTYPE_CLASSES = ["float32", "float16", "bfloat16", "float64", "complex64", "int32", "float8_e4m3fn", None]
MODES = [True, False]
ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}
SIXTY_FOUR = {"float64", "complex128", "int64", "uint64"}


def x64_on(on: bool) -> Any:
    """jax.enable_x64, on every supported JAX (0.4.38 and 0.6.2 have it in jax.experimental): the
    reference's own spelling, independent of the server's compatibility module."""
    manager = getattr(jax, "enable_x64", None)
    if manager is None:
        from jax.experimental import enable_x64 as manager
    return manager(on)


def jax_key(key: Any) -> Any:
    """The JAX key for ``key``: an int seed, ("seed", s, impl), ("data", words, impl), or a
    (base, steps) pair of fold_in/split steps."""
    if isinstance(key, int):
        return jax.random.key(key)
    if key[0] == "seed":
        return jax.random.key(key[1], impl=key[2])
    if key[0] == "data":
        return jax.random.wrap_key_data(np.asarray(key[1], np.uint32), impl=key[2])
    base = jax_key(key[1])
    for step in key[2]:
        base = (
            jax.random.fold_in(base, np.uint32(step[1]))
            if step[0] == "fold_in"
            else jax.random.split(base, step[1])[step[2]]
        )
    return base


def reference(
    name: str,
    args: dict[str, Any],
    key: Any,
    shape: tuple[int, ...],
    dtype: str | None,
    partitionable: bool,
    jit: bool = False,
) -> np.ndarray | Exception:
    """What this JAX returns for the request (or what it raises), called as a user would."""
    asked = dtype or args.get("dtype")
    kwargs = {k: (np.asarray(v) if k == "value" and isinstance(v, list) else v) for k, v in args.items()}
    builder = getattr(jax.nn.initializers, name.removesuffix("_init"))
    init = builder if name.removesuffix("_init") in ("zeros", "ones") else builder(**kwargs)
    try:
        with jax.threefry_partitionable(partitionable), x64_on(asked in SIXTY_FOUR):
            k = None if key is None else jax_key(key)
            call = (lambda k: init(k, shape)) if dtype is None else (lambda k: init(k, shape, DTYPES[dtype]))
            return np.asarray(jax.jit(call)(k) if jit else call(k))
    except Exception as exc:
        return exc


def as_key(key: Any) -> Key | int | None:
    if key is None or isinstance(key, int):
        return key
    if key[0] == "seed":
        return Key(seed=key[1], impl=key[2])
    if key[0] == "data":
        return Key(data=tuple(key[1]), impl=key[2])
    base = as_key(key[1])
    assert isinstance(base, Key)
    return Key(seed=base.seed, data=base.data, impl=base.impl, derive=tuple(key[2]))


class Report:
    def __init__(self) -> None:
        self.cases = 0
        self.failures: list[str] = []
        self.refused: list[str] = []

    def check(self, what: str, got: Any, want: Any, *, start: int = 0, stop: int | None = None) -> None:
        self.cases += 1
        if isinstance(want, Exception):
            if not isinstance(got, JaxError) or got.message != str(want):
                self.failures.append(f"{what}: local JAX raised {want!r}, the core gave {got!r}"[:600])
            return
        if isinstance(got, Exception):
            self.failures.append(f"{what}: the core raised {got!r}"[:600])
            return
        expected = bytes(to_wire_bytes(np.ascontiguousarray(want).reshape(-1)[start:stop]))
        if got.data != expected:
            self.failures.append(f"{what}: bytes differ")
        elif got.provenance.jax_version != jax.__version__:
            self.failures.append(f"{what}: provenance says JAX {got.provenance.jax_version}")


def main(out: Path, cache: str | None) -> int:
    report = Report()
    disabled = engine.self_check()
    service = Service(Limits(max_tensor_bytes=2**26), whole_workers=1, cache_bytes=0, compilation_cache_dir=cache)
    service.ready = True
    try:
        run(service, report)
    except Exception:
        report.failures.append(traceback.format_exc()[-3000:])
    finally:
        service.close()
    lacking_impls = sorted(set(KEY_IMPLS) - {i for i in KEY_IMPLS if _has_impl(i)})
    body = {
        "jax": jax.__version__,
        "jaxlib": jaxlib.version.__version__,
        "numpy": np.__version__,
        "default_partitionable": bool(jax.config.jax_threefry_partitionable),
        "cases": report.cases,
        "failures": report.failures,
        "refused": report.refused,
        "self_check_disabled": disabled,
        "key_impls_lacking": lacking_impls,
    }
    out.write_text(json.dumps(body, indent=1))
    return 1 if report.failures else 0


def _has_impl(impl: str) -> bool:
    try:
        jax.random.key(0, impl=impl)
    except ValueError:
        return False
    return True


def _lacks(dtype: str) -> bool:
    return not hasattr(jnp, dtype)


def run(service: Service, report: Report) -> None:
    # Every initializer x a dtype of each class x both modes.
    cases = []
    for name in sorted(CATALOG):
        for dtype in DTYPE_CLASSES:
            for mode in MODES:
                cases.append((name, ARGS.get(name, {}), (3, 4, 5), dtype, mode))
    asks = [Ask(n, 42, s, d, args=a, threefry_partitionable=p) for n, a, s, d, p in cases]
    for (name, args, shape, dtype, mode), got in zip(cases, make_all(service, asks), strict=True):
        report.check(f"{name} {dtype} partitionable={mode}", got, reference(name, args, 42, shape, dtype, mode))

    # Every key implementation this JAX has, both modes; one it lacks is refused, naming the version.
    impls = [i for i in KEY_IMPLS if _has_impl(i)]
    for impl in KEY_IMPLS:
        if impl in impls:
            continue
        (got,) = make_all(service, [Ask("normal", Key(seed=1, impl=impl), (4, 4))])
        report.cases += 1
        if not (isinstance(got, InvalidArgument) and f"JAX {jax.__version__}" in got.message and impl in got.message):
            report.failures.append(f"key impl {impl} (not in this JAX): the core gave {got!r}")
        else:
            report.refused.append(got.message)
    key_cases = []
    for impl in impls:
        for name in ("lecun_normal", "normal", "uniform", "truncated_normal", "orthogonal"):
            for mode in MODES:
                key_cases.append((name, ("seed", 2**40 + 5, impl), mode))
                key_cases.append((name, ("fold", ("seed", 11, impl), [("fold_in", 3), ("split", 4, 2)]), mode))
    asks = [Ask(n, as_key(k), (5, 6), threefry_partitionable=m) for n, k, m in key_cases]
    for (name, key, mode), got in zip(key_cases, make_all(service, asks), strict=True):
        report.check(f"{name} key={key} partitionable={mode}", got, reference(name, {}, key, (5, 6), None, mode))

    # A dtype this JAX lacks is refused, naming the version.
    for dtype in (d for d in DTYPES if _lacks(d)):
        (got,) = make_all(service, [Ask("normal", 1, (4, 4), dtype)])
        report.cases += 1
        if not (isinstance(got, InvalidArgument) and f"JAX {jax.__version__}" in got.message and dtype in got.message):
            report.failures.append(f"dtype {dtype} (not in this JAX): the core gave {got!r}")
        else:
            report.refused.append(got.message)

    for mode in MODES:
        # Several chunks (the chunked route past one chunk), a range, a stacked key, jit.
        big = (1100, 1000)
        ranged = Ask("he_uniform", 9, (300, 200), "bfloat16", threefry_partitionable=mode, offset=4097, count=30000)
        stacked = Key(seed=9, derive=(("fold_in", 5), ("stack", 3)))
        asks = [
            Ask("lecun_normal", 5, big, threefry_partitionable=mode),
            ranged,
            Ask("glorot_normal", stacked, (3, 6, 5), threefry_partitionable=mode),
            Ask("normal", 8, (64, 64), args={"stddev": 0.01}, threefry_partitionable=mode, jit=True),
        ]
        routes = [service.prepare(a.params()).cost.route for a in asks[:2]]  # decided once, in the plan
        if routes != [engine.CHUNKED, engine.CHUNKED]:
            report.failures.append(f"partitionable={mode}: the chunked route was not taken ({routes})")
        whole, part, stack, jitted = make_all(service, asks)
        report.check(
            f"lecun_normal {big} partitionable={mode}", whole, reference("lecun_normal", {}, 5, big, None, mode)
        )
        want = reference("he_uniform", {}, 9, (300, 200), "bfloat16", mode)
        report.check(f"he_uniform range partitionable={mode}", part, want, start=4097, stop=4097 + 30000)
        init = jax.nn.initializers.glorot_normal()
        with jax.threefry_partitionable(mode):
            base = jax.random.fold_in(jax.random.key(9), 5)
            want_stack = np.stack([np.asarray(init(k, (6, 5))) for k in jax.random.split(base, 3)])
        report.check(f"glorot_normal stacked partitionable={mode}", stack, want_stack)
        want_jit = reference("normal", {"stddev": 0.01}, 8, (64, 64), None, mode, jit=True)
        report.check(f"normal jit partitionable={mode}", jitted, want_jit)

    # Defaults: an unset mode is the installed JAX's (off before 0.5.0, on from it).
    resolved = service.prepare(GenerateParams("normal", (2,), key=Key(seed=0))).resolved
    report.cases += 1
    if resolved.threefry_partitionable is not bool(jax.config.jax_threefry_partitionable):
        report.failures.append("an unset threefry_partitionable is not this JAX's default")


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
