"""Model-scale rows (issue 26): a Llama-style linen model, jit and eager, against local Flax.

    python bench/model.py            # the 168 M-parameter model, 3 new seeds a row
    python bench/model.py --quick    # a small model of the same structure, one seed a row
    (bench/run.py runs it as row 9, on the server it started)

The model: vocab 32000, width 1024, 8 blocks, MLP 2816, ``normal(0.02)`` kernels and
embedding, RMSNorm scales of ones, an untied head (168 M parameters, 75 leaves). It is
exported once with ``jaxinit.flax.export``; each row then realises it with the public client
API (``client.init_model(plan, seed, path=..., jit=...)``), so it measures whatever
transport code is installed. Every figure is the median over new seeds (none is a cache
hit), after one call that compiles what the row needs; local figures are warm too:

- file: a torch-layout safetensors file over gRPC and over HTTP, vs local
  ``jax.jit(model.init)`` + ``safetensors.numpy.save_file`` of the Flax tree (no transposes:
  a cheaper local baseline than the torch layout the service writes);
- memory: into numpy over same-host shared memory, and over the gRPC stream, vs local
  ``jax.jit(model.init)`` (its leaves brought into numpy);
- jit vs eager: each service row with ``jit=True`` against the same row with ``jit=False``
  (their calls alternate);
- one new 256 MiB ``lecun_normal`` over the gRPC stream vs a warm jitted local call.

Ratios taken side by side in one run are the figures; absolute times on a shared machine
are noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax.traverse_util import flatten_dict

import jaxinit
import jaxinit.flax

FULL = {"vocab": 32000, "width": 1024, "blocks": 8, "mlp": 2816}
QUICK = {"vocab": 1000, "width": 64, "blocks": 2, "mlp": 176}
TARGETS = {
    "file_grpc_vs_local_jit_save": 0.8,
    "shared_memory_vs_local_jit": 0.5,
    "http_vs_grpc_file": 1.2,
    "stream_256mib_vs_local_jit": 0.7,
    "jit_vs_eager": 1.1,
}


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * weight


class Block(nn.Module):
    width: int
    mlp: int

    @nn.compact
    def __call__(self, x: Any) -> Any:
        dense = partial(nn.Dense, use_bias=False, kernel_init=nn.initializers.normal(0.02))
        h = RMSNorm(name="input_layernorm")(x)
        q, k, v = (dense(self.width, name=n)(h) for n in ("q_proj", "k_proj", "v_proj"))
        attention = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(self.width), axis=-1) @ v
        x = x + dense(self.width, name="o_proj")(attention)
        h = RMSNorm(name="post_attention_layernorm")(x)
        gated = nn.silu(dense(self.mlp, name="gate_proj")(h)) * dense(self.mlp, name="up_proj")(h)
        return x + dense(self.width, name="down_proj")(gated)


class Llama(nn.Module):
    vocab: int
    width: int
    blocks: int
    mlp: int

    @nn.compact
    def __call__(self, tokens: Any) -> Any:
        x = nn.Embed(self.vocab, self.width, embedding_init=nn.initializers.normal(0.02), name="embed_tokens")(tokens)
        for i in range(self.blocks):
            x = Block(self.width, self.mlp, name=f"layers_{i}")(x)
        x = RMSNorm(name="norm")(x)
        return nn.Dense(self.vocab, use_bias=False, kernel_init=nn.initializers.normal(0.02), name="lm_head")(x)


def _median(fn: Callable[[int], Any], seeds: list[int]) -> float:
    times = []
    for seed in seeds:
        start = time.perf_counter()
        fn(seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {".".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(tree).items()}


def _service_rows(
    grpc_url: str, http_url: str, plan: Any, where: Path, fresh: Any, repeats: int
) -> dict[str, dict[str, float]]:
    """The service figures, eager and jit: to a file over gRPC and HTTP, into memory over
    shared memory and over the gRPC stream. Per row, eager and jit calls alternate, so that
    a shared machine's load falls on both alike."""
    with (
        jaxinit.Client(grpc_url, shared_memory=False) as grpc,
        jaxinit.Client(http_url) as http,
        jaxinit.Client(grpc_url, shared_memory=True) as shm,
    ):
        calls: dict[str, Callable[[int, bool], Any]] = {
            "file_grpc_s": lambda s, j: grpc.init_model(plan, s, layout="torch", path=where / "g.safetensors", jit=j),
            "file_http_s": lambda s, j: http.init_model(plan, s, layout="torch", path=where / "h.safetensors", jit=j),
            "memory_shared_s": lambda s, j: shm.init_model(plan, s, flat=True, jit=j),
            "memory_grpc_stream_s": lambda s, j: grpc.init_model(plan, s, flat=True, jit=j),
        }
        times: dict[str, dict[str, list[float]]] = {"eager": {}, "jit": {}}
        for name, call in calls.items():
            for jit in (False, True):  # the row's first calls: chunk programs compiled, connections up
                call(next(fresh), jit)
            for _ in range(repeats):
                for jit in (False, True):
                    seed = next(fresh)
                    start = time.perf_counter()
                    call(seed, jit)
                    times["jit" if jit else "eager"].setdefault(name, []).append(time.perf_counter() - start)
    return {mode: {name: statistics.median(t) for name, t in rows.items()} for mode, rows in times.items()}


def model_rows(grpc_url: str, http_url: str, *, quick: bool) -> dict[str, Any]:
    """The rows, against the server at ``grpc_url`` / ``http_url`` (the same server)."""
    sizes = QUICK if quick else FULL
    model = Llama(**sizes)
    tokens = jnp.zeros((1, 8), jnp.int32)
    plan = jaxinit.flax.export(model, jax.ShapeDtypeStruct(tokens.shape, tokens.dtype))
    count = sum(int(np.prod(e["shape"])) for e in plan["params"])
    repeats = 1 if quick else 3
    fresh = iter(range(10**7, 2 * 10**7))

    def seeds() -> list[int]:
        return [next(fresh) for _ in range(repeats)]

    out: dict[str, Any] = {"model": {**sizes, "parameters": count, "leaves": len(plan["params"])}}
    jitted_init = jax.jit(model.init)
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)

        def local_jit(seed: int) -> dict[str, np.ndarray]:
            return _flat(jax.block_until_ready(jitted_init(jax.random.key(seed), tokens))["params"])

        def local_jit_save(seed: int) -> None:
            safetensors.numpy.save_file(local_jit(seed), str(where / "local.safetensors"))

        def local_eager(seed: int) -> None:
            _flat(jax.block_until_ready(model.init(jax.random.key(seed), tokens))["params"])

        local_jit_save(next(fresh))  # compiles
        local_eager(next(fresh))
        local = {
            "jit_s": _median(local_jit, seeds()),
            "jit_save_s": _median(local_jit_save, seeds()),
            "eager_s": _median(local_eager, seeds()),
        }
        out["local"] = local

        rows = _service_rows(grpc_url, http_url, plan, where, fresh, repeats)
        if jit_check := rows.get("jit"):
            # The jit answer is jax.jit(model.init)'s, byte for byte (checked once, outside the timings).
            with jaxinit.Client(grpc_url, shared_memory=False) as grpc:
                got = grpc.init_model(plan, 5, flat=True, jit=True)
            want = local_jit(5)
            assert sorted(got) == sorted(want)
            assert all(np.asarray(got[n]).tobytes() == want[n].tobytes() for n in want), "jit answer differs"
            jit_check["exact_vs_jax_jit_model_init"] = 1.0
        out["service"] = rows

    shape = (1024, 1024) if quick else (8192, 8192)
    init = jax.nn.initializers.lecun_normal()
    warm = jax.jit(lambda k: init(k, shape))
    np.asarray(warm(jax.random.key(0)))
    local_256 = min(_median(lambda s: np.asarray(warm(jax.random.key(s))), seeds()) for _ in range(2))
    with jaxinit.Client(grpc_url, shared_memory=False) as grpc:
        grpc.generate("lecun_normal", next(fresh), shape)
        stream_256 = _median(lambda s: grpc.generate("lecun_normal", s, shape).array, seeds())
    out["tensor_256mib"] = {"shape": list(shape), "local_jit_s": local_256, "grpc_stream_s": stream_256}

    eager, jit = rows["eager"], rows["jit"]
    ratios = {
        "file_grpc_vs_local_jit_save": {m: rows[m]["file_grpc_s"] / local["jit_save_s"] for m in rows},
        "file_http_vs_local_jit_save": {m: rows[m]["file_http_s"] / local["jit_save_s"] for m in rows},
        "shared_memory_vs_local_jit": {m: rows[m]["memory_shared_s"] / local["jit_s"] for m in rows},
        "grpc_stream_vs_local_jit": {m: rows[m]["memory_grpc_stream_s"] / local["jit_s"] for m in rows},
        "http_vs_grpc_file": {m: rows[m]["file_http_s"] / rows[m]["file_grpc_s"] for m in rows},
        "jit_vs_eager": {k: jit[k] / eager[k] for k in eager},
        "stream_256mib_vs_local_jit": stream_256 / local_256,
    }
    out["ratios"] = ratios
    met: dict[str, bool] = {}
    for name, target in TARGETS.items():
        value = ratios[name]
        met[name] = all(v <= target for v in value.values()) if isinstance(value, dict) else value <= target
    out["targets"] = TARGETS
    out["met"] = met
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model, one seed a row")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from jaxinit_server.testing import running_server

    with running_server(
        "--log-level", "error", "--max-tensor-bytes", str(5 * 2**30), "--shared-memory", "--cache-bytes", str(2**30)
    ) as srv:
        results = {
            "mode": "quick" if args.quick else "full",
            "9_model": model_rows(srv.grpc_url, srv.http_url, quick=args.quick),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
