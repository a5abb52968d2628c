"""Whole jobs over HTTP: real uvicorn, a real Celery worker process, the real Redis, the real engine
in the sandbox, a zoo generator in each format."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.app.files import onnx_bytes, torchscript_zip
from tests.integration.conftest import TINY_SPEC, ZOO, Service, dcgan_inputs, wait_for

pytestmark = pytest.mark.integration


def _run_onnx(path: Path) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        feeds[i.name] = (
            np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            if "float" in i.type
            else np.zeros(shape, dtype=np.int64)
        )
    return sess.run(None, feeds)[0]


def _whole_job(service: Service, model: Path, spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    with service.client() as c:
        up = c.post("/v1/models", files={"file": (model.name, model.read_bytes())})
        assert up.status_code == 201, up.text
        r = c.post("/v1/jobs", json={"model_id": up.json()["id"], "spec": spec})
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}" and r.headers["retry-after"]
        seen: list[dict[str, Any]] = []
        job = wait_for(c, r.json()["id"], ("succeeded", "failed", "canceled"), seen=seen)
        assert job["state"] == "succeeded", job
        running = [j for j in seen if j["state"] == "running"]
        assert any(j["stage"] not in ("queued",) for j in running), "progress was seen while running"
        assert job["progress"]["fraction"] == 1.0 and job["stage"] == "done"
        assert job["started_at"] and job["finished_at"] and "error" not in job
        for key in ("ssim", "psnr", "speedup"):
            assert key in job["summary"], job["summary"]
        assert set(job["artifacts"]) >= {"model.onnx", "report.json", "report.html", "log.txt"}
        for name, url in job["artifacts"].items():
            a = c.get(url)
            assert a.status_code == 200 and a.content, name
            if name == "report.html":
                assert "sandbox" in a.headers["content-security-policy"]
            (tmp_path / name).write_bytes(a.content)
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["summary"]["ssim"] == pytest.approx(job["summary"]["ssim"])
        out = _run_onnx(tmp_path / "model.onnx")
        assert out.ndim == 4 and np.isfinite(out).all()
        return job


def test_onnx_job(service: Service, tmp_path: Path, tiny_model: Path) -> None:
    """The zoo's DCGAN as ONNX (a tiny generator built here while the zoo is not built)."""
    zoo = ZOO / "dcgan" / "model.op17.onnx"
    _whole_job(service, zoo if zoo.is_file() else tiny_model, TINY_SPEC, tmp_path)


def test_torchscript_job(service: Service, tmp_path: Path) -> None:
    """The zoo's DCGAN as TorchScript (a tiny traced generator while the zoo is not built)."""
    zoo = ZOO / "dcgan" / "model.pt"
    if zoo.is_file():
        model, inputs = zoo, dcgan_inputs()
    else:
        model, inputs = _traced_generator(tmp_path), {"z": {"shape": [1, 8]}}
    _whole_job(service, model, {**TINY_SPEC, "inputs": inputs}, tmp_path)


def _traced_generator(tmp_path: Path) -> Path:
    """The test side may use torch (the service under test loads it only in its sandbox)."""
    import torch

    nn = torch.nn

    class Gen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 16 * 4 * 4)
            self.up = nn.ConvTranspose2d(16, 8, 4, 2, 1)
            self.out = nn.ConvTranspose2d(8, 3, 4, 2, 1)

        def forward(self, z: Any) -> Any:
            h = torch.relu(self.fc(z)).view(-1, 16, 4, 4)
            return torch.tanh(self.out(torch.relu(self.up(h))))

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(Gen().eval(), torch.randn(1, 8)), str(path))
    return path


def test_cancel_running_job_then_worker_goes_on(service: Service, tiny_model: Path) -> None:
    model = tiny_model
    long_spec = {"distill": {"steps": 1_000_000, "budget_seconds": 600}}
    with service.client() as c:
        mid = c.post("/v1/models", files={"file": ("m.onnx", model.read_bytes())}).json()["id"]
        job = c.post("/v1/jobs", json={"model_id": mid, "spec": long_spec}).json()
        wait_for(c, job["id"], ("running",), timeout=120)
        r = c.post(f"/v1/jobs/{job['id']}:cancel")
        assert r.status_code in (200, 202) and r.json()["state"] in ("running", "canceled")
        done = wait_for(c, job["id"], ("canceled", "succeeded", "failed"), timeout=60)
        assert done["state"] == "canceled" and done["error"]["code"] == "canceled"
        again = c.post(f"/v1/jobs/{job['id']}:cancel")
        assert again.status_code == 200 and again.json()["state"] == "canceled"
        assert "log.txt" in done["artifacts"]
        # The worker is free and consumes the next job.
        nxt = c.post("/v1/jobs", json={"model_id": mid, "spec": TINY_SPEC}).json()
        assert wait_for(c, nxt["id"], ("succeeded", "failed"))["state"] == "succeeded"


def test_crashing_upload_fails_only_its_job(service: Service, tiny_model: Path) -> None:
    spec = {**TINY_SPEC, "inputs": {"z": {"shape": [1, 8, 1, 1]}}}
    with service.client() as c:
        bad = c.post("/v1/jobs", files={"model": ("bad.pt", torchscript_zip(garbage=True))},
                     data={"spec": json.dumps(spec)})  # fmt: skip
        assert bad.status_code == 202, bad.text
        weird = c.post("/v1/jobs", files={"model": ("weird.onnx", onnx_bytes(then="Hardmax"))},
                       data={"spec": json.dumps(TINY_SPEC)})  # fmt: skip
        assert weird.status_code == 202, weird.text
        good_model = tiny_model
        mid = c.post("/v1/models", files={"file": ("m.onnx", good_model.read_bytes())}).json()["id"]
        good = c.post("/v1/jobs", json={"model_id": mid, "spec": TINY_SPEC}).json()
        failed = wait_for(c, bad.json()["id"], ("succeeded", "failed", "canceled"))
        assert failed["state"] == "failed" and failed["error"]["code"] in (
            "corrupt_model", "unsupported_format", "internal_error", "sandbox_crashed",
        ), failed["error"]  # fmt: skip
        assert "log.txt" in failed["artifacts"]
        unsupported = wait_for(c, weird.json()["id"], ("succeeded", "failed", "canceled"))
        assert unsupported["state"] == "failed", unsupported
        assert unsupported["error"]["code"] in ("unsupported_op", "corrupt_model", "internal_error")
        assert wait_for(c, good["id"], ("succeeded", "failed"))["state"] == "succeeded"


def test_idempotent_retry_and_etag_over_http(service: Service, tiny_model: Path) -> None:
    model = tiny_model
    with service.client() as c:
        mid = c.post("/v1/models", files={"file": ("m.onnx", model.read_bytes())}).json()["id"]
        spec = {"distill": {"steps": 1_000_000, "budget_seconds": 600}}
        h = {"Idempotency-Key": "integration-retry"}
        a = c.post("/v1/jobs", json={"model_id": mid, "spec": spec}, headers=h)
        b = c.post("/v1/jobs", json={"model_id": mid, "spec": spec}, headers=h)
        assert a.json()["id"] == b.json()["id"]
        r = c.get(f"/v1/jobs/{a.json()['id']}")
        assert c.get(r.url, headers={"If-None-Match": r.headers["etag"]}).status_code in (200, 304)
        c.post(f"/v1/jobs/{a.json()['id']}:cancel")
        wait_for(c, a.json()["id"], ("canceled", "failed", "succeeded"), timeout=60)
        final = c.get(f"/v1/jobs/{a.json()['id']}")
        assert c.get(final.url, headers={"If-None-Match": final.headers["etag"]}).status_code == 304
        page = c.get("/v1/jobs", params={"limit": 1}).json()
        assert len(page["items"]) == 1 and page["next_cursor"]
        metrics = c.get("/metrics").text
        assert 'gancompress_jobs{state="canceled"}' in metrics
        assert "gancompress_stage_duration_seconds_bucket" in metrics


def test_image_to_image_job_with_calibration(service: Service, tmp_path: Path) -> None:
    """Multipart in one request: the model, the spec and calibration images for its image input."""
    from tests.app.files import i2i_onnx_bytes

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.save(buf, rng.uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32))
    spec = {**TINY_SPEC, "inputs": {"img": {"shape": [1, 3, 16, 16], "distribution": "calibration"}}}
    with service.client() as c:
        r = c.post(
            "/v1/jobs",
            files={"model": ("i2i.onnx", i2i_onnx_bytes()), "calibration": ("photos.npy", buf.getvalue())},
            data={"spec": json.dumps(spec)},
        )
        assert r.status_code == 202, r.text
        assert list(r.json()["calibration"]) == [""]
        # Without calibration images the same spec is refused at submit time.
        r2 = c.post(
            "/v1/jobs", files={"model": ("i2i.onnx", i2i_onnx_bytes())}, data={"spec": json.dumps(spec)}
        )
        assert r2.status_code == 422 and r2.json()["code"] == "bad_calibration"
        job = wait_for(c, r.json()["id"], ("succeeded", "failed", "canceled"))
        assert job["state"] == "succeeded", job
        model = c.get(job["artifacts"]["model.onnx"]).content
        (tmp_path / "model.onnx").write_bytes(model)
        assert _run_onnx(tmp_path / "model.onnx").shape[1:] == (3, 16, 16)
