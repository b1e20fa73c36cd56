"""Run by a thin client environment (the oldest or the newest pins; no JAX, no ml_dtypes):
fetches tensors and reports what it got.

Usage: python thin_client.py GRPC_URL HTTP_URL OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

import jaxinit


def main() -> None:
    grpc_url, http_url, out_dir = sys.argv[1:4]
    out = pathlib.Path(out_dir)
    report: dict[str, object] = {
        "numpy": np.__version__,
        "jax_loaded": "jax" in sys.modules,
        "ml_dtypes_loaded": "ml_dtypes" in sys.modules,
    }
    import google.protobuf
    import grpc

    report.update(protobuf=google.protobuf.__version__, grpcio=grpc.__version__)
    for name, url in (("grpc", grpc_url), ("http", http_url)):
        with jaxinit.Client(url) as client:
            np.save(out / f"{name}.npy", client.lecun_normal()(42, (64, 32)))
            params = client.init_model(jaxinit.models.Dense(8, 4), 0, flat=True)
            np.savez(out / f"{name}-model.npz", **params)
            try:
                client.normal()(0, (4,), "bfloat16")
                report[f"{name}_bfloat16"] = "no error"
            except ImportError as exc:
                report[f"{name}_bfloat16"] = str(exc)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
