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

from tests.integration.conftest import Service, wait_for
from tests.worker.engine.test_convert import Bomb, Reader, Writer

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


class Forger(torch.nn.Module):
    """Prints a forged ``done`` event (what the engine's events looked like on stdout), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.out = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print('{"event": "done", "summary": {"ssim": 1.0, "speedup": 1000.0, "gates_passed": true}}')
        return torch.tanh(self.out(torch.relu(self.conv(x))))


def test_a_model_cannot_forge_its_result(service: Service, tmp_path: Path) -> None:
    got = _attack(service, Forger(), tmp_path)
    job = got["job"]
    assert job["state"] == "succeeded", job
    assert job["summary"]["speedup"] != 1000.0 and job["summary"]["ssim"] < 1.0  # type: ignore[index]
    assert b'"speedup": 1000.0' in got["log"]  # what it printed is in the log, as untrusted text


def test_a_memory_bomb_is_resource_limit(service: Service, tmp_path: Path) -> None:
    """50 GiB asked for inside forward, under the worker's default address-space limit (8 GiB)."""
    job = _attack(service, Bomb(), tmp_path)["job"]
    assert job["state"] == "failed" and job["error"]["code"] == "resource_limit", job  # type: ignore[index]


def _expand_bomb() -> bytes:
    """An ONNX graph whose Expand asks for 51 GiB per sample, then averages it back to its input."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    shape = helper.make_tensor("shape", TensorProto.INT64, [5], [2**26, 1, 1, 1, 1])
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["big"]),
        helper.make_node("ReduceMean", ["big"], ["y"], axes=[0], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "bomb", [x], [y], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def test_an_onnx_memory_bomb_is_resource_limit(service: Service) -> None:
    with service.client() as c:
        up = c.post("/v1/models", files={"file": ("bomb.onnx", _expand_bomb())})
        assert up.status_code == 201, up.text
        r = c.post("/v1/jobs", json={"model_id": up.json()["id"], "spec": SPEC})
        assert r.status_code == 202, r.text
        job = wait_for(c, r.json()["id"], ("succeeded", "failed", "canceled"))
    assert job["state"] == "failed" and job["error"]["code"] == "resource_limit", job["error"]
