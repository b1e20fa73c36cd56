"""The exporter on a 7-billion-parameter Llama-style linen model (Llama-2-7B's shapes: vocab
32000, width 4096, 32 layers, 32 heads, MLP 11008, RMSNorm, untied head), traced
shape-only: seconds and peak memory of ``jaxinit.flax.export``, each variant in a fresh
process, layers as a Python loop and as ``nn.scan``.

    python bench/export_7b.py [--json bench/export_7b.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
import flax.linen as nn
import jaxinit.flax

VOCAB, WIDTH, LAYERS, HEADS, MLP = 32000, 4096, 32, 32, 11008
SCANNED = sys.argv[1] == "scan"

class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        q = nn.Dense(WIDTH, use_bias=False, name="q_proj")(x)
        k = nn.Dense(WIDTH, use_bias=False, name="k_proj")(x)
        v = nn.Dense(WIDTH, use_bias=False, name="v_proj")(x)
        b, t, _ = x.shape
        q, k, v = (a.reshape(b, t, HEADS, WIDTH // HEADS) for a in (q, k, v))
        w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / (WIDTH // HEADS) ** 0.5)
        out = jnp.einsum("bhts,bshd->bthd", w, v).reshape(b, t, WIDTH)
        return nn.Dense(WIDTH, use_bias=False, name="o_proj")(out)

class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _=None):
        x = x + Attention(name="self_attn")(nn.RMSNorm(name="input_layernorm")(x))
        h = nn.RMSNorm(name="post_attention_layernorm")(x)
        gate = nn.Dense(MLP, use_bias=False, name="gate_proj")(h)
        up = nn.Dense(MLP, use_bias=False, name="up_proj")(h)
        x = x + nn.Dense(WIDTH, use_bias=False, name="down_proj")(jax.nn.silu(gate) * up)
        return (x, None) if SCANNED else x

class Llama(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, WIDTH, name="embed_tokens")(tokens)
        if SCANNED:
            stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=LAYERS)
            x, _ = stack(name="layers")(x, None)
        else:
            for i in range(LAYERS):
                x = Block(name=f"layers_{i}")(x)
        x = nn.RMSNorm(name="norm")(x)
        return nn.Dense(VOCAB, use_bias=False, name="lm_head")(x)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
plan = jaxinit.flax.export(Llama(), jax.ShapeDtypeStruct((1, 16), jnp.int32))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the whole process
count = 0
for p in plan["params"]:
    n = 1
    for d in p["shape"]:
        n *= d
    count += n
print(json.dumps({
    "variant": sys.argv[1], "parameters": count, "tensors": len(plan["params"]), "seconds": round(seconds, 2),
    "peak_rss_mib": round(peak / 1024), "rss_before_mib": round(base / 1024),
    "plan_json_bytes": len(json.dumps(plan)),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here too")
    ns = parser.parse_args()
    results = []
    for variant in ("loop", "scan"):
        out = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{variant:>5}: {result['parameters'] / 1e9:.2f} B parameters in {result['tensors']} tensors, "
            f"exported in {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']} MiB "
            f"(JAX and Flax imported: {result['rss_before_mib']} MiB), plan {result['plan_json_bytes']} bytes of JSON"
        )
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
