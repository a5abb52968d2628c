"""The recovery stage: closed-form repair of the pruned student before any gradient step (one
registered function per ``RecoveryName``), sized to its share of the budget, undone when the
held-out score falls or ONNX Runtime would not reproduce it. The refit itself is
``worker.engine.recover``."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine import recover
from worker.engine.budget import RECOVER_SHARE
from worker.engine.distill import score_of
from worker.engine.registry import Registry
from worker.engine.result import PruneOutcome, RecoveryOutcome
from worker.engine.stages.setup import Workbench, forward
from worker.engine.stages.training import MIN_PATCH, image_side, patch_problem
from worker.errors import BadSpecError, first_line
from worker.spec import Distribution, Progress, PruneMethod, RecoverSpec, RecoveryName, Stage

log = logging.getLogger(__name__)

# Fewer inputs than this and the refit overfits what it saw: on the 23 GMAC RRDB, 14 images (all a
# 120 s budget allowed) took held-out output MSE from 0.197 to 6.7 (the refit was undone, and its
# 34 s were lost to distillation). Below it, recovery runs on crops, or is skipped.
MIN_RECOVERY_IMAGES, MIN_RECOVERY_LATENTS = 16, 64
RECOVERY_IMAGES, RECOVERY_LATENTS = 32, 256
FORWARDS_PER_INPUT = 3  # a refit's teacher and student passes and the gathering, in forwards per input
MIN_PREFIX_TRIES = 1  # held-out evaluations (past the share if need be) when looking for refits to keep

# (outcome, or None with a note saying why it did not run)
# deadline: the end of the stage's share (None: RECOVER_SHARE of the budget from now)
RecoverFn = Callable[
    [Workbench, RecoverSpec, PruneOutcome, "float | None"], "tuple[RecoveryOutcome | None, str | None]"
]
RECOVERIES: Registry[RecoveryName, RecoverFn] = Registry("recovery", RecoveryName, BadSpecError)


def run(
    bench: Workbench, spec: RecoverSpec, pruned: PruneOutcome, deadline: float | None = None
) -> tuple[RecoveryOutcome | None, str | None]:
    if pruned.method == PruneMethod.UNSTRUCTURED:  # a refit would fill the zeros
        return None, None
    return RECOVERIES.get(spec.method)(bench, spec, pruned, deadline)


@RECOVERIES.register(RecoveryName.NONE)
def no_recovery(
    bench: Workbench, spec: RecoverSpec, pruned: PruneOutcome, deadline: float | None = None
) -> tuple[None, None]:
    return None, None


@RECOVERIES.register(RecoveryName.LEAST_SQUARES)
def least_squares(
    bench: Workbench, spec: RecoverSpec, pruned: PruneOutcome, deadline: float | None = None
) -> tuple[RecoveryOutcome | None, str | None]:
    bench.emit(Progress(stage=Stage.RECOVER, message="least-squares refit of each layer"))
    t0 = time.perf_counter()
    deadline = deadline if deadline is not None else bench.budget.share_deadline(RECOVER_SHARE)
    n, patch = recovery_samples(bench, spec, deadline - t0), None
    if not n and spec.samples is None:
        n, patch = recovery_patch(bench, deadline - time.perf_counter())
    if not n:
        return None, (
            f"skipped: the {max(0.0, deadline - t0):.0f} s of the budget left for it hold too few inputs for a "
            f"refit that generalises (at least {MIN_RECOVERY_IMAGES} images or {MIN_RECOVERY_LATENTS} latents); "
            "distillation got the time instead. A longer budget_seconds lets it run"
        )
    if spec.samples is None:
        need = refit_seconds(bench, pruned, n, patch)
        if need > deadline - time.perf_counter():
            return None, (
                f"skipped: refitting every layer would take about {need:.0f} s, more than the "
                f"{max(0.0, deadline - t0):.0f} s of the budget left for it, and a refit cut short helps "
                "nothing (the last layers carry the repair; fewer rows per layer let a deep network's refit "
                "blow up); distillation got the time instead. A longer budget_seconds lets it run"
            )
    with bench.sampler.crops(patch):
        batch = bench.sampler.train_batch(n)
    outcome = refit_or_undo(bench, pruned.kept_channels, batch, deadline)
    outcome.crop = patch
    return outcome, None


def refit_seconds(bench: Workbench, pruned: PruneOutcome, samples: int, patch: int | None) -> float:
    """What refitting every layer of the student on ``samples`` inputs (crops of side ``patch``)
    costs, estimated: the two forward passes and the gathering (3 forwards per input, at this
    machine's measured pace) plus each layer's Gram matrix (rows x D^2 multiply-adds at the pace
    the teacher's forward runs at). Measured against the 23 GMAC RRDB's refit (67 of 96 layers in
    34 s of its 36 s share, so about 49 s for all 96), this says 56 s."""
    per_sample = bench.budget.per_sample_seconds()
    side = image_side(bench)
    scale = (patch / side) ** 2 if patch and side else 1.0
    forwards = FORWARDS_PER_INPUT * samples * per_sample * scale
    if per_sample <= 0 or pruned.macs_before <= 0:
        return forwards
    rate = pruned.macs_before / per_sample  # multiply-adds per second, here
    positions = _positions_per_sample(bench)
    work = 0.0
    for name, layer in recover.refittable_layers(bench.student).items():
        rows = min(recover.rows_for(layer), int(samples * scale * positions.get(name, 0)) or recover.MAX_ROWS)
        work += rows * float(recover.conv_form_weight(layer).shape[1]) ** 2
    return forwards + work / rate


def _positions_per_sample(bench: Workbench) -> dict[str, float]:
    """Output positions per input of each refittable layer at the full input size."""
    layers = recover.refittable_layers(bench.student)
    one = {k: v[:1] for k, v in bench.example.items()}
    got: dict[str, float] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            got[name] = (
                float(out.shape[-2] * out.shape[-1])
                if out.dim() == 4
                else float(out.numel() // out.shape[-1])
            )

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        forward(bench.student, one)
    finally:
        for h in handles:
            h.remove()
    return got


def _has_images(bench: Workbench) -> bool:
    return any(s.distribution == Distribution.CALIBRATION for s in bench.imported.inputs.values())


def recovery_samples(bench: Workbench, spec: RecoverSpec, seconds: float) -> int:
    """Calibration inputs for recovery at the full input size: the spec's, else 32 images / 256
    latents, fewer when two forward passes of them would not fit the ``seconds`` it may take (0:
    too few for a refit that generalises)."""
    if spec.samples is not None:
        return spec.samples
    images = _has_images(bench)
    n = RECOVERY_IMAGES if images else RECOVERY_LATENTS
    per_sample = bench.budget.per_sample_seconds()
    if per_sample > 0:  # two forward passes and the gathering: about 3 forwards per input
        n = min(n, int(seconds / (FORWARDS_PER_INPUT * per_sample)))
    return n if n >= (MIN_RECOVERY_IMAGES if images else MIN_RECOVERY_LATENTS) else 0


def recovery_patch(bench: Workbench, seconds: float) -> tuple[int, int | None]:
    """(samples, crop side) for recovery when too few full-size images fit its ``seconds``: the
    same 32 images as random crops, the side chosen so that their passes fit (a forward costs
    about its pixels), never below ``MIN_PATCH``; (0, None) when no crop fits or the model is not
    fully convolutional. Refitting on crops is sound where training on them is: teacher and
    student see the same crop, and every layer's rows are still thousands of positions."""
    per_sample = bench.budget.per_sample_seconds()
    side = image_side(bench)
    if per_sample <= 0 or side is None or seconds <= 0:
        return 0, None
    fit = seconds / (FORWARDS_PER_INPUT * per_sample)  # full-size images that fit
    patch = int(side * math.sqrt(fit / RECOVERY_IMAGES)) // 8 * 8
    n = RECOVERY_IMAGES
    if patch < MIN_PATCH:
        patch = MIN_PATCH
        n = int(fit * (side / MIN_PATCH) ** 2)
    if patch >= side or n < MIN_RECOVERY_IMAGES or patch_problem(bench, patch):
        return 0, None
    return n, patch


@dataclass
class _Held:
    """The student on the held-out set: score (higher is better), mean and worst per-sample MSE."""

    score: float
    mse: float
    worst: float

    def no_worse_than(self, other: _Held) -> bool:
        # the mean score alone can hide a few inputs whose outputs explode (seen on the RRDB)
        return (
            self.score >= other.score and self.mse <= other.mse and self.worst <= max(other.worst, 1e-12) * 2
        )


def refit_or_undo(
    bench: Workbench, kept: dict[str, list[int]], batch: dict[str, torch.Tensor], deadline: float
) -> RecoveryOutcome:
    """Refit the student on ``batch`` and keep what helps on the held-out set.

    Each refitted layer also corrects the errors of the layers before it, with a little more gain
    than the teacher's; over a deep network that gain compounds, and on inputs unlike the
    calibration crops the outputs of a fully refitted 96-layer RRDB exploded (per-layer error
    0.3 in its first blocks, 10^9 at its end) while most inputs improved. So the refit is kept
    only if the held-out score, mean MSE and worst per-input MSE are no worse; if they are, the
    refits of a prefix of the layers are tried (halving, within the time share) and the best
    prefix kept; if none helps, it is undone. The kept student must also export faithfully."""
    student = bench.student

    def measure() -> _Held:
        out = forward(student, bench.heldout)
        per = (out - bench.teacher_heldout).pow(2).flatten(1).mean(1)
        return _Held(
            score_of(out, bench.teacher_heldout, bench.data_range), float(per.mean()), float(per.max())
        )

    before = measure()
    pruned = copy.deepcopy(student.state_dict())
    res = recover.recover(bench.teacher, student, kept, batch, deadline=deadline, seed=bench.seed)
    after = measure()
    full, kept_layers = after, len(res.refitted)
    if not after.no_worse_than(before) and res.refitted:
        refit = copy.deepcopy(student.state_dict())
        best: tuple[_Held, int] | None = None
        lo, hi = 0, len(res.refitted)  # the best prefix is searched by halving
        tries = 0  # at least a few, past the share if need be: the time comes from distillation
        while hi - lo > 1 and (tries < MIN_PREFIX_TRIES or time.perf_counter() < deadline):
            if bench.budget.distill_seconds() <= 0:
                break
            tries += 1
            k = (lo + hi) // 2
            _apply_prefix(student, pruned, refit, res.refitted[:k])
            got = measure()
            if got.no_worse_than(before):
                lo = k
                if best is None or got.score > best[0].score:
                    best = (got, k)
            else:
                hi = k
        if best is not None:
            after, kept_layers = best
            _apply_prefix(student, pruned, refit, res.refitted[:kept_layers])
    keep = after.no_worse_than(before)
    unstable = keep and not exports_faithfully(student, bench.heldout)
    if not keep or unstable:
        student.load_state_dict(pruned)
        log.info("recover.undone before=%.4f after=%.4f unstable=%s", before.score, after.score, unstable)
    elif kept_layers < len(res.refitted):
        log.info("recover.prefix kept=%d of %d", kept_layers, len(res.refitted))
    return RecoveryOutcome(
        res,
        before.score,
        after.score,
        keep and not unstable,
        before.mse,
        after.mse,
        unstable,
        layers_kept=kept_layers if keep and not unstable else 0,
        full_refit_mse=full.mse,
        full_refit_worst=full.worst,
        worst_before=before.worst,
    )


def _apply_prefix(
    student: nn.Module, pruned: dict[str, torch.Tensor], refit: dict[str, torch.Tensor], layers: list[str]
) -> None:
    """The pruned weights, with the refits of ``layers`` only."""
    chosen = tuple(f"{n}." for n in layers)
    student.load_state_dict({k: (refit[k] if k.startswith(chosen) else v) for k, v in pruned.items()})


def exports_faithfully(student: nn.Module, heldout: dict[str, torch.Tensor]) -> bool:
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
    scale = float(forward(student, {k: v[:4] for k, v in heldout.items()}).abs().max())
    return diff <= PARITY_TOLERANCE * max(1.0, scale) * 10
