"""Per-layer pruning ratios by sensitivity: spend a MAC budget where it costs least.

A uniform ratio removes the same share of channels everywhere, but layers differ: a latent
projection at 4x4 costs few MACs and carries the whole code, a 9x9 output conv at full resolution
costs many. Here every *unit* (a Torch-Pruning dependency group, or an aligned-block site of
``shuffle.py``) is pruned alone, in a copy, at each level of ``LEVELS``; we record the output
distortion against the unpruned model (mean squared error on a fixed batch, no training) and the
MACs it saves. The allocation then minimises total distortion for the budget, rate-distortion
style: for a multiplier ``lam`` each unit takes the level minimising ``distortion - lam * saved``,
and ``lam`` is bisected until the real pruned copy meets the MAC budget.

The budget is the MACs that uniform pruning at the asked ratio leaves (or ``target_macs``), so
``ratio`` keeps its meaning as "this much smaller"; only where the channels go changes.
Measured on the zoo in ``benchmarks/NOTES.md``.

Longer than 400 lines because it is one procedure: the trials, their time plan and the allocation
that reads them share the units' state and would only pass it back and forth if split.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from worker.engine import prune as P
from worker.engine.budget import PRUNE_SHARE
from worker.engine.prunable import prunable_layers
from worker.spec import MAX_CHANNEL_RATIO, Criterion, PruneSpec

log = logging.getLogger(__name__)

BATCH = 16  # inputs the output distortion is measured on (at 64 x 64 or less; fewer when larger)
BATCH_PIXELS = 16 * 64 * 64
LEVELS = tuple(r for r in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75) if r <= MAX_CHANNEL_RATIO)
# When the trials at every level do not fit the stage's share even on a few inputs, every other level:
# half the trials, and a budget still lands between two measured points of each group.
COARSE_LEVELS = tuple(r for r in (0.25, 0.5, 0.75) if r <= MAX_CHANNEL_RATIO)
MIN_FULL_BATCH = 4  # fewer inputs than this for the full levels: coarse levels on more inputs instead
MAGNITUDE = (Criterion.L1, Criterion.L2)  # criteria that rank a group's channels by their own weights


class AllocationTimeout(Exception):
    """The trials would not finish within their share of the job's budget."""


def _check_deadline(deadline: float | None, t0: float, done: int, total: int, what: str) -> None:
    """Raise ``AllocationTimeout`` when the deadline has passed, or when the pace so far says the
    remaining ``total - done`` items will not make it."""
    if deadline is None:
        return
    now = time.perf_counter()
    pace = (now - t0) / done if done else 0.0
    if now + pace * (total - done) > deadline:
        need = f"about {pace * total:.0f} s needed" if done else "its time was up before the first"
        raise AllocationTimeout(
            f"{what}: {done} of {total} done in {now - t0:.1f} s, {need}, "
            f"more than the {PRUNE_SHARE:.0%} of the budget this stage may take"
        )


@dataclass
class Unit:
    """Layers whose output channels are removed together, under one ratio."""

    name: str  # the first layer of the group (what the report shows)
    layers: list[str]
    block_site: bool  # pruned by shuffle.py in aligned blocks
    distortion: dict[float, float] = field(default_factory=dict)  # level -> output MSE
    saved: dict[float, float] = field(default_factory=dict)  # level -> cost saved (alone): MACs or ms


@dataclass
class Allocation:
    ratios: dict[str, float]  # unit name -> ratio
    units: list[Unit]
    macs: int
    target_macs: int
    seconds: float
    batch: int = 0  # inputs the distortion was measured on
    cost_unit: str = "MACs"  # what the budget counted: MACs, or estimated ms (allocation "latency")
    cost: float = 0.0  # the allocation's cost in that unit
    target_cost: float = 0.0
    levels: tuple[float, ...] = LEVELS  # the ratios each group was tried at

    def layer_ratios(self) -> dict[str, float]:
        """Torch-Pruning layers -> ratio (every layer of a group, so any may be the root)."""
        return split_ratios(self.units, self.ratios)[0]

    def site_ratios(self) -> dict[str, float]:
        return split_ratios(self.units, self.ratios)[1]


CostFn = Callable[[nn.Module], float]  # what a pruned copy costs: its MACs, or its estimated time


def macs_cost(example: dict[str, torch.Tensor]) -> CostFn:
    one = {k: v[:1] for k, v in example.items()}
    return lambda m: float(P.count_macs(m, one))


def split_ratios(units: list[Unit], ratios: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Unit ratios as (Torch-Pruning layer -> ratio, block site -> ratio)."""
    layers = {n: ratios[u.name] for u in units if not u.block_site for n in u.layers}
    sites = {u.name: ratios[u.name] for u in units if u.block_site}
    return layers, sites


def batch_size_for(example: dict[str, torch.Tensor]) -> int:
    """Inputs to measure distortion on: ``BATCH``, fewer for large images (every trial runs the
    batch through a pruned copy), at least 2."""
    pixels = max((v.shape[-2] * v.shape[-1] for v in example.values() if v.dim() == 4), default=1)
    return max(2, min(BATCH, BATCH_PIXELS // pixels))


def plan_trials(
    n_units: int,
    copy_seconds: float,
    per_sample_seconds: float,
    batch: int,
    seconds_left: float | None,
) -> tuple[int, tuple[float, ...]]:
    """(distortion batch, levels) for the trials to fit ``seconds_left``: every level on ``batch``
    inputs or fewer (at least ``MIN_FULL_BATCH``), else ``COARSE_LEVELS`` on ``batch`` or fewer (at
    least 2). Raises ``AllocationTimeout`` with the estimate when even that does not fit."""

    def cost(b: int, levels: tuple[float, ...]) -> float:
        trials = n_units * len(levels) + 2 * n_units  # the level trials, then greedy steps (MAC counts)
        return n_units * len(levels) * b * per_sample_seconds + trials * copy_seconds

    if seconds_left is None:
        return batch, LEVELS
    for levels, least in ((LEVELS, min(batch, MIN_FULL_BATCH)), (COARSE_LEVELS, 2)):
        for b in range(batch, least - 1, -1):
            if cost(b, levels) <= seconds_left:
                return b, levels
    raise AllocationTimeout(
        f"{n_units} layer groups x {len(COARSE_LEVELS)} ratios would take about {cost(2, COARSE_LEVELS):.0f} s "
        f"({copy_seconds:.2f} s per pruned copy), more than the {seconds_left:.0f} s left of the "
        f"{PRUNE_SHARE:.0%} of the budget this stage may take"
    )


def find_units(
    model: nn.Module, example: dict[str, torch.Tensor], spec: PruneSpec, plan: P.PrunePlan
) -> list[Unit]:
    names = {m: n for n, m in prunable_layers(model).items()}
    pruner = P.make_pruner(model, example, spec, plan, 0.0)
    units: list[Unit] = []
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        layers = []
        for dep, _ in group:
            m = dep.target.module
            if m in names and pruner.DG.is_out_channel_pruning_fn(dep.handler) and names[m] not in layers:
                layers.append(names[m])
        if layers and not all(n in plan.kept for n in layers):
            units.append(Unit(layers[0], layers, block_site=False))
    units += [Unit(n, [n], block_site=True) for n in plan.shuffle]
    return units


def pruned_copy(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: P.PrunePlan,
    layer_ratios: dict[str, float],
    site_ratios: dict[str, float],
) -> nn.Module:
    trial = copy.deepcopy(model)
    pruner = P.make_pruner(
        trial, example, spec, plan, 0.0, layer_ratios={k: v for k, v in layer_ratios.items() if v > 0}
    )
    P.prune_step(trial, example, pruner, plan, site_ratios)
    return trial


def _distortion(model: nn.Module, batch: dict[str, torch.Tensor], reference: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(*batch.values())
    out = out[0] if isinstance(out, list | tuple) else out
    return float((out - reference).pow(2).mean())


def measure_units(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: P.PrunePlan,
    units: list[Unit],
    on_unit: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
    cost: CostFn | None = None,
    levels: tuple[float, ...] = LEVELS,
) -> None:
    """Fill each unit's distortion and cost saved (MACs unless ``cost`` says otherwise) at every
    level of ``levels``, pruning it alone in a copy.
    ``on_unit(i, n)`` is called before unit ``i`` of ``n`` (progress; it may raise to cancel).
    Raises ``AllocationTimeout`` as soon as the trials cannot end by ``deadline``."""
    t0 = time.perf_counter()
    cost = cost or macs_cost(example)
    base = cost(model)
    with torch.no_grad():
        ref = model(*batch.values())
    ref = ref[0] if isinstance(ref, list | tuple) else ref
    for i, u in enumerate(units):
        if on_unit is not None:
            on_unit(i, len(units))
        _check_deadline(deadline, t0, i, len(units), "sensitivity trials")
        for level, trial in _unit_trials(model, example, spec, plan, u, levels):
            u.distortion[level] = _distortion(trial, batch, ref)
            u.saved[level] = base - cost(trial)


def fresh_trials(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: P.PrunePlan,
    u: Unit,
    levels: tuple[float, ...] = LEVELS,
) -> Iterator[tuple[float, nn.Module]]:
    """``unit`` pruned alone at each level, a fresh copy per level, until a level it cannot take."""
    for level in levels:
        try:
            yield level, pruned_copy(model, example, spec, plan, *split_ratios([u], {u.name: level}))
        except Exception as e:  # a level the unit cannot take (too few channels): stop here
            log.info("allocate.level_refused unit=%s level=%.3f error=%s", u.name, level, e)
            return


def _unit_trials(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: P.PrunePlan,
    u: Unit,
    levels: tuple[float, ...] = LEVELS,
) -> Iterator[tuple[float, nn.Module]]:
    """``unit`` pruned alone at each level in turn: (level, the pruned copy), until a level the
    unit cannot take (too few channels).

    A Torch-Pruning group is pruned in one copy, one iterative step per level: building the
    pruner's dependency graph is most of a trial's cost, and this builds it once per unit instead
    of once per level (6x fewer; on stylegan_lite the trials went from about 19 s to 3). The
    scheduler's steps are set to the levels themselves, rounded as ``make_pruner`` rounds a fresh
    copy (``round_to``), so with a magnitude criterion each step equals pruning a fresh copy to that
    level: the kept channels' weights do not change between steps (tested, rounded and not). Counting
    trials unrounded instead made the allocation overshoot its MAC budget by 36%."""
    if u.block_site or spec.global_ranking or spec.criterion not in MAGNITUDE:
        yield from fresh_trials(model, example, spec, plan, u, levels)
        return
    trial = copy.deepcopy(model)
    pruner = P.make_pruner(
        trial, example, spec, plan, 0.0, len(levels), layer_ratios={n: levels[-1] for n in u.layers}
    )
    for n in u.layers:  # the scheduler's per-step ratios: the levels, as a fresh copy's pruner has them
        steps = [(P.pruner_ratios(model, spec, plan, 0.0, {n: lv}) or {})[n] for lv in levels]
        pruner.pruning_ratio_dict[trial.get_submodule(n)] = [0.0, *steps]
    for level in levels:
        try:
            P.prune_step(trial, example, pruner, plan, {})
        except Exception as e:
            log.info("allocate.level_refused unit=%s level=%.3f error=%s", u.name, level, e)
            return
        yield level, trial


def _greedy_step(units: list[Unit], levels: dict[str, float]) -> bool:
    """Raise one unit to the level with the least added distortion per MAC saved (any higher
    level, so a curve that is not convex cannot trap it). False when every unit is at its top."""
    best: tuple[float, str, float] | None = None
    for u in units:
        cur = levels[u.name]
        d0, s0 = u.distortion.get(cur, 0.0), u.saved.get(cur, 0)
        for lv, d in u.distortion.items():
            gain = u.saved[lv] - s0
            if lv <= cur or gain <= 0:
                continue
            score = (d - d0) / gain
            if best is None or score < best[0]:
                best = (score, u.name, lv)
    if best is None:
        return False
    levels[best[1]] = best[2]
    return True


@dataclass
class Profile:
    """Every unit's distortion and saving per level, measured once on ``model`` (the unpruned
    student, never changed), and the greedy path through them: allocations for any budget are
    points on that path, so a target search pays for the trials once."""

    model: nn.Module
    example: dict[str, torch.Tensor]
    spec: PruneSpec
    plan: P.PrunePlan
    units: list[Unit]
    cost: CostFn
    cost_unit: str
    base: float  # the unpruned model's cost
    batch: int  # inputs the distortion was measured on
    seconds: float  # what measuring cost
    levels: tuple[float, ...] = LEVELS  # the ratios each unit was tried at
    path: list[tuple[dict[str, float], float]] = field(default_factory=list)  # (levels, real cost)

    def cost_of(self, ratios: dict[str, float]) -> float:
        return self.cost(
            pruned_copy(self.model, self.example, self.spec, self.plan, *split_ratios(self.units, ratios))
        )

    def allocation(self, target: float, deadline: float | None = None) -> Allocation:
        """Per-unit ratios whose pruned model costs at most about ``target`` at little summed
        distortion: greedy, the least distortion per unit of cost saved first, each step's cost
        measured on a real pruned copy (units share layers: their savings do not add up)."""
        t0 = time.perf_counter()
        if not self.path:
            self.path.append(({u.name: 0.0 for u in self.units}, self.base))
        limit = target * 1.01
        i = 0
        while self.path[i][1] > limit:
            if i + 1 < len(self.path):
                i += 1
                continue
            if deadline is not None and time.perf_counter() > deadline:
                raise AllocationTimeout("the greedy search ran past this stage's share of the budget")
            levels = dict(self.path[i][0])
            if not _greedy_step(self.units, levels):
                break
            self.path.append((levels, self.cost_of(levels)))
            i += 1
        levels, m = dict(self.path[i][0]), self.path[i][1]
        if i > 0 and m <= limit:  # the last step may overshoot: the least level of that unit that suffices
            before = self.path[i - 1][0]
            (name,) = [k for k in levels if levels[k] != before[k]]
            for lv in sorted(lv for lv in self.levels if before[name] < lv < levels[name]):
                trial = {**before, name: lv}
                mt = self.cost_of(trial)
                if mt <= limit:
                    levels, m = trial, mt
                    break
        macs = m if self.cost_unit == "MACs" else float(self._macs(levels))
        alloc = Allocation(
            dict(levels),
            self.units,
            int(macs),
            int(target) if self.cost_unit == "MACs" else 0,
            self.seconds + time.perf_counter() - t0,
            batch=self.batch,
            cost_unit=self.cost_unit,
            cost=m,
            target_cost=target,
            levels=self.levels,
        )
        log.info(
            "allocate.done units=%d cost=%.4g target=%.4g unit=%s seconds=%.1f ratios=%s",
            len(self.units),
            m,
            target,
            self.cost_unit,
            alloc.seconds,
            {k: round(v, 3) for k, v in levels.items()},
        )
        return alloc

    def _macs(self, ratios: dict[str, float]) -> int:
        one = {k: v[:1] for k, v in self.example.items()}
        trial = pruned_copy(self.model, self.example, self.spec, self.plan, *split_ratios(self.units, ratios))
        return P.count_macs(trial, one)


def profile(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: P.PrunePlan,
    on_unit: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
    per_sample_seconds: float = 0.0,
    cost: CostFn | None = None,
    cost_unit: str = "MACs",
) -> Profile:
    """Measure every unit's sensitivity on ``model`` within ``deadline`` (``AllocationTimeout``
    when the trials would not fit: the batch shrinks first, to 2 inputs at least)."""
    t0 = time.perf_counter()
    cost = cost or macs_cost(example)
    tc = time.perf_counter()
    units = find_units(model, example, spec, plan)
    copy_seconds = time.perf_counter() - tc  # building the pruner's graph: most of a trial's copy cost
    n = len(next(iter(batch.values())))
    left = None if deadline is None else deadline - time.perf_counter()
    b, levels = plan_trials(len(units), copy_seconds, per_sample_seconds, n, left)
    batch = {k: v[:b] for k, v in batch.items()}
    measure_units(model, example, batch, spec, plan, units, on_unit, deadline, cost, levels)
    units = [u for u in units if u.distortion]
    return Profile(
        model, example, spec, plan, units, cost, cost_unit, cost(model), b, time.perf_counter() - t0, levels
    )


def allocate(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: P.PrunePlan,
    target_macs: int,
    on_unit: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
    per_sample_seconds: float = 0.0,
) -> Allocation:
    """Per-unit ratios whose pruned model has at most about ``target_macs`` MACs at little summed
    distortion (``profile`` then ``Profile.allocation``)."""
    prof = profile(model, example, batch, spec, plan, on_unit, deadline, per_sample_seconds)
    return prof.allocation(target_macs, deadline)
