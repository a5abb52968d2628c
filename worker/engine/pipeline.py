"""The compression pipeline: import -> prune (+ distill between rounds) -> distill -> export ->
measure -> quality -> report. Torch lives here and below; the API and the CLI call ``compress``.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from worker.engine import allocate, prune, recover
from worker.engine import blocks as block_prune
from worker.engine.budget import PRUNE_SHARE, RECOVER_SHARE, Budget
from worker.engine.distill import DistillResult, distill, heldout_score
from worker.engine.export import ExportResult, cleanup, export_student
from worker.engine.importers import ImportedModel, check_inputs, dynamic_spatial_inputs, import_model
from worker.engine.sampling import InputSampler, load_calibration, mix_share
from worker.errors import BadCalibrationError, CanceledError, PruningError, first_line
from worker.spec import (
    AllocationName,
    CompressionSpec,
    Distribution,
    Progress,
    PruneMethod,
    RecoveryName,
    Stage,
)

log = logging.getLogger(__name__)

MAX_DYNAMIC_SIDE = 256  # crop side for image inputs of symbolic size
HELDOUT_N = 32  # held-out samples for the quality report (images: all held-out images, at most 32)
ProgressFn = Callable[[Progress], None]


@dataclass
class PruneOutcome:
    method: PruneMethod
    ratio_asked: float | None
    ratio_used: float | None
    macs_before: int
    macs_after: int
    plan: prune.PrunePlan | None = None
    removed_blocks: list[block_prune.Block] = field(default_factory=list)
    candidate_blocks: list[block_prune.Block] = field(default_factory=list)
    sparsity: float | None = None
    target_macs: int | None = None
    allocation: allocate.Allocation | None = None
    kept_channels: dict[str, list[int]] = field(default_factory=dict)  # layer -> teacher channel ids
    notes: list[str] = field(default_factory=list)


@dataclass
class RecoveryOutcome:
    result: recover.RecoveryResult
    score_before: float
    score_after: float
    kept: bool  # False: the refit scored worse on held-out inputs and was undone
    mse_before: float = math.nan  # held-out output MSE vs the teacher
    mse_after: float = math.nan
    unstable: bool = False  # undone: ONNX Runtime did not reproduce the refitted student
    crop: int | None = None  # the calibration inputs were random crops of this side


@dataclass
class PipelineResult:
    """Everything the report is assembled from."""

    model_path: Path
    spec: CompressionSpec
    imported: ImportedModel
    data_range: float
    prune: PruneOutcome
    distill_rounds: list[DistillResult]
    score_after_prune: float
    score_after_distill: float
    recovery: RecoveryOutcome | None
    export: ExportResult
    teacher_onnx: Path
    student_onnx: Path
    heldout: dict[str, torch.Tensor]
    seconds: dict[str, float]
    budget: Budget
    warnings: list[str] = field(default_factory=list)
    distill_notes: list[str] = field(default_factory=list)
    recovery_note: str | None = None  # why recovery did not run, when it was asked for
    fid_weights: Path | None = None


def _noop(_: Progress) -> None:
    pass


def output_range(out: torch.Tensor) -> float:
    """Width of the output's value range: 2 for tanh ([-1, 1]), 1 for [0, 1], else observed."""
    lo, hi = float(out.min()), float(out.max())
    if lo >= -1.0 - 1e-4 and hi <= 1.0 + 1e-4:
        return 1.0 if lo >= -1e-4 else 2.0
    return max(hi - lo, 1e-6)


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*batch.values())
    return out[0] if isinstance(out, list | tuple) else out


def _load_calibrations(imported: ImportedModel, files: dict[str, Path]) -> dict[str, np.ndarray]:
    image_inputs = [n for n, s in imported.inputs.items() if s.distribution == Distribution.CALIBRATION]
    files = dict(files)
    if "" in files:
        if len(image_inputs) != 1:
            raise BadCalibrationError(
                f"the model has {len(image_inputs)} image inputs {image_inputs}: name the input for each "
                "calibration file (NAME=FILE)"
            )
        files[image_inputs[0]] = files.pop("")
    unknown = sorted(set(files) - set(image_inputs))
    if unknown:
        raise BadCalibrationError(
            f"calibration given for {unknown}, which are not image inputs; image inputs: {image_inputs}"
        )
    dynamic = dynamic_spatial_inputs(imported.onnx_model)
    arrays: dict[str, np.ndarray] = {}
    for n, p in files.items():
        spec = imported.inputs[n]
        if n in dynamic:  # symbolic H, W: train and evaluate at the calibration images' size
            probe = load_calibration(p, spec.model_copy(update={"shape": [1, spec.shape[1], 1, 1]}), n)
            size = [min(probe.shape[2], MAX_DYNAMIC_SIDE), min(probe.shape[3], MAX_DYNAMIC_SIDE)]
            spec = imported.inputs[n] = spec.model_copy(update={"shape": [1, spec.shape[1], *size]})
        arrays[n] = load_calibration(p, spec, n)
    return arrays


def _taylor_grads(teacher: nn.Module, student: nn.Module, sampler: InputSampler, batch_size: int) -> None:
    """Accumulate gradients of the output-L1 distillation loss for the Taylor criterion."""
    student.zero_grad(set_to_none=True)
    for p in student.parameters():
        p.requires_grad_(True)
    for _ in range(4):
        b = sampler.train_batch(batch_size)
        t = _forward(teacher, b)
        out = student(*b.values())
        out = out[0] if isinstance(out, list | tuple) else out
        # Before the first round the student equals the teacher: the distillation loss and its
        # gradient are zero, so a small output-energy term gives Taylor a signal (how much each
        # channel feeds the output). In later rounds the L1 term dominates.
        loss = (out - t).abs().mean() + 1e-3 * out.pow(2).mean()
        loss.backward()


def _sensitivity_allocation(
    student: nn.Module,
    example: dict[str, torch.Tensor],
    sampler: InputSampler,
    spec: CompressionSpec,
    plan: prune.PrunePlan,
    macs_before: int,
    on_unit: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
    per_sample_seconds: float = 0.0,
) -> allocate.Allocation:
    """Per-layer ratios for the MACs that uniform pruning at the ratio leaves (or target_macs)."""
    if deadline is not None and time.perf_counter() >= deadline:
        raise allocate.AllocationTimeout(
            "the pruning stage's share of the budget was spent (on probing the layers) before the trials could start"
        )
    p = spec.prune
    if p.target_macs is not None:
        prune.check_target_below(p.target_macs, macs_before)
        target = p.target_macs
    else:
        target = prune.macs_at_ratio(student, example, p, plan, float(p.ratio or 0.5))
    batch = sampler.train_batch(allocate.batch_size_for(example))
    alloc = allocate.allocate(
        student,
        example,
        batch,
        p,
        plan,
        target,
        on_unit,
        deadline=deadline,
        per_sample_seconds=per_sample_seconds,
    )
    if p.target_macs is not None and alloc.macs > target * 1.05:
        raise PruningError(
            f"target_macs {target:,} is out of reach: with every prunable layer at its largest allowed "
            f"ratio the model still has {alloc.macs:,} MACs (layers left whole: {len(plan.kept)})"
        )
    return alloc


MIN_PATCH = 32  # automatic patches: half the input side, never below this
# Automatic patches only where full-size training would get few steps in the budget: at equal
# wall time, half-size patches won on the 2.3-2.5 GMAC models (59-74 full-size steps: +0.25 and
# +0.65 dB) and lost on the 17 MMAC U-Net (3335 full-size steps: -4.0 dB, its deep layers need the
# whole image's context). benchmarks/runs/big/patch-study.
AUTO_PATCH_MAX_STEPS = 500


def patch_problem(
    teacher: nn.Module, sampler: InputSampler, imported: ImportedModel, patch: int
) -> str | None:
    """Why the model cannot be trained or refitted on ``patch`` x ``patch`` crops of its image
    inputs (None when it can): every input must be an image and the output must follow the input
    size, checked by running the teacher at the patch size."""
    images = [s for s in imported.inputs.values() if s.distribution == Distribution.CALIBRATION]
    if not images or len(images) != len(imported.inputs):
        return "the model has inputs that are not images"
    side = min(min(s.shape[2], s.shape[3]) for s in images)
    full = _forward(teacher, {k: v[:1] for k, v in sampler.train_batch(1).items()})
    sampler.patch = patch
    try:
        small = _forward(teacher, sampler.train_batch(1))
    except Exception as e:  # a fixed-size layer (reshape, global op)
        return f"the model does not run on {patch}x{patch} crops ({first_line(e)})"
    finally:
        sampler.patch = None
    expect = [round(d * patch / side) for d in full.shape[2:]]
    if full.dim() != 4 or list(small.shape[2:]) != expect:
        return f"the output does not follow the input size on {patch}x{patch} crops"
    return None


def choose_patch(
    teacher: nn.Module,
    sampler: InputSampler,
    imported: ImportedModel,
    asked: int | None,
    full_size_steps: float = 0.0,
) -> tuple[int | None, str | None]:
    """The training crop side for distillation, and a note for the report. ``asked`` None is
    automatic: patches of half the input side when full-size training would get fewer than
    ``AUTO_PATCH_MAX_STEPS`` steps (``full_size_steps``, estimated). Patches need image inputs and
    a model whose output follows the input size (fully convolutional): checked by running the
    teacher at the patch size."""
    images = [s for s in imported.inputs.values() if s.distribution == Distribution.CALIBRATION]
    if asked is None and full_size_steps >= AUTO_PATCH_MAX_STEPS:
        return None, None
    if asked == 0 or not images or len(images) != len(imported.inputs):
        return None, None
    side = min(min(s.shape[2], s.shape[3]) for s in images)
    patch = asked if asked is not None else side // 2
    if (asked is None and patch < MIN_PATCH) or patch >= side:
        return None, None
    problem = patch_problem(teacher, sampler, imported, patch)
    if problem:
        return None, f"trained at the full input size: {problem}"
    why = f"about {full_size_steps:.0f} full-size steps fit the budget, " if asked is None else ""
    return patch, (
        f"trained on random {patch}x{patch} crops ({why}the model is fully convolutional: more steps per "
        "second); held-out inputs are scored at the full size"
    )


PROBE_SIDES = (16, 32)  # image side tried for the cheap structural passes (probing, graph tracing)


def probe_inputs(model: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One input for the passes that only need the graph's structure (layer probing, Torch-Pruning's
    tracing, shape checks): image inputs cropped to the smallest of ``PROBE_SIDES`` at which the
    model runs and its output follows the input size (a 23 GMAC model's probe then costs 1/16 of
    a forward), else the example's first sample at full size."""
    one = {k: v[:1] for k, v in example.items()}
    images = [k for k, v in one.items() if v.dim() == 4 and min(v.shape[-2:]) > 1]
    if not images:
        return one
    full = _forward(model, one)
    h, w = one[images[0]].shape[-2:]
    for side in PROBE_SIDES:
        if any(min(one[k].shape[-2:]) <= side for k in images):
            continue
        small = {k: (v[..., :side, :side].contiguous() if k in images else v) for k, v in one.items()}
        try:
            out = _forward(model, small)
        except Exception:  # a fixed-size layer, or too many downsamplings for this side
            continue
        expect = (
            [round(full.shape[2] * side / h), round(full.shape[3] * side / w)] if full.dim() == 4 else None
        )
        if (
            expect is not None
            and out.dim() == 4
            and out.shape[:2] == full.shape[:2]
            and list(out.shape[2:]) == expect
        ):
            return small
    return one


# Fewer inputs than this and the refit overfits what it saw: on the 23 GMAC RRDB, 14 images (all a
# 120 s budget allowed) took held-out output MSE from 0.197 to 6.7 (the refit was undone, and its
# 34 s were lost to distillation). Below it, recovery runs on crops, or is skipped.
MIN_RECOVERY_IMAGES, MIN_RECOVERY_LATENTS = 16, 64
RECOVERY_IMAGES, RECOVERY_LATENTS = 32, 256


def recovery_samples(spec: CompressionSpec, imported: ImportedModel, budget: Budget, seconds: float) -> int:
    """Calibration inputs for recovery at the full input size: the spec's, else 32 images / 256
    latents, fewer when two forward passes of them would not fit the ``seconds`` it may take (0:
    too few for a refit that generalises)."""
    if spec.recover.samples is not None:
        return spec.recover.samples
    images = any(s.distribution == Distribution.CALIBRATION for s in imported.inputs.values())
    n = RECOVERY_IMAGES if images else RECOVERY_LATENTS
    per_sample = budget.per_sample_seconds()
    if per_sample > 0:  # two forward passes and the gathering: about 3 forwards per input
        n = min(n, int(seconds / (3 * per_sample)))
    return n if n >= (MIN_RECOVERY_IMAGES if images else MIN_RECOVERY_LATENTS) else 0


def recovery_patch(
    teacher: nn.Module, sampler: InputSampler, imported: ImportedModel, budget: Budget, seconds: float
) -> tuple[int, int | None]:
    """(samples, crop side) for recovery when too few full-size images fit its ``seconds``: the
    same 32 images as random crops, the side chosen so that their passes fit (a forward costs
    about its pixels), never below ``MIN_PATCH``; (0, None) when no crop fits or the model is not
    fully convolutional. Refitting on crops is sound where training on them is: teacher and
    student see the same crop, and every layer's rows are still thousands of positions."""
    per_sample = budget.per_sample_seconds()
    images = [s for s in imported.inputs.values() if s.distribution == Distribution.CALIBRATION]
    if per_sample <= 0 or not images:
        return 0, None
    side = min(min(s.shape[2], s.shape[3]) for s in images)
    fit = seconds / (3 * per_sample)  # full-size images that fit
    patch = int(side * math.sqrt(fit / RECOVERY_IMAGES)) // 8 * 8
    n = RECOVERY_IMAGES
    if patch < MIN_PATCH:
        patch = MIN_PATCH
        n = int(fit * (side / MIN_PATCH) ** 2)
    if patch >= side or n < MIN_RECOVERY_IMAGES or patch_problem(teacher, sampler, imported, patch):
        return 0, None
    return n, patch


def _recover(
    teacher: nn.Module,
    student: nn.Module,
    kept: dict[str, list[int]],
    batch: dict[str, torch.Tensor],
    heldout: dict[str, torch.Tensor],
    teacher_heldout: torch.Tensor,
    data_range: float,
    deadline: float,
    seed: int,
) -> RecoveryOutcome:
    """Refit the student; undo it if the held-out score got worse."""

    def measure() -> tuple[float, float]:
        score = heldout_score(student, heldout, teacher_heldout, data_range)
        return score, float((_forward(student, heldout) - teacher_heldout).pow(2).mean())

    score_before, mse_before = measure()
    state = copy.deepcopy(student.state_dict())
    res = recover.recover(teacher, student, kept, batch, deadline=deadline, seed=seed)
    after, mse_after = measure()
    keep = after >= score_before
    unstable = keep and not _exports_faithfully(student, heldout)
    if not keep or unstable:
        student.load_state_dict(state)
        log.info("recover.undone before=%.4f after=%.4f unstable=%s", score_before, after, unstable)
    return RecoveryOutcome(res, score_before, after, keep and not unstable, mse_before, mse_after, unstable)


def _exports_faithfully(student: nn.Module, heldout: dict[str, torch.Tensor]) -> bool:
    """Whether ONNX Runtime reproduces the refitted student on held-out inputs. A least-squares
    refit of a deep network can have a gain so high that float rounding differences between
    torch and ONNX Runtime grow to visible errors (measured on a 96-layer RRDB): such a refit is
    undone rather than shipped or failed at export."""
    from worker.engine.export import PARITY_TOLERANCE, cleanup, export_onnx, torch_vs_onnx

    try:
        names = ["out"]
        model = cleanup(export_onnx(student, {k: v[:2] for k, v in heldout.items()}, names, 17))
        diff = torch_vs_onnx(student, model, {k: v[:4] for k, v in heldout.items()})
    except Exception as e:  # the real export decides later; this check only guards against gain
        log.info("recover.export_check_skipped error=%s", first_line(e))
        return True
    with torch.no_grad():
        scale = float(_forward(student, {k: v[:4] for k, v in heldout.items()}).abs().max())
    return diff <= PARITY_TOLERANCE * max(1.0, scale) * 10


def compress(
    model_path: Path,
    spec: CompressionSpec,
    out_dir: Path,
    *,
    calibration: dict[str, Path] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    fid_weights: Path | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Compress ``model_path`` as ``spec`` asks; write model.onnx, report.json, report.html and
    samples.png to ``out_dir``; return the report as a dict (its ``summary`` is flat numbers).
    ``fid_weights``: a torchvision Inception-v3 state dict; adds FID to the quality section.
    ``spec.distill.budget_seconds`` bounds the whole call (see ``budget.py``), counted from
    ``started_at`` (a ``time.time()``; entry points pass theirs, so that importing torch counts)."""
    budget = Budget(spec.distill.budget_seconds)
    if started_at is not None:
        budget.start -= max(0.0, time.time() - started_at)
    emit = with_job_eta(progress or _noop, budget)
    if fid_weights is not None:
        from worker.engine.fid import load_inception

        load_inception(fid_weights)  # a bad file fails now, not after the whole compression
    result = run_pipeline(
        model_path,
        spec,
        out_dir,
        calibration=calibration,
        progress=emit,
        should_stop=should_stop,
        budget=budget,
    )
    result.fid_weights = fid_weights
    from worker.engine.assemble import write_all

    return write_all(result, out_dir, emit)


FINISH_STAGES = (Stage.EXPORT, Stage.MEASURE, Stage.QUALITY, Stage.REPORT)


def with_job_eta(progress: ProgressFn, budget: Budget) -> ProgressFn:
    """Progress events whose ``eta_seconds`` is the whole job's: until distillation ends the job
    ends at its budget (distillation fills it), or earlier when the step limit ends distillation
    first; then the finish reserve counts down from where distillation stopped."""
    finish_started: list[float] = []

    def emit(p: Progress) -> None:
        now = time.perf_counter()
        if p.stage in FINISH_STAGES:
            if not finish_started:
                finish_started.append(now)
            eta = max(0.0, finish_started[0] + budget.finish_reserve() - now)
        elif p.stage == Stage.DISTILL and p.eta_seconds is not None:
            eta = min(p.eta_seconds + budget.finish_reserve(), budget.left())
        elif p.stage == Stage.DONE:
            eta = 0.0
        else:
            eta = budget.left()
        progress(p.model_copy(update={"eta_seconds": round(eta, 1)}))

    return emit


def run_pipeline(
    model_path: Path,
    spec: CompressionSpec,
    out_dir: Path,
    *,
    calibration: dict[str, Path] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    budget: Budget | None = None,
) -> PipelineResult:
    budget = budget or Budget(spec.distill.budget_seconds)
    emit = progress or _noop
    stop = should_stop or (lambda: False)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def check() -> None:
        if stop():
            raise CanceledError("canceled")

    emit(Progress(stage=Stage.IMPORT, message="converting the model"))
    # a model whose forward never returns must not outlive the budget by more than a minute
    imported = import_model(model_path, spec.inputs, convert_timeout=max(60.0, spec.distill.budget_seconds))
    arrays = _load_calibrations(imported, calibration or {})
    if dynamic_spatial_inputs(imported.onnx_model) & set(arrays):
        check_inputs(imported)  # symbolic H, W now at the calibration size: the model must run there
    sampler = InputSampler(imported.inputs, arrays, seed=spec.seed, mix=mix_share(spec.distill.augment))
    teacher = copy.deepcopy(imported.module).eval()
    student = imported.module
    heldout = sampler.heldout(HELDOUT_N)
    tf = time.perf_counter()
    teacher_heldout = _forward(teacher, heldout)
    budget.heldout_forward_seconds = time.perf_counter() - tf
    budget.heldout_size = len(teacher_heldout)
    data_range = output_range(teacher_heldout)
    example = sampler.train_batch(2)
    small = probe_inputs(teacher, example)  # structure-only passes: cheap on big models
    seconds["import"] = time.perf_counter() - t0
    check()

    emit(Progress(stage=Stage.PRUNE, message=f"{spec.prune.method.value} pruning"))
    t1 = time.perf_counter()
    dspec = spec.distill
    n_rounds = spec.prune.iterative_steps if spec.prune.method == PruneMethod.CHANNEL else 1
    round_steps = dspec.steps // n_rounds
    # rounds between pruning steps share half of what distillation would get now
    round_budget = 0.5 * budget.distill_seconds() / n_rounds
    rounds: list[DistillResult] = []
    one = {k: v[:1] for k, v in example.items()}
    macs_before = prune.count_macs(student, one)
    outcome = PruneOutcome(spec.prune.method, spec.prune.ratio, spec.prune.ratio, macs_before, macs_before)
    masks: dict[str, torch.Tensor] | None = None
    offset = 0

    def run_round(steps: int, budget: float) -> None:
        nonlocal offset
        r = distill(
            teacher,
            student,
            sampler,
            dspec,
            data_range=data_range,
            steps=steps,
            budget_seconds=budget,
            masks=masks,
            progress=emit,
            should_stop=stop,
            step_offset=offset,
        )
        offset += r.steps
        rounds.append(r)

    score_after_prune = math.nan
    with recover.track_kept_channels(student) as kept:  # teacher channel ids, for recovery
        if spec.prune.method == PruneMethod.CHANNEL:
            prune_deadline = budget.share_deadline(PRUNE_SHARE)
            plan = prune.plan_channel_pruning(student, small, spec.prune)
            outcome.plan = plan
            ratio = spec.prune.ratio
            alloc = None
            outcome.target_macs = spec.prune.target_macs
            if spec.prune.allocation == AllocationName.SENSITIVITY:

                def on_unit(i: int, n: int) -> None:
                    check()
                    emit(
                        Progress(
                            stage=Stage.PRUNE,
                            step=i,
                            total=n,
                            message=f"sensitivity of layer group {i + 1}/{n}",
                        )
                    )

                try:
                    alloc = _sensitivity_allocation(
                        student,
                        example,
                        sampler,
                        spec,
                        plan,
                        macs_before,
                        on_unit,
                        prune_deadline,
                        budget.per_sample_seconds(),
                    )
                    outcome.allocation, ratio = alloc, None
                except allocate.AllocationTimeout as e:
                    outcome.notes.append(f"sensitivity allocation skipped, uniform ratio used instead: {e}")
                    if spec.prune.target_macs is not None:
                        ratio, _ = prune.ratio_for_target_macs(
                            student, example, spec.prune, plan, spec.prune.target_macs
                        )
            elif spec.prune.target_macs is not None:
                ratio, _ = prune.ratio_for_target_macs(
                    student, example, spec.prune, plan, spec.prune.target_macs
                )
            outcome.ratio_used = ratio
            pruner = prune.make_pruner(
                student,
                small,
                spec.prune,
                plan,
                0.0 if alloc else float(ratio or 0.5),
                n_rounds,
                layer_ratios=alloc.layer_ratios() if alloc else None,
            )
            for i in range(n_rounds):
                check()
                if spec.prune.criterion == "taylor":
                    _taylor_grads(teacher, student, sampler, dspec.batch_size)
                f = (i + 1) / n_rounds
                # Torch-Pruning scales the layer ratios per round itself; the block sites are ours
                step_ratio = (
                    {k: v * f for k, v in alloc.site_ratios().items()} if alloc else float(ratio or 0.5) * f
                )
                prune.prune_step(student, small, pruner, plan, step_ratio)
                student.zero_grad(set_to_none=True)
                if i == 0 or n_rounds > 1:
                    emit(
                        Progress(
                            stage=Stage.PRUNE, step=i + 1, total=n_rounds, message=f"round {i + 1}/{n_rounds}"
                        )
                    )
                if i < n_rounds - 1:
                    run_round(round_steps, round_budget)
                else:
                    score_after_prune = heldout_score(student, heldout, teacher_heldout, data_range)
            plan.record_after(student)
        elif spec.prune.method == PruneMethod.UNSTRUCTURED:
            masks = prune.magnitude_masks(student, float(spec.prune.ratio or 0.5))
            prune.apply_masks(student, masks)
            outcome.sparsity = prune.sparsity_of(student)
            outcome.notes.append(
                "Unstructured sparsity zeroes weights but keeps every tensor's shape: the ONNX file "
                "compresses better (see gzip size), it does not run faster in ONNX Runtime."
            )
        else:
            found = block_prune.find_blocks(student)
            block_prune.score_blocks(student, found, example)
            chosen = block_prune.choose_blocks(found, spec.prune.ratio, spec.prune.blocks)
            block_prune.remove_blocks(student, [b.add for b in chosen])
            outcome.candidate_blocks, outcome.removed_blocks = found, chosen
    outcome.kept_channels = kept
    if math.isnan(score_after_prune):
        score_after_prune = heldout_score(student, heldout, teacher_heldout, data_range)
    outcome.macs_after = prune.count_macs(student, one)
    seconds["prune"] = time.perf_counter() - t1 - sum(r.seconds for r in rounds)
    check()

    recovery: RecoveryOutcome | None = None
    recovery_note: str | None = None
    if spec.recover.method == RecoveryName.LEAST_SQUARES and spec.prune.method != PruneMethod.UNSTRUCTURED:
        emit(Progress(stage=Stage.RECOVER, message="least-squares refit of each layer"))
        tr = time.perf_counter()
        deadline = budget.share_deadline(RECOVER_SHARE)
        n, patch = recovery_samples(spec, imported, budget, deadline - tr), None
        if not n and spec.recover.samples is None:
            n, patch = recovery_patch(teacher, sampler, imported, budget, deadline - time.perf_counter())
        if n:
            sampler.patch = patch
            batch = sampler.train_batch(n)
            sampler.patch = None
            recovery = _recover(
                teacher,
                student,
                outcome.kept_channels,
                batch,
                heldout,
                teacher_heldout,
                data_range,
                deadline,
                spec.seed,
            )
            recovery.crop = patch
            del batch
            seconds["recover"] = time.perf_counter() - tr
        else:
            recovery_note = (
                f"skipped: the {max(0.0, deadline - tr):.0f} s of the budget left for it hold too few inputs for a "
                f"refit that generalises (at least {MIN_RECOVERY_IMAGES} images or {MIN_RECOVERY_LATENTS} latents); "
                "distillation got the time instead. A longer budget_seconds lets it run"
            )
        check()

    t2 = time.perf_counter()
    # a step: the teacher's forward and the student's forward and backward, about 3 teacher forwards
    step_seconds = 3 * dspec.batch_size * budget.per_sample_seconds()
    full_size_steps = budget.distill_seconds() / step_seconds if step_seconds > 0 else math.inf
    patch, note = choose_patch(teacher, sampler, imported, dspec.patch, full_size_steps)
    distill_notes = [note] if note else []
    sampler.patch = patch
    used_steps = sum(r.steps for r in rounds)
    run_round(max(0, dspec.steps - used_steps), budget.distill_seconds())
    sampler.patch = None
    score_after_distill = heldout_score(student, heldout, teacher_heldout, data_range)
    seconds["distill"] = time.perf_counter() - t2 + sum(r.seconds for r in rounds[:-1])
    check()

    emit(Progress(stage=Stage.EXPORT, message=f"ONNX opset {spec.export.opset}"))
    t3 = time.perf_counter()
    calib = [{k: v.numpy() for k, v in sampler.train_batch(4).items()} for _ in range(8)]
    parity_batch = {k: v[:4] for k, v in heldout.items()}
    exported = export_student(
        student,
        example,
        imported.output_names,
        spec.export.opset,
        spec.export.quantize,
        calib,
        parity_batch,
        fixed_batch=imported.fixed_batch,  # the student keeps the teacher's interface
        dynamic_axes=imported.dynamic_axes,
    )
    student_onnx = out_dir / "model.onnx"
    onnx.save(exported.model, str(student_onnx))
    teacher_dir = Path(tempfile.mkdtemp(prefix="gc-teacher-"))
    teacher_onnx = teacher_dir / "teacher.onnx"
    onnx.save(cleanup(imported.onnx_model), str(teacher_onnx))
    seconds["export"] = time.perf_counter() - t3
    return PipelineResult(
        model_path=model_path,
        spec=spec,
        imported=imported,
        data_range=data_range,
        prune=outcome,
        distill_rounds=rounds,
        score_after_prune=score_after_prune,
        score_after_distill=score_after_distill,
        recovery=recovery,
        export=exported,
        teacher_onnx=teacher_onnx,
        student_onnx=student_onnx,
        heldout=heldout,
        seconds=seconds,
        budget=budget,
        distill_notes=distill_notes,
        recovery_note=recovery_note,
    )
