"""The transport ceiling: gRPC and HTTP servers that speak jaxinit's protocol but answer
every Generate with bytes made once at start (no validation, no JAX).

    python bench/bare.py SHAPE_CSV   # prints "bare ready grpc=HOST:PORT http=http://HOST:PORT"
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import grpc
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

CHUNK = 2**20


def main() -> None:
    shape = [int(d) for d in sys.argv[1].split(",")]
    payload = np.random.default_rng(0).standard_normal(shape).astype(np.float32).tobytes()
    provenance = pb.Provenance(jax_version="bare", key_impl="threefry2x32", key_data=[0, 0])
    header = pb.TensorChunk(
        header=pb.TensorHeader(
            shape=shape,
            dtype="float32",
            byte_order="little",
            total_bytes=len(payload),
            chunk_bytes=CHUNK,
            provenance=provenance,
        )
    )
    chunks = [
        pb.TensorChunk(data=pb.DataChunk(offset=o, data=payload[o : o + CHUNK])) for o in range(0, len(payload), CHUNK)
    ]
    headers = {
        "X-Jaxinit-Shape": ",".join(map(str, shape)),
        "X-Jaxinit-Dtype": "float32",
        "X-Jaxinit-Provenance": json.dumps({"jax_version": "bare"}),
    }

    class Bare(pb_grpc.InitializersServicer):
        async def Generate(self, request, context):  # type: ignore[no-untyped-def]
            yield header
            for chunk in chunks:
                yield chunk

    async def generate(request: Request) -> Response:
        await request.body()
        return Response(payload, media_type="application/octet-stream", headers=headers)

    async def serve() -> None:
        server = grpc.aio.server()
        pb_grpc.add_InitializersServicer_to_server(Bare(), server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        app = Starlette(routes=[Route("/v1/generate", generate, methods=["POST"])])
        http = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        print(f"bare ready grpc=127.0.0.1:{grpc_port} http=http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await http.serve(sockets=[sock])
        await server.stop(0)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
