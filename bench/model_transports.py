"""A whole model over HTTP (one framed request) against gRPC (InitModel), side by side.

    python bench/model_transports.py            # a ~84 MB transformer and a 208-tensor model
    python bench/model_transports.py --quick    # small sizes

``bench/run.py`` runs :func:`measure` against its own server; run alone, this starts one.
Each figure is the median over new seeds (``http_1_plus_n``: the HTTP path before this one,
the plan then one request per tensor, which older servers still get) (nothing is served from the cache), the two
transports alternating so that neither gets the quieter moments of a shared machine;
into memory and to a ``.safetensors`` file (``path=``, written as the bytes arrive).
Target (issue 26): HTTP within 1.2x of gRPC for the same model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jaxinit
from jaxinit import models as m
from jaxinit_server.testing import running_server


def transformer(vocab: int, width: int, blocks: int, mlp: int) -> dict[str, Any]:
    """A Llama-style linen model: embedding, blocks of attention and a gated MLP, normal(0.02) kernels."""
    small = m.init("normal", stddev=0.02)
    block = m.Module(
        m.RMSNorm(width),
        m.MultiHeadAttention(width, num_heads=8, use_bias=False, kernel_init=small),
        m.RMSNorm(width),
        m.Dense(width, mlp, use_bias=False, kernel_init=small),
        m.Dense(width, mlp, use_bias=False, kernel_init=small),
        m.Dense(mlp, width, use_bias=False, kernel_init=small),
        cls="Block",
    )
    return m.Module(m.Embed(vocab, width, embedding_init=small), *[block] * blocks, m.RMSNorm(width))


def many_small(tensors: int) -> dict[str, Any]:
    """Many small tensors (a UNet's count): per-request overhead dominates."""
    return m.raw(
        *(
            {
                "path": f"block_{i // 2}.{'kernel' if i % 2 == 0 else 'bias'}",
                "initializer": "lecun_normal" if i % 2 == 0 else "zeros",
                "shape": [64, 64] if i % 2 == 0 else [64],
            }
            for i in range(tensors)
        )
    )


def _time(url: str, model: dict[str, Any], seed: int, path: str | None) -> float:
    with jaxinit.Client(url, shared_memory=False) as client:
        start = time.perf_counter()
        client.init_model(model, seed, path=path)
        return time.perf_counter() - start


def _time_planned(url: str, model: dict[str, Any], seed: int) -> float:
    """The HTTP model path before the framed answer: the plan, then one request per tensor."""
    with jaxinit.Client(url, shared_memory=False) as client:
        request = client._model_request(model, seed, "linen", "flax", False, "float32")
        start = time.perf_counter()
        list(client._transport._planned_model(request))
        return time.perf_counter() - start


def measure(srv: Any, quick: bool = False) -> dict[str, Any]:
    """HTTP vs gRPC for each model, into memory and to a file; medians of new seeds."""
    rounds = 3 if quick else 5
    shapes = {
        "transformer": transformer(1000, 128, 2, 352) if quick else transformer(8000, 512, 4, 1408),
        "many_small_208": many_small(208),
    }
    seeds = iter(range(9 * 10**6, 10 * 10**6))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        for label, model in shapes.items():
            for target in ("memory", "file"):
                path = str(Path(directory) / "m.safetensors") if target == "file" else None
                for url in (srv.grpc_url, srv.http_url):
                    _time(url, model, next(seeds), path)  # connections and programs warm
                times: dict[str, list[float]] = {"grpc": [], "http": [], "http_1_plus_n": []}
                for _ in range(rounds):
                    for name, url in (("grpc", srv.grpc_url), ("http", srv.http_url)):
                        times[name].append(_time(url, model, next(seeds), path))
                    if path is None:
                        times["http_1_plus_n"].append(_time_planned(srv.http_url, model, next(seeds)))
                grpc_s, http_s = statistics.median(times["grpc"]), statistics.median(times["http"])
                planned = {"http_1_plus_n_s": statistics.median(times["http_1_plus_n"])} if path is None else {}
                with jaxinit.Client(srv.grpc_url) as client:
                    params = client.init_model(model, 0, flat=True)
                out[f"{label}_{target}"] = {
                    "tensors": len(params),
                    "bytes": sum(a.nbytes for a in params.values()),
                    "grpc_s": grpc_s,
                    "http_s": http_s,
                    **planned,
                    "http_vs_grpc": http_s / grpc_s,
                    "target": "<= 1.2 x gRPC",
                    "met": http_s / grpc_s <= 1.2,
                }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with running_server("--log-level", "error", "--cache-bytes", "0") as srv:
        results = measure(srv, args.quick)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
