"""Request and response bodies of the v1 API (they feed the OpenAPI document at /docs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from worker.core.jobs import JobRecord, JobState


class JobRequest(BaseModel):
    """JSON job submission (the model and calibration sets uploaded before)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(description="Id returned by POST /v1/models.")
    calibration_id: str | dict[str, str] | None = Field(
        None,
        description="Id from POST /v1/calibrations for the only image input, or {input name: id}.",
    )
    spec: dict[str, Any] | None = Field(None, description="The compression spec (see /v1/catalog).")


class ProgressOut(BaseModel):
    fraction: float = 0.0
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_seconds: float | None = None
    message: str | None = None
    candidates: list[dict[str, Any]] | None = Field(
        None, description="Target search: every candidate measured so far (the live front); null otherwise."
    )


class JobError(BaseModel):
    code: str
    detail: str


class JobOut(BaseModel):
    id: str
    state: JobState
    stage: str
    progress: ProgressOut
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
    model_id: str
    calibration: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any]
    error: JobError | None = None
    summary: dict[str, Any] | None = None
    artifacts: dict[str, str] = Field(default_factory=dict, description="Artifact name -> download URL.")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null at the end.")


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, tz=UTC) if t else None


def job_out(rec: JobRecord, request: Request) -> dict[str, Any]:
    """The public JSON of a job (``error`` and ``summary`` only when present)."""
    base = str(request.base_url).rstrip("/")
    out = JobOut(
        id=rec.id,
        state=rec.state,
        stage=rec.stage,
        progress=ProgressOut.model_validate(rec.progress or {}),
        created_at=_ts(rec.created_at),
        started_at=_ts(rec.started_at),
        finished_at=_ts(rec.finished_at),
        cancel_requested=rec.cancel_requested and not rec.finished,
        model_id=rec.model_id,
        calibration=rec.calibration,
        spec=rec.spec,
        error=JobError.model_validate(rec.error) if rec.error else None,
        summary=rec.summary,
        artifacts={n: f"{base}/v1/jobs/{rec.id}/artifacts/{n}" for n in rec.artifacts},
    )
    data = out.model_dump(mode="json")
    for k in ("error", "summary"):
        if data[k] is None:
            del data[k]
    return data
