"""The deployment files are valid (``docker-compose config`` and ``hadolint`` are clean), each
compose service uses its role's image, and the API image installs no torch."""

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


def test_compose_points_each_service_at_its_role_image() -> None:
    """The API, the CPU worker and the GPU worker each build their own Dockerfile target, under
    their own tag; every target is a stage of the Dockerfile."""
    services = yaml_load()["services"]
    targets = {name: services[name]["build"]["target"] for name in ("api", "worker", "worker-gpu")}
    assert targets == {"api": "api", "worker": "worker", "worker-gpu": "gpu"}
    images = [services[name]["image"] for name in targets]
    assert len(set(images)) == len(images), images
    assert set(targets.values()) <= set(_deploy_script().dockerfile_stages())


# what the API never imports (DESIGN.md §2; tests/app/test_sniff.py checks the process)
ENGINE = ("torch", "torchvision", "onnxruntime", "onnx2torch", "torch-pruning", "onnxslim", "onnxscript")


def test_api_image_installs_no_torch() -> None:
    """The API target's stages (its FROM chain and the builder it copies its virtualenv from)
    install ``.[api]`` and nothing of the engine, and what ``.[api]`` brings, dependencies of
    dependencies included, holds no torch, onnxruntime or CUDA library."""
    mod = _deploy_script()
    stages = mod.dockerfile_stages()
    chain = mod.stages_of("api", stages)
    assert "builder" not in chain and "api-builder" in chain, chain
    assert mod.builder_stages("api") == ["api-builder"]
    text = "\n".join(line for name in chain for line in stages[name][2]).lower()
    installs = re.findall(r"pip install ([^&\n]*)", text)
    assert installs == ['".[api]"'], installs
    assert "torch" not in text and "onnxruntime" not in text and "[worker]" not in text
    # and the worker target is the one with torch
    worker = "\n".join(line for name in mod.stages_of("worker", stages) for line in stages[name][2])
    assert "torch==" in worker and '".[worker]"' in worker

    closure = _requirement_closure("api")
    heavy = {n for n in closure if n in ENGINE or n.startswith(("nvidia-", "triton"))}
    assert not heavy, heavy
    assert {"fastapi", "celery", "onnx"} <= closure


# The API process as ``pip install ".[api]"`` leaves it: every distribution of this venv that the
# `api` extra does not install is made unimportable (optional imports then fall back, as they would
# in the image), and the process starts the app, picks uvicorn's loop and HTTP parser, and loads
# the Celery producer's broker transport and control mailbox (kombu imports its Redis transport only
# at the first send_task or ping: a dependency missing there left every container healthy, /readyz
# at 503 and every submit failing).
API_PROCESS = """
import json, re, sys
from importlib import metadata
allowed = set(json.loads(sys.argv[2]))
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
blocked = {top for top, ds in metadata.packages_distributions().items() if not {canon(d) for d in ds} & allowed}
blocked -= {m.split(".")[0] for m in sys.modules}  # what the interpreter's start-up (.pth files) loaded
tried = set()
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            tried.add(name.split(".")[0])
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
from app.main import create_app
from worker.core.settings import Settings
import uvicorn.loops.auto, uvicorn.protocols.http.auto
uvicorn.loops.auto.auto_loop_factory()
svc = create_app(Settings(storage_url=sys.argv[1])).state.services
celery = svc.queue.celery
celery.connection_for_write().transport, celery.control.mailbox, celery.amqp.router
print(json.dumps({"loaded": sorted(sys.modules), "tried": sorted(tried)}))
"""


def test_the_api_process_runs_on_its_extra_alone(tmp_path: Path) -> None:
    """What the API process needs, its broker transport included, is all in ``gancompress[api]``
    (the API image's install), and it never even tries to import torch or onnxruntime."""
    import json

    closure = sorted(_requirement_closure("api") | {"gancompress"})
    r = subprocess.run(
        [sys.executable, "-c", API_PROCESS, str(tmp_path / "artifacts"), json.dumps(closure)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"the API needs more than gancompress[api] installs: {r.stderr[-2000:]}"
    out = json.loads(r.stdout)
    assert {"kombu.transport.redis", "kombu.pidbox", "uvloop", "httptools", "app.main"} <= set(out["loaded"])
    engine = {m.replace("-", "_") for m in ENGINE}
    assert not engine & ({m.split(".")[0] for m in out["loaded"]} | set(out["tried"])), out["tried"]


def _requirement_closure(extra: str) -> set[str]:
    """Normalized names of every distribution ``gancompress[extra]`` installs, read from
    pyproject.toml and, below it, the installed packages' metadata (.venv holds them all)."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][extra]]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "gancompress":  # a self-reference: gancompress[api] inside another extra
            todo += [Requirement(r) for e in req.extras for r in project["optional-dependencies"][e]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (needed by gancompress[{extra}]) is not installed in this venv")
        for r in map(Requirement, requires):
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if r.marker is None or any(r.marker.evaluate(env) for env in envs):
                todo.append(r)
    return seen


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
    assert mod.compose_images() == {
        role: (doc["services"][role]["image"], doc["services"][role]["build"]["target"])
        for role in ("api", "worker")
    }
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
