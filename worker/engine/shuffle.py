"""Channel pruning through PixelShuffle (DepthToSpace), which Torch-Pruning treats as element-wise.

``pixel_shuffle(x, r)`` turns ``C*r^2`` channels into ``C``: output channel ``c`` is made of input
channels ``c*r^2 .. c*r^2 + r^2 - 1``. Pruning the producing conv channel by channel would
scramble the image, so the general pass leaves it whole; here we prune it in aligned blocks of
``r^2`` channels, coupled with everything after the shuffle (PReLU slopes, the next conv's input
channels), by giving Torch-Pruning's dependency graph the same index mapping it uses for
flatten/reshape. Importance of output channel ``c`` is the L1 norm of its ``r^2`` producer filters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
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
    producer: nn.Conv2d
    factor: int  # r^2
    channels: int  # C (after the shuffle)


def _patch(dg: tp.DependencyGraph) -> list[ShuffleSite]:
    """Install r^2-stride index mappings around every pixel-shuffle node of ``dg``."""
    sites: list[ShuffleSite] = []
    for node in list(dg.module2node.values()):
        gf = node.grad_fn
        if gf is None or "pixelshuffle" not in gf.name().lower():
            continue
        r = int(getattr(gf, "_saved_upscale_factor", 0))
        if r < 2 or len(node.inputs) != 1 or not isinstance(node.inputs[0].module, nn.Conv2d):
            continue
        producer = node.inputs[0].module
        factor = r * r
        for out_node in node.outputs:
            for dep in node.dependencies:
                if dep.target == out_node:
                    dep.index_mapping[0] = _BlockMapping(stride=factor, reverse=True)
            for dep in out_node.dependencies:
                if dep.target == node:
                    dep.index_mapping[0] = _BlockMapping(stride=factor, reverse=False)
        sites.append(ShuffleSite(producer, factor, producer.out_channels // factor))
    return sites


def prune_shuffle_producers(
    model: nn.Module, example: dict[str, torch.Tensor], original_out: dict[str, int], ratio: float
) -> dict[str, tuple[int, int]]:
    """Prune each PixelShuffle producer named in ``original_out`` (name -> its output channels
    before any pruning) to ``1 - ratio`` of its original post-shuffle channels, in aligned blocks.
    Returns name -> (output channels before this call, after)."""
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=tuple(example.values()), customized_pruners=CUSTOM_PRUNERS
    )
    done: dict[str, tuple[int, int]] = {}
    for site in _patch(dg):
        name = names.get(site.producer)
        if name is None or name not in original_out:
            continue
        keep = max(1, round(original_out[name] // site.factor * (1 - ratio)))
        n_prune = site.channels - keep
        if n_prune < 1:
            continue
        w = site.producer.weight.detach().abs().reshape(site.channels, site.factor, -1).sum(dim=(1, 2))
        drop = torch.argsort(w)[:n_prune].tolist()
        idxs = [c * site.factor + s for c in sorted(drop) for s in range(site.factor)]
        before = site.producer.out_channels
        group = dg.get_pruning_group(site.producer, tp.prune_conv_out_channels, idxs=idxs)
        if not dg.check_pruning_group(group):
            log.warning("prune.shuffle_refused layer=%s", name)
            continue
        group.prune()
        done[name] = (before, site.producer.out_channels)
        log.info("prune.shuffle layer=%s channels=%d->%d", name, before, site.producer.out_channels)
    return done
