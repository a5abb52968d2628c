"""TorchScript -> ONNX in a locked converter process: the only place an uploaded model's code runs.

A TorchScript archive is a program: ``torch.jit.load`` and the export run its ``forward``, which
can call ``torch.from_file`` on any path (read or, with ``shared=True``, write), and freeze what it
read into the exported graph. So the conversion runs in a process of its own that sees only its
input file and an empty output directory:

- bubblewrap (Debian package ``bubblewrap``): new user, mount, PID, IPC, UTS, cgroup and network
  namespaces, the ``nobody`` uid/gid, all capabilities dropped, a read-only view of the system
  (``/usr``), the Python installation and the ``worker`` package, a private ``/tmp``; no data
  directory, no artifact store, no other job, nothing writable that outlives it;
- the caller's resource limits (address space, CPU, file size) are inherited, plus a wall clock;
- its stdout and stderr are untrusted text (kept, cut to 64 KiB, in the job log); its result is
  a file (``model.onnx``) that the engine reads as data, and a ``status.json`` whose code must be
  one of the few it can honestly report.

After it the pipeline works on the ONNX graph, which cannot run code. Where bubblewrap is missing
or cannot make namespaces (e.g. an unprivileged container without user namespaces), the converter
still runs in a process of its own but sees the filesystem the engine sees: ``isolation()`` says
so, the report and ``/healthz`` carry it, and ``GANCOMPRESS_REQUIRE_ISOLATION=1`` refuses
TorchScript uploads there instead (``isolation_unavailable``).

    python -m worker.engine.convert MODEL.pt OUT_DIR REQUEST.json   (inside the sandbox; the
    request holds the input specs and the opset)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import worker
from worker.errors import (
    ConversionError,
    CorruptModelError,
    GanCompressError,
    IsolationUnavailableError,
    ResourceLimitError,
    UnsupportedOpError,
    first_line,
    says_out_of_memory,
)

log = logging.getLogger(__name__)

REQUIRE_ENV = "GANCOMPRESS_REQUIRE_ISOLATION"
TIMEOUT_SECONDS = 600.0
LOG_LIMIT = 64 * 1024
# What the converter may say about itself; anything else becomes ``conversion_failed``.
STATUS_CODES = {
    CorruptModelError.code: CorruptModelError,
    UnsupportedOpError.code: UnsupportedOpError,
    ResourceLimitError.code: ResourceLimitError,
}
IN_MODEL, IN_SPEC, OUT_DIR = "/job/model.pt", "/job/inputs.json", "/job/out"


def _readonly_roots() -> list[str]:
    """Directories the converter may read: the system, Python and the ``worker`` package."""
    src = Path(worker.__file__).resolve().parent
    roots = ["/usr", sys.base_prefix, sys.prefix, str(src)]
    if Path("/etc/ld.so.cache").is_file():
        roots.append("/etc/ld.so.cache")  # where the dynamic loader looks up system libraries
    out: list[str] = []
    for r in roots:
        p = str(Path(r).resolve())
        if p not in out:
            out.append(p)
    return out


def _converter_env(home: str) -> dict[str, str]:
    """The converter's whole environment (nothing of the caller's passes)."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONPATH": str(Path(worker.__file__).resolve().parent.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore::FutureWarning",
        "CUDA_VISIBLE_DEVICES": "",
    }


def bwrap_argv(model: Path, spec: Path, out_dir: Path) -> list[str] | None:
    """The bubblewrap command prefix for one conversion, or None without a usable bubblewrap."""
    exe = shutil.which("bwrap")
    if not exe:
        return None
    argv = [
        exe, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--uid", "65534", "--gid", "65534", "--clearenv",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
    ]  # fmt: skip
    for name in ("bin", "lib", "lib64", "sbin"):  # merged /usr: the usual symlinks
        target = Path("/" + name)
        if target.is_symlink():
            argv += ["--symlink", os.readlink(target), "/" + name]
        elif target.is_dir():
            argv += ["--ro-bind", str(target), "/" + name]
    for root in _readonly_roots():
        argv += ["--ro-bind", root, root]
    argv += [
        "--ro-bind",
        str(model),
        IN_MODEL,
        "--ro-bind",
        str(spec),
        IN_SPEC,
        "--bind",
        str(out_dir),
        OUT_DIR,
    ]
    env = {**_converter_env("/tmp"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return argv


@lru_cache(maxsize=1)
def isolation() -> dict[str, Any]:
    """How uploaded TorchScript code is isolated on this host: ``{"converter": "bubblewrap" |
    "process", "isolated": bool, "detail": str}``. Checked once, by running bubblewrap."""
    exe = shutil.which("bwrap")
    if not exe:
        return {
            "converter": "process",
            "isolated": False,
            "detail": "bubblewrap (bwrap) is not installed: TorchScript code runs in a separate process "
            "that can read what the worker can read",
        }
    with tempfile.TemporaryDirectory(prefix="gancompress-bwrap-check-") as d:
        probe, out = Path(d) / "probe", Path(d) / "out"
        probe.write_text("{}")
        out.mkdir()
        argv = bwrap_argv(probe, probe, out)
        assert argv is not None
        try:
            res = subprocess.run(
                [*argv, "--", "/bin/sh", "-c", f"test ! -e {Path(d)} && touch {OUT_DIR}/ok"],
                capture_output=True,
                timeout=30,
            )
            ok = res.returncode == 0 and (out / "ok").is_file()
            why = first_line(res.stderr.decode("utf-8", "replace")) or f"exit code {res.returncode}"
        except (OSError, subprocess.SubprocessError) as e:
            ok, why = False, first_line(e)
    if ok:
        return {
            "converter": "bubblewrap",
            "isolated": True,
            "detail": "TorchScript runs under bubblewrap: own user, PID, IPC and network namespaces, "
            "uid nobody, no capabilities, a read-only view of the system and Python, its input file "
            "and an empty output directory",
        }
    return {
        "converter": "process",
        "isolated": False,
        "detail": f"bubblewrap cannot create its namespaces here ({why}): TorchScript code runs in a "
        "separate process that can read what the worker can read",
    }


def require_isolation() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def torchscript_to_onnx(
    path: Path,
    inputs: dict[str, Any],
    opset: int,
    timeout: float = TIMEOUT_SECONDS,
    memory_bytes: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Export the TorchScript archive at ``path`` to ONNX in the converter sandbox. Returns the
    serialized ONNX model and what ``isolation()`` said. ``inputs``: InputSpec dicts (JSON form).
    The converter inherits the caller's resource limits; ``memory_bytes`` lowers its address space
    further."""
    iso = isolation()
    if not iso["isolated"] and require_isolation():
        raise IsolationUnavailableError(
            f"{iso['detail']}; this worker is set to refuse TorchScript then ({REQUIRE_ENV}=1). "
            "Upload the model as ONNX instead"
        )
    with tempfile.TemporaryDirectory(prefix="gancompress-convert-") as d:
        work = Path(d)
        out, spec = work / "out", work / "inputs.json"
        out.mkdir()
        spec.write_text(json.dumps({"inputs": inputs, "opset": opset}))
        model = work / "model.pt"  # a copy: the converter sees this file, not the caller's tree
        shutil.copyfile(path, model)
        for p, m in ((work, 0o755), (out, 0o777), (spec, 0o644), (model, 0o644)):
            os.chmod(p, m)  # the converter runs as nobody
        main = [sys.executable, "-m", "worker.engine.convert"]
        if iso["isolated"]:
            argv = [*bwrap_argv(model, spec, out), "--", *main, IN_MODEL, OUT_DIR, IN_SPEC]  # type: ignore[misc]
            env = None
        else:
            argv = [*main, str(model), str(out), str(spec)]
            env = _converter_env(str(work))
        t0 = time.perf_counter()
        try:
            res = subprocess.run(
                argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                start_new_session=True, preexec_fn=_limit_memory(memory_bytes) if memory_bytes else None,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise ResourceLimitError(
                f"exporting the TorchScript model to ONNX took over {timeout:.0f} s"
            ) from e
        chatter = (res.stdout + res.stderr)[-LOG_LIMIT:].decode("utf-8", "replace")
        if chatter.strip():  # untrusted text: the job log only, never an event
            sys.stderr.write("--- TorchScript converter output (untrusted) ---\n" + chatter + "\n---\n")
        log.info(
            "convert.done isolated=%s rc=%s seconds=%.1f",
            iso["isolated"],
            res.returncode,
            time.perf_counter() - t0,
        )
        status = _read_status(out / "status.json")
        result = out / "model.onnx"
        if res.returncode == 0 and result.is_file() and not result.is_symlink():
            return result.read_bytes(), iso
        if status is not None:
            cls = STATUS_CODES.get(status["code"], ConversionError)
            raise cls(status["detail"])
        if res.returncode < 0 or says_out_of_memory(chatter):
            raise ResourceLimitError(
                f"the TorchScript converter was stopped (exit {res.returncode}), most likely for memory"
            )
        raise ConversionError(
            f"the TorchScript converter exited with code {res.returncode} without a model: "
            f"{first_line(chatter.strip().splitlines()[-1] if chatter.strip() else '')}"
        )


def _limit_memory(n: int) -> Any:
    def setup() -> None:  # between fork and exec
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    return setup


def _read_status(path: Path) -> dict[str, str] | None:
    """``{"code", "detail"}`` from the converter, checked: it is written by untrusted code."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 64 * 1024:
            return None
        raw = json.loads(path.read_text())
        code, detail = str(raw["code"]), str(raw["detail"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"code": code if code in STATUS_CODES else ConversionError.code, "detail": detail[:2000]}


# --- inside the sandbox -------------------------------------------------------------------------


def _export(path: Path, inputs: dict[str, Any], opset: int) -> bytes:
    """Load the archive and export it: dynamic batch first, a fixed batch of 1 when only that
    exports (convolutions with ``groups = batch``, StyleGAN2's fused modconv)."""
    import zipfile

    import torch

    from worker.engine.sampling import example_batch
    from worker.spec import InputSpec

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise CorruptModelError(f"{path.name}: TorchScript archive member {bad!r} is corrupt")
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    except CorruptModelError:
        raise
    except Exception as e:
        raise CorruptModelError(f"not a loadable TorchScript archive: {first_line(e)}") from e
    specs = {k: InputSpec.model_validate(v) for k, v in inputs.items()}
    batch = example_batch(specs, batch=2, seed=0)
    try:
        return _export_traced(ts, batch, opset, dynamic=True)
    except Exception as e:
        first = e
    try:
        return _export_traced(ts, {k: v[:1] for k, v in batch.items()}, opset, dynamic=False)
    except Exception:
        raise UnsupportedOpError(
            f"TorchScript model could not be traced to ONNX: {_reason(first)}"
        ) from first


def _reason(e: BaseException) -> str:
    """One line: for an error raised inside the TorchScript interpreter, its last line (the cause;
    the first only says that an operation failed)."""
    text = str(e).strip()
    if "TorchScript interpreter" in text.split("\n", 1)[0]:
        last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1]
        return first_line(last)
    return first_line(e)


def _export_traced(ts: Any, batch: dict[str, Any], opset: int, dynamic: bool) -> bytes:
    """torch.onnx.export (TorchScript exporter) with a dynamic batch axis or a fixed batch."""
    import io

    import torch

    names = list(batch)
    buf = io.BytesIO()
    with torch.no_grad():
        ts(*batch.values())
        torch.onnx.export(
            ts,
            tuple(batch.values()),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["output"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "output"]} if dynamic else None,
        )
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    from worker.errors import out_of_memory

    model, out, spec = (Path(a) for a in (argv if argv is not None else sys.argv[1:]))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        req = json.loads(spec.read_text())
        data = _export(model, req["inputs"], int(req["opset"]))
    except Exception as e:
        if out_of_memory(e):  # first: an export failure caused by an allocation is a limit
            status = {"code": ResourceLimitError.code, "detail": f"out of memory: {_reason(e)[:300]}"}
        elif isinstance(e, GanCompressError):
            status = {"code": e.code, "detail": e.detail}
        else:
            status = {"code": ConversionError.code, "detail": f"{type(e).__name__}: {first_line(e)}"}
        (out / "status.json").write_text(json.dumps(status))
        return 3
    (out / "model.onnx").write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
