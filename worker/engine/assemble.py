"""Measure, evaluate and write the report of a finished pipeline run.

Every figure is measured on the exported ONNX files (teacher: the uploaded graph after the same
onnxslim cleanup; student: the shipped model.onnx), in ONNX Runtime, outside torch.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from worker.core.storage import sha256_file
from worker.engine import measure, quality, search
from worker.engine import report as rep
from worker.engine.export import ort_run
from worker.engine.result import PipelineResult
from worker.engine.stage_sections import (
    distillation_section,
    export_section,
    heldout_inputs_text,
    input_info,
    pruning_section,
    recovery_section,
    timing_section,
)
from worker.report_schema import (
    Absent,
    LatencySection,
    MetricSummary,
    Report,
    SizeSection,
    Summary,
)
from worker.spec import Distribution, Progress, Stage, TargetSpec

log = logging.getLogger(__name__)

LATENCY_RUNS = 100
COLLAPSE_SSIM = 0.6  # below this the student's images are not the teacher's any more


def collapse_message(summary: Any, r: PipelineResult) -> str | None:
    """A plain statement when the student is not a usable copy of the teacher, with what helps."""
    if summary.ssim is None or summary.ssim >= COLLAPSE_SSIM:
        return None
    rounds = r.distill_rounds
    never = bool(rounds) and rounds[-1].steps > 0 and rounds[-1].best_step == rounds[-1].curve[0]["step"]
    steps = sum(x.steps for x in rounds)
    return (
        f"Quality collapsed: SSIM {summary.ssim:.2f} against the original (1 = identical) after {steps} "
        "distillation steps"
        + ("; distillation never improved on its start" if never else "")
        + ". What would help: a lower pruning ratio, a longer budget_seconds, a GPU worker, or more "
        "calibration images."
    )


def value_range(data_range: float, teacher_out: np.ndarray) -> tuple[float, float]:
    """The output's nominal range: [-1, 1] (tanh), [0, 1], or what the teacher produced."""
    if data_range == 2.0:
        return -1.0, 1.0
    if data_range == 1.0:
        return 0.0, 1.0
    return float(teacher_out.min()), float(teacher_out.max())


def _add_fid(
    qsec: Any, weights: Path, t_out: np.ndarray, s_out: np.ndarray, value_range: tuple[float, float]
) -> None:
    import torch

    from worker.engine.fid import fid

    if not qsec.is_image:
        qsec.absent["fid"] = "FID needs image outputs"
        return
    value = fid(
        weights, torch.from_numpy(np.asarray(t_out)), torch.from_numpy(np.asarray(s_out)), value_range
    )
    qsec.metrics["fid"] = MetricSummary(
        unit="FID",
        higher_is_better=False,
        mean=value,
        min=value,
        max=value,
        std=0.0,
        values=[],
        description=(
            f"Frechet Inception Distance of the student's outputs to the teacher's on the same {qsec.n_samples} "
            f"held-out inputs; pool3 features of the user-supplied Inception-v3 weights {weights.name} "
            f"(sha256 {sha256_file(weights)[:16]}). A set statistic: biased upward for few samples."
        ),
    )


def final_misses(target: TargetSpec, summary: Summary, size: Any, latency: Any) -> list[str]:
    """The targets the shipped model misses, by this report's measurements."""
    one = None
    if isinstance(latency, LatencySection):
        one = next((t.student.p50_ms for t in latency.per_threads if t.threads == 1), None)
    size_mb = None
    if isinstance(size, SizeSection) and size.student.bytes.value is not None:
        size_mb = size.student.bytes.value / 1e6
    values = {
        "ssim": summary.ssim,
        "psnr": summary.psnr,
        "speedup": summary.speedup,
        "latency_ms": one,
        "size_mb": size_mb,
    }
    return search.final_misses(values, target)


def write_all(r: PipelineResult, out_dir: Path, emit: Callable[[Progress], None]) -> dict[str, Any]:
    warnings: list[str] = list(r.warnings)
    feeds_all = {k: v.numpy() for k, v in r.heldout.items()}
    one = {k: v[:1] for k, v in feeds_all.items()}
    shapes = {k: list(v.shape) for k, v in one.items()}

    seconds = dict(r.seconds)
    t0 = time.perf_counter()
    emit(Progress(stage=Stage.MEASURE, message="size, MACs, latency, memory"))
    tf = measure.measure_model(r.teacher_onnx, shapes)
    sf = measure.measure_model(r.student_onnx, shapes)
    size = rep.size_section(tf, sf)
    try:
        lat = measure.measure_latency(
            r.teacher_onnx, r.student_onnx, one, runs=LATENCY_RUNS, budget_seconds=r.budget.latency_seconds()
        )
        latency: Any = rep.latency_section(lat)
    except Exception as e:  # a measurement failure must not lose the compressed model
        log.warning("measure.latency_failed error=%s", e)
        latency = Absent(reason=f"latency could not be measured: {e}")
    try:
        memory: Any = rep.memory_section(
            measure.measure_peak_memory(r.teacher_onnx, one), measure.measure_peak_memory(r.student_onnx, one)
        )
    except Exception as e:
        log.warning("measure.memory_failed error=%s", e)
        memory = Absent(reason=f"memory could not be measured: {str(e)[:300]}")

    seconds["measure"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emit(Progress(stage=Stage.QUALITY, message="student vs teacher on held-out inputs"))
    t_out = ort_run(onnx.load(str(r.teacher_onnx)), feeds_all)[0]
    s_out = ort_run(onnx.load(str(r.student_onnx)), feeds_all)[0]
    q = quality.evaluate(s_out, t_out, data_range=r.data_range)
    qsec = rep.quality_section(q, heldout_inputs_text(r, q.n_samples), r.spec.seed)
    lo, hi = value_range(r.data_range, t_out)
    if r.fid_weights is not None:
        _add_fid(qsec, r.fid_weights, t_out, s_out, (lo, hi))
    metric = "ssim" if q.is_image and "ssim" in q.metrics else "neg_l1"

    seconds["quality"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emit(Progress(stage=Stage.REPORT, message="report.json, report.html, samples.png"))
    summary, gates = rep.summarize(size, latency, qsec, r.spec.gates)
    summary.collapse = collapse_message(summary, r)
    if r.spec.target is not None:
        summary.target_misses = final_misses(r.spec.target, summary, size, latency)
        summary.target_met = not summary.target_misses
        if r.search is not None and not r.search.met and summary.target_met:
            r.search.final_note += (
                " No candidate met the targets in its short search training, but the shipped model, "
                "distilled for the rest of the budget, does (summary.target_met)."
            )
        if summary.target_misses:
            searched = "" if r.search is None else f" (search: {r.search.why})"
            warnings.insert(
                0, f"Target not met by the shipped model: {'; '.join(summary.target_misses)}{searched}."
            )
    if summary.collapse:
        warnings.insert(0, summary.collapse)
    spec_dict = r.spec.model_dump(mode="json")
    warnings += rep.interpretation_warnings(spec_dict, summary)
    iso = r.imported.isolation
    if iso is not None and not iso["isolated"]:
        warnings.append(f"The model's code was not isolated while it was exported: {iso['detail']}.")
    if r.score_after_distill < r.score_after_prune:
        warnings.append(
            "Distillation did not improve on the pruned model within the budget; the best weights were kept."
        )
    report = Report(
        tool=rep.tool_versions(),
        input=input_info(r),
        spec=spec_dict,
        pruning=pruning_section(r),
        recovery=recovery_section(r, metric),
        distillation=distillation_section(r, metric),
        export=export_section(r),
        size=size,
        latency=latency,
        memory=memory,
        quality=qsec,
        search=r.search,
        gates=gates,
        summary=summary,
        warnings=warnings,
    )
    image_inputs = [n for n, s in r.imported.inputs.items() if s.distribution == Distribution.CALIBRATION]
    images = rep.ReportImages(
        teacher=np.asarray(t_out),
        student=np.asarray(s_out),
        inputs=feeds_all[image_inputs[0]] if image_inputs else None,
        worst_indices=list(q.worst_indices),
        value_range=(lo, hi),
    )
    seconds["report"] = time.perf_counter() - t0  # the report files are written next, after this table
    report.timing = timing_section(r, seconds)
    rep.write_report(out_dir, report, images)
    shutil.rmtree(r.teacher_onnx.parent, ignore_errors=True)
    emit(Progress(stage=Stage.DONE, step=1, total=1, message="done"))
    return report.model_dump(mode="json")
