"""A whole model's initial parameters: ``POST /v1/models/init`` as .safetensors, a
streamed .npz, framed tensors (the Python client's one request), or the plan as JSON."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from jaxinit.protocol import safetensors, wire
from jaxinit.protocol.errors import JaxinitError
from jaxinit.protocol.wire import JSON, NPZ, SAFETENSORS, SHARED_MEMORY_HEADER, TENSORS
from jaxinit_server import jsonio
from jaxinit_server.core.delivery import delivery_for
from jaxinit_server.rest.deps import CallerDep, OffLoopJSONRoute, ServiceDep, TelemetryDep, observe
from jaxinit_server.rest.framing import (
    MODEL_MEDIA_TYPES,
    ReleasingResponse,
    model_frames,
    model_npz,
    model_safetensors,
    negotiate,
    npz_storable,
)
from jaxinit_server.rest.schemas import ModelBody

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)


@router.post(
    "/v1/models/init",
    summary="A whole model's initial parameters: .safetensors, .npz, framed tensors, or the plan as JSON",
    response_class=Response,
    responses={200: {"content": {SAFETENSORS: {}, NPZ: {}, JSON: {}, TENSORS: {}}}},
)
async def init_model(
    request: Request,
    body: ModelBody,
    service: ServiceDep,
    telemetry: TelemetryDep,
    caller: CallerDep,
    x_request_id: Annotated[str | None, Header()] = None,
) -> Response:
    call = telemetry.call("http", "init_model", x_request_id)
    call.asked("model", None)

    async def answer() -> Response:
        media = negotiate(request.headers.get("accept"), MODEL_MEDIA_TYPES)
        model = await service.prepare_model(body.params(request.headers.get(wire.JAX_VERSION_HEADER)), caller=caller)
        call.describe("model", (len(model.outputs),), "")
        metadata = service.model_metadata(model)
        headers = {wire.MODEL_DIGEST_HEADER: model.digest}
        if media == JSON:
            plan = await asyncio.to_thread(lambda: jsonio.dumps({"tensors": model.plan(), "metadata": metadata}))
            return Response(plan, media_type=JSON, headers=headers)
        # A same-host caller's shared memory (framed tensors only): a token refused is a 403 now.
        token = request.headers.get(SHARED_MEMORY_HEADER) if media == TENSORS else None
        delivery = delivery_for(region_token=token)
        service.regions_for(delivery)
        planned = await service.check_model(model)
        ticket = service.admit_model(planned, caller=caller)  # before the status line: a 429 can still be said
        if media == TENSORS:
            if token is not None:  # a region is for this caller once: never cached on the way
                headers["Cache-Control"] = "no-store"
            body_frames = model_frames(service, planned, ticket, delivery)
            return ReleasingResponse(body_frames, ticket.release, media_type=TENSORS, headers=headers)
        if media == NPZ:
            try:
                npz_storable(model)
            except JaxinitError:
                ticket.release()
                raise
            headers["Content-Disposition"] = 'attachment; filename="params.npz"'
            body_npz = model_npz(service, planned, ticket)
            return ReleasingResponse(body_npz, ticket.release, media_type=NPZ, headers=headers)
        head = safetensors.header([(o.name, o.dtype, o.shape) for o in model.outputs], metadata)
        headers["Content-Length"] = str(len(head) + model.nbytes)
        headers["Content-Disposition"] = 'attachment; filename="params.safetensors"'
        body_bytes = model_safetensors(service, planned, head, ticket)
        return ReleasingResponse(body_bytes, ticket.release, media_type=SAFETENSORS, headers=headers)

    return await observe(call, answer(), request)
