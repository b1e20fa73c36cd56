"""Run by a thin client environment (the oldest or the newest pins; no JAX, no ml_dtypes):
fetches tensors and reports what it got.

Usage: python thin_client.py GRPC_URL HTTP_URL OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np

import jaxinit


def main() -> None:
    grpc_url, http_url, out_dir = sys.argv[1:4]
    out = pathlib.Path(out_dir)
    report: dict[str, object] = {"numpy": np.__version__}
    import google.protobuf
    import grpc

    report.update(protobuf=google.protobuf.__version__, grpcio=grpc.__version__)
    for name, url in (("grpc", grpc_url), ("http", http_url)):
        with jaxinit.Client(url) as client:
            np.save(out / f"{name}.npy", client.lecun_normal()(42, (64, 32)))
            params = client.init_model(jaxinit.models.Dense(8, 4), 0, flat=True)
            np.savez(out / f"{name}-model.npz", **params)
            # bfloat16 and float8 without ml_dtypes: raw bits, their exact values, files.
            for dtype in ("bfloat16", "float8_e4m3fn"):
                array = client.normal()(0, (4, 8), dtype)
                report[f"{name}_{dtype}_dtype"] = jaxinit.protocol.codec.dtype_name(array.dtype)
                (out / f"{name}-{dtype}.bin").write_bytes(array.tobytes())
                np.save(out / f"{name}-{dtype}-float32.npy", jaxinit.to_float32(array))
                try:
                    array + 1
                    report[f"{name}_{dtype}_arithmetic"] = "computed on the bits"
                except TypeError:
                    report[f"{name}_{dtype}_arithmetic"] = "refused"
            model = jaxinit.models.Dense(8, 4, param_dtype="bfloat16")
            client.init_model(model, 0, path=str(out / f"{name}-bf16.safetensors"))
            report[f"{name}_bf16_model_dtypes"] = sorted(
                jaxinit.protocol.codec.dtype_name(a.dtype) for a in client.init_model(model, 0, flat=True).values()
            )
        cli = [sys.executable, "-m", "jaxinit.cli", "--url", url, "get", "normal", "--shape", "4,8", "--seed", "0"]
        subprocess.run([*cli, "--dtype", "bfloat16", "-o", str(out / f"{name}-cli.safetensors")], check=True)
    report.update(jax_loaded="jax" in sys.modules, ml_dtypes_loaded="ml_dtypes" in sys.modules)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
