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
    """Wait until the service is ready, submit ``model`` and wait for it (one progress bar on a
    terminal, a line per stage and 10 % otherwise); prints the outcome."""
    from app.cli import ProgressView, print_summary

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
            with ProgressView() as view:

                def show(j: dict[str, Any]) -> None:
                    p = j.get("progress") or {}
                    view.update(
                        str(j.get("stage") or j["state"]), float(p.get("fraction") or 0),
                        int(p.get("step") or 0), int(p.get("total") or 0), p.get("loss"),
                    )  # fmt: skip

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


def run_demo(host: str, port: int, workers: int, model: Path | None = None, verbose: bool = False) -> int:
    model = model or example_model()
    if not model.is_file():
        print(f"demo: the example model {model} is missing; run `make zoo`", file=sys.stderr)
        return 2
    settings = Settings()
    return Embedded(settings, host, port, workers, settings.data_dir, verbose).run(
        lambda url: compress_example(url, model)
    )
