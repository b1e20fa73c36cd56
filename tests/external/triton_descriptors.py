"""Run by the tritonclient virtual environment: prints, as JSON, the fields of the KServe v2
messages, the methods of the service and the model configuration's messages and enums as
tritonclient's own generated code defines them."""

from __future__ import annotations

import json
import sys

from tritonclient.grpc import model_config_pb2, service_pb2


def fields(descriptor: object) -> dict:
    out = {}
    for field in descriptor.fields:
        out[field.name] = [field.number, field.type, field.message_type.full_name if field.message_type else ""]
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            out[f"<{nested.name}>"] = fields(nested)
    return out


names = json.loads(sys.argv[1])
service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
print(
    json.dumps(
        {
            "messages": {
                name: fields(service_pb2.DESCRIPTOR.message_types_by_name[name]) for name in names["messages"]
            },
            "methods": {
                m: [service.methods_by_name[m].input_type.full_name, service.methods_by_name[m].output_type.full_name]
                for m in names["methods"]
            },
            "config_messages": {
                name: fields(model_config_pb2.DESCRIPTOR.message_types_by_name[name])
                for name in names.get("config_messages", [])
            },
            "config_enums": {
                name: {v.name: v.number for v in model_config_pb2.DESCRIPTOR.enum_types_by_name[name].values}
                for name in names.get("config_enums", [])
            },
        }
    )
)
