"""Report sections that say what the pipeline's stages did: the inputs, pruning, recovery,
distillation, export and the time table, built from a ``PipelineResult`` (``assemble`` adds the
measurements on the ONNX files)."""

from __future__ import annotations

import math
from typing import Any

import onnx

from worker.core.storage import sha256_file
from worker.engine import latency_model
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
    PruningSection,
    RecoverySection,
    TensorInfo,
    TimingSection,
)
from worker.spec import Distribution, PruneMethod


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
        sha256=sha256_file(r.model_path),
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
        if a is not None and a.cost_unit != "MACs":
            notes.append(
                f"latency allocation: budget {a.target_cost:.2f} ms estimated at 1 thread (what uniform pruning at "
                f"ratio {p.ratio_asked} leaves), reached {a.cost:.2f} ms estimated, {a.macs:,} MACs. Each of "
                f"{len(a.units)} layer groups was pruned alone in a copy at ratios "
                f"{', '.join(f'{x:g}' for x in a.levels)} and its output distortion (MSE vs the original on "
                f"{a.batch} inputs, no training) measured; groups were then pruned greedily, least distortion per "
                f"estimated millisecond saved first ({a.seconds:.1f} s). {latency_model.PROFILE_HOW}"
            )
        elif a is not None:
            budget = (
                f"target_macs {a.target_macs:,}"
                if p.target_macs is not None
                else f"{a.target_macs:,} MACs (what uniform pruning at ratio {p.ratio_asked} leaves)"
            )
            notes.append(
                f"sensitivity allocation: budget {budget}, reached {a.macs:,}. Each of {len(a.units)} layer "
                f"groups was pruned alone in a copy at ratios {', '.join(f'{x:g}' for x in a.levels)} and "
                f"its output distortion (MSE vs the original on {a.batch} inputs, no training) measured; "
                f"groups were then pruned greedily, least distortion per MAC saved first ({a.seconds:.1f} s)"
            )
        if a is not None:
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
    if len(r.distill_rounds) > 1 and r.search is not None:
        notes.append(
            f"{len(r.distill_rounds)} rounds: {len(r.distill_rounds) - 1} while candidate {r.search.pick} was "
            "evaluated in the search, then the rest of the budget"
        )
    elif len(r.distill_rounds) > 1:
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
            f"the refit made held-out outputs worse ({metric} {o.score_before:.4f} -> {o.score_after:.4f}, "
            f"mean output MSE {o.mse_before:.4g} -> {o.full_refit_mse:.4g}, worst input's "
            f"{o.worst_before:.4g} -> {o.full_refit_worst:.4g}) and no prefix of it helped, so it was undone; "
            "distillation started from the pruned weights"
        )
    elif o.layers_kept is not None and o.layers_kept < len(res.refitted):
        notes.append(
            f"only the refits of the first {o.layers_kept} of {len(res.refitted)} layers were kept: with all of "
            f"them the held-out outputs got worse (mean output MSE {o.mse_before:.4g} -> {o.full_refit_mse:.4g}, "
            f"worst input's {o.worst_before:.4g} -> {o.full_refit_worst:.4g}; each refit corrects upstream "
            "error with a little more gain than the original, and over a deep network that gain compounds on "
            "inputs unlike the calibration crops)"
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
        layers_kept=o.layers_kept,
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
            f"Held-out {metric} measured on the held-out inputs, which are never fitted on; the refit is kept "
            "only if that, the mean output MSE and the worst input's MSE are no worse (else the longest prefix of "
            "layers whose refits pass, else none)."
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
            **(
                {
                    "search": "candidates up to 60% of the training time left after import; the pick's distillation the rest"
                }
                if r.search is not None
                else {}
            ),
        },
        how_measured="time.perf_counter() in the engine process, from the start of the job to the report",
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


def heldout_inputs_text(r: PipelineResult, n: int) -> str:
    parts = []
    for name, s in r.imported.inputs.items():
        if s.distribution == Distribution.CALIBRATION:
            parts.append(f"{name}: held-out calibration images (centre crops)")
        elif s.distribution == Distribution.RANDINT:
            parts.append(f"{name}: integers in [{int(s.low)}, {int(s.high)})")
        else:
            parts.append(f"{name}: {s.distribution.value} samples")
    return f"{n} samples, seed {r.spec.seed} + 1000003; " + "; ".join(parts)
