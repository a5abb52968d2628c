"""Creating a job: validate everything at submit time (a bad spec is a 422 now, never a failed job
later), honor ``Idempotency-Key``, write the record, enqueue by name."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from redis import Redis

from app.queue import JobQueue
from worker.core.jobs import JobRecord, JobState, JobStore, new_job_id
from worker.core.settings import Settings
from worker.core.uploads import CalibrationRecord, ModelRecord
from worker.errors import (
    BadCalibrationError,
    BadSpecError,
    IdempotencyConflictError,
    MissingInputSpecError,
    ServiceUnavailableError,
    UnsupportedOpError,
)
from worker.spec import MAX_DIM, CompressionSpec, Distribution, ModelFormat
from worker.spec_cli import validate_spec

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX = 200
SUPPORTED_DTYPES = ("float32", "int64", "int32")


def check_spec(
    spec_raw: Any, model: ModelRecord, calibration: dict[str, CalibrationRecord], settings: Settings
) -> CompressionSpec:
    """The spec, validated against the schema, the server limits, the model and the calibration
    files. Raises BadSpecError / MissingInputSpecError / BadCalibrationError (all 422)."""
    spec = validate_spec(spec_raw if spec_raw is not None else {})
    if spec.distill.budget_seconds > settings.max_job_seconds:
        raise BadSpecError(
            f"distill.budget_seconds: {spec.distill.budget_seconds:g} is above this server's limit "
            f"of {settings.max_job_seconds:g} s"
        )
    if model.format == ModelFormat.TORCHSCRIPT and not spec.inputs:
        raise MissingInputSpecError(
            'a TorchScript model needs an input spec, e.g. "inputs": {"z": {"shape": [1, 100, 1, 1]}}'
        )
    graph_inputs = [i.name for i in model.inputs] if model.inputs is not None else None
    for info in model.inputs or []:
        too_big = [d for d in info.shape if isinstance(d, int) and d > MAX_DIM]
        if too_big and not (spec.inputs and info.name in spec.inputs):
            raise MissingInputSpecError(
                f"input {info.name!r} declares shape {info.shape}: dimension {too_big[0]} is over the "
                f"largest supported {MAX_DIM}; give its shape in the input spec"
            )
    if spec.inputs and graph_inputs is not None:  # the engine's wording (importers.merge_inputs)
        unknown = sorted(set(spec.inputs) - set(graph_inputs))
        if unknown:
            raise MissingInputSpecError(
                f"input spec names {unknown} are not inputs of the model; its inputs: {sorted(graph_inputs)}"
            )
    if "" in calibration and len(calibration) > 1:
        raise BadCalibrationError(
            "give calibration files either unnamed (one image input) or each named, not both"
        )
    dists = _distributions(model, spec)
    images = [n for n, d in dists.items() if d == Distribution.CALIBRATION]
    for name in calibration:
        if name == "":
            if len(images) != 1:
                raise BadCalibrationError(
                    f"the model has {len(images)} image inputs {images}: name each calibration file "
                    "(field calibration.<input name>)"
                    if images
                    else "calibration images were given but no input takes images (distribution 'calibration')"
                )
        elif name not in dists:
            raise BadCalibrationError(
                f"calibration for unknown input {name!r}; the model's inputs: {sorted(dists)}"
            )
        elif name not in images:
            raise BadCalibrationError(
                f"input {name!r} is sampled ({dists[name]}), not taken from calibration images; "
                "set its distribution to 'calibration' in the input spec"
            )
    for name in images:
        if name not in calibration and not ("" in calibration and len(images) == 1):
            raise BadCalibrationError(
                f"input {name!r} is an image input: supply calibration images for it (.npy/.npz/.zip), "
                "or give it another distribution in the input spec"
            )
    return spec


def _distributions(model: ModelRecord, spec: CompressionSpec) -> dict[str, str]:
    """How the engine will sample each input: the spec's choice, else its default for the graph."""
    user = spec.inputs or {}
    if model.inputs is None:  # TorchScript: the spec describes every input
        return {name: str(s.distribution) for name, s in user.items()}
    out: dict[str, str] = {}
    for info in model.inputs:
        if info.name in user:
            out[info.name] = str(user[info.name].distribution)
        elif info.dtype not in SUPPORTED_DTYPES:
            raise UnsupportedOpError(
                f"input {info.name!r} has element type {info.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}"
            )
        elif info.distribution is None:
            raise MissingInputSpecError(
                f"integer input {info.name!r}: give its range in the input spec, e.g. "
                f'{{"{info.name}": {{"shape": [1], "dtype": "{info.dtype}", "distribution": "randint", "high": 10}}}}'
            )
        else:
            out[info.name] = info.distribution
    return out


def fingerprint(model_id: str, calibration: dict[str, str], spec: dict[str, Any]) -> str:
    body = json.dumps({"model": model_id, "calibration": calibration, "spec": spec}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


class JobSubmitter:
    def __init__(self, settings: Settings, redis: Redis, jobs: JobStore, queue: JobQueue) -> None:
        self.settings = settings
        self.r = redis
        self.jobs = jobs
        self.queue = queue

    def submit(
        self,
        owner: str,
        model: ModelRecord,
        spec: CompressionSpec,
        calibration: dict[str, CalibrationRecord],
        idempotency_key: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create and enqueue a job; returns ``(job, created)``. With an ``Idempotency-Key`` seen
        before (same owner, same request), returns the first job and ``created=False``."""
        spec_json = spec.model_dump(mode="json")
        cal_ids = {name: c.id for name, c in calibration.items()}
        job_id = new_job_id()
        if idempotency_key:
            existing = self._claim_key(
                owner, idempotency_key, job_id, fingerprint(model.id, cal_ids, spec_json)
            )
            if existing is not None:
                return existing, False
        job = self.jobs.create(
            owner=owner,
            model_id=model.id,
            model_format=str(model.format),
            spec=spec_json,
            calibration=cal_ids,
            job_id=job_id,
        )
        try:
            self.queue.enqueue(job.id, spec.distill.budget_seconds)
        except Exception as e:
            log.exception("job.enqueue_failed job_id=%s", job.id)
            err = {"code": "enqueue_failed", "detail": f"the job could not be queued: {e}"}
            self.jobs.transition(job.id, JobState.FAILED, expected=JobState.QUEUED, error=err)
            raise ServiceUnavailableError("the job queue is unavailable; retry later") from e
        return job, True

    def _claim_key(self, owner: str, key: str, job_id: str, fp: str) -> JobRecord | None:
        if len(key) > IDEMPOTENCY_KEY_MAX:
            raise BadSpecError(f"Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX} characters")
        rkey = f"{self.settings.redis_prefix}idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"
        value = json.dumps({"job_id": job_id, "fingerprint": fp})
        if self.r.set(rkey, value, nx=True, ex=self.settings.idempotency_ttl_seconds):
            return None
        first = json.loads(self.r.get(rkey) or "{}")
        if first.get("fingerprint") != fp:
            raise IdempotencyConflictError(
                "this Idempotency-Key was used for a different request; use a new key for a new job"
            )
        for _ in range(50):  # the first request may still be writing its record
            job = self.jobs.get(first["job_id"])
            if job is not None:
                log.info("job.idempotent_replay job_id=%s", job.id)
                return job
            time.sleep(0.1)
        raise ServiceUnavailableError("the first request with this Idempotency-Key is still in progress")
