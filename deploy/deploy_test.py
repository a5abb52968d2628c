"""`make deploy-test`: build the images, run the real docker-compose.yml with podman, compress through it.

What it does, in order (each step prints one line; a table at the end; exit 1 on any miss):

1. base images: where no registry is reachable, stand-ins for ``python:3.11-slim-bookworm`` and
   ``redis:7.2-alpine`` are built from a ``debootstrap``'ed Debian bookworm (deploy/base/); with
   ``--python-image`` / ``--redis-image`` (or a registry) the official images are used instead;
2. the images, one per role, from the repository's Dockerfile (each service's target and tag read
   from docker-compose.yml): the API's (``.[api]``, checked to hold no torch, onnxruntime or CUDA
   library) and the worker's (torch), with pip using the host's package sources (its pip
   configuration and local wheel directories are passed in as build arguments and read-only
   build-time mounts to the builder stages: nothing of them is in either image); the GPU target
   only where its CUDA base image is present;
3. ``podman-compose -f docker-compose.yml up`` (the real file; settings by environment variables
   only), every healthcheck waited for (podman < 4.6 ignores ``condition: service_healthy`` and runs
   healthchecks from systemd timers, which these machines lack, so this script starts Redis first and
   runs each container's own healthcheck command itself with ``podman healthcheck run``);
4. with an API key: the zoo's DCGAN as ONNX and as TorchScript, each through the API to the worker
   container; artifacts downloaded, report.json checked against the report schema, model.onnx with
   ``onnx.checker``; the isolation the worker container can give (``/healthz``, the report);
5. chaos: Redis restarted with jobs queued (they survive: append-only file on the volume) and one
   running; the worker container killed (SIGKILL) mid-job: the job ends ``worker_lost``, the
   restarted worker takes the next one;
6. ``down -v``, always (``--keep`` leaves the stack up for a look).

Run as root on a machine with podman (Debian: ``apt-get install podman debootstrap``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ZOO = ROOT / "worker" / "zoo" / "data"
BASE_DIR = Path(__file__).resolve().parent / "base"

BASE_IMAGE = "localhost/gancompress-base:bookworm"
STANDIN_PYTHON = "localhost/gancompress-python:3.11-bookworm"
STANDIN_REDIS = "localhost/gancompress-redis:7-bookworm"
GPU_BASE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"  # the Dockerfile's gpu stage
PROJECT = "gcdeploytest"
HEARTBEAT_TIMEOUT = 20  # seconds: how soon a killed worker's job is failed `worker_lost`
QUICK = {"prune": {"ratio": 0.5}, "distill": {"steps": 20, "budget_seconds": 15}}
# the two jobs whose reports are kept: a budget that leaves room for the 20 steps on a busy machine
# (TorchScript is first exported to ONNX in the converter sandbox, inside the same budget)
FIRST = {"prune": {"ratio": 0.5}, "distill": {"steps": 20, "budget_seconds": 40}}
LONG = {"prune": {"ratio": 0.5}, "distill": {"steps": 100000, "budget_seconds": 120}}
TERMINAL = ("succeeded", "failed", "canceled")


# --- output --------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float | None = None


@dataclass
class Run:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def check(self, name: str, ok: bool, detail: str, seconds: float | None = None) -> bool:
        self.checks.append(Check(name, ok, detail, seconds))
        took = f" ({seconds:.1f} s)" if seconds is not None else ""
        say(f"{'ok  ' if ok else 'MISS'} {name}: {detail}{took}")
        return ok

    def table(self) -> str:
        rows = [
            "| check | result | detail | seconds |",
            "|---|---|---|---|",
            *(
                f"| {c.name} | {'ok' if c.ok else '**MISS**'} | {c.detail.replace('|', '/')} | "
                f"{'' if c.seconds is None else f'{c.seconds:.1f}'} |"
                for c in self.checks
            ),
        ]
        return "\n".join(rows)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Miss(Exception):
    """A step that the following ones depend on failed."""


# --- processes -----------------------------------------------------------------------------------


def sh(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise Miss(f"`{' '.join(argv[:4])} …` exited {r.returncode}: {' / '.join(tail)}")
    return r


def podman_env(tmp: Path) -> dict[str, str]:
    """The environment every podman call gets: default ulimits the host allows (podman's defaults,
    nofile 1048576 and a large nproc, are above what these machines let runc set, and it then refuses
    to start any container; 16384 of each passes)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 16384)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 16384)
    conf = tmp / "containers.conf"
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def image_exists(name: str, env: dict[str, str]) -> bool:
    return sh(["podman", "image", "exists", name], env, check=False).returncode == 0


def image_size(name: str, env: dict[str, str]) -> int:
    out = sh(["podman", "image", "inspect", "--format", "{{.Size}}", name], env).stdout
    return int(out.strip())


# --- 1. base images --------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = f.read_text(errors="replace") if f.is_file() else ""
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, re.M
        )
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def build_standins(env: dict[str, str], tmp: Path) -> None:
    if not image_exists(BASE_IMAGE, env):
        if shutil.which("debootstrap") is None:
            raise Miss("debootstrap is not installed (apt-get install debootstrap)")
        rootfs = tmp / "rootfs"
        mirror = debian_mirror()
        say(f"     debootstrap bookworm from {mirror} (a few minutes)")
        sh(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], timeout=1800)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh_in = subprocess.run(
            ["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=env, capture_output=True
        )
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
        if sh_in.returncode != 0:
            raise Miss(f"podman import failed: {sh_in.stderr.decode(errors='replace').strip()[-300:]}")
    for tag, dockerfile in ((STANDIN_PYTHON, "python.Dockerfile"), (STANDIN_REDIS, "redis.Dockerfile")):
        if not image_exists(tag, env):
            sh(
                ["podman", "build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag,
                 "-f", str(BASE_DIR / dockerfile), str(BASE_DIR)],
                env, timeout=1800,
            )  # fmt: skip


# --- 2. the image ----------------------------------------------------------------------------------


BUILD_DIR = "/run/gancompress-build"  # where the build sees the host's pip configuration


def host_pip_sources(tmp: Path) -> tuple[list[str], list[str]]:
    """Build arguments and read-only mounts that give pip in the build the host's package sources:
    pip's effective configuration on the host (``pip config list``: global, user and site files and
    PIP_* variables) written to one file under ``tmp``, mounted and named by ``PIP_CONFIG_FILE``,
    and every local path it names (wheel directories, file:// indexes, constraint files) mounted
    read-only where the host has it; the CA bundle pip uses (a proxy may re-sign TLS here)."""
    out = sh([sys.executable, "-m", "pip", "config", "list"], dict(os.environ)).stdout
    conf: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        m = re.match(r"^([^.]+)\.([\w-]+)='(.*)'$", line.strip())
        if m:  # ":env:" entries are the PIP_* variables: pip's [global]
            section = "global" if m.group(1) == ":env:" else m.group(1)
            conf.setdefault(section, {})[m.group(2)] = m.group(3)
    for key, value in os.environ.items():  # pip config list leaves some variables out
        if key.startswith("PIP_") and key not in ("PIP_CONFIG_FILE", "PIP_CERT") and value:
            conf.setdefault("global", {}).setdefault(key[4:].lower().replace("_", "-"), value)
    cert = next((c["cert"] for c in conf.values() if "cert" in c), None) or os.environ.get("PIP_CERT")
    for c in conf.values():
        c.pop("cert", None)
    paths = set()
    for kv in conf.values():
        for key, value in kv.items():
            for p in re.findall(r"(?:file://)?(/[\w./+-]+)", value):
                path = Path(p.rstrip("/"))
                if path.exists():  # a file's directory; a local index's parent (pages link to ../../files/…)
                    paths.add(str(path.parent if path.is_file() or key.endswith("index-url") else path))
    roots = sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths))
    # Everything is mounted under BUILD_DIR (/run is not part of an image) and the configuration
    # rewritten to point there: a mount point elsewhere would stay in the image as an empty path.
    mounts = ["-v", f"{tmp / 'pip.conf'}:{BUILD_DIR}/pip.conf:ro"]
    for root in roots:
        mounts += ["-v", f"{root}:{BUILD_DIR}/host{root}:ro"]
    for kv in conf.values():
        for key in kv:
            for root in sorted(roots, key=len, reverse=True):
                pattern = rf"(^|\s|file://){re.escape(root)}(?=/|\s|$)"
                kv[key] = re.sub(pattern, rf"\g<1>{BUILD_DIR}/host{root}", kv[key])
    if cert and Path(cert).is_file():
        conf.setdefault("global", {})["cert"] = f"{BUILD_DIR}/ca.crt"
        mounts += ["-v", f"{cert}:{BUILD_DIR}/ca.crt:ro"]
    (tmp / "pip.conf").write_text(
        "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in conf.items())
    )
    args = ["--build-arg", f"PIP_CONFIG_FILE={BUILD_DIR}/pip.conf"]
    return args, mounts


ROLES = ("api", "worker")  # the compose services that get an image of their own, built here
# what the API image must not hold: it never loads a model (DESIGN.md, tests/app/test_sniff.py)
ENGINE_MODULES = (
    "torch",
    "torchvision",
    "onnxruntime",
    "onnx2torch",
    "torch_pruning",
    "onnxslim",
    "onnxscript",
)


def compose_images() -> dict[str, tuple[str, str]]:
    """service -> (image tag, Dockerfile target), for the API and the CPU worker, as
    docker-compose.yml says."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {role: (services[role]["image"], services[role]["build"]["target"]) for role in ROLES}


def dockerfile_stages(text: str | None = None) -> dict[str, tuple[str, list[str], list[str]]]:
    """stage name -> (what it is FROM, the stages it copies from, its instructions), in file order."""
    text = (ROOT / "Dockerfile").read_text() if text is None else text
    stages: dict[str, tuple[str, list[str], list[str]]] = {}
    lines = re.sub(r"\\\n", " ", text).splitlines()  # one line per instruction
    current: list[str] = []
    for line in lines:
        m = re.match(r"^FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = []
            stages[m.group(2)] = (m.group(1), [], current)
        elif stages and line.strip() and not line.lstrip().startswith("#"):
            current.append(line.strip())
            c = re.match(r"^COPY\s+--from=(\S+)", line, re.I)
            if c:
                next(reversed(stages.values()))[1].append(c.group(1))
    return stages


def stages_of(target: str, stages: dict[str, tuple[str, list[str], list[str]]] | None = None) -> list[str]:
    """Every stage the target is built from (its FROM chain and what it copies from), target last."""
    stages = dockerfile_stages() if stages is None else stages
    seen: list[str] = []

    def visit(name: str) -> None:
        if name in stages and name not in seen:
            parent, copies, _ = stages[name]
            for dep in (parent, *copies):
                visit(dep)
            seen.append(name)

    visit(target)
    return seen


def builder_stages(target: str) -> list[str]:
    """The stages whose files the target copies (where pip runs): built first, with pip's sources."""
    stages = dockerfile_stages()
    chain = stages_of(target, stages)
    return [s for s in chain if any(s in stages[t][1] for t in chain)]


def snapshot_context(dest: Path) -> Path:
    """A copy of what the Dockerfile reads (its COPY sources, less .dockerignore's caches)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("app", "worker"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def build_images(run: Run, env: dict[str, str], python_image: str, tmp: Path) -> None:
    """The API and the worker image (and the GPU one where its base is here), as compose names them."""
    images = compose_images()
    args, mounts = host_pip_sources(tmp)
    common = [
        "podman", "build", "--network", "host",
        "--build-arg", f"PYTHON_IMAGE={python_image}",
        # the host's indexes instead of download.pytorch.org (unreachable here): torch 2.14.1 from
        # the local wheel cache, the CUDA build (runs on CPU; ~5 GB more than the CPU wheels)
        "--build-arg", f"TORCH_INDEX_URL={os.environ.get('GANCOMPRESS_TORCH_INDEX_URL', 'https://pypi.org/simple')}",
        *args, "-f", str(ROOT / "Dockerfile"),
    ]  # fmt: skip
    # Two passes: the builder stages with pip's sources mounted, then the targets, whose builder
    # steps come from the cache, without them (a build-time mount leaves its mount point in every
    # stage's layers, so a runtime stage must be built with none).
    # Every pass builds from one snapshot of the context: with other people editing the working
    # tree, a file changed in between would make a later pass rebuild a builder stage, without
    # the mounts.
    ctx = snapshot_context(tmp / "context")
    log = ROOT / "var" / "deploy-test" / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(
        f"     building {', '.join(t for t, _ in images.values())} (about 10 minutes cold, seconds "
        f"when cached); output in {log.relative_to(ROOT)}"
    )
    took: dict[str, float] = {}
    with log.open("w") as f:

        def build(*argv: str) -> float:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            t0 = time.monotonic()
            r = subprocess.run(
                ["nice", "-n", "10", *argv], env=env, stdout=f, stderr=subprocess.STDOUT, timeout=3600
            )
            if r.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise Miss(f"podman build exited {r.returncode}: {' / '.join(tail)}")
            return time.monotonic() - t0

        for role, (tag, target) in images.items():  # the API first: its builder is the small one
            took[role] = 0.0
            for stage in builder_stages(target):
                stage_tag = f"{tag.split(':')[0]}-{stage}:latest"
                took[role] += build(*common, *mounts, "--target", stage, "-t", stage_tag, str(ctx))
        for role, (tag, target) in images.items():
            took[role] += build(*common, "--target", target, "-t", tag, str(ctx))
    run.facts["build_seconds"] = f"{sum(took.values()):.0f}"
    for role, (tag, target) in images.items():
        size = image_size(tag, env)
        venv = sh(["podman", "run", "--rm", "--entrypoint", "du", tag, "-sb", "/opt/venv"], env).stdout
        run.facts[f"image_{role}"] = (
            f"{tag} (target {target}): {size / 1e9:.2f} GB, /opt/venv {int(venv.split()[0]) / 1e9:.2f} GB"
        )
        run.facts[f"build_{role}_seconds"] = f"{took[role]:.0f}"
        run.check(f"image build ({role})", True, f"{tag} (target {target}), {size / 1e9:.2f} GB", took[role])
        leaked = sh(
            ["podman", "run", "--rm", "--entrypoint", "sh", tag, "-c",
             "ls -d /opt/* /etc/pip.conf /etc/xdg/pip /run/gancompress-build 2>/dev/null; pip config list"],
            env,
        ).stdout.split()  # fmt: skip
        foreign = [p for p in leaked if p not in ("/opt/venv",)]
        run.check(
            f"{role} image has no build-time paths",
            not foreign,
            "pip config empty, /opt holds only the venv" if not foreign else f"found: {', '.join(foreign)}",
        )
    api_tag = images["api"][0]
    probe = (
        "import importlib.util as u, importlib.metadata as m; "
        f"print(*[n for n in {ENGINE_MODULES!r} if u.find_spec(n)], "
        "len(list(m.distributions())), sum(d.metadata['Name'].lower().startswith(('nvidia', 'triton')) "
        "for d in m.distributions()))"
    )
    out = sh(["podman", "run", "--rm", "--entrypoint", "python", api_tag, "-c", probe], env).stdout.split()
    found, (count, cuda) = out[:-2], out[-2:]
    run.check(
        "api image has no engine packages",
        not found and cuda == "0",
        f"none of {', '.join(ENGINE_MODULES)} importable, no CUDA libraries; {count} distributions"
        if not found and cuda == "0"
        else f"found: {', '.join(found)}; {cuda} CUDA distributions",
    )
    gpu_tag = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker-gpu"]["image"]
    if image_exists(GPU_BASE, env):
        t0 = time.monotonic()
        gpu = sh(
            ["nice", "-n", "10", *common, "--target", "gpu", "-t", gpu_tag, str(ctx)],
            env,
            timeout=3600,
            check=False,
        )
        detail = gpu.stderr.strip()[-200:] if gpu.returncode else f"{gpu_tag} built"
        run.check("gpu image build", gpu.returncode == 0, detail, time.monotonic() - t0)
    else:
        run.check(
            "gpu image build",
            True,
            f"not built: its base {GPU_BASE} is not on this machine and no registry is reachable",
        )


# --- 3. compose ------------------------------------------------------------------------------------


class Stack:
    def __init__(self, env: dict[str, str], compose: str) -> None:
        self.env, self.compose = env, compose

    def compose_argv(self, *args: str) -> list[str]:
        """The real docker-compose.yml; settings come from the environment only."""
        return [self.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT, *args]

    def run_compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return sh(self.compose_argv(*args), self.env, timeout=timeout)

    def containers(self) -> dict[str, str]:
        """service -> container name."""
        out = sh(
            [
                "podman",
                "ps",
                "-a",
                "--filter",
                f"label=io.podman.compose.project={PROJECT}",
                "--format",
                "json",
            ],
            self.env,
        ).stdout
        res = {}
        for c in json.loads(out or "[]"):
            svc = (c.get("Labels") or {}).get("com.docker.compose.service")
            if svc:
                res[svc] = c["Names"][0]
        return res

    def wait_healthy(self, service: str, timeout: float) -> float:
        """Run the container's own healthcheck until it passes; seconds it took."""
        t0 = time.monotonic()
        name = self.containers().get(service)
        if name is None:
            raise Miss(f"no container for service {service}")
        last = ""
        while time.monotonic() - t0 < timeout:
            r = sh(["podman", "healthcheck", "run", name], self.env, timeout=60, check=False)
            if r.returncode == 0:
                return time.monotonic() - t0
            state = sh(["podman", "inspect", "--format", "{{.State.Status}}", name], self.env, check=False)
            last = (r.stdout + r.stderr).strip() or state.stdout.strip()
            time.sleep(2)
        logs = sh(["podman", "logs", "--tail", "15", name], self.env, check=False)
        raise Miss(
            f"{service} not healthy after {timeout:.0f} s ({last}); logs: {(logs.stdout + logs.stderr)[-800:]}"
        )

    def health_status(self, service: str) -> str:
        name = self.containers()[service]
        out = sh(["podman", "inspect", "--format", "{{.State.Health.Status}}", name], self.env, check=False)
        return out.stdout.strip()


# --- 4. the API --------------------------------------------------------------------------------------


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def upload(self, path: Path) -> str:
        r = self.c.post("/v1/models", files={"file": (path.name, path.read_bytes())})
        if r.status_code != 201:
            raise Miss(f"upload {path.name}: {r.status_code} {r.text[:200]}")
        return str(r.json()["id"])

    def submit(self, model_id: str, spec: dict[str, Any]) -> str:
        r = self.c.post("/v1/jobs", json={"model_id": model_id, "spec": spec})
        if r.status_code != 202:
            raise Miss(f"submit: {r.status_code} {r.text[:200]}")
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job record; None while the API cannot answer (Redis restarting)."""
        try:
            r = self.c.get(f"/v1/jobs/{job_id}")
        except httpx.HTTPError:
            return None
        if r.status_code == 200:
            return dict(r.json())
        if r.status_code in (502, 503):
            return None
        raise Miss(f"GET job {job_id}: {r.status_code} {r.text[:200]}")

    def wait(
        self, job_id: str, states: Sequence[str], timeout: float, stage: str | None = None
    ) -> dict[str, Any]:
        t0, rec = time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            rec = self.job(job_id) or rec
            if rec and rec["state"] in states and (stage is None or rec.get("stage") == stage):
                return rec
            if rec and rec["state"] in TERMINAL and rec["state"] not in states:
                raise Miss(f"{job_id} ended {rec['state']} {rec.get('error')}")
            time.sleep(0.5)
        raise Miss(f"{job_id} not {'/'.join(states)} after {timeout:.0f} s (last: {rec and rec['state']})")

    def artifact(self, job_id: str, name: str) -> bytes:
        r = self.c.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        if r.status_code != 200:
            raise Miss(f"artifact {name}: {r.status_code}")
        return r.content


def check_result(api: Api, job_id: str, out: Path) -> tuple[bool, str, dict[str, Any]]:
    """Download the artifacts; report.json must validate against the report schema and model.onnx
    pass onnx.checker."""
    import onnx

    from worker.report_schema import Report

    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "report.json", "report.html"):
        (out / name).write_bytes(api.artifact(job_id, name))
    report = json.loads((out / "report.json").read_text())
    Report.model_validate(report)
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))
    html = (out / "report.html").read_text()
    if "<html" not in html.lower():
        return False, "report.html is not HTML", report
    s = report.get("summary", {})
    sizes = ", ".join(
        f"{n} {(out / n).stat().st_size // 1024} KiB" for n in ("model.onnx", "report.json", "report.html")
    )
    return (
        True,
        f"{sizes}; report valid; MACs /{_num(s.get('mac_reduction'))}, speedup x{_num(s.get('speedup'))}, "
        f"SSIM {_num(s.get('ssim'))}{'' if not s.get('collapse') else ', collapse'}",
        report,
    )


def _num(x: Any) -> str:
    return "?" if x is None else f"{x:.2f}"


# --- the run -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def stack_up(run: Run, stack: Stack, keep: bool) -> Iterator[None]:
    try:
        yield
    finally:
        if keep:
            say(f"--keep: the stack stays up ({stack.compose} -p {PROJECT} down -v to remove it)")
        else:
            t0 = time.monotonic()
            r = sh(stack.compose_argv("down", "-v"), stack.env, timeout=300, check=False)
            left = sh(
                ["podman", "ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}"],
                stack.env, check=False,
            ).stdout.split()  # fmt: skip
            vols = [
                v
                for v in sh(["podman", "volume", "ls", "-q"], stack.env, check=False).stdout.split()
                if v.startswith(f"{PROJECT}_")
            ]
            run.check(
                "down -v",
                r.returncode == 0 and not left and not vols,
                "no container, no volume left" if not (left or vols) else f"left: {left + vols}",
                time.monotonic() - t0,
            )


def deploy_test(args: argparse.Namespace, run: Run, tmp: Path) -> None:
    env = podman_env(tmp)
    compose = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if shutil.which("podman") is None or not Path(compose).exists():
        raise Miss(
            "podman and podman-compose are needed (apt-get install podman; pip install podman-compose)"
        )
    run.facts["host"] = f"{os.cpu_count()} CPU cores, {os.uname().sysname} {os.uname().release}"
    run.facts["podman"] = sh(["podman", "--version"]).stdout.strip()
    run.facts["compose"] = sh([compose, "--version"], env).stdout.strip().splitlines()[0]

    # 1. base images
    t0 = time.monotonic()
    python_image, redis_image = args.python_image, args.redis_image
    if not (python_image and redis_image):
        made = not all(image_exists(i, env) for i in (STANDIN_PYTHON, STANDIN_REDIS))
        build_standins(env, tmp)
        run.facts["base_images"] = "built in this run" if made else "already on this machine"
        python_image, redis_image = python_image or STANDIN_PYTHON, redis_image or STANDIN_REDIS
    run.check("base images", True, f"python: {python_image}, redis: {redis_image}", time.monotonic() - t0)

    # 2. the images
    if args.no_build:
        for role, (tag, target) in compose_images().items():
            if not image_exists(tag, env):
                raise Miss(f"--no-build, and there is no image {tag}")
            run.facts[f"image_{role}"] = f"{tag} (target {target}): {image_size(tag, env) / 1e9:.2f} GB"
    else:
        build_images(run, env, python_image, tmp)

    # 3. compose up
    port = args.port or free_port()
    key = secrets.token_hex(16)
    env.update(
        GANCOMPRESS_PORT=str(port),
        GANCOMPRESS_API_KEYS=f"deploytest:{key}",
        GANCOMPRESS_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_TIMEOUT),
        GANCOMPRESS_REDIS_IMAGE=redis_image,
    )
    stack = Stack(env, compose)
    sh(stack.compose_argv("down", "-v"), env, check=False)  # what a killed earlier run left
    with stack_up(run, stack, args.keep):
        t0 = time.monotonic()
        stack.run_compose("up", "-d", "--no-build", "redis")
        run.check("redis healthy", True, f"redis-cli ping ({redis_image})", stack.wait_healthy("redis", 60))
        t0 = time.monotonic()
        stack.run_compose("up", "-d", "--no-build", "api", "worker")
        stack.wait_healthy("api", 120)
        took_api = time.monotonic() - t0  # from `up` to the first passing healthcheck
        run.check("api healthy", True, f"GET /healthz inside the container, port {port}", took_api)
        stack.wait_healthy("worker", 180)
        took_worker = time.monotonic() - t0
        run.check("worker healthy", True, "celery inspect ping inside the container", took_worker)
        run.facts["start_api_seconds"] = f"{took_api:.1f}"
        run.facts["start_worker_seconds"] = f"{took_worker:.1f}"
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/readyz", timeout=10)
        body = ready.json() if ready.headers.get("content-type", "").endswith("json") else {}
        run.check(
            "readyz",
            ready.status_code == 200,
            f"{ready.status_code}; workers {body.get('workers')}"
            + "".join(f"; {k}: {v}" for k, v in body.items() if k.endswith("_error") or k == "detail"),
        )
        anon = httpx.get(f"{base}/v1/jobs", timeout=10)
        run.check("auth", anon.status_code == 401, f"no key: {anon.status_code}; with key: see below")
        health = httpx.get(f"{base}/healthz", timeout=10).json()
        iso = next(iter(health.get("isolation", {}).values()), None)
        run.check(
            "/healthz isolation",
            iso is not None and health.get("auth") is True,
            f"auth {health.get('auth')}; worker: {iso and iso['converter']}, isolated {iso and iso['isolated']}",
        )
        if iso is not None:
            run.facts["isolation_healthz"] = iso["detail"]

        api = Api(base, key)
        # 4. one ONNX and one TorchScript job
        dcgan = ZOO / "dcgan"
        inputs = json.loads((ZOO / "manifest.json").read_text())["models"]["dcgan"]["inputs"]
        t0 = time.monotonic()
        j_onnx = api.submit(api.upload(dcgan / "model.op17.onnx"), FIRST)
        j_ts = api.submit(api.upload(dcgan / "model.pt"), {**FIRST, "inputs": inputs})
        rec = api.wait(j_onnx, ("succeeded",), 300)
        ok, detail, _ = check_result(api, j_onnx, tmp / "onnx")
        run.check("ONNX job (dcgan)", ok, f"{rec['state']}; {detail}", time.monotonic() - t0)
        t0 = time.monotonic()
        rec = api.wait(j_ts, ("succeeded",), 300)
        ok, detail, report = check_result(api, j_ts, tmp / "ts")
        ci = (report.get("input") or {}).get("code_isolation")
        run.check(
            "TorchScript job (dcgan)",
            ok and ci is not None,
            f"{rec['state']}; {detail}",
            time.monotonic() - t0,
        )
        logs = sh(["podman", "logs", stack.containers()["worker"]], env, check=False)
        no_netns = "sandbox.no_netns" in logs.stdout + logs.stderr
        run.facts["engine_network"] = (
            "the engine process kept the container's network (sandbox.no_netns)"
            if no_netns
            else "the engine process ran in an empty network namespace (unshare --net)"
        )
        if ci:
            run.facts["isolation_report"] = f"{ci['converter']}, isolated {ci['isolated']}: {ci['detail']}"
            run.facts["report_warnings"] = "; ".join(report.get("warnings") or [])[:400]

        # 5a. Redis restarted with one job running and two queued
        mid = api.upload(dcgan / "model.op17.onnx")
        running, *queued = [api.submit(mid, QUICK) for _ in range(3)]
        api.wait(running, ("running",), 120)
        t0 = time.monotonic()
        stack.run_compose("restart", "redis")
        stack.wait_healthy("redis", 60)
        outage = time.monotonic() - t0
        seen = {j: api.wait(j, ("queued", "running", *TERMINAL), 60)["state"] for j in queued}
        run.check(
            "redis restart: queued jobs kept",
            all(s in ("queued", "running", "succeeded") for s in seen.values()),
            f"{len(queued)} queued before, after: {', '.join(seen.values())} (AOF on volume)",
            outage,
        )
        ends = {}
        for j in (running, *queued):
            try:
                ends[j] = api.wait(j, TERMINAL, 300)
            except Miss as e:
                ends[j] = {"state": str(e)}
        run.check(
            "redis restart: all 3 jobs finish",
            all(r["state"] == "succeeded" for r in ends.values()),
            "running one: {}; queued: {}".format(
                ends[running]["state"]
                + (f" ({ends[running]['error']['code']})" if ends[running].get("error") else ""),
                ", ".join(ends[j]["state"] for j in queued),
            ),
        )

        # 5b. the worker container killed mid-job
        victim = api.submit(mid, LONG)
        after = api.submit(mid, QUICK)
        api.wait(victim, ("running",), 120, stage="distill")
        worker = stack.containers()["worker"]
        t_kill = time.time()
        sh(["podman", "kill", "--signal", "KILL", worker], env)
        t0 = time.monotonic()
        state = sh(["podman", "inspect", "--format", "{{.State.Status}}", worker], env).stdout.strip()
        stack.run_compose("up", "-d", "--no-build", "worker")  # what an orchestrator would do
        stack.wait_healthy("worker", 180)
        run.check(
            "worker killed and back",
            True,
            f"after SIGKILL the container was {state}; up -d, healthy",
            time.monotonic() - t0,
        )
        t0 = time.monotonic()
        rec = api.wait(victim, TERMINAL, HEARTBEAT_TIMEOUT * 4 + 60)
        code = (rec.get("error") or {}).get("code")
        run.check(
            "killed job ends worker_lost",
            rec["state"] == "failed" and code == "worker_lost",
            f"{rec['state']} {code}",
            time.monotonic() - t0,
        )
        rec = api.wait(after, TERMINAL, 300)
        started = datetime.fromisoformat(rec["started_at"]).timestamp() if rec.get("started_at") else 0.0
        run.check(
            "next job runs on the new worker",
            rec["state"] == "succeeded",
            f"{rec['state']} (started {started - t_kill:+.0f} s after the kill)" if started else rec["state"],
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--python-image", help="base for the Dockerfile (default: a local bookworm stand-in)")
    p.add_argument("--redis-image", help="Redis image for compose (default: a local bookworm stand-in)")
    p.add_argument("--no-build", action="store_true", help="use the image already built")
    p.add_argument("--port", type=int, help="host port of the API (default: a free one)")
    p.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    p.add_argument("--record", type=Path, help="also write the table and facts to this Markdown file")
    args = p.parse_args(argv)
    run = Run()
    with tempfile.TemporaryDirectory(prefix="gancompress-deploy-") as d:
        try:
            deploy_test(args, run, Path(d))
        except Miss as e:
            run.check("stopped", False, str(e))
        except Exception as e:  # report, then fail
            run.check("stopped", False, f"{type(e).__name__}: {e}")
    wall = time.monotonic() - run.started
    ok = all(c.ok for c in run.checks)
    print()
    print(run.table())
    print()
    for k, v in run.facts.items():
        print(f"- {k}: {v}")
    print(f"\ndeploy-test: {'passed' if ok else 'FAILED'} in {wall:.0f} s")
    if args.record:
        facts = "\n".join(f"- {k}: {v}" for k, v in run.facts.items())
        args.record.write_text(
            f"# `make deploy-test`: the last run\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{'passed' if ok else 'FAILED'} in {wall:.0f} s.\n\n{run.table()}\n\n{facts}\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
