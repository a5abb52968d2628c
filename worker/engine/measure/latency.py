"""Latency of ONNX models in ONNX Runtime, teacher and student in the same process, interleaved,
at fixed thread counts; and the machine facts those numbers depend on (torch-free)."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
FeedsFn = Callable[[int], Feeds]


# ----------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    proc = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return proc or platform.machine()


def environment_info() -> dict[str, str]:
    """Versions and machine facts that latency and memory numbers depend on."""
    return {
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": str(os.cpu_count() or 1),
        "ort_providers": "CPUExecutionProvider",
    }


# ----------------------------------------------------------------------------- latency


@dataclass
class LatencyStats:
    """Latency of one model at one thread count, in milliseconds over ``runs`` timed runs."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    runs: int
    samples_ms: list[float]

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(a.mean()),
            min_ms=float(a.min()),
            max_ms=float(a.max()),
            std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
            runs=int(a.size),
            samples_ms=[float(x) for x in a],
        )


@dataclass
class ThreadLatency:
    threads: int
    teacher: LatencyStats
    student: LatencyStats
    speedup: float  # teacher p50 / student p50
    rounds: int
    warmup: int
    stopped_by_budget: bool


@dataclass
class LatencyResult:
    per_threads: list[ThreadLatency]
    batch_size: int | None
    input_shapes: dict[str, list[int]]
    environment: dict[str, str]
    how: str

    def at(self, threads: int) -> ThreadLatency:
        for t in self.per_threads:
            if t.threads == threads:
                return t
        raise KeyError(f"no latency at {threads} threads; measured: {[t.threads for t in self.per_threads]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """A CPU onnxruntime session: ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``,
    sequential execution, all graph optimizations."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _select(sess: ort.InferenceSession, feeds: Feeds) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"feeds lack inputs {missing}; given: {sorted(feeds)}")
    return {n: feeds[n] for n in names}


def _timed(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter_ns()
    sess.run(None, feeds)
    return (time.perf_counter_ns() - t0) / 1e6


def default_threads() -> list[int]:
    """``[1, os.cpu_count()]`` without duplicates."""
    return sorted({1, os.cpu_count() or 1})


def measure_latency(
    teacher_path: Path | str,
    student_path: Path | str,
    feeds: Feeds | FeedsFn,
    threads: Sequence[int] | None = None,
    warmup: int = 10,
    runs: int = 100,
    budget_seconds: float = 60.0,
    min_runs: int = 5,
) -> LatencyResult:
    """Latency of teacher and student ONNX models on CPU, measured against each other.

    ``feeds`` is either one input dict (name -> array, batch first) used for every run, or a
    function ``round_index -> feeds`` called once per round; in each round both models get the
    same arrays. For each thread count ``t`` in ``threads`` (default ``[1, cpu_count]``): both
    sessions are created in this process (see :func:`make_session`), each runs ``warmup`` untimed
    runs, then ``runs`` rounds each time one teacher and one student ``session.run`` with
    ``time.perf_counter_ns``, the order alternating every round. ``budget_seconds`` bounds the
    whole measurement: each thread count gets an equal share of what is left, warm-up included;
    at least ``min_runs`` rounds run whatever the budget (``stopped_by_budget`` says when the budget
    cut the rounds short). Teacher and student always have the same number of runs.
    """
    threads = list(dict.fromkeys(threads or default_threads()))
    if any(t < 1 for t in threads):
        raise ValueError(f"thread counts must be >= 1, got {threads}")
    feeds_fn: FeedsFn = feeds if callable(feeds) else (lambda _i, _f=feeds: _f)  # type: ignore[misc]
    first = feeds_fn(0)
    arrays = list(first.values())
    batch = int(np.shape(arrays[0])[0]) if arrays and np.ndim(arrays[0]) else None
    deadline = time.monotonic() + budget_seconds
    results: list[ThreadLatency] = []
    for ti, t in enumerate(threads):
        share = max(0.0, deadline - time.monotonic()) / (len(threads) - ti)
        t_end = time.monotonic() + share
        sessions = {"teacher": make_session(teacher_path, t), "student": make_session(student_path, t)}
        w_done = 0
        for w in range(max(1, warmup)):
            if w >= 1 and time.monotonic() > t_end - share / 2:  # warm-up never takes over half
                break
            f = feeds_fn(w)
            for s in sessions.values():
                s.run(None, _select(s, f))
            w_done += 1
        samples: dict[str, list[float]] = {"teacher": [], "student": []}
        stopped = False
        r = 0
        while r < runs:
            if r >= min_runs and time.monotonic() > t_end:
                stopped = True
                break
            f = feeds_fn(r)
            order = ("teacher", "student") if r % 2 == 0 else ("student", "teacher")
            for name in order:
                s = sessions[name]
                samples[name].append(_timed(s, _select(s, f)))
            r += 1
        te, st = LatencyStats.from_samples(samples["teacher"]), LatencyStats.from_samples(samples["student"])
        results.append(
            ThreadLatency(
                threads=t,
                teacher=te,
                student=st,
                speedup=te.p50_ms / st.p50_ms if st.p50_ms > 0 else float("inf"),
                rounds=r,
                warmup=w_done,
                stopped_by_budget=stopped,
            )
        )
        logger.info(
            "latency.measured threads=%d rounds=%d teacher_p50_ms=%.3f student_p50_ms=%.3f",
            t,
            r,
            te.p50_ms,
            st.p50_ms,
        )
        del sessions
    how = (
        f"onnxruntime {ort.__version__} CPUExecutionProvider, teacher and student sessions in one "
        "process, intra_op_num_threads=T, inter_op_num_threads=1, sequential execution, all graph "
        f"optimizations; {results[0].warmup if results else warmup} untimed warm-up runs per model, then "
        "rounds of one teacher and one student run in alternating order, each timed with "
        "time.perf_counter_ns around session.run (outputs copied to numpy included); "
        f"batch size {batch}. Speedup = teacher p50 / student p50."
    )
    return LatencyResult(
        per_threads=results,
        batch_size=batch,
        input_shapes={k: list(np.shape(v)) for k, v in first.items()},
        environment=environment_info(),
        how=how,
    )
