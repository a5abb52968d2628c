"""The deployment files are valid: ``docker-compose config`` and ``hadolint`` are clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _deploy_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_test", ROOT / "deploy" / "deploy_test.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_deploy_test_runs_the_real_compose_file() -> None:
    """`make deploy-test` drives docker-compose.yml itself (no edited copy): every compose call
    names that file, and the image it builds is the one the file's services use."""
    mod = _deploy_script()
    assert mod.COMPOSE_FILE == ROOT / "docker-compose.yml"
    argv = mod.Stack({}, "podman-compose").compose_argv("up", "-d")
    assert argv[:3] == ["podman-compose", "-f", str(ROOT / "docker-compose.yml")]
    doc = yaml_load()
    tag, target = mod.compose_build_target()
    assert (
        tag == doc["services"]["worker"]["image"] == doc["services"]["api"]["image"] and target == "runtime"
    )
    assert doc["services"]["redis"]["image"] == "${GANCOMPRESS_REDIS_IMAGE:-redis:7.2-alpine}"
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndeploy-test:" in makefile and "deploy/deploy_test.py" in makefile


def test_deploy_test_build_mounts_are_read_only(tmp_path: Path) -> None:
    """The host's pip sources reach the build as read-only mounts and build arguments only."""
    args, mounts = _deploy_script().host_pip_sources(tmp_path)
    assert all(m.endswith(":ro") for m in mounts[1::2]) and set(mounts[0::2]) <= {"-v"}
    assert set(args[0::2]) <= {"--build-arg"}
    names = {a.split("=", 1)[0] for a in args[1::2]}
    declared = set(re.findall(r"^ARG (PIP_\w+)", (ROOT / "Dockerfile").read_text(), re.M))
    assert names <= declared, names - declared


@pytest.mark.parametrize("name", ["python.Dockerfile", "redis.Dockerfile"])
def test_hadolint_base_standins(name: str) -> None:
    r = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "warning", f"deploy/base/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def yaml_load() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))
