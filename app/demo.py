"""``gancompress demo`` (``make demo``): serve, compress the bundled example generator through the
HTTP API, print its summary and the URL of its report, and keep serving."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from app.client import ApiError, GanCompressClient
from app.serve import Embedded
from worker.core.settings import Settings

log = logging.getLogger(__name__)

DEMO_SPEC: dict[str, Any] = {
    "prune": {"method": "channel", "ratio": 0.5},
    "distill": {"steps": 300, "budget_seconds": 60},
}


def example_model() -> Path:
    """The bundled example: the zoo's DCGAN generator as ONNX."""
    try:
        from worker.zoo.registry import model_path

        return model_path("dcgan", fmt="onnx", opset=17)
    except (ImportError, FileNotFoundError, KeyError):
        return Path(__file__).resolve().parents[1] / "worker" / "zoo" / "data" / "dcgan" / "model.op17.onnx"


def compress_example(url: str, model: Path, spec: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Wait until the service is ready, submit ``model`` and wait for it; prints the outcome."""
    from app.cli import print_summary

    with GanCompressClient(url, timeout=300) as client:
        deadline = time.monotonic() + 180
        while True:
            try:
                client.ready()
                break
            except ApiError:
                if time.monotonic() > deadline:
                    print("demo: the service did not become ready", file=sys.stderr)
                    return None
                time.sleep(1)
        try:
            m = client.upload_model(model)
            job = client.submit(m["id"], spec or DEMO_SPEC)
            print(f"demo: compressing {model.name} as job {job['id']} ...", file=sys.stderr, flush=True)
            last: list[str] = []

            def show(j: dict[str, Any]) -> None:
                p = j.get("progress") or {}
                pct = int(float(p.get("fraction") or 0) * 10) * 10
                line = f"demo: [{j['state']}/{j.get('stage')}] {pct}%"
                if not last or line != last[-1]:
                    last.append(line)
                    print(line, file=sys.stderr, flush=True)

            job = client.wait(job["id"], show, poll_seconds=1.0)
        except ApiError as e:
            print(f"demo: error: {e.code}: {e.detail}", file=sys.stderr)
            return None
    if job["state"] != "succeeded":
        print(f"demo: the job {job['state']}: {job.get('error')}", file=sys.stderr)
        return job
    report = job["artifacts"].get("report.html", "")
    print_summary(job.get("summary") or {}, [("job", job["id"])])
    print(f"\nReport: {report}\nModel:  {job['artifacts'].get('model.onnx', '')}\n(still serving; Ctrl-C stops)",
          flush=True)  # fmt: skip
    return job


def run_demo(host: str, port: int, workers: int, model: Path | None = None) -> int:
    model = model or example_model()
    if not model.is_file():
        print(f"demo: the example model {model} is missing; run `make zoo`", file=sys.stderr)
        return 2
    settings = Settings()
    return Embedded(settings, host, port, workers, settings.data_dir).run(
        lambda url: compress_example(url, model)
    )
