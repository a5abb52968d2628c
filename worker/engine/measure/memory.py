"""Peak resident memory that one ONNX Runtime session adds, measured in a short-lived child process
(``memory_probe.py``, run as a script so that the baseline holds only numpy and onnxruntime)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
PROBE = Path(__file__).with_name("memory_probe.py")

# ----------------------------------------------------------------------------- peak memory


MEMORY_HOW = (
    "In a fresh child Python process: import numpy and onnxruntime and load the inputs, read the RSS "
    "high-water mark (VmHWM of /proc/self/status; getrusage ru_maxrss where /proc is absent) as the "
    "baseline; create the CPU session "
    "(threads={threads}, all graph optimizations) and run it once; session bytes = high-water mark "
    "after the run minus the baseline. Covers weights, the optimized graph and activation arenas."
)


@dataclass
class MemoryResult:
    """Peak resident memory of one onnxruntime session (bytes)."""

    session_bytes: int  # peak minus baseline: what the session and one run added
    peak_bytes: int  # child high-water mark after creating the session and running once
    baseline_bytes: int  # child high-water mark after imports and loading the inputs
    after_create_bytes: int
    threads: int
    how: str


def measure_peak_memory(
    model_path: Path | str, feeds: Feeds, threads: int = 1, timeout_s: float = 300.0
) -> MemoryResult:
    """RSS high-water mark that creating a session for ``model_path`` and running it once on
    ``feeds`` adds, measured in a short-lived child process (see ``MEMORY_HOW``).

    Raises ``RuntimeError`` when the child fails (its stderr tail is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="gc-mem-") as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **{k: np.asarray(v) for k, v in feeds.items()})
        proc = subprocess.run(
            [sys.executable, str(PROBE), str(model_path), str(npz), str(threads)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=tmp,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    res = MemoryResult(
        session_bytes=int(d["peak"] - d["baseline"]),
        peak_bytes=int(d["peak"]),
        baseline_bytes=int(d["baseline"]),
        after_create_bytes=int(d["after_session"]),
        threads=threads,
        how=MEMORY_HOW.format(threads=threads),
    )
    logger.info("memory.measured path=%s session_bytes=%d", model_path, res.session_bytes)
    return res
