"""Sandbox entry point: ``python -m worker.engine.run JOB_JSON OUT_DIR``.

This is the only place where an uploaded model is loaded in the service. The worker runs it in a
child process with resource limits (worker/sandbox.py) and reads its events from the file
descriptor named by ``GANCOMPRESS_EVENT_FD`` (stdout when unset, for runs by hand), one JSON
object per line; the child's stdout and stderr are only its log, so a model that prints cannot
forge an event:

- ``{"event": "progress", "stage", "step", "total", "loss", "eta_seconds", "message"}``
- ``{"event": "done", "summary": {...}}`` (exit code 0)
- ``{"event": "error", "code", "detail"}`` (exit code 3 for bad input, 1 for anything else)

Logs go to stderr. ``JOB_JSON`` holds ``{"model": path, "spec": {...}, "calibration": {name: path}}``.
Artifacts are written to ``OUT_DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from worker.errors import BadInputError, GanCompressError, ResourceLimitError, first_line, out_of_memory
from worker.sandbox import EVENT_FD_ENV
from worker.spec import Progress
from worker.spec_cli import validate_spec

EXIT_BAD_INPUT = 3


def _event_stream() -> TextIO:
    fd = os.environ.pop(EVENT_FD_ENV, None)  # popped: the model's code need not see it
    return os.fdopen(int(fd), "w", buffering=1) if fd else sys.stdout


_EVENTS: TextIO | None = None


def _emit(obj: dict[str, object]) -> None:
    _emit_stream_now()
    assert _EVENTS is not None
    _EVENTS.write(json.dumps(obj) + "\n")
    _EVENTS.flush()


def main(argv: list[str] | None = None) -> int:
    started_at = time.time()  # the job's budget counts from here: importing torch is part of the job
    argv = sys.argv[1:] if argv is None else argv
    _emit_stream_now()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if len(argv) != 2:
        _emit({"event": "error", "code": "internal_error", "detail": "usage: run JOB_JSON OUT_DIR"})
        return 1
    job_path, out_dir = Path(argv[0]), Path(argv[1])
    try:
        job = json.loads(job_path.read_text())
        spec = validate_spec(job.get("spec", {}))
        from worker.engine.pipeline import compress  # torch is imported here, inside the sandbox

        def progress(p: Progress) -> None:
            _emit({"event": "progress", **p.model_dump(mode="json")})

        report = compress(
            Path(job["model"]),
            spec,
            out_dir,
            calibration={k: Path(v) for k, v in (job.get("calibration") or {}).items()},
            progress=progress,
            started_at=started_at,
        )
        _emit({"event": "done", "summary": report["summary"]})
        return 0
    except Exception as e:
        if not out_of_memory(e):
            return _failed(e)
        logging.getLogger(__name__).warning("job.out_of_memory error=%s", first_line(e))
        detail = f"the job ran out of memory: {first_line(e)[:300]}"
        _emit({"event": "error", "code": ResourceLimitError.code, "detail": detail})
        return 1


def _failed(e: Exception) -> int:
    """The error event for a failure that is not a memory limit; the exit code."""
    log = logging.getLogger(__name__)
    if isinstance(e, GanCompressError):
        log.warning("job.failed code=%s detail=%s", e.code, e.detail)
        _emit({"event": "error", **e.to_dict()})
        return EXIT_BAD_INPUT if isinstance(e, BadInputError) else 1
    # the boundary: anything unexpected becomes a failed job, never a crash
    log.error("job.crashed", exc_info=e)
    _emit({"event": "error", "code": "internal_error", "detail": f"{type(e).__name__}: {e}"})
    return 1


def _emit_stream_now() -> None:
    """Take the event descriptor before any uploaded code runs (it pops the variable)."""
    global _EVENTS
    if _EVENTS is None:
        _EVENTS = _event_stream()


if __name__ == "__main__":
    sys.exit(main())
