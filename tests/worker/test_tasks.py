"""The task's job handling (claim, redelivery, cancel, results) over a real Redis and a local store.

The sandboxed program is a small stand-in that speaks the engine's stdout protocol, so these tests
are fast and deterministic; the real engine runs in tests/integration."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.app.files import generator_onnx_bytes, onnx_bytes
from worker import sandbox, tasks
from worker.core.jobs import JobState
from worker.core.settings import Settings
from worker.core.uploads import UploadRegistry

STANDIN = """
import json, os, shutil, sys, time, pathlib
job = json.loads(pathlib.Path(sys.argv[1]).read_text())
out = pathlib.Path(sys.argv[2])
mode = job["spec"].get("seed", 0)
EVENTS = os.fdopen(int(os.environ["GANCOMPRESS_EVENT_FD"]), "w")
RESULT = pathlib.Path(__file__).parent / "result"
def emit(**kw):
    print(json.dumps(kw), file=EVENTS, flush=True)
assert pathlib.Path(job["model"]).read_bytes()[:1] == b"\\x08"
for i in range(1, 4):
    emit(event="progress", stage="distill", step=i, total=3, loss=1.0 / i)
    time.sleep(0.3)
if mode == 1:   # run until canceled
    while True:
        emit(event="progress", stage="distill", step=3, total=3)
        time.sleep(0.2)
if mode == 2:
    emit(event="error", code="unsupported_op", detail="op Foo")
    sys.exit(3)
if mode == 3:  # says it succeeded, with a summary it made up and no files
    emit(event="done", summary={"ssim": 1.0, "speedup": 1000})
    sys.exit(0)
shutil.copy(RESULT / "model.onnx", out / "model.onnx")
shutil.copy(RESULT / "report.json", out / "report.json")
if mode == 4:  # a model file that is not ONNX
    (out / "model.onnx").write_bytes(b"onnx")
print("engine log line", file=sys.stderr)
emit(event="done", summary={"ssim": 1.0, "speedup": 1000})
"""


def _standin(tmp_path: Path) -> Path:
    """The stand-in engine script, with a real report.json and ONNX model beside it to hand in."""
    script = tmp_path / "standin.py"
    script.write_text(textwrap.dedent(STANDIN))
    result = tmp_path / "result"
    result.mkdir()
    (result / "model.onnx").write_bytes(generator_onnx_bytes())
    (result / "report.json").write_text(_report(tmp_path).model_dump_json())
    return script


def _report(tmp_path: Path) -> Any:
    from tests.worker.engine.test_report import build_report

    (tmp_path / "r").mkdir()
    return build_report(tmp_path / "r")[0]


@pytest.fixture
def svc(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tasks._Services:
    script = _standin(tmp_path)
    monkeypatch.setattr(
        sandbox, "engine_argv", lambda job, out: [sys.executable, str(script), str(job), str(out)]
    )
    monkeypatch.setattr(tasks, "STOP_POLL_INTERVAL", 0.1)
    settings.kill_grace_seconds = 1
    return tasks._Services(settings)


def _job(svc: tasks._Services, seed: int = 0) -> str:
    uploads = UploadRegistry(svc.redis, svc.settings.redis_prefix, svc.store)
    w = svc.store.new_upload(10**6)
    w.write(onnx_bytes())
    from worker.core.uploads import ModelInfo

    rec = uploads.add_model("anonymous", w, uploads.model_record(w, ModelInfo(format="onnx"), "m.onnx"))
    spec = {"seed": seed, "distill": {"budget_seconds": 30}}
    return svc.jobs.create(owner="anonymous", model_id=rec.id, model_format="onnx", spec=spec).id


def test_success_records_progress_summary_artifacts(svc: tasks._Services) -> None:
    job_id = _job(svc)
    seen: list[Any] = []

    def watch() -> None:
        while not (rec := svc.jobs.get(job_id)) or not rec.finished:
            seen.append(rec)
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    assert tasks.execute(job_id, svc, "w1") == JobState.SUCCEEDED
    t.join()
    rec = svc.jobs.get(job_id)
    report = json.loads(b"".join(svc.store.iter_bytes(f"jobs/{job_id}/report.json")))
    assert rec.summary == {**report["summary"], "gates": report["gates"]}  # from the file, not the event
    assert rec.summary["speedup"] != 1000
    assert rec.artifacts == ["model.onnx", "report.json", "log.txt"] and rec.stage == "done"
    assert rec.worker == "w1" and rec.started_at and rec.finished_at
    assert any(r and r.state == JobState.RUNNING and r.progress.get("step", 0) >= 1 for r in seen)
    assert b"engine log line" in b"".join(svc.store.iter_bytes(f"jobs/{job_id}/log.txt"))
    assert svc.redis.hget(f"{svc.settings.redis_prefix}metrics:stage:distill", "count") == "1"


def test_redelivery_never_runs_twice(svc: tasks._Services) -> None:
    job_id = _job(svc)
    assert tasks.execute(job_id, svc, "w1") == JobState.SUCCEEDED
    assert tasks.execute(job_id, svc, "w2") is None  # finished: skipped
    other = _job(svc)
    svc.jobs.transition(other, JobState.RUNNING, heartbeat=time.time())
    assert tasks.execute(other, svc, "w2") is None  # another worker has it (fresh heartbeat)
    assert svc.jobs.get(other).state == JobState.RUNNING
    svc.jobs.update_running(other, heartbeat=time.time() - 10_000)
    assert tasks.execute(other, svc, "w2") == JobState.FAILED  # its worker died
    assert svc.jobs.get(other).error["code"] == "worker_lost"
    assert tasks.execute("job_missing", svc, "w2") is None


def test_canceled_before_start_is_skipped(svc: tasks._Services) -> None:
    job_id = _job(svc)
    svc.jobs.request_cancel(job_id, stale_after=60)
    assert tasks.execute(job_id, svc, "w1") is None
    assert svc.jobs.get(job_id).state == JobState.CANCELED


def test_cancel_while_running(svc: tasks._Services) -> None:
    job_id = _job(svc, seed=1)

    def cancel_when_running() -> None:
        while (rec := svc.jobs.get(job_id)) and rec.progress.get("step", 0) < 1:
            time.sleep(0.05)
        svc.jobs.request_cancel(job_id, stale_after=60)

    t = threading.Thread(target=cancel_when_running)
    t.start()
    start = time.monotonic()
    assert tasks.execute(job_id, svc, "w1") == JobState.CANCELED
    t.join()
    assert time.monotonic() - start < 30
    rec = svc.jobs.get(job_id)
    assert rec.error == {"code": "canceled", "detail": "canceled by request"} and "log.txt" in rec.artifacts


def test_engine_error_fails_the_job_with_its_code(svc: tasks._Services) -> None:
    job_id = _job(svc, seed=2)
    assert tasks.execute(job_id, svc, "w1") == JobState.FAILED
    assert svc.jobs.get(job_id).error == {"code": "unsupported_op", "detail": "op Foo"}


@pytest.mark.parametrize(
    ("seed", "what"), [(3, "report.json"), (4, "model.onnx")], ids=["no-files", "not-onnx"]
)
def test_a_done_event_without_checked_files_fails_the_job(svc: tasks._Services, seed: int, what: str) -> None:
    job_id = _job(svc, seed=seed)
    assert tasks.execute(job_id, svc, "w1") == JobState.FAILED
    rec = svc.jobs.get(job_id)
    assert rec.error["code"] == "invalid_result" and what in rec.error["detail"]
    assert rec.summary is None


def test_missing_model_blob_fails_not_crashes(svc: tasks._Services) -> None:
    job_id = _job(svc)
    svc.store.delete_prefix("uploads/")
    assert tasks.execute(job_id, svc, "w1") == JobState.FAILED
    assert svc.jobs.get(job_id).error["code"] == "internal_error"


def test_job_json_given_to_the_engine(svc: tasks._Services, monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}
    real_run = sandbox.run

    def spy(argv: list[str], **kw: Any) -> sandbox.Outcome:
        captured["job"] = json.loads(Path(argv[2]).read_text())
        captured["limits"] = kw["limits"]
        return real_run(argv, **kw)

    monkeypatch.setattr(sandbox, "run", spy)
    tasks.execute(_job(svc), svc, "w1")
    assert set(captured["job"]) == {"model", "spec", "calibration"}
    assert captured["job"]["model"].endswith("model.onnx")
    limits = captured["limits"]
    assert limits.memory_bytes == svc.settings.sandbox_memory_bytes
    assert limits.wall_seconds == 30 + svc.settings.job_overhead_seconds


def test_worker_with_the_s3_store(
    settings: Settings, s3_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers on other hosts: model in, artifacts out, through an S3-compatible server."""
    settings.storage_url = "s3://gc-bucket/worker-test"
    settings.s3_endpoint_url = s3_store.client.meta.endpoint_url
    script = _standin(tmp_path)
    monkeypatch.setattr(
        sandbox, "engine_argv", lambda job, out: [sys.executable, str(script), str(job), str(out)]
    )
    svc = tasks._Services(settings)
    job_id = _job(svc)
    assert tasks.execute(job_id, svc, "w-s3") == JobState.SUCCEEDED
    assert b"".join(svc.store.iter_bytes(f"jobs/{job_id}/model.onnx")) == generator_onnx_bytes()


def test_orphan_job_dirs_are_swept_but_not_a_running_jobs(svc: tasks._Services, tmp_path: Path) -> None:
    running, finished = _job(svc), _job(svc)
    svc.jobs.transition(running, JobState.RUNNING, expected=JobState.QUEUED)
    svc.jobs.transition(finished, JobState.CANCELED, expected=JobState.QUEUED)
    root = tmp_path / "jobs-tmp"
    dirs = {
        name: root / f"gancompress-{job_id}-x1y2"
        for name, job_id in (("running", running), ("finished", finished), ("unknown", "job_" + "0" * 24))
    }
    for d in dirs.values():
        (d / "in").mkdir(parents=True)
        (d / "in" / "model.onnx").write_bytes(b"the user's model")
    (root / "unrelated").mkdir()
    removed = tasks.sweep_orphan_dirs(root, svc.jobs)
    assert sorted(removed) == sorted([dirs["finished"].name, dirs["unknown"].name])
    assert dirs["running"].is_dir() and not dirs["finished"].exists() and not dirs["unknown"].exists()
    assert (root / "unrelated").is_dir()
