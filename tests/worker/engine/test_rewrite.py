"""fx rewrites: StyleGAN demodulation and per-channel constants become prunable layers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from worker.engine.importers import import_model
from worker.engine.prune import count_macs, make_pruner, plan_channel_pruning, prune_step
from worker.engine.rewrite import ChannelOp, Demodulation
from worker.engine.sampling import example_batch
from worker.spec import PruneSpec


def test_demodulation_and_bias_become_layers(tiny_onnx: dict[str, Path]) -> None:
    im = import_model(tiny_onnx["style"], None)
    mods = list(im.module.modules())
    assert sum(isinstance(m, Demodulation) for m in mods) == 2
    assert sum(isinstance(m, ChannelOp) for m in mods) >= 2  # the two biases added after demodulation
    assert im.parity_max_abs_diff < 1e-4


def test_modulated_convs_are_pruned_and_stay_tied(tiny_onnx: dict[str, Path]) -> None:
    im = import_model(tiny_onnx["style"], None)
    model, ex = im.module, example_batch(im.inputs, 2, 0)
    one = {k: v[:1] for k, v in ex.items()}
    before = count_macs(model, one)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(model, ex, spec)
    prune_step(model, ex, make_pruner(model, ex, spec, plan, 0.5), plan, 0.5)
    assert count_macs(model, one) < 0.6 * before
    demods = [m for m in model.modules() if isinstance(m, Demodulation)]
    assert any(d.conv.out_channels < 16 for d in demods)
    for d in demods:  # the demodulation reads the pruned conv's weight, shapes agree
        assert d.weight.shape == d.conv.weight.shape[:2]
        s2 = torch.rand(3, d.conv.in_channels)
        ref = s2 @ d.conv.weight.pow(2).sum(dim=(2, 3)).t()
        assert torch.allclose(d(s2), ref)
    # training the conv changes the demodulation with it (the tie survives)
    conv = demods[0].conv
    with torch.no_grad():
        conv.weight.mul_(2.0)
    s2 = torch.rand(1, conv.in_channels)
    assert torch.allclose(demods[0](s2), s2 @ conv.weight.pow(2).sum(dim=(2, 3)).t())
    assert model(*ex.values()).shape == (2, 1, 8, 8)


def test_channel_op_is_trainable_and_exact() -> None:
    op = ChannelOp(torch.tensor([[[[1.0]], [[2.0]]]]), "sub", constant_first=True)
    x = torch.ones(1, 2, 2, 2)
    assert torch.equal(op(x), torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])[None])
    assert isinstance(op.param, nn.Parameter) and op.param.requires_grad
