"""Run by a client environment beside ml_dtypes 0.4.1 and numpy < 2.1 (what TensorFlow
2.15-2.17 pin): fetches tensors over HTTP, with the API and the CLI, and writes what it got.

Usage: python old_ml_dtypes_client.py HTTP_URL OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import platform
import subprocess
import sys

import ml_dtypes
import numpy as np

import jaxinit

DTYPES = ("float32", "bfloat16", "float8_e4m3fn", "float8_e3m4")  # ml_dtypes 0.4 has no float8_e3m4


def main() -> None:
    url, out_dir = sys.argv[1:3]
    out = pathlib.Path(out_dir)
    report: dict[str, object] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
    }
    with jaxinit.Client(url) as client:
        for dtype in DTYPES:
            array = client.normal()(0, (4, 8), dtype)
            report[f"{dtype}_name"] = jaxinit.protocol.codec.dtype_name(array.dtype)
            report[f"{dtype}_type"] = f"{array.dtype.type.__module__}.{array.dtype.type.__name__}"
            (out / f"{dtype}.bin").write_bytes(array.tobytes())
            if dtype != "float32":
                np.save(out / f"{dtype}-float32.npy", jaxinit.to_float32(array))
    # The CLI's .npy of bfloat16 holds plain |V2: to_float32 reads it with dtype=.
    subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "jaxinit"),
            "--url",
            url,
            "get",
            "normal",
            "--shape",
            "4,8",
            "--seed",
            "0",
            "--dtype",
            "bfloat16",
            "-o",
            str(out / "cli-bfloat16.npy"),
        ],
        check=True,
        timeout=120,
    )
    loaded = np.load(out / "cli-bfloat16.npy")
    report["cli_npy_dtype"] = str(loaded.dtype)
    np.save(out / "cli-bfloat16-float32.npy", jaxinit.to_float32(loaded, dtype="bfloat16"))
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
