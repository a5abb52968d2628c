"""The pruning stage: one registered function per ``PruneMethod``, from a ``PruneContext`` to a
``PruneOutcome``; channel pruning spreads its MAC budget by one of the registered allocations.

Torch-Pruning does the surgery (``worker.engine.prune``), ``allocate`` the sensitivity trials,
``blocks`` the residual-block removal; this module decides what to ask of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.engine import allocate, prune, recover
from worker.engine import blocks as block_prune
from worker.engine.budget import PRUNE_SHARE
from worker.engine.registry import Registry
from worker.engine.result import PruneOutcome
from worker.engine.stages.setup import Workbench, forward
from worker.engine.stages.training import Distiller
from worker.errors import BadSpecError, PruningError
from worker.spec import AllocationName, Criterion, Progress, PruneMethod, PruneSpec, Stage


@dataclass
class PruneContext:
    """What a prune method needs: the workbench, its part of the spec, the MACs before, the end
    of the stage's share of the budget (probing counts), and the distiller that trains between
    iterative rounds (given half the distillation time now left)."""

    bench: Workbench
    spec: PruneSpec
    distiller: Distiller
    macs_before: int
    deadline: float


PruneFn = Callable[[PruneContext], PruneOutcome]
PRUNE_METHODS: Registry[PruneMethod, PruneFn] = Registry("prune method", PruneMethod, BadSpecError)
AllocateFn = Callable[[PruneContext, prune.PrunePlan, PruneOutcome], "allocate.Allocation | None"]
ALLOCATIONS: Registry[AllocationName, AllocateFn] = Registry("allocation", AllocationName, BadSpecError)


def run(bench: Workbench, spec: PruneSpec, distiller: Distiller) -> PruneOutcome:
    """Prune the workbench's student in place as ``spec.method`` asks; record which teacher
    channels each layer kept (for recovery) and the MACs after."""
    deadline = bench.budget.share_deadline(PRUNE_SHARE)
    one = {k: v[:1] for k, v in bench.example.items()}
    ctx = PruneContext(bench, spec, distiller, prune.count_macs(bench.student, one), deadline)
    with recover.track_kept_channels(bench.student) as kept:  # teacher channel ids, for recovery
        outcome = PRUNE_METHODS.get(spec.method)(ctx)
    outcome.kept_channels = kept
    outcome.macs_after = prune.count_macs(bench.student, one)
    return outcome


@PRUNE_METHODS.register(PruneMethod.CHANNEL)
def prune_channels(ctx: PruneContext) -> PruneOutcome:
    bench, spec = ctx.bench, ctx.spec
    outcome = PruneOutcome(spec.method, spec.ratio, spec.ratio, ctx.macs_before, ctx.macs_before)
    outcome.target_macs = spec.target_macs
    plan = outcome.plan = prune.plan_channel_pruning(bench.student, bench.small, spec)
    alloc = ALLOCATIONS.get(spec.allocation)(ctx, plan, outcome)
    n_rounds = spec.iterative_steps
    pruner = prune.make_pruner(
        bench.student,
        bench.small,
        spec,
        plan,
        0.0 if alloc else float(outcome.ratio_used or 0.5),
        n_rounds,
        layer_ratios=alloc.layer_ratios() if alloc else None,
    )
    # rounds between pruning steps share half of what distillation would get now
    round_steps = ctx.distiller.spec.steps // n_rounds
    round_seconds = 0.5 * bench.budget.distill_seconds() / n_rounds
    for i in range(n_rounds):
        bench.check()
        if spec.criterion == Criterion.TAYLOR:
            taylor_grads(ctx)
        f = (i + 1) / n_rounds
        # Torch-Pruning scales the layer ratios per round itself; the block sites are ours
        step_ratio = (
            {k: v * f for k, v in alloc.site_ratios().items()}
            if alloc
            else float(outcome.ratio_used or 0.5) * f
        )
        prune.prune_step(bench.student, bench.small, pruner, plan, step_ratio)
        bench.student.zero_grad(set_to_none=True)
        if i == 0 or n_rounds > 1:
            bench.emit(
                Progress(stage=Stage.PRUNE, step=i + 1, total=n_rounds, message=f"round {i + 1}/{n_rounds}")
            )
        if i < n_rounds - 1:
            ctx.distiller.run(round_steps, round_seconds)
    plan.record_after(bench.student)
    return outcome


@PRUNE_METHODS.register(PruneMethod.UNSTRUCTURED)
def prune_weights(ctx: PruneContext) -> PruneOutcome:
    spec, student = ctx.spec, ctx.bench.student
    outcome = PruneOutcome(spec.method, spec.ratio, spec.ratio, ctx.macs_before, ctx.macs_before)
    outcome.masks = ctx.distiller.masks = prune.magnitude_masks(student, float(spec.ratio or 0.5))
    prune.apply_masks(student, outcome.masks)
    outcome.sparsity = prune.sparsity_of(student)
    outcome.notes.append(
        "Unstructured sparsity zeroes weights but keeps every tensor's shape: the ONNX file "
        "compresses better (see gzip size), it does not run faster in ONNX Runtime."
    )
    return outcome


@PRUNE_METHODS.register(PruneMethod.BLOCK)
def prune_blocks(ctx: PruneContext) -> PruneOutcome:
    spec, bench = ctx.spec, ctx.bench
    outcome = PruneOutcome(spec.method, spec.ratio, spec.ratio, ctx.macs_before, ctx.macs_before)
    found = block_prune.find_blocks(bench.student)
    block_prune.score_blocks(bench.student, found, bench.example)
    chosen = block_prune.choose_blocks(found, spec.ratio, spec.blocks)
    block_prune.remove_blocks(bench.student, [b.add for b in chosen])
    outcome.candidate_blocks, outcome.removed_blocks = found, chosen
    return outcome


# --- allocations: how channel pruning spreads its budget ---------------------------------------


@ALLOCATIONS.register(AllocationName.UNIFORM)
def uniform(ctx: PruneContext, plan: prune.PrunePlan, outcome: PruneOutcome) -> None:
    """The same ratio everywhere: the asked one, or the one that meets ``target_macs``."""
    if ctx.spec.target_macs is not None:
        outcome.ratio_used, _ = prune.ratio_for_target_macs(
            ctx.bench.student, ctx.bench.example, ctx.spec, plan, ctx.spec.target_macs
        )


@ALLOCATIONS.register(AllocationName.SENSITIVITY)
def sensitivity(
    ctx: PruneContext, plan: prune.PrunePlan, outcome: PruneOutcome
) -> allocate.Allocation | None:
    """Per-layer ratios for the MACs that uniform pruning at the ratio leaves (or target_macs),
    chosen by trials within the stage's share of the budget; uniform when they do not fit."""
    bench, p, deadline = ctx.bench, ctx.spec, ctx.deadline

    def on_unit(i: int, n: int) -> None:
        bench.check()
        bench.emit(
            Progress(stage=Stage.PRUNE, step=i, total=n, message=f"sensitivity of layer group {i + 1}/{n}")
        )

    try:
        if time.perf_counter() >= deadline:
            raise allocate.AllocationTimeout(
                "the pruning stage's share of the budget was spent (on probing the layers) before the trials "
                "could start"
            )
        if p.target_macs is not None:
            prune.check_target_below(p.target_macs, ctx.macs_before)
            target = p.target_macs
        else:
            target = prune.macs_at_ratio(bench.student, bench.example, p, plan, float(p.ratio or 0.5))
        batch = bench.sampler.train_batch(allocate.batch_size_for(bench.example))
        alloc = allocate.allocate(
            bench.student,
            bench.example,
            batch,
            p,
            plan,
            target,
            on_unit,
            deadline=deadline,
            per_sample_seconds=bench.budget.per_sample_seconds(),
        )
    except allocate.AllocationTimeout as e:
        outcome.notes.append(f"sensitivity allocation skipped, uniform ratio used instead: {e}")
        uniform(ctx, plan, outcome)
        return None
    if p.target_macs is not None and alloc.macs > target * 1.05:
        raise PruningError(
            f"target_macs {target:,} is out of reach: with every prunable layer at its largest allowed "
            f"ratio the model still has {alloc.macs:,} MACs (layers left whole: {len(plan.kept)})"
        )
    outcome.allocation, outcome.ratio_used = alloc, None
    return alloc


def taylor_grads(ctx: PruneContext) -> None:
    """Accumulate gradients of the output-L1 distillation loss for the Taylor criterion."""
    bench = ctx.bench
    student = bench.student
    student.zero_grad(set_to_none=True)
    for p in student.parameters():
        p.requires_grad_(True)
    for _ in range(4):
        b = bench.sampler.train_batch(ctx.distiller.spec.batch_size)
        t = forward(bench.teacher, b)
        out = student(*b.values())
        out = out[0] if isinstance(out, list | tuple) else out
        # Before the first round the student equals the teacher: the distillation loss and its
        # gradient are zero, so a small output-energy term gives Taylor a signal (how much each
        # channel feeds the output). In later rounds the L1 term dominates.
        loss = (out - t).abs().mean() + 1e-3 * out.pow(2).mean()
        loss.backward()
