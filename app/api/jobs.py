"""``/v1/jobs``: submit, read (ETag / 304), list, cancel, download artifacts, delete."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from app.api.schemas import JobOut, JobPage, JobRequest, job_out
from app.api.uploads import services
from app.auth import owner_of
from app.multipart import Form, content_type, parse_form
from app.services import Services
from app.sniff import sniff_calibration, sniff_model
from app.submit import check_spec
from worker.core.jobs import JobRecord, JobState
from worker.core.uploads import CalibrationRecord, ModelRecord
from worker.errors import (
    ArtifactNotFoundError,
    BadSpecError,
    JobFinishedError,
    JobNotFinishedError,
    JobNotFoundError,
    MalformedUploadError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from worker.spec import ARTIFACT_NAMES

router = APIRouter(prefix="/v1", tags=["jobs"])
Owner = Annotated[str, Depends(owner_of)]

MAX_JSON_BODY = 1024 * 1024
MEDIA_TYPES = {
    "model.onnx": "application/octet-stream",
    "report.json": "application/json",
    "report.html": "text/html; charset=utf-8",
    "samples.png": "image/png",
    "log.txt": "text/plain; charset=utf-8",
}

REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string", "format": "binary", "description": "The model file."},
                        "spec": {"type": "string", "description": "The spec as JSON text."},
                        "calibration": {
                            "type": "string",
                            "format": "binary",
                            "description": "Images for the only image input (.npy/.npz/.zip); "
                            "use field calibration.<input name> when there are several.",
                        },
                    },
                    "required": ["model"],
                }
            },
        },
    }
}


def _plausible(job_id: str) -> bool:
    return job_id.startswith("job_") and len(job_id) < 64


def _owned(rec: JobRecord | None, owner: str, job_id: str) -> JobRecord:
    if rec is None or rec.owner != owner:  # another owner's job does not exist for you
        raise JobNotFoundError(f"no job {job_id!r}")
    return rec


def _job(svc: Services, owner: str, job_id: str) -> JobRecord:
    return _owned(svc.jobs.get(job_id) if _plausible(job_id) else None, owner, job_id)


async def _job_async(svc: Services, owner: str, job_id: str) -> JobRecord:
    if svc.aredis is None:  # no lifespan (an app used without starting it): the thread pool
        return await run_in_threadpool(_job, svc, owner, job_id)
    return _owned(await svc.jobs.aget(svc.aredis, job_id) if _plausible(job_id) else None, owner, job_id)


def _accepted(rec: JobRecord, request: Request, replayed: bool = False) -> JSONResponse:
    svc = services(request)
    headers = {"Location": f"/v1/jobs/{rec.id}", "Retry-After": str(svc.settings.retry_after_seconds)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job_out(rec, request), 202, headers=headers)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    summary="Submit a compression job (JSON with ids, or multipart with the files)",
    openapi_extra=_SUBMIT_BODY,
    responses={409: {"description": "Idempotency-Key reused"}, 422: {"description": "Invalid spec"}},
)
async def submit_job(request: Request, owner: Owner) -> JSONResponse:
    svc = services(request)
    idem = request.headers.get("idempotency-key")
    if content_type(request) == "application/json":
        model, calibration, spec_raw = await _from_json(request, svc, owner)
        form: Form | None = None
    elif content_type(request) == "multipart/form-data":
        model, calibration, spec_raw, form = await _from_form(request, svc)
    else:
        raise UnsupportedMediaTypeError("send application/json (ids) or multipart/form-data (files)")
    try:
        spec = check_spec(spec_raw, model, calibration, svc.settings)
        if form is not None:  # commit the uploaded files only once the request is known good
            model = await run_in_threadpool(svc.uploads.add_model, owner, form.files["model"], model)
            for field, name in _cal_fields(form):
                cal = await run_in_threadpool(
                    svc.uploads.add_calibration, owner, form.files[field], calibration[name]
                )
                calibration[name] = cal
        rec, created = await run_in_threadpool(svc.submitter.submit, owner, model, spec, calibration, idem)
    finally:
        if form is not None:
            form.discard()
    return _accepted(rec, request, replayed=not created)


async def _from_json(
    request: Request, svc: Services, owner: str
) -> tuple[ModelRecord, dict[str, CalibrationRecord], Any]:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLargeError(f"a JSON job request is limited to {MAX_JSON_BODY} bytes")
    try:
        req = JobRequest.model_validate_json(bytes(body))
    except ValidationError as e:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(e.errors()) from e
    cal_ids = {"": req.calibration_id} if isinstance(req.calibration_id, str) else (req.calibration_id or {})

    def lookup() -> tuple[ModelRecord, dict[str, CalibrationRecord]]:
        model = svc.uploads.model(owner, req.model_id)
        return model, {name: svc.uploads.calibration(owner, cid) for name, cid in cal_ids.items()}

    model, calibration = await run_in_threadpool(lookup)
    return model, calibration, req.spec


def _cal_fields(form: Form) -> list[tuple[str, str]]:
    """``(form field, input name)`` of the calibration files (``calibration`` -> ``""``)."""
    out = []
    for field in form.files:
        if field == "calibration":
            out.append((field, ""))
        elif field.startswith("calibration."):
            out.append((field, field.split(".", 1)[1]))
    return out


async def _from_form(
    request: Request, svc: Services
) -> tuple[ModelRecord, dict[str, CalibrationRecord], Any, Form]:
    s = svc.settings

    def limit(field: str) -> int | None:
        if field == "model":
            return s.max_upload_bytes
        if field == "calibration" or field.startswith("calibration."):
            return s.max_calibration_bytes
        return None

    form = await parse_form(request, svc.store, limit, s.max_upload_bytes + s.max_calibration_bytes + 2**20)
    try:
        if "model" not in form.files:
            raise MalformedUploadError("a multipart job needs the model file in field 'model'")
        unknown = set(form.fields) - {"spec"}
        if unknown:
            raise MalformedUploadError(f"unexpected form field(s) {sorted(unknown)}; expected 'spec'")
        spec_raw: Any = None
        if form.fields.get("spec", "").strip():
            spec_raw = parse_spec_json(form.fields["spec"])
        w = form.files["model"]
        info = await run_in_threadpool(sniff_model, w.path)
        model = svc.uploads.model_record(w, info, form.filenames.get("model"))
        calibration = {}
        for field, name in _cal_fields(form):
            cw = form.files[field]
            cinfo = await run_in_threadpool(sniff_calibration, cw.path)
            calibration[name] = svc.uploads.calibration_record(cw, cinfo, form.filenames.get(field))
        return model, calibration, spec_raw, form
    except BaseException:
        form.discard()
        raise


def _no_constants(name: str) -> Any:
    raise BadSpecError(f"spec: {name} is not a number a spec may hold (JSON has no NaN or Infinity)")


def parse_spec_json(text: str) -> Any:
    """The multipart ``spec`` field as JSON: NaN / Infinity refused, deep nesting a 422, not a 500."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise BadSpecError(f"spec: not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadSpecError("spec: nested too deeply to be a compression spec") from e


def _etag(body: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="A job's state, progress, summary and artifact URLs (ETag; If-None-Match gives 304)",
    responses={304: {"description": "Not modified"}},
)
async def get_job(request: Request, job_id: str, owner: Owner) -> Response:
    """On the event loop (the status poll is the hottest route): one HGETALL on the async client."""
    svc = services(request)
    body = job_out(await _job_async(svc, owner, job_id), request)
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if body["state"] in (JobState.QUEUED, JobState.RUNNING):
        headers["Retry-After"] = str(svc.settings.retry_after_seconds)
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)


@router.get("/jobs", response_model=JobPage, summary="Jobs, newest first (cursor pagination, state filter)")
def list_jobs(
    request: Request,
    owner: Owner,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JSONResponse:
    svc = services(request)
    limit = min(limit, svc.settings.page_size_max)
    recs, nxt = svc.jobs.list(owner, state=state, limit=limit, cursor=cursor)
    headers = {}
    if nxt:
        url = request.url.include_query_params(cursor=nxt)
        headers["Link"] = f'<{url}>; rel="next"'
    return JSONResponse({"items": [job_out(r, request) for r in recs], "next_cursor": nxt}, headers=headers)


@router.post(
    "/jobs/{job_id}:cancel",
    response_model=JobOut,
    summary="Cancel a job (idempotent; a running job stops within seconds)",
    responses={202: {"description": "Cancel requested; the worker is stopping it"}},
)
def cancel_job(request: Request, job_id: str, owner: Owner) -> JSONResponse:
    svc = services(request)
    rec = _job(svc, owner, job_id)
    if rec.state in (JobState.SUCCEEDED, JobState.FAILED):
        raise JobFinishedError(f"job {job_id} has already {rec.state}; there is nothing to cancel")
    rec = svc.jobs.request_cancel(job_id, svc.settings.heartbeat_timeout_seconds) or rec
    if rec.state in (JobState.SUCCEEDED, JobState.FAILED):
        raise JobFinishedError(f"job {job_id} has already {rec.state}; there is nothing to cancel")
    status = 200 if rec.state == JobState.CANCELED else 202
    return JSONResponse(job_out(rec, request), status, headers={"Location": f"/v1/jobs/{job_id}"})


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a finished job and its artifacts")
def delete_job(request: Request, job_id: str, owner: Owner) -> Response:
    svc = services(request)
    _job(svc, owner, job_id)
    result = svc.jobs.delete(job_id)
    if result == "":
        raise JobNotFoundError(f"no job {job_id!r}")
    if result != "deleted":
        raise JobNotFinishedError(f"job {job_id} is {result}; cancel it first, then delete it")
    svc.store.delete_prefix(f"jobs/{job_id}/")
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/artifacts/{name}",
    summary="Download an artifact: model.onnx, report.json, report.html, samples.png, log.txt",
    response_class=Response,
)
async def get_artifact(request: Request, job_id: str, name: str, owner: Owner) -> Response:
    svc = services(request)
    rec = await run_in_threadpool(_job, svc, owner, job_id)
    if name not in ARTIFACT_NAMES or name not in rec.artifacts:
        have = ", ".join(rec.artifacts) or "none yet"
        raise ArtifactNotFoundError(f"job {job_id} has no artifact {name!r} (has: {have})")
    key = f"jobs/{job_id}/{name}"
    media = MEDIA_TYPES.get(name, "application/octet-stream")
    disposition = "attachment" if name == "model.onnx" else "inline"
    headers = {
        "Content-Disposition": f'{disposition}; filename="{name}"',
        "X-Content-Type-Options": "nosniff",
    }
    if name == "report.html":  # self-contained, no scripts: opened directly it runs nothing either
        headers["Content-Security-Policy"] = REPORT_CSP
    path = svc.store.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=media, headers=headers)
    size = await run_in_threadpool(svc.store.size, key)
    if size is None:
        raise ArtifactNotFoundError(f"artifact {name!r} of job {job_id} is missing from the store")
    chunks = await run_in_threadpool(svc.store.iter_bytes, key)
    headers["Content-Length"] = str(size)
    return StreamingResponse(iterate_in_threadpool(chunks), media_type=media, headers=headers)
