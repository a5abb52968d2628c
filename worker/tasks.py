"""The Celery task ``compress.run(job_id)``: job record -> sandboxed engine -> artifacts -> record.

1. compare-and-set ``queued -> running`` (a redelivered or canceled job is skipped; a job whose
   worker died is failed ``worker_lost``, never run twice);
2. fetch the model and calibration files from the artifact store into a private temp dir;
3. run ``python -m worker.engine.run`` in the sandbox, writing its progress events into the job
   record as they arrive and polling the record for a cancel request;
4. upload ``model.onnx``, ``report.json``, ``report.html``, ``samples.png``, ``log.txt`` and set
   ``succeeded`` (with the summary of the report.json the worker validated, next to a model.onnx
   the ONNX checker accepts: a ``done`` event alone proves nothing), ``failed`` (with the error)
   or ``canceled``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from redis import Redis
from redis.exceptions import RedisError

from worker import errors, sandbox
from worker.celery_app import celery_app
from worker.core.celery_config import TASK_NAME
from worker.core.jobs import JobRecord, JobState, JobStore
from worker.core.redis_client import redis_from_settings
from worker.core.settings import Settings, get_settings
from worker.core.stage_metrics import record_stage_duration
from worker.core.storage import ArtifactStore, store_from_settings
from worker.core.uploads import UploadRegistry, calibration_key, model_key
from worker.engine.convert import REQUIRE_ENV
from worker.errors import InvalidResultError, first_line
from worker.spec import ARTIFACT_NAMES, CANDIDATE_FILES, ModelFormat, Progress

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL = 0.25
STOP_POLL_INTERVAL = 1.0
LOG_LIMIT = 20 * 1024 * 1024


class _Services:
    """Per-process clients (built lazily: a prefork child builds its own after the fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: Redis = redis_from_settings(settings)
        self.jobs = JobStore(self.redis, settings.redis_prefix)
        self.store: ArtifactStore = store_from_settings(settings)


_services: dict[int, _Services] = {}


def services() -> _Services:
    pid = os.getpid()
    if pid not in _services:
        _services.clear()
        _services[pid] = _Services(celery_app.conf.get("gancompress_settings") or get_settings())
    return _services[pid]


class ProgressSink:
    """Writes engine progress events into the job record (throttled) and times the stages."""

    def __init__(self, jobs: JobStore, redis: Redis, prefix: str, job_id: str) -> None:
        self.jobs, self.redis, self.prefix, self.job_id = jobs, redis, prefix, job_id
        self.stage: str | None = None
        self.stage_started = time.monotonic()
        self.last_write = 0.0
        self.seen = 0
        self.candidates: list[dict[str, Any]] | None = None  # a search's front so far: kept across events

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        try:
            p = Progress.model_validate({k: v for k, v in event.items() if k != "event"})
        except ValueError:
            log.warning("job.bad_progress job_id=%s event=%s", self.job_id, str(event)[:200])
            return
        self.seen += 1
        now = time.monotonic()
        changed = p.stage != self.stage
        if p.candidates is not None:
            self.candidates = [c.model_dump(mode="json") for c in p.candidates]
        if changed:
            self._close_stage(now)
            self.stage, self.stage_started = p.stage, now
        elif now - self.last_write < PROGRESS_MIN_INTERVAL and p.candidates is None:
            return
        self.last_write = now
        progress = {
            "fraction": round(p.fraction, 4),
            "step": p.step,
            "total": p.total,
            "loss": p.loss,
            "eta_seconds": p.eta_seconds,
            "message": p.message,
        }
        if self.candidates is not None:
            progress["candidates"] = self.candidates
        self.jobs.update_running(self.job_id, stage=str(p.stage), progress=progress, heartbeat=time.time())

    def _close_stage(self, now: float) -> None:
        if self.stage is not None:
            try:
                record_stage_duration(self.redis, self.prefix, self.stage, now - self.stage_started)
            except RedisError:
                log.warning("metrics.stage_write_failed job_id=%s", self.job_id)

    def finish(self) -> None:
        self._close_stage(time.monotonic())
        self.stage = None


class StopPoller:
    """``should_stop`` for the sandbox: sends heartbeats and sees cancel requests."""

    def __init__(self, jobs: JobStore, job_id: str) -> None:
        self.jobs, self.job_id = jobs, job_id
        self.last = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < STOP_POLL_INTERVAL:
            return False
        self.last = now
        try:
            self.jobs.update_running(self.job_id, heartbeat=time.time())
            state, flag = self.jobs.r.hmget(self.jobs.key(self.job_id), ["state", "cancel_requested"])
        except RedisError as e:  # a Redis blip must not kill a running job
            log.warning("job.poll_failed job_id=%s error=%s", self.job_id, e)
            return False
        return flag == "1" or state != JobState.RUNNING


def execute(job_id: str, svc: _Services, worker_name: str) -> JobState | None:
    """Run one job; returns its final state (None when this delivery was skipped)."""
    jobs, settings = svc.jobs, svc.settings
    rec = jobs.get(job_id)
    if rec is None:
        log.warning("job.skipped job_id=%s reason=missing", job_id)
        return None
    if rec.state == JobState.RUNNING:
        # Redelivered while (or after) another worker ran it: never run twice.
        if time.time() - (rec.heartbeat or rec.started_at or 0.0) > settings.heartbeat_timeout_seconds:
            err = errors.WorkerLostError("the worker running this job stopped").to_dict()
            if jobs.transition(job_id, JobState.FAILED, expected=JobState.RUNNING, error=err):
                log.warning("job.worker_lost job_id=%s", job_id)
                return JobState.FAILED
        log.info("job.skipped job_id=%s reason=already_running", job_id)
        return None
    now = time.time()
    if not jobs.transition(
        job_id, JobState.RUNNING, expected=JobState.QUEUED, started_at=now, heartbeat=now, worker=worker_name
    ):
        log.info("job.skipped job_id=%s reason=state_%s", job_id, rec.state)
        return None
    try:
        return _run_claimed(rec, svc)
    except SoftTimeLimitExceeded:
        _finish(jobs, job_id, JobState.FAILED, error={"code": "resource_limit", "detail": "time limit"})
        return JobState.FAILED
    except Exception as e:
        log.exception("job.crashed job_id=%s", job_id)
        err = {"code": "internal_error", "detail": f"the worker failed: {type(e).__name__}: {e}"}
        _finish(jobs, job_id, JobState.FAILED, error=err)
        return JobState.FAILED


def _run_claimed(rec: JobRecord, svc: _Services) -> JobState:
    settings, jobs, store = svc.settings, svc.jobs, svc.store
    uploads = UploadRegistry(svc.redis, settings.redis_prefix, store)
    with tempfile.TemporaryDirectory(prefix=f"{JOB_DIR_PREFIX}{rec.id}-", dir=settings.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        inputs, out, home = tmp / "in", tmp / "out", tmp / "home"
        for d in (inputs, out, home):
            d.mkdir()
        model = uploads.model(rec.owner, rec.model_id)
        model_path = inputs / ("model.pt" if rec.model_format == ModelFormat.TORCHSCRIPT else "model.onnx")
        store.fetch(model_key(model.sha256), model_path)
        calibration: dict[str, str] = {}
        for i, (name, cal_id) in enumerate(sorted(rec.calibration.items())):
            cal = uploads.calibration(rec.owner, cal_id)
            path = inputs / f"calibration{i}{cal.suffix}"
            store.fetch(calibration_key(cal.sha256), path)
            calibration[name] = str(path)
        job_json = inputs / "job.json"
        job_json.write_text(
            json.dumps({"model": str(model_path), "spec": rec.spec, "calibration": calibration})
        )

        budget = float(rec.spec.get("distill", {}).get("budget_seconds") or 120.0)
        wall, _soft, _hard = settings.job_limits(budget)
        limits = sandbox.Limits(
            memory_bytes=settings.sandbox_memory_bytes or None,
            cpu_seconds=int(wall * (os.cpu_count() or 1)) + 60,
            file_bytes=settings.sandbox_file_bytes,
            wall_seconds=wall,
            kill_grace_seconds=settings.kill_grace_seconds,
            network=settings.sandbox_network,
        )
        sink = ProgressSink(jobs, svc.redis, settings.redis_prefix, rec.id)
        log_path = tmp / "stderr.log"
        outcome = sandbox.run(
            sandbox.engine_argv(job_json, out),
            workdir=home,
            log_path=log_path,
            limits=limits,
            env=sandbox.scrubbed_env(
                home, settings.sandbox_threads, {REQUIRE_ENV: "1"} if settings.require_isolation else None
            ),
            on_event=sink,
            should_stop=StopPoller(jobs, rec.id),
        )
        sink.finish()
        artifacts = _upload_artifacts(store, rec.id, out, log_path)
        if outcome.canceled:
            return _finish(jobs, rec.id, JobState.CANCELED, error=outcome.error, artifacts=artifacts)
        if outcome.ok and outcome.done is not None:
            try:
                summary = checked_summary(out)
            except InvalidResultError as e:
                log.warning("job.invalid_result job_id=%s detail=%s", rec.id, e.detail)
                return _finish(jobs, rec.id, JobState.FAILED, error=e.to_dict(), artifacts=artifacts)
            progress: dict[str, Any] = {
                "fraction": 1.0,
                "step": 1,
                "total": 1,
                "loss": None,
                "eta_seconds": 0.0,
            }
            if sink.candidates is not None:
                progress["candidates"] = sink.candidates
            return _finish(
                jobs, rec.id, JobState.SUCCEEDED, summary=summary, artifacts=artifacts, stage="done",
                progress=progress,
            )  # fmt: skip
        return _finish(jobs, rec.id, JobState.FAILED, error=outcome.error, artifacts=artifacts)


JOB_DIR_PREFIX = "gancompress-"  # a job's private directory: gancompress-<job id>-<random>


def sweep_orphan_dirs(tmp_dir: Path | None, jobs: JobStore) -> list[str]:
    """Remove job directories (with the user's uploaded model) that no running job owns: left
    behind by a worker that was killed. A directory of a job still ``running`` stays (another
    worker process on this host may be running it). Returns the removed names."""
    removed = []
    root = Path(tmp_dir or tempfile.gettempdir())
    for d in root.glob(f"{JOB_DIR_PREFIX}job_*-*"):
        job_id = d.name[len(JOB_DIR_PREFIX) :].rsplit("-", 1)[0]
        rec = jobs.get(job_id)
        if d.is_dir() and not d.is_symlink() and (rec is None or rec.finished):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
            log.info("job.orphan_dir_removed job_id=%s dir=%s", job_id, d)
    return removed


def _finish(jobs: JobStore, job_id: str, state: JobState, **fields: Any) -> JobState:
    if jobs.transition(job_id, state, expected=JobState.RUNNING, cancel_requested=False, **fields):
        log.info("job.finished job_id=%s state=%s", job_id, state)
        return state
    current = jobs.get(job_id)  # e.g. canceled meanwhile because the worker looked dead
    log.warning("job.finish_lost job_id=%s wanted=%s now=%s", job_id, state, current and current.state)
    return current.state if current else state


def _upload_artifacts(store: ArtifactStore, job_id: str, out: Path, log_path: Path) -> list[str]:
    names: list[str] = []
    combined = out.parent / "log.txt"
    with combined.open("wb") as fh:
        engine_log = out / "log.txt"
        for part in (engine_log, log_path):
            if part.is_file():
                with part.open("rb") as src:
                    fh.write(src.read(LOG_LIMIT))
    for name in ARTIFACT_NAMES:
        path = combined if name == "log.txt" else out / name
        if path.is_file() and not path.is_symlink():
            if name in CANDIDATE_FILES:  # checked like model.onnx (checked_summary) before anyone gets it
                try:
                    check_onnx_file(path, name)
                except InvalidResultError as e:
                    log.warning("job.invalid_candidate job_id=%s name=%s detail=%s", job_id, name, e.detail)
                    continue
            store.put_file(f"jobs/{job_id}/{name}", path)
            names.append(name)
    return names


def check_onnx_file(path: Path, name: str) -> None:
    """``path`` must be a single-file ONNX model that ``onnx.checker`` accepts: an engine output is
    data the worker checks itself. Raises ``InvalidResultError``."""
    import onnx

    from worker.model_checks import external_tensors

    try:
        if path.is_symlink():
            raise InvalidResultError(f"{name} is a link")
        model = onnx.load(str(path), load_external_data=False)
        if external_tensors(model):
            raise InvalidResultError(f"{name} refers to external data")
        onnx.checker.check_model(model)
    except InvalidResultError:
        raise
    except Exception as e:
        raise InvalidResultError(f"{name} is missing or not a valid ONNX model: {first_line(e)[:300]}") from e


MAX_REPORT_BYTES = 64 * 2**20


def checked_summary(out: Path) -> dict[str, Any]:
    """The job's summary from files the worker checks itself, never from the engine's ``done``
    event (only a signal): ``report.json`` must validate against the report schema and
    ``model.onnx`` must be a single-file ONNX model that ``onnx.checker`` accepts. Raises
    ``InvalidResultError``."""
    from worker.report_schema import Report

    report_path, model_path = out / "report.json", out / "model.onnx"
    try:
        if report_path.is_symlink() or report_path.stat().st_size > MAX_REPORT_BYTES:
            raise InvalidResultError("report.json is a link or larger than 64 MiB")
        report = Report.model_validate_json(report_path.read_bytes())
    except (OSError, ValueError) as e:
        raise InvalidResultError(f"report.json is missing or invalid: {first_line(e)[:300]}") from e
    check_onnx_file(model_path, "model.onnx")
    summary = report.summary.model_dump(mode="json")
    summary["gates"] = report.gates.model_dump(mode="json")
    return summary


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def run(self: Any, job_id: str) -> str | None:
    """``compress.run(job_id)``: all parameters live in the job record."""
    worker_name = f"{getattr(self.request, 'hostname', None) or socket.gethostname()}/{os.getpid()}"
    state = execute(job_id, services(), worker_name)
    return str(state) if state else None


@signals.task_failure.connect
def _on_task_failure(sender: Any = None, args: Any = None, exception: Any = None, **_: Any) -> None:
    """Hard time limit or a lost pool process: fail the job (the task itself could not)."""
    if getattr(sender, "name", None) != TASK_NAME or not args:
        return
    from billiard.exceptions import WorkerLostError

    if isinstance(exception, TimeLimitExceeded | WorkerLostError):
        kind = (
            errors.ResourceLimitError if isinstance(exception, TimeLimitExceeded) else errors.WorkerLostError
        )
        err = kind(f"the worker process stopped: {type(exception).__name__}").to_dict()
        try:
            services().jobs.transition(str(args[0]), JobState.FAILED, expected=JobState.RUNNING, error=err)
        except RedisError:
            log.exception("job.fail_write_failed job_id=%s", args[0])
