"""Channel, unstructured and block pruning on converted tiny generators."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.engine import blocks
from worker.engine.importers import import_model
from worker.engine.prunable import prunable_layers
from worker.engine.prune import (
    CRITERIA,
    apply_masks,
    count_macs,
    magnitude_masks,
    make_pruner,
    out_channels,
    plan_channel_pruning,
    prune_step,
    ratio_for_target_macs,
    rounded_ratio,
    sparsity_of,
)
from worker.engine.sampling import example_batch
from worker.errors import PruningError
from worker.spec import Criterion, PruneSpec


def _load(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    im = import_model(path, None)
    return im.module, example_batch(im.inputs, batch=2, seed=0)


def _one(example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v[:1] for k, v in example.items()}


def test_every_criterion_has_an_implementation() -> None:
    assert set(CRITERIA) == set(Criterion)


@pytest.mark.parametrize("crit", list(Criterion))
@pytest.mark.parametrize("family", ["resnet", "sr"])
def test_channel_pruning_shrinks_and_keeps_output_shape(
    crit: Criterion, family: str, tiny_onnx: dict[str, Path]
) -> None:
    model, ex = _load(tiny_onnx[family])
    before_shape = model(*ex.values()).shape
    before = count_macs(model, _one(ex))
    spec = PruneSpec(ratio=0.5, criterion=crit)
    plan = plan_channel_pruning(model, ex, spec)
    pruner = make_pruner(model, ex, spec, plan, 0.5)
    if crit == Criterion.TAYLOR:
        model(*ex.values()).abs().mean().backward()
    pruner.step()
    plan.record_after(model)
    after = count_macs(model, _one(ex))
    assert model(*ex.values()).shape == before_shape
    assert after < 0.75 * before, f"{crit}: MACs {before} -> {after}"
    pruned = [r for r in plan.layers.values() if r.pruned]
    assert pruned and all(r.channels_after == r.channels_before // 2 for r in pruned)


def test_resnet_at_half_ratio_quarter_macs_in_the_body(tiny_onnx: dict[str, Path]) -> None:
    """Both in and out channels halve inside the body: its MACs drop to about a quarter."""
    model, ex = _load(tiny_onnx["resnet"])
    before = count_macs(model, _one(ex))
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(model, ex, spec)
    make_pruner(model, ex, spec, plan, 0.5).step()
    after = count_macs(model, _one(ex))
    # the 7x7 output conv keeps its 3 output channels, so the total is a bit above 1/4
    assert 0.25 <= after / before < 0.40


def test_output_layer_whole_pixelshuffle_producer_pruned_in_blocks(tiny_onnx: dict[str, Path]) -> None:
    """The output conv keeps its channels; the conv feeding PixelShuffle(2) loses whole blocks of
    4 channels, coupled with the PReLU and the conv after the shuffle, and the result equals
    pruning the equivalent channels by hand."""
    model, ex = _load(tiny_onnx["sr"])
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(model, ex, spec)
    assert any("model output" in r for r in plan.kept.values())
    (producer,) = plan.shuffle
    assert plan.shuffle[producer] == 64
    reference = copy.deepcopy(model)
    prune_step(model, ex, make_pruner(model, ex, spec, plan, 0.5), plan, 0.5)
    plan.record_after(model)
    assert plan.layers[producer].channels_after == 32, "16 -> 8 channels after the shuffle, x4"
    for name, why in plan.kept.items():
        if "model output" in why:
            assert not plan.layers[name].pruned
    assert model(*ex.values()).shape == reference(*ex.values()).shape


def test_pixelshuffle_blocks_stay_aligned() -> None:
    """Zero the producer filters of post-shuffle channels 0 and 2: block pruning at 0.5 must drop
    exactly those (lowest L1) and leave the output bit-identical; a misaligned cut would not."""
    from worker.engine.shuffle import prune_shuffle_producers

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1),
        nn.Conv2d(8, 16, 3, 1, 1),
        nn.PixelShuffle(2),
        nn.PReLU(4),
        nn.Conv2d(4, 3, 3, 1, 1),
    ).eval()
    with torch.no_grad():
        for c in (0, 2):
            model[1].weight[c * 4 : c * 4 + 4] = 0
            model[1].bias[c * 4 : c * 4 + 4] = 0
    x = {"x": torch.randn(2, 3, 6, 6)}
    before = model(x["x"]).detach()
    done = prune_shuffle_producers(model, x, {"1": 16}, 0.5)
    assert done == {"1": (16, 8)}
    assert model[3].weight.shape == (2,) and model[4].in_channels == 2
    assert torch.allclose(model(x["x"]), before, atol=1e-6)


def test_reshape_coupled_linear_is_pruned_in_blocks(tiny_onnx: dict[str, Path]) -> None:
    """Linear(16 -> 32*4*4) -> view(32, 4, 4) -> BatchNorm(32): the projection loses whole
    blocks of 16 features, coupled with the BatchNorm and the ConvTranspose after it."""
    model, ex = _load(tiny_onnx["dcgan"])
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(model, ex, spec)
    (linear,) = [n for n, m in prunable_layers(model).items() if isinstance(m, nn.Linear)]
    assert "reshape" in plan.kept[linear] and linear in plan.shuffle
    prune_step(model, ex, make_pruner(model, ex, spec, plan, 0.5), plan, 0.5)
    plan.record_after(model)
    assert plan.layers[linear].channels_after == 16 * 16
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.num_features == 16
    assert model(*ex.values()).shape == (2, 1, 16, 16)


def test_ignore_patterns(tiny_onnx: dict[str, Path]) -> None:
    model, ex = _load(tiny_onnx["resnet"])
    plan = plan_channel_pruning(model, ex, PruneSpec(ratio=0.5, ignore=["*7*"]))
    assert any("ignore pattern" in r for r in plan.kept.values())


def test_global_ranking_runs(tiny_onnx: dict[str, Path]) -> None:
    model, ex = _load(tiny_onnx["sr"])
    spec = PruneSpec(ratio=0.3, global_ranking=True)
    plan = plan_channel_pruning(model, ex, spec)
    before = count_macs(model, _one(ex))
    make_pruner(model, ex, spec, plan, 0.3).step()
    assert count_macs(model, _one(ex)) < before


def test_target_macs_within_five_percent(tiny_onnx: dict[str, Path]) -> None:
    """The bisection finds a ratio whose MACs are within 5% of a reachable target (channel
    counts are discrete: the target is what some ratio gives, shifted by 2%)."""
    model, ex = _load(tiny_onnx["resnet"])
    spec = PruneSpec(ratio=None, target_macs=1)
    plan = plan_channel_pruning(model, ex, spec)
    probe = copy.deepcopy(model)
    make_pruner(probe, ex, spec, plan, 0.3).step()
    target = int(count_macs(probe, _one(ex)) * 1.02)
    ratio, _ = ratio_for_target_macs(model, ex, spec, plan, target)
    make_pruner(model, ex, spec, plan, ratio).step()
    got = count_macs(model, _one(ex))
    assert abs(got - target) <= 0.05 * target, (got, target)


def test_target_macs_out_of_reach(tiny_onnx: dict[str, Path]) -> None:
    model, ex = _load(tiny_onnx["resnet"])
    spec = PruneSpec(ratio=None, target_macs=10)
    plan = plan_channel_pruning(model, ex, spec)
    with pytest.raises(PruningError, match="out of reach"):
        ratio_for_target_macs(model, ex, spec, plan, 10)


def test_count_macs_conv_transpose_by_hand() -> None:
    """ConvTranspose2d(8->4, k4, s2): each input pixel scatters a k*k*Cout patch per Cin."""
    layer = nn.ConvTranspose2d(8, 4, 4, 2, 1)
    x = torch.randn(1, 8, 5, 5)
    assert count_macs(layer, {"x": x}) == 8 * 5 * 5 * 4 * 4 * 4


@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_unstructured_masks_reach_sparsity(sparsity: float, tiny_onnx: dict[str, Path]) -> None:
    model, ex = _load(tiny_onnx["resnet"])
    masks = magnitude_masks(model, sparsity)
    apply_masks(model, masks)
    assert abs(sparsity_of(model) - sparsity) < 0.01
    assert model(*ex.values()).shape == (2, 3, 16, 16)


def test_blocks_found_scored_and_removed(tiny_onnx: dict[str, Path]) -> None:
    model, ex = _load(tiny_onnx["resnet"])
    found = blocks.find_blocks(model)
    assert len(found) == 2 and all(len(b.layers) == 2 for b in found)
    blocks.score_blocks(model, found, ex)
    assert all(b.importance > 0 for b in found)
    chosen = blocks.choose_blocks(found, ratio=0.5, count=None)
    assert len(chosen) == 1 and chosen[0].importance == min(b.importance for b in found)
    before = count_macs(model, _one(ex))
    n_layers = len(prunable_layers(model))
    blocks.remove_blocks(model, [chosen[0].add])
    assert len(prunable_layers(model)) == n_layers - 2
    assert count_macs(model, _one(ex)) < before
    assert model(*ex.values()).shape == (2, 3, 16, 16)


def test_sr_long_skip_is_not_a_block(tiny_onnx: dict[str, Path]) -> None:
    """Only innermost blocks: the long skip around the whole body must not be offered."""
    model, _ = _load(tiny_onnx["sr"])
    found = blocks.find_blocks(model)
    assert len(found) == 2


def test_no_blocks_is_a_clear_error(tiny_onnx: dict[str, Path]) -> None:
    model, _ = _load(tiny_onnx["dcgan"])
    with pytest.raises(PruningError, match="no removable residual block"):
        blocks.choose_blocks(blocks.find_blocks(model), 0.5, None)


class ShuffleToOutput(nn.Module):
    """SRVGGNetCompact's tail (Real-ESRGAN animevideo): conv -> PixelShuffle(2) + nearest-upsampled
    input is the output, so the last conv's channels are the output's."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16), nn.Conv2d(16, 12, 3, padding=1)
        )
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.body(x)) + nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


def test_a_pixelshuffle_producer_of_the_output_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "sr.onnx"
    torch.manual_seed(0)
    torch.onnx.export(
        ShuffleToOutput().eval(), (torch.randn(1, 3, 8, 8),), str(path), input_names=["image"],
        output_names=["out"], dynamic_axes={"image": {0: "N"}, "out": {0: "N"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    model, ex = _load(path)
    plan = plan_channel_pruning(model, ex, PruneSpec(ratio=0.5))
    (last,) = [n for n, m in prunable_layers(model).items() if m.out_channels == 12]
    assert last not in plan.shuffle and "model output" in plan.kept[last]
    student = copy.deepcopy(model)
    prune_step(student, ex, make_pruner(student, ex, PruneSpec(ratio=0.5), plan, 0.5), plan, 0.5)
    assert student(*ex.values()).shape == model(*ex.values()).shape
    assert student.get_submodule(last).in_channels == 8  # the body around it was pruned


@pytest.mark.parametrize(
    ("channels", "ratio", "multiple", "kept"),
    [
        (64, 0.3, 8, 48),
        (64, 0.5, 8, 32),
        (64, 0.3, 16, 48),
        (48, 0.9, 8, 8),
        (12, 0.5, 8, 6),
        (64, 0.3, 1, 45),
        (32, 0.375, 8, 24),  # a half rounds up, not to even (0.5 keeps 16)
    ],
)
def test_rounded_ratio_keeps_the_nearest_multiple(
    channels: int, ratio: float, multiple: int, kept: int
) -> None:
    """Torch-Pruning keeps int(channels * (1 - ratio)); the rounded ratio makes that the nearest
    multiple (at least one); a layer under two multiples wide keeps what the ratio says."""
    r = rounded_ratio(channels, ratio, multiple)
    assert int(channels * (1 - r)) == kept


def test_round_to_makes_every_pruned_width_a_multiple(tiny_onnx: dict[str, Path]) -> None:
    """Uniform 0.3 on the tiny SR model (16- and 32-channel convolutions): with round_to 8 every
    pruned layer keeps a multiple of 8 (but the PixelShuffle producer, pruned in whole r*r blocks of
    its own); with round_to 1 some do not."""
    widths = {}
    for multiple in (1, 8):
        model, ex = _load(tiny_onnx["sr"])
        spec = PruneSpec(ratio=0.3, round_to=multiple)
        plan = plan_channel_pruning(model, ex, spec)
        before = {n: out_channels(model.get_submodule(n)) for n in prunable_layers(model)}
        prune_step(model, ex, make_pruner(model, ex, spec, plan, 0.3), plan, 0.3)
        after = {n: out_channels(model.get_submodule(n)) for n in before}
        widths[multiple] = {
            n: c for n, c in after.items() if c != before[n] and before[n] >= 16 and n not in plan.shuffle
        }
    assert widths[8] and all(c % 8 == 0 for c in widths[8].values()), {
        n: c for n, c in widths[8].items() if c % 8
    }
    assert any(c % 8 for c in widths[1].values())
