"""The deployment files are valid: ``docker-compose config`` and ``hadolint`` are clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_config(profile: list[str]) -> None:
    exe = shutil.which("docker-compose")
    if exe:
        argv = [exe, *profile, "config", "-q"]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        argv = ["docker", "compose", *profile, "config", "-q"]
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_compose_shape() -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "api", "worker", "worker-gpu"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["healthcheck"]
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["healthcheck"], name
        assert "artifacts:/data" in services[name]["volumes"], name
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"
    ]


def test_hadolint() -> None:
    r = subprocess.run(
        [_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_is_multistage_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") >= 2 and "AS builder" in text and "COPY --from=builder" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "whl/cpu" in text
