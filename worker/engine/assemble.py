"""Measure, evaluate and write the report of a finished pipeline run.

Every figure is measured on the exported ONNX files (teacher: the uploaded graph after the same
onnxslim cleanup; student: the shipped model.onnx), in ONNX Runtime, outside torch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from worker.engine import allocate, measure, quality
from worker.engine import report as rep
from worker.engine.export import ort_run
from worker.engine.result import PipelineResult
from worker.report_schema import (
    Absent,
    CurvePoint,
    DistillationSection,
    ExportSection,
    Figure,
    InputInfo,
    KeptLayer,
    LayerRow,
    MetricSummary,
    PruningSection,
    RecoverySection,
    Report,
    TensorInfo,
    TimingSection,
)
from worker.spec import Distribution, Progress, PruneMethod, Stage

log = logging.getLogger(__name__)

LATENCY_RUNS = 100
COLLAPSE_SSIM = 0.6  # below this the student's images are not the teacher's any more


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(values: Any, inits: set[str]) -> list[TensorInfo]:
    out = []
    for vi in values:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str] = [
            d.dim_param or d.dim_value if d.dim_param else d.dim_value for d in tt.shape.dim
        ]
        out.append(
            TensorInfo(
                name=vi.name, shape=dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
            )
        )
    return out


def input_info(r: PipelineResult) -> InputInfo:
    g = r.imported.onnx_model.graph
    inits = {i.name for i in g.initializer}
    return InputInfo(
        file_name=r.model_path.name,
        format=r.imported.format,
        sha256=_sha256(r.model_path),
        bytes=r.model_path.stat().st_size,
        inputs=_tensors(g.input, inits),
        outputs=_tensors(g.output, inits),
        code_isolation=r.imported.isolation,
    )


def pruning_section(r: PipelineResult) -> PruningSection:
    p = r.prune
    notes = list(p.notes) + list(r.imported.notes)
    layers: list[LayerRow] = []
    kept: list[KeptLayer] = []
    if p.method == PruneMethod.CHANNEL and p.plan is not None:
        recs = list(p.plan.layers.values())
        layers = [
            LayerRow(
                name=x.name,
                kind=x.kind,
                channels_before=x.channels_before,
                channels_after=x.channels_after,
                pruned=x.pruned,
                reason_kept=x.reason_kept,
            )
            for x in recs
        ]
        kept = [KeptLayer(name=n, reason=why) for n, why in p.plan.kept.items()]
        before = sum(x.channels_before for x in recs)
        achieved = 1 - sum(x.channels_after for x in recs) / before if before else 0.0
        how = "fraction of output channels removed over all convolution / linear layers"
        a = p.allocation
        if a is not None:
            budget = (
                f"target_macs {a.target_macs:,}"
                if p.target_macs is not None
                else f"{a.target_macs:,} MACs (what uniform pruning at ratio {p.ratio_asked} leaves)"
            )
            notes.append(
                f"sensitivity allocation: budget {budget}, reached {a.macs:,}. Each of {len(a.units)} layer "
                f"groups was pruned alone in a copy at ratios {', '.join(f'{x:g}' for x in allocate.LEVELS)} and "
                f"its output distortion (MSE vs the original on {a.batch} inputs, no training) measured; "
                f"groups were then pruned greedily, least distortion per MAC saved first ({a.seconds:.1f} s)"
            )
            notes.append("ratio per group: " + ", ".join(f"{u.name} {a.ratios[u.name]:g}" for u in a.units))
        elif p.target_macs is not None:
            off = abs(p.macs_after - p.target_macs) / p.target_macs
            notes.append(
                f"target_macs {p.target_macs:,}: bisection chose ratio {p.ratio_used:.3f}, giving "
                f"{p.macs_after:,} MACs ({off:.1%} from the target)"
            )
    elif p.method == PruneMethod.UNSTRUCTURED:
        achieved, how = (
            float(p.sparsity or 0.0),
            "fraction of convolution / linear weights that are exactly zero",
        )
    else:
        achieved = len(p.removed_blocks) / max(1, len(p.candidate_blocks))
        how = "fraction of removable residual blocks removed"
        for b in p.candidate_blocks:
            gone = b in p.removed_blocks
            notes.append(
                f"block {b.add} ({', '.join(b.layers)}): residual/skip magnitude {b.importance:.3f} -> "
                + ("removed" if gone else "kept")
            )
    return PruningSection(
        method=p.method.value,
        criterion=r.spec.prune.criterion.value if p.method == PruneMethod.CHANNEL else None,
        ratio_asked=p.ratio_asked,
        target_macs=p.target_macs,
        allocation=r.spec.prune.allocation.value if p.method == PruneMethod.CHANNEL else None,
        achieved_ratio=Figure(value=achieved, unit="fraction", how=how),
        layers=layers,
        kept_whole=kept,
        notes=notes,
        how_measured=f"MACs of the torch model at batch 1 (torch.utils.flop_counter): {p.macs_before:,} -> {p.macs_after:,}",
    )


def distillation_section(r: PipelineResult, metric: str) -> DistillationSection:
    d = r.spec.distill
    curve = [
        CurvePoint(
            step=int(c["step"]),
            loss=None if math.isnan(c["loss"]) else c["loss"],
            heldout_score=c["heldout_score"],
            seconds=c["seconds"],
        )
        for rnd in r.distill_rounds
        for c in rnd.curve
    ]
    last = r.distill_rounds[-1] if r.distill_rounds else None
    steps = sum(x.steps for x in r.distill_rounds)
    seconds = sum(x.seconds for x in r.distill_rounds)
    notes = list(r.distill_notes)
    if len(r.distill_rounds) > 1:
        notes.append(f"{len(r.distill_rounds)} rounds: pruning and distillation alternated (iterative_steps)")
    if last is not None and last.samples_per_second:
        notes.append(f"throughput {steps * d.batch_size / max(seconds, 1e-9):.1f} samples/s")
    if any(s.distribution == Distribution.CALIBRATION for s in r.imported.inputs.values()):
        notes.append(
            "training images: random crops and horizontal flips"
            + (
                ", half of each batch blended with another image (augment 'mix')"
                if d.augment == "mix"
                else ""
            )
            + "; held-out images are never trained on"
        )
    return DistillationSection(
        steps=steps,
        steps_asked=d.steps,
        seconds=Figure(value=seconds, unit="s", how="wall clock of the training loop, evaluation included"),
        batch_size=d.batch_size,
        losses={str(k): float(v) for k, v in d.losses.items()},
        curve=curve,
        best_step=last.best_step if last else None,
        heldout_metric=metric,
        stopped_by=last.stopped_by if last else None,
        quality_after_pruning={metric: r.score_after_prune},
        quality_after_recovery=(
            {metric: r.recovery.score_after if r.recovery.kept else r.recovery.score_before}
            if r.recovery is not None
            else {}
        ),
        quality_after_distillation={metric: r.score_after_distill},
        notes=notes,
        how_measured=(
            "Teacher frozen; student trained with Adam and cosine-decayed learning rate on the weighted losses; "
            f"every few steps scored on {len(next(iter(r.heldout.values())))} held-out inputs never trained on; "
            "the best-scoring weights are kept."
        ),
    )


def recovery_section(r: PipelineResult, metric: str) -> RecoverySection | Absent:
    o = r.recovery
    if o is None and r.recovery_note:
        return Absent(reason=r.recovery_note)
    if o is None:
        why = (
            "recover.method is 'none'"
            if r.spec.recover.method == "none"
            else "unstructured pruning keeps every weight's position; a refit would fill the zeros"
        )
        return Absent(reason=why)
    res = o.result
    notes = []
    if o.unstable:
        notes.append(
            "the refit was undone: ONNX Runtime did not reproduce the refitted student on held-out inputs "
            "(a refit of a deep network can amplify float rounding); distillation started from the pruned weights"
        )
    elif not o.kept:
        notes.append(
            f"the refit lowered held-out {metric} from {o.score_before:.4f} to {o.score_after:.4f}, so it was "
            "undone; distillation started from the pruned weights"
        )
    if res.stopped_by == "deadline":
        notes.append("its share of the budget ran out: layers after that point kept their pruned weights")
    return RecoverySection(
        method=r.spec.recover.method.value,
        applied=o.kept,
        layers_refitted=len(res.refitted),
        layers_skipped=res.skipped,
        samples=res.samples,
        rows_per_layer=res.rows,
        crop=o.crop,
        seconds=Figure(
            value=res.seconds, unit="s", how="wall clock: one teacher pass, one student pass, the solves"
        ),
        quality_before={metric: o.score_before},
        quality_after={metric: o.score_after},
        output_mse_before=o.mse_before,
        output_mse_after=o.mse_after,
        layer_error_before=res.error_before,
        layer_error_after=res.error_after,
        stopped_by=res.stopped_by,
        notes=notes,
        how_measured=(
            "Each Conv/ConvTranspose/Linear layer, in the order the student runs them, refitted by ridge least "
            "squares from the student's own inputs to the teacher's outputs of that layer on its kept channels, "
            f"at up to {res.rows} sampled output positions of {res.samples} calibration inputs"
            + (f" ({o.crop}x{o.crop} random crops)" if o.crop else "")
            + ". The ridge shrinks towards the pruned weights; its strength (lambda = 1e-3 to 1 x mean diagonal "
            "of X^T X) is chosen per layer by the error on the rows of every 4th input, fitted on the others, and "
            "a layer changes only if that validation error falls (layer errors above are on those rows). "
            f"Held-out {metric} measured on the held-out inputs, which are never fitted on."
        ),
    )


def timing_section(r: PipelineResult, seconds: dict[str, float]) -> TimingSection:
    b = r.budget
    return TimingSection(
        budget_seconds=b.total,
        total_seconds=b.elapsed(),
        stages={k: round(v, 2) for k, v in seconds.items()},
        shares={
            "prune": "probing + sensitivity trials up to 20% of the budget (else uniform allocation)",
            "recover": "up to 30% of the budget",
            "distill": "what is left, less a reserve for export, measurement and the report",
            "measure": f"latency rounds up to {b.latency_seconds():.0f} s (8% of the budget, 2-20 s)",
        },
        how_measured="time.perf_counter() in the engine process, from the start of the job to the report",
    )


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


def export_section(r: PipelineResult) -> ExportSection:
    e = r.export
    return ExportSection(
        opset=e.opset,
        quantize=e.quantize.value,
        parity_max_abs_diff=Figure(
            value=e.parity_max_abs_diff,
            unit="output units",
            how="max |ONNX Runtime - torch| of the float student on 4 held-out inputs",
        ),
        quantized_max_abs_diff=(
            Figure(
                value=e.quantized_max_abs_diff,
                unit="output units",
                how="max |quantized - float| ONNX student on 4 held-out inputs",
            )
            if e.quantized_max_abs_diff is not None
            else None
        ),
        nodes_before_cleanup=e.nodes_before_cleanup,
        nodes_after_cleanup=e.nodes_after_cleanup,
        notes=e.notes,
        how_measured="torch.onnx.export (TorchScript exporter), dynamic batch axis, onnxslim, onnx.checker (full)",
    )


def _heldout_inputs_text(r: PipelineResult, n: int) -> str:
    parts = []
    for name, s in r.imported.inputs.items():
        if s.distribution == Distribution.CALIBRATION:
            parts.append(f"{name}: held-out calibration images (centre crops)")
        elif s.distribution == Distribution.RANDINT:
            parts.append(f"{name}: integers in [{int(s.low)}, {int(s.high)})")
        else:
            parts.append(f"{name}: {s.distribution.value} samples")
    return f"{n} samples, seed {r.spec.seed} + 1000003; " + "; ".join(parts)


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
            f"(sha256 {_sha256(weights)[:16]}). A set statistic: biased upward for few samples."
        ),
    )


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
    qsec = rep.quality_section(q, _heldout_inputs_text(r, q.n_samples), r.spec.seed)
    lo, hi = value_range(r.data_range, t_out)
    if r.fid_weights is not None:
        _add_fid(qsec, r.fid_weights, t_out, s_out, (lo, hi))
    metric = "ssim" if q.is_image and "ssim" in q.metrics else "neg_l1"

    seconds["quality"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emit(Progress(stage=Stage.REPORT, message="report.json, report.html, samples.png"))
    summary, gates = rep.summarize(size, latency, qsec, r.spec.gates)
    summary.collapse = collapse_message(summary, r)
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
