"""Hostile TorchScript uploads against the real service (uvicorn, Celery worker, Redis, the engine in
its sandbox, the converter under bubblewrap): a model that reads another upload from the artifact
store, and one that overwrites it. Both must fail their own job and reach nothing else."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.test_convert import Reader, Writer
from tests.integration.conftest import Service, wait_for

pytestmark = pytest.mark.integration

SPEC = {
    "prune": {"ratio": 0.5},
    "distill": {"steps": 5, "budget_seconds": 5},
    "inputs": {"x": {"shape": [1, 3, 8, 8]}},
}


def _victim(service: Service) -> tuple[Path, bytes]:
    """Another tenant's calibration upload: its file in the artifact store and its bytes."""
    arr = np.random.default_rng().standard_normal((4, 3, 8, 8)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    with service.client() as c:
        r = c.post("/v1/calibrations", files={"file": ("victim.npy", data)})
        assert r.status_code == 201, r.text
    path = (
        Path(service.env["GANCOMPRESS_STORAGE_URL"])
        / "uploads"
        / "calibrations"
        / hashlib.sha256(data).hexdigest()
    )
    assert path.read_bytes() == data
    return path, data


def _attack(service: Service, model: torch.nn.Module, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "attack.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(path))
    with service.client() as c:
        up = c.post("/v1/models", files={"file": ("attack.pt", path.read_bytes())})
        assert up.status_code == 201, up.text
        r = c.post("/v1/jobs", json={"model_id": up.json()["id"], "spec": SPEC})
        assert r.status_code == 202, r.text
        job = wait_for(c, r.json()["id"], ("succeeded", "failed", "canceled"))
        log = c.get(job["artifacts"]["log.txt"]).content if "log.txt" in job.get("artifacts", {}) else b""
    return {"job": job, "log": log}


def test_a_model_cannot_read_another_upload(service: Service, tmp_path: Path) -> None:
    victim, data = _victim(service)
    got = _attack(service, Reader(str(victim), len(data)), tmp_path)
    job = got["job"]
    assert job["state"] == "failed" and job["error"]["code"] == "unsupported_op", job  # type: ignore[index]
    assert "No such file" in job["error"]["detail"]  # type: ignore[index]
    # the victim's bytes (its array, past the .npy header) appear nowhere the attacker can see
    assert data[-64:] not in got["log"] and data[-64:].hex() not in str(job)  # type: ignore[operator]


def test_a_model_cannot_overwrite_another_upload(service: Service, tmp_path: Path) -> None:
    victim, data = _victim(service)
    got = _attack(service, Writer(str(victim), 16), tmp_path)
    job = got["job"]
    assert job["state"] == "failed" and job["error"]["code"] == "unsupported_op", job  # type: ignore[index]
    assert victim.read_bytes() == data
