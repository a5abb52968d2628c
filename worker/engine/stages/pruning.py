"""The pruning stage: one registered function per ``PruneMethod``, from a ``PruneContext`` to a
``PruneOutcome``; channel pruning spreads its MAC budget by one of the registered allocations.

Torch-Pruning does the surgery (``worker.engine.prune``), ``allocate`` the sensitivity trials,
``blocks`` the residual-block removal; this module decides what to ask of them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from worker.engine import allocate, latency_model, prune, recover
from worker.engine import blocks as block_prune
from worker.engine.budget import PRUNE_SHARE
from worker.engine.export import cleanup
from worker.engine.registry import Registry
from worker.engine.result import PruneOutcome
from worker.engine.stages.setup import Workbench, forward
from worker.engine.stages.training import Distiller
from worker.errors import BadSpecError, PruningError
from worker.spec import AllocationName, Criterion, Progress, PruneMethod, PruneSpec, Stage


@dataclass
class PruneCache:
    """What pruning learns about the unpruned model and may reuse for another cut of it (a target
    search prunes several candidates from one teacher): the plan, each allocation's sensitivity
    profile and the teacher's latency model. ``base`` is the unpruned student they were measured
    on; it is never changed."""

    base: nn.Module
    plan: prune.PrunePlan | None = None
    profiles: dict[AllocationName, allocate.Profile] = field(default_factory=dict)
    latency: latency_model.LatencyModel | None = None
    failed: dict[AllocationName, str] = field(default_factory=dict)  # why a profile could not be made


@dataclass
class PruneContext:
    """What a prune method needs: the workbench, its part of the spec, the MACs before, the end
    of the stage's share of the budget (probing counts), the distiller that trains between
    iterative rounds (given half the distillation time now left), and what earlier cuts of the
    same model learnt (``cache``)."""

    bench: Workbench
    spec: PruneSpec
    distiller: Distiller
    macs_before: int
    deadline: float
    cache: PruneCache | None = None


PruneFn = Callable[[PruneContext], PruneOutcome]
PRUNE_METHODS: Registry[PruneMethod, PruneFn] = Registry("prune method", PruneMethod, BadSpecError)
AllocateFn = Callable[[PruneContext, prune.PrunePlan, PruneOutcome], "allocate.Allocation | None"]
ALLOCATIONS: Registry[AllocationName, AllocateFn] = Registry("allocation", AllocationName, BadSpecError)


def run(
    bench: Workbench,
    spec: PruneSpec,
    distiller: Distiller,
    cache: PruneCache | None = None,
    deadline: float | None = None,
) -> PruneOutcome:
    """Prune the workbench's student in place as ``spec.method`` asks; record which teacher
    channels each layer kept (for recovery) and the MACs after. ``cache``: reuse (and fill) what
    an earlier cut of the same unpruned model measured; ``deadline``: the end of this stage's
    share (default: ``PRUNE_SHARE`` of the budget from now)."""
    deadline = deadline if deadline is not None else bench.budget.share_deadline(PRUNE_SHARE)
    one = {k: v[:1] for k, v in bench.example.items()}
    macs = prune.count_macs(bench.student, one)
    ctx = PruneContext(bench, spec, distiller, macs, deadline, cache)
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
    plan = outcome.plan = channel_plan(ctx)
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
    return _by_profile(ctx, plan, outcome, AllocationName.SENSITIVITY)


@ALLOCATIONS.register(AllocationName.LATENCY)
def latency(ctx: PruneContext, plan: prune.PrunePlan, outcome: PruneOutcome) -> allocate.Allocation | None:
    """Per-layer ratios for the estimated 1-thread time that uniform pruning at the ratio leaves:
    the same trials as ``sensitivity``, each saving weighed by the teacher's measured node times
    (``latency_model``) instead of MACs; uniform when they do not fit."""
    if ctx.spec.target_macs is not None:
        outcome.notes.append("allocation 'latency' with target_macs: the MAC budget is spread by sensitivity")
        return _by_profile(ctx, plan, outcome, AllocationName.SENSITIVITY)
    return _by_profile(ctx, plan, outcome, AllocationName.LATENCY)


def channel_plan(ctx: PruneContext) -> prune.PrunePlan:
    """What channel pruning may touch (probing every layer: seconds on a big model), once per cache."""
    bench, cache = ctx.bench, ctx.cache
    if cache is None:
        return prune.plan_channel_pruning(bench.student, bench.small, ctx.spec)
    if cache.plan is None:
        cache.plan = prune.plan_channel_pruning(cache.base, bench.small, ctx.spec)
    return copy.deepcopy(cache.plan)  # each cut records its own channel counts


def teacher_latency(ctx: PruneContext) -> latency_model.LatencyModel:
    """The teacher's latency model (a per-node ONNX Runtime profile at the full input size)."""
    if ctx.cache is not None and ctx.cache.latency is not None:
        return ctx.cache.latency
    bench = ctx.bench
    feeds = {k: v[:1].numpy() for k, v in bench.example.items()}
    seconds = max(1.0, 0.25 * (ctx.deadline - time.perf_counter()))
    lm = latency_model.teacher_latency_model(
        bench.teacher, cleanup(bench.imported.onnx_model), feeds, bench.small, seconds=seconds
    )
    if ctx.cache is not None:
        ctx.cache.latency = lm
    return lm


def _by_profile(
    ctx: PruneContext, plan: prune.PrunePlan, outcome: PruneOutcome, kind: AllocationName
) -> allocate.Allocation | None:
    """An allocation from a sensitivity profile (measured now, or taken from the cache) whose
    savings count MACs (sensitivity) or estimated time (latency)."""
    bench, p, deadline = ctx.bench, ctx.spec, ctx.deadline
    cache = ctx.cache

    def on_unit(i: int, n: int) -> None:
        bench.check()
        bench.emit(
            Progress(stage=Stage.PRUNE, step=i, total=n, message=f"sensitivity of layer group {i + 1}/{n}")
        )

    try:
        if cache is not None and kind in cache.failed:
            raise allocate.AllocationTimeout(cache.failed[kind])
        prof = cache.profiles.get(kind) if cache is not None else None
        base = cache.base if cache is not None else bench.student
        if p.target_macs is not None:
            prune.check_target_below(p.target_macs, ctx.macs_before)
        if prof is None:
            if time.perf_counter() >= deadline:
                raise allocate.AllocationTimeout(
                    "the pruning stage's share of the budget was spent (on probing the layers) before the "
                    "trials could start"
                )
            cost, unit = None, "MACs"
            if kind == AllocationName.LATENCY:
                lm = teacher_latency(ctx)
                cost, unit = lm.estimate_ms, "ms (estimated)"
            batch = bench.sampler.train_batch(allocate.batch_size_for(bench.example))
            prof = allocate.profile(
                base,
                bench.example,
                batch,
                p,
                plan,
                on_unit,
                deadline=deadline,
                per_sample_seconds=bench.budget.per_sample_seconds(),
                cost=cost,
                cost_unit=unit,
            )
            if cache is not None:
                cache.profiles[kind] = prof
        if p.target_macs is not None:
            target: float = p.target_macs
        else:
            target = prof.cost(prune.uniform_copy(base, bench.example, p, plan, float(p.ratio or 0.5)))
        alloc = prof.allocation(target, deadline)
    except allocate.AllocationTimeout as e:
        if cache is not None:
            cache.failed.setdefault(kind, str(e))
        outcome.notes.append(f"{kind.value} allocation skipped, uniform ratio used instead: {e}")
        uniform(ctx, plan, outcome)
        return None
    if p.target_macs is not None and alloc.macs > p.target_macs * 1.05:
        raise PruningError(
            f"target_macs {p.target_macs:,} is out of reach: with every prunable layer at its largest allowed "
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
