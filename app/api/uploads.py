"""``/v1/models`` and ``/v1/calibrations``: streamed, content-addressed uploads."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth import owner_of
from app.multipart import content_type, parse_form, read_body
from app.services import Services
from app.sniff import sniff_calibration, sniff_model
from worker.core.storage import UploadWriter
from worker.core.uploads import CalibrationRecord, ModelRecord
from worker.errors import MalformedUploadError

router = APIRouter(prefix="/v1", tags=["uploads"])
Owner = Annotated[str, Depends(owner_of)]

FILE_FIELDS = ("file", "model", "calibration")


def _upload_body(description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def services(request: Request) -> Services:
    return request.app.state.services


async def receive_file(request: Request, limit: int, what: str) -> tuple[UploadWriter, str | None]:
    """One file from a multipart form (field ``file``) or a raw ``application/octet-stream`` body."""
    svc = services(request)
    if content_type(request) == "multipart/form-data":
        form = await parse_form(
            request, svc.store, lambda n: limit if n in FILE_FIELDS else None, limit + 65536
        )
        if len(form.files) != 1:
            form.discard()
            raise MalformedUploadError(f"send exactly one file (form field 'file'), got {len(form.files)}")
        ((name, writer),) = form.files.items()
        return writer, form.filenames.get(name)
    writer = await read_body(request, svc.store, limit, what)
    return writer, request.headers.get("x-filename")


@router.post(
    "/models",
    status_code=201,
    response_model=ModelRecord,
    summary="Upload a model (TorchScript or ONNX, decided from the content)",
    openapi_extra=_upload_body("The model file (multipart field `file`, or the raw body)."),
    responses={413: {"description": "Too large"}, 415: {"description": "Not TorchScript or ONNX"}},
)
async def upload_model(request: Request, owner: Owner) -> JSONResponse:
    svc = services(request)
    writer, filename = await receive_file(request, svc.settings.max_upload_bytes, "model")
    try:
        info = await run_in_threadpool(sniff_model, writer.path)
        rec = await run_in_threadpool(
            svc.uploads.add_model, owner, writer, svc.uploads.model_record(writer, info, filename)
        )
    finally:
        writer.discard()
    return JSONResponse(rec.model_dump(mode="json"), 201, headers={"Location": f"/v1/models/{rec.id}"})


@router.get("/models/{model_id}", response_model=ModelRecord, summary="A model's metadata")
def get_model(request: Request, model_id: str, owner: Owner) -> ModelRecord:
    return services(request).uploads.model(owner, model_id)


@router.post(
    "/calibrations",
    status_code=201,
    response_model=CalibrationRecord,
    summary="Upload calibration images (.npy, .npz or a .zip of images)",
    openapi_extra=_upload_body("The calibration file (multipart field `file`, or the raw body)."),
)
async def upload_calibration(request: Request, owner: Owner) -> JSONResponse:
    svc = services(request)
    writer, filename = await receive_file(request, svc.settings.max_calibration_bytes, "calibration")
    try:
        info = await run_in_threadpool(sniff_calibration, writer.path)
        rec = await run_in_threadpool(
            svc.uploads.add_calibration, owner, writer, svc.uploads.calibration_record(writer, info, filename)
        )
    finally:
        writer.discard()
    return JSONResponse(rec.model_dump(mode="json"), 201, headers={"Location": f"/v1/calibrations/{rec.id}"})


@router.get(
    "/calibrations/{cal_id}", response_model=CalibrationRecord, summary="A calibration set's metadata"
)
def get_calibration(request: Request, cal_id: str, owner: Owner) -> CalibrationRecord:
    return services(request).uploads.calibration(owner, cal_id)
