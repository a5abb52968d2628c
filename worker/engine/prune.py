"""Pruning: structured channel pruning (Torch-Pruning), unstructured magnitude, whole blocks.

Channel pruning physically removes channels (the exported graph is smaller). Torch-Pruning's
dependency graph couples layers through residual adds, concatenations and norms; what it cannot
see through we handle here and report:

which layers are left whole and why is ``worker.engine.prunable``; this module holds the
criteria, the plan, Torch-Pruning's pruner and steps, MAC counting and unstructured masks.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import fx, nn

from worker.engine.prunable import (
    BLOCK_REASONS,
    NORMS,
    _run,
    channels_out,
    probe_exclusions,
    prunable_layers,
    static_exclusions,
)
from worker.engine.registry import Registry
from worker.engine.rewrite import CUSTOM_PRUNERS
from worker.errors import PruningError
from worker.spec import MAX_CHANNEL_RATIO, Criterion, PruneSpec

log = logging.getLogger(__name__)


class NormScaleImportance(tp.importance.Importance):
    """|gamma| of the BatchNorm/InstanceNorm/GroupNorm in the group (network slimming); groups
    without a norm layer fall back to the L1 norm of the weights."""

    def __init__(self) -> None:
        self.norm = tp.importance.GroupMagnitudeImportance(p=1, target_types=NORMS)
        self.fallback = tp.importance.GroupMagnitudeImportance(p=1)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        imp = self.norm(group)
        return imp if imp is not None else self.fallback(group)


CRITERIA: Registry[Criterion, Callable[[], tp.importance.Importance]] = Registry(
    "criterion", Criterion, PruningError
)
CRITERIA.add(Criterion.L1, lambda: tp.importance.GroupMagnitudeImportance(p=1))
CRITERIA.add(Criterion.L2, lambda: tp.importance.GroupMagnitudeImportance(p=2))
CRITERIA.add(Criterion.BN_SCALE, NormScaleImportance)
CRITERIA.add(Criterion.TAYLOR, lambda: tp.importance.GroupTaylorImportance())
CRITERIA.add(Criterion.RANDOM, lambda: tp.importance.RandomImportance())


def criterion(name: Criterion) -> tp.importance.Importance:
    return CRITERIA.get(name)()


@dataclass
class LayerRecord:
    name: str
    kind: str
    channels_before: int
    channels_after: int = 0
    reason_kept: str | None = None

    @property
    def pruned(self) -> bool:
        return self.channels_after < self.channels_before


@dataclass
class PrunePlan:
    """What channel pruning may touch and why the rest is left whole. ``shuffle`` layers are kept
    out of Torch-Pruning's own pass and pruned in aligned blocks by ``shuffle.py``."""

    kept: dict[str, str]
    layers: dict[str, LayerRecord] = field(default_factory=dict)
    shuffle: dict[str, int] = field(default_factory=dict)  # producer name -> original out channels

    def record_after(self, model: nn.Module) -> None:
        for name, m in prunable_layers(model).items():
            if name in self.layers:
                rec = self.layers[name]
                rec.channels_after = channels_out(m)
                if name in self.shuffle:  # pruned in blocks, or left whole for the reason found
                    rec.reason_kept = None if rec.pruned else self.kept[name]


def require_eager(model: nn.Module) -> None:
    """Torch-Pruning on a ScriptModule finds no layer and raises nothing: refuse it loudly."""
    if isinstance(model, torch.jit.ScriptModule | torch.jit.RecursiveScriptModule):
        raise PruningError(
            "refusing to prune a TorchScript module (nothing would be pruned); import it first"
        )


def plan_channel_pruning(
    model: fx.GraphModule, example: dict[str, torch.Tensor], spec: PruneSpec
) -> PrunePlan:
    require_eager(model)
    kept = static_exclusions(model, spec.ignore)
    kept.update(probe_exclusions(model, example, set(kept)))
    layers = {
        name: LayerRecord(name, type(m).__name__, channels_out(m), channels_out(m), kept.get(name))
        for name, m in prunable_layers(model).items()
    }
    # block sites (PixelShuffle producers, Linear -> reshape projections) are pruned in aligned
    # blocks by shuffle.py; those it cannot handle keep their reason (see record_after)
    shuffle = {
        n: layers[n].channels_before for n, why in kept.items() if why in BLOCK_REASONS and n in layers
    }
    if all(name in kept and name not in shuffle for name in layers):
        raise PruningError(
            "no layer can be channel-pruned: "
            + "; ".join(f"{n}: {r}" for n, r in list(kept.items())[:6])
            + ("; try method 'unstructured'" if layers else "")
        )
    log.info(
        "prune.plan prunable=%d kept=%d pixelshuffle=%d", len(layers) - len(kept), len(kept), len(shuffle)
    )
    return PrunePlan(kept, layers, shuffle)


def prune_step(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    pruner: tp.pruner.BasePruner,
    plan: PrunePlan,
    ratio: float | dict[str, float],
) -> None:
    """One pruning round: Torch-Pruning's step, then the PixelShuffle producers in aligned blocks
    up to the same cumulative ``ratio`` (or each to its own: block-site name -> ratio, sites not
    named are left whole); the output shape must not change."""
    ref = _run(model, example).shape
    pruner.step()
    if plan.shuffle:
        from worker.engine.shuffle import prune_shuffle_producers

        sites = (
            plan.shuffle
            if not isinstance(ratio, dict)
            else {n: c for n, c in plan.shuffle.items() if ratio.get(n, 0.0) > 0}
        )
        if sites:
            prune_shuffle_producers(model, example, sites, ratio)
    got = _run(model, example).shape
    if got != ref:
        raise PruningError(f"pruning changed the output shape from {list(ref)} to {list(got)}")


def make_pruner(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: PrunePlan,
    ratio: float,
    iterative_steps: int = 1,
    layer_ratios: dict[str, float] | None = None,
) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner over every layer the plan allows, at one ``ratio``, or per layer
    where ``layer_ratios`` names it (a dependency group takes the ratio of its first named layer)."""
    ignored = [model.get_submodule(n) for n in plan.kept]
    # rounded at the end: Torch-Pruning's scheduler reaches these ratios at the last of its steps
    layer_ratios = pruner_ratios(model, spec, plan, ratio, layer_ratios)
    per_layer = {model.get_submodule(n): r for n, r in (layer_ratios or {}).items() if n not in plan.kept}
    return tp.pruner.BasePruner(
        model,
        example_inputs=tuple(example.values()),
        importance=criterion(spec.criterion),
        global_pruning=spec.global_ranking,
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer or None,
        iterative_steps=iterative_steps,
        ignored_layers=ignored,
        max_pruning_ratio=0.95,
        customized_pruners=CUSTOM_PRUNERS,
    )


def pruner_ratios(
    model: nn.Module, spec: PruneSpec, plan: PrunePlan, ratio: float, layer_ratios: dict[str, float] | None
) -> dict[str, float] | None:
    """The per-layer ratios ``make_pruner`` hands Torch-Pruning: rounded to ``spec.round_to`` (see
    ``rounded_ratios``) unless the ranking is global or nothing is pruned; else ``layer_ratios``."""
    if spec.round_to > 1 and not spec.global_ranking and (layer_ratios or ratio > 0):
        return rounded_ratios(model, plan, ratio, layer_ratios, spec.round_to)
    return layer_ratios


def out_channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
    return None


def rounded_ratio(channels: int, ratio: float, multiple: int) -> float:
    """The ratio that keeps the multiple of ``multiple`` nearest to ``channels * (1 - ratio)``
    (at least one multiple; layers under two multiples wide are left as asked). Torch-Pruning keeps
    ``int(channels * (1 - ratio))``: the half channel added makes that exact."""
    if channels < 2 * multiple or ratio <= 0:
        return ratio
    # halves round up (not to even): at 32 channels, ratio 0.375 keeps 24, not the 16 that 0.5 keeps
    kept = max(multiple, min(channels, multiple * math.floor(channels * (1 - ratio) / multiple + 0.5)))
    return max(0.0, 1.0 - (kept + 0.5) / channels)


def rounded_ratios(
    model: nn.Module, plan: PrunePlan, ratio: float, layer_ratios: dict[str, float] | None, multiple: int
) -> dict[str, float]:
    """Per-layer ratios whose kept channel counts are multiples of ``multiple`` (ONNX Runtime's
    blocked convolution kernels run such widths measurably faster per MAC; benchmarks/NOTES.md).
    With ``layer_ratios`` (an allocation) those layers are rounded; otherwise every prunable layer
    gets ``ratio`` rounded. PixelShuffle producers keep their own block-aligned ratios."""
    names = layer_ratios if layer_ratios is not None else {n: ratio for n in prunable_layers(model)}
    out: dict[str, float] = {}
    for name, r in names.items():
        if name in plan.kept or name in plan.shuffle:
            if layer_ratios is not None:
                out[name] = r
            continue
        c = out_channels(model.get_submodule(name))
        out[name] = r if c is None else rounded_ratio(c, r, multiple)
    return out


def count_macs(model: nn.Module, example: dict[str, torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass at the example's batch size, from
    ``torch.utils.flop_counter`` (flops / 2; ConvTranspose counted correctly)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(*example.values())
    return int(fc.get_total_flops() // 2)


def check_target_below(target_macs: int, base: int) -> None:
    if target_macs >= base:
        raise PruningError(f"target_macs {target_macs:,} is not below the model's {base:,} MACs")


def uniform_copy(
    model: nn.Module, example: dict[str, torch.Tensor], spec: PruneSpec, plan: PrunePlan, ratio: float
) -> nn.Module:
    """A copy of ``model`` pruned uniformly at ``ratio`` (``model`` is left as it is)."""
    trial = copy.deepcopy(model)
    prune_step(trial, example, make_pruner(trial, example, spec, plan, ratio), plan, ratio)
    return trial


def macs_at_ratio(
    model: nn.Module, example: dict[str, torch.Tensor], spec: PruneSpec, plan: PrunePlan, ratio: float
) -> int:
    """MACs (batch 1) of a copy pruned uniformly at ``ratio``: the budget a ratio stands for."""
    return count_macs(uniform_copy(model, example, spec, plan, ratio), {k: v[:1] for k, v in example.items()})


def ratio_for_target_macs(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    spec: PruneSpec,
    plan: PrunePlan,
    target_macs: int,
    tolerance: float = 0.05,
) -> tuple[float, int]:
    """Bisect the channel ratio until the pruned copy's MACs are within ``tolerance`` of the
    target (MACs fall monotonically with the ratio). Returns (ratio, macs at that ratio)."""
    check_target_below(target_macs, count_macs(model, {k: v[:1] for k, v in example.items()}))

    def macs_at(r: float) -> int:
        return macs_at_ratio(model, example, spec, plan, r)

    lo, hi = 0.0, MAX_CHANNEL_RATIO
    best = (hi, macs_at(hi))
    if best[1] > target_macs * (1 + tolerance):
        raise PruningError(
            f"target_macs {target_macs:,} is out of reach: at {MAX_CHANNEL_RATIO:.0%} channel pruning the model still has "
            f"{best[1]:,} MACs (layers left whole: {len(plan.kept)})"
        )
    for _ in range(14):
        mid = (lo + hi) / 2
        m = macs_at(mid)
        if abs(m - target_macs) < abs(best[1] - target_macs):
            best = (mid, m)
        if abs(m - target_macs) <= tolerance * target_macs:
            return mid, m
        lo, hi = (mid, hi) if m > target_macs else (lo, mid)
    return best


# --- unstructured -----------------------------------------------------------------------------


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning over all conv/linear weights: the ``sparsity`` fraction of
    smallest |w| become zero. Returns name -> keep-mask (bool, same shape as the weight)."""
    require_eager(model)
    weights = {n: m.weight for n, m in prunable_layers(model).items()}
    if not weights:
        raise PruningError("the model has no convolution or linear weights to prune")
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = int(sparsity * flat.numel())
    if k < 1:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    threshold = flat.kthvalue(k).values
    return {n: w.detach().abs() > threshold for n, w in weights.items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            w = model.get_submodule(name).weight
            w.mul_(mask.to(w.dtype))


def sparsity_of(model: nn.Module) -> float:
    total = zeros = 0
    for m in prunable_layers(model).values():
        total += m.weight.numel()
        zeros += int((m.weight == 0).sum())
    return zeros / total if total else 0.0
