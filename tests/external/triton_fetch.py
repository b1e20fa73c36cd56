"""Run by the tritonclient virtual environment (tritonclient pins protobuf < 7 and
ml-dtypes <= 0.5.4, so it cannot share jaxinit's): fetches tensors from a jaxinit
server with tritonclient over gRPC and HTTP and saves what it got.

Usage: python triton_fetch.py GRPC_TARGET HTTP_HOSTPORT CASES_JSON OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main() -> None:
    grpc_target, http_target, cases_json, out_dir = sys.argv[1:5]
    out = pathlib.Path(out_dir)
    cases = json.loads(pathlib.Path(cases_json).read_text())
    report = {}
    for module, client in (
        (grpcclient, grpcclient.InferenceServerClient(grpc_target)),
        (httpclient, httpclient.InferenceServerClient(http_target)),
    ):
        kind = "grpc" if module is grpcclient else "http"
        report[kind] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("lecun_normal"),
            "metadata_inputs": sorted(
                i["name"] if isinstance(i, dict) else i.name
                for i in _inputs_of(client.get_model_metadata("lecun_normal"))
            ),
        }
        report[kind]["version_ready"] = client.is_model_ready("lecun_normal", "1")
        # What perf_analyzer and model_analyzer ask first: the configuration, the statistics.
        config = client.get_model_config("lecun_normal", as_json=True) if module is grpcclient else None
        config = config["config"] if config is not None else client.get_model_config("lecun_normal")
        report[kind]["config"] = {
            "name": config["name"],
            "max_batch_size": config.get("max_batch_size", 0),
            "inputs": [i["name"] for i in config["input"]],
            "input_types": [i["data_type"] for i in config["input"]],
        }
        metadata = client.get_server_metadata(as_json=True) if module is grpcclient else client.get_server_metadata()
        report[kind]["extensions"] = metadata["extensions"]
        try:
            client.get_system_shared_memory_status()
        except Exception as exc:
            report[kind]["shm_status"] = str(exc)
        report[kind]["version_2_ready"] = client.is_model_ready("lecun_normal", "2")
        report[kind]["version_inputs"] = len(_inputs_of(client.get_model_metadata("lecun_normal", "1")))
        if module is httpclient:  # the repository extension is on HTTP only
            report[kind]["index"] = [m["name"] for m in client.get_model_repository_index()]
        for case in cases:
            inputs = []
            for name, datatype, values in case["inputs"]:
                array = np.asarray(values, dtype={"INT64": np.int64, "UINT32": np.uint32}[datatype])
                item = module.InferInput(name, list(array.shape), datatype)
                item.set_data_from_numpy(array)
                inputs.append(item)
            try:
                result = client.infer(
                    case["model"],
                    inputs,
                    model_version=case.get("version", ""),
                    outputs=[module.InferRequestedOutput("output")],
                    parameters=case.get("parameters") or None,
                )
            except Exception as exc:  # the test checks which cases must fail, and how
                report[kind][case["id"]] = {"error": str(exc)}
                continue
            array = result.as_numpy("output")
            if str(array.dtype) == "bfloat16":  # ml_dtypes; .npy has no code for it: float32 is exact
                array = array.astype(np.float32)
            np.save(out / f"{kind}-{case['id']}.npy", array)
            output = result.get_output("output")
            datatype = output["datatype"] if isinstance(output, dict) else output.datatype
            report[kind][case["id"]] = {"datatype": datatype}
        stats = client.get_inference_statistics("lecun_normal", as_json=True) if module is grpcclient else None
        stats = stats if stats is not None else client.get_inference_statistics("lecun_normal")
        (model,) = stats["model_stats"]
        success = model["inference_stats"]["success"]
        report[kind]["stats"] = {
            "name": model["name"],
            "inference_count": int(model.get("inference_count", 0)),
            "success_count": int(success.get("count", 0)),
        }
    (out / "report.json").write_text(json.dumps(report))


def _inputs_of(metadata: object) -> list:
    return metadata["inputs"] if isinstance(metadata, dict) else list(metadata.inputs)


if __name__ == "__main__":
    main()
