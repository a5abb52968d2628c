"""Report sections from measurement results: size, latency, memory, quality, the summary and
gates, tool versions, and plain-language warnings about what the figures do not mean."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from worker.engine.measure import MACS_HOW, LatencyResult, MemoryResult, ModelFigures
from worker.report_schema import (
    FACTOR_UNIT,
    Absent,
    Figure,
    GateResults,
    LatencyAtThreads,
    LatencySection,
    LatencyStatsOut,
    MemorySection,
    MetricSummary,
    ModelSize,
    QualitySection,
    SizeSection,
    Summary,
    ToolVersions,
    evaluate_gates,
)
from worker.spec import Gates

if TYPE_CHECKING:
    from worker.engine.quality import QualityResult

logger = logging.getLogger(__name__)


def _ratio(a: float | None, b: float | None, unit: str = FACTOR_UNIT, how: str | None = None) -> Figure:
    if a is None or b is None:
        return Figure(value=None, unit=unit, how=how, reason="not measured for both models")
    if b <= 0:
        return Figure(value=None, unit=unit, how=how, reason="student figure is 0")
    return Figure(value=a / b, unit=unit, how=how)


SIZE_HOW = (
    "params: elements of the floating-point and 8/4-bit integer initializers of the ONNX file "
    "(int32/int64 shape constants excluded; quantized models include their scales and zero points); "
    "nonzero_params: those whose stored value is not exactly 0; bytes: file size on disk; gzip_bytes: "
    "size of the file compressed with gzip level 9. Reductions are teacher / student. MACs: " + MACS_HOW
)


def _model_size(f: ModelFigures) -> ModelSize:
    if f.macs is not None:
        macs = Figure(value=f.macs.total, unit="MACs")
        if not f.macs.complete:
            macs.how = f"lower bound: {len(f.macs.unresolved)} node(s) with unknown shapes not counted"
    else:
        macs = Figure(value=None, unit="MACs", reason=f.macs_error or "MACs not counted")
    return ModelSize(
        params=Figure(value=f.params, unit="parameters"),
        nonzero_params=Figure(value=f.nonzero_params, unit="parameters"),
        bytes=Figure(value=f.bytes, unit="bytes"),
        gzip_bytes=Figure(value=f.gzip_bytes, unit="bytes"),
        macs=macs,
    )


def size_section(teacher: ModelFigures, student: ModelFigures) -> SizeSection:
    """Size figures of teacher and student ONNX files (from :func:`measure.measure_model`)."""
    tm = teacher.macs.total if teacher.macs else None
    sm = student.macs.total if student.macs else None
    notes: list[str] = []
    for who, f in (("teacher", teacher), ("student", student)):
        if f.macs is not None and not f.macs.complete:
            notes.append(
                f"{who} MACs are a lower bound: shapes unknown for {', '.join(f.macs.unresolved[:5])}"
            )
    if student.params and student.nonzero_params < 0.9 * student.params:
        notes.append(
            f"{1 - student.nonzero_params / student.params:.0%} of the student's weights are exactly zero: "
            "zeros make the gzip file smaller; onnxruntime still multiplies them (no speedup)"
        )
    return SizeSection(
        teacher=_model_size(teacher),
        student=_model_size(student),
        param_reduction=_ratio(teacher.params, student.params),
        nonzero_param_reduction=_ratio(teacher.nonzero_params, student.nonzero_params),
        mac_reduction=_ratio(tm, sm),
        size_reduction=_ratio(teacher.bytes, student.bytes),
        gzip_size_reduction=_ratio(teacher.gzip_bytes, student.gzip_bytes),
        input_shapes=dict(student.macs.input_shapes) if student.macs else {},
        macs_not_counted_ops=dict(student.macs.not_counted) if student.macs else {},
        notes=notes,
        how_measured=SIZE_HOW,
    )


def _stats(s: Any) -> LatencyStatsOut:
    return LatencyStatsOut(
        p50_ms=s.p50_ms,
        p90_ms=s.p90_ms,
        p99_ms=s.p99_ms,
        mean_ms=s.mean_ms,
        min_ms=s.min_ms,
        max_ms=s.max_ms,
        std_ms=s.std_ms,
        runs=s.runs,
        samples_ms=[round(x, 4) for x in s.samples_ms],
    )


def latency_section(result: LatencyResult, notes: Sequence[str] = ()) -> LatencySection:
    """Latency section from :func:`measure.measure_latency`'s result."""
    rows = [
        LatencyAtThreads(
            threads=t.threads,
            teacher=_stats(t.teacher),
            student=_stats(t.student),
            speedup=Figure(value=t.speedup, unit="x (teacher p50 / student p50)"),
            rounds=t.rounds,
            warmup=t.warmup,
            stopped_by_budget=t.stopped_by_budget,
        )
        for t in result.per_threads
    ]
    extra = [
        f"{r.threads} thread(s): the time budget stopped after {r.rounds} rounds"
        for r in rows
        if r.stopped_by_budget
    ]
    return LatencySection(
        batch_size=result.batch_size,
        input_shapes=result.input_shapes,
        per_threads=rows,
        environment=result.environment,
        notes=[*notes, *extra],
        how_measured=result.how,
    )


def memory_section(teacher: MemoryResult, student: MemoryResult) -> MemorySection:
    """Peak session memory of teacher and student (from :func:`measure.measure_peak_memory`)."""
    return MemorySection(
        teacher=Figure(value=teacher.session_bytes, unit="bytes"),
        student=Figure(value=student.session_bytes, unit="bytes"),
        reduction=_ratio(teacher.session_bytes, student.session_bytes),
        how_measured=student.how,
    )


def quality_section(
    result: QualityResult, inputs: str, seed: int | None, how: str | None = None
) -> QualitySection:
    """Quality section from :func:`quality.evaluate`'s result. ``inputs`` says what the held-out
    inputs were (e.g. "64 latent vectors N(0, 1), seed 1, never used in distillation")."""
    how = how or (
        f"Teacher and student ran on the same {result.n_samples} held-out inputs ({inputs}); each "
        "metric is computed per sample of the student's output against the teacher's (the teacher is "
        f"the reference, value range width {result.data_range:g}), then mean/min/max/std over samples."
    )
    return QualitySection(
        metrics={
            k: MetricSummary(
                unit=m.unit,
                higher_is_better=m.higher_is_better,
                mean=m.mean,
                min=m.min,
                max=m.max,
                std=m.std,
                values=[round(v, 6) for v in m.values],
                description=m.description,
            )
            for k, m in result.metrics.items()
        },
        absent=dict(result.absent),
        n_samples=result.n_samples,
        seed=seed,
        inputs=inputs,
        data_range=result.data_range,
        is_image=result.is_image,
        worst_indices=list(result.worst_indices),
        worst_by=result.worst_by,
        notes=list(result.notes),
        how_measured=how,
    )


def summarize(
    size: SizeSection | Absent,
    latency: LatencySection | Absent,
    quality: QualitySection | Absent,
    gates: Gates,
) -> tuple[Summary, GateResults]:
    """The flat summary and the gate results. ``speedup`` is at 1 thread, ``speedup_all_cores`` at
    the largest thread count measured."""
    vals: dict[str, float | None] = dict.fromkeys(
        (
            "ssim",
            "psnr",
            "l1",
            "speedup",
            "speedup_all_cores",
            "mac_reduction",
            "param_reduction",
            "size_reduction",
            "gzip_size_reduction",
        )
    )
    if isinstance(quality, QualitySection):
        for k in ("ssim", "psnr", "l1"):
            if k in quality.metrics:
                vals[k] = quality.metrics[k].mean
    if isinstance(latency, LatencySection) and latency.per_threads:
        by_t = {r.threads: r.speedup.value for r in latency.per_threads}
        vals["speedup"] = by_t.get(1)
        vals["speedup_all_cores"] = by_t[max(by_t)]
    if isinstance(size, SizeSection):
        for k in ("mac_reduction", "param_reduction", "size_reduction", "gzip_size_reduction"):
            vals[k] = getattr(size, k).value
    gate_results = evaluate_gates(gates, vals)
    return Summary(**vals, gates_passed=gate_results.passed), gate_results


def tool_versions() -> ToolVersions:
    """Versions of the packages the figures depend on (read from package metadata, no imports)."""

    def v(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return ToolVersions(
        gancompress=v("gancompress") or "unknown",
        torch=v("torch"),
        onnx=v("onnx"),
        onnxruntime=v("onnxruntime"),
        torch_pruning=v("torch-pruning"),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count() or 1,
    )


def interpretation_warnings(spec: dict[str, Any], summary: Summary) -> list[str]:
    """Plain-language warnings about what the figures do not mean for this run."""
    out: list[str] = []
    method = (spec.get("prune") or {}).get("method")
    quant = (spec.get("export") or {}).get("quantize")
    if method == "unstructured":
        out.append(
            "Unstructured pruning only zeroes weights: onnxruntime does not skip zeros, so the model is "
            "not faster; only the gzip-compressed file is smaller"
            + (f" ({summary.gzip_size_reduction:.2f}x)." if summary.gzip_size_reduction else ".")
        )
    if summary.speedup is not None and summary.speedup < 1.0:
        msg = f"The student is slower than the teacher at 1 thread (speedup {summary.speedup:.2f}x)."
        if quant and str(quant).startswith("int8"):
            msg += " INT8 quantization often slows small models on CPU; try quantize 'none'."
        out.append(msg)
    if (
        summary.mac_reduction is not None
        and summary.speedup is not None
        and summary.mac_reduction >= 1.5
        and summary.speedup < 0.5 * summary.mac_reduction
    ):
        out.append(
            f"MACs fell {summary.mac_reduction:.2f}x but latency only {summary.speedup:.2f}x: fewer MACs "
            "is not proportionally lower latency (memory traffic, per-op overhead)."
        )
    return out
