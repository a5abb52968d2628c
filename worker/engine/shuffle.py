"""Channel pruning through PixelShuffle (DepthToSpace) and Linear -> reshape projections.

Torch-Pruning treats pixel_shuffle as element-wise, and a Linear whose features are reshaped
into ``[C, H, W]`` has no root it can prune consistently. Both are "block" sites: one channel
after them is a contiguous block of producer channels.

``pixel_shuffle(x, r)`` turns ``C*r^2`` channels into ``C``: output channel ``c`` is made of input
channels ``c*r^2 .. c*r^2 + r^2 - 1``. Pruning the producing conv channel by channel would
scramble the image, so the general pass leaves it whole; here we prune it in aligned blocks of
``r^2`` channels (``H*W`` features for a projection), coupled with everything after it (PReLU
slopes, BatchNorm, the next layer's input channels), by giving Torch-Pruning's dependency graph
the index mapping it uses for flatten/reshape. Importance of output channel ``c`` is the L1 norm
of its block of producer filters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

from worker.engine.rewrite import CUSTOM_PRUNERS

log = logging.getLogger(__name__)


class _BlockMapping(_FlattenIndexMapping):
    """Torch-Pruning's flatten mapping, but the reverse direction keeps one index per block
    (theirs keeps one per root index, so a block of r^2 counts r^2 times and the group check
    thinks the layer loses more channels than it has)."""

    def __call__(self, idxs: list) -> list:  # type: ignore[override]
        out = super().__call__(idxs)
        if not self.reverse:
            return out
        seen: dict[int, object] = {}
        for i in out:
            seen.setdefault(i.idx, i)
        return list(seen.values())


@dataclass
class ShuffleSite:
    producer: nn.Conv2d | nn.Linear
    factor: int  # producer channels per channel after the shuffle / reshape
    channels: int  # C (after the shuffle / reshape)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else int(m.out_channels)  # type: ignore[arg-type]


def _site_factor(dg: tp.DependencyGraph, node: object) -> int:
    """Producer channels per output channel at ``node``, or 0 when it is not a site we handle:
    a pixel shuffle after a conv (r^2), or a reshape of a Linear's features into [C, H, W]
    (H*W, read from the next layer's input channels)."""
    gf = node.grad_fn  # type: ignore[attr-defined]
    inputs = node.inputs  # type: ignore[attr-defined]
    if gf is None or len(inputs) != 1:
        return 0
    producer = inputs[0].module
    if "pixelshuffle" in gf.name().lower() and isinstance(producer, nn.Conv2d):
        r = int(getattr(gf, "_saved_upscale_factor", 0))
        return r * r if r >= 2 else 0
    if isinstance(node.module, tp.ops._ReshapeOp) and isinstance(producer, nn.Linear):  # type: ignore[attr-defined]
        for out in node.outputs:  # type: ignore[attr-defined]
            if isinstance(out.module, nn.Module) and not type(out.module).__module__.startswith(
                "torch_pruning"
            ):
                pruner = dg.get_pruner_of_module(out.module)
                c = pruner.get_in_channels(out.module) if pruner is not None else None
                if c and producer.out_features % c == 0 and producer.out_features > c:
                    return producer.out_features // c
    return 0


def _patch(dg: tp.DependencyGraph) -> list[ShuffleSite]:
    """Install block index mappings around every pixel-shuffle / Linear-reshape node of ``dg``."""
    sites: list[ShuffleSite] = []
    for node in list(dg.module2node.values()):
        factor = _site_factor(dg, node)
        if factor < 2:
            continue
        producer = node.inputs[0].module
        for out_node in node.outputs:
            for dep in node.dependencies:
                if dep.target == out_node:
                    dep.index_mapping[0] = _BlockMapping(stride=factor, reverse=True)
            for dep in out_node.dependencies:
                if dep.target == node:
                    dep.index_mapping[0] = _BlockMapping(stride=factor, reverse=False)
        sites.append(ShuffleSite(producer, factor, _out_channels(producer) // factor))
    return sites


@contextlib.contextmanager
def _block_mappings() -> Iterator[None]:
    """Torch-Pruning re-derives its own reshape mappings on every ``get_pruning_group``; ours
    must be re-applied after it each time."""
    original = tp_index_mapping.update_index_mapping

    def update(graph: tp.DependencyGraph) -> None:
        original(graph)
        _patch(graph)

    tp_index_mapping.update_index_mapping = update
    try:
        yield
    finally:
        tp_index_mapping.update_index_mapping = original


def prune_shuffle_producers(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    original_out: dict[str, int],
    ratio: float | dict[str, float],
) -> dict[str, tuple[int, int]]:
    """Prune each PixelShuffle producer named in ``original_out`` (name -> its output channels
    before any pruning) to ``1 - ratio`` of its original post-shuffle channels (``ratio`` may
    be per name), in aligned blocks. Returns name -> (output channels before this call, after)."""
    with _block_mappings():
        return _prune_sites(model, example, original_out, ratio)


def _prune_sites(
    model: nn.Module,
    example: dict[str, torch.Tensor],
    original_out: dict[str, int],
    ratio: float | dict[str, float],
) -> dict[str, tuple[int, int]]:
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=tuple(example.values()), customized_pruners=CUSTOM_PRUNERS
    )
    done: dict[str, tuple[int, int]] = {}
    for site in _patch(dg):
        name = names.get(site.producer)
        if name is None or name not in original_out:
            continue
        r = ratio.get(name, 0.0) if isinstance(ratio, dict) else ratio
        keep = max(1, round(original_out[name] // site.factor * (1 - r)))
        n_prune = site.channels - keep
        if n_prune < 1:
            continue
        w = site.producer.weight.detach().abs().reshape(site.channels, site.factor, -1).sum(dim=(1, 2))
        drop = torch.argsort(w)[:n_prune].tolist()
        idxs = [c * site.factor + s for c in sorted(drop) for s in range(site.factor)]
        before = _out_channels(site.producer)
        fn = (
            tp.prune_linear_out_channels
            if isinstance(site.producer, nn.Linear)
            else tp.prune_conv_out_channels
        )
        group = dg.get_pruning_group(site.producer, fn, idxs=idxs)
        if not dg.check_pruning_group(group):
            log.warning("prune.shuffle_refused layer=%s", name)
            continue
        group.prune()
        done[name] = (before, _out_channels(site.producer))
        log.info("prune.shuffle layer=%s channels=%d->%d", name, before, _out_channels(site.producer))
    return done
