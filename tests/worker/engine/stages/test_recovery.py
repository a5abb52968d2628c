"""How many inputs recovery refits on, at what size, within its share of the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.engine.stages.bench import bench_for


def test_recovery_inputs_fit_the_time_left_or_recovery_is_skipped(
    tiny_onnx: dict[str, Path], calib_file: Path
) -> None:
    import numpy as np

    from worker.engine.budget import Budget
    from worker.engine.importers import import_model
    from worker.engine.sampling import InputSampler
    from worker.engine.stages.recovery import MIN_RECOVERY_IMAGES, recovery_samples
    from worker.spec import RecoverSpec

    image_model = import_model(tiny_onnx["resnet"], None)
    budget = Budget(120.0, heldout_forward_seconds=1.0, heldout_size=10)  # 0.1 s per input
    cal = np.load(calib_file)[:, :, :16, :16]
    b = bench_for(image_model, InputSampler(image_model.inputs, {"image": cal}), budget)
    spec = RecoverSpec()
    assert recovery_samples(b, spec, seconds=100.0) == 32
    assert recovery_samples(b, spec, seconds=3 * 0.1 * 20) == 20
    assert recovery_samples(b, spec, seconds=3 * 0.1 * (MIN_RECOVERY_IMAGES - 1)) == 0
    assert recovery_samples(b, RecoverSpec(samples=5), seconds=0.0) == 5  # the user's choice stands


def test_recovery_runs_on_crops_when_full_size_inputs_do_not_fit(tiny_onnx: dict[str, Path]) -> None:
    """A fully convolutional model whose full-size images do not fit recovery's time gets the same
    32 images as smaller crops; a model that does not follow the input size gets nothing."""
    import dataclasses

    import numpy as np

    from worker.engine.budget import Budget
    from worker.engine.importers import import_model
    from worker.engine.sampling import InputSampler
    from worker.engine.stages.recovery import RECOVERY_IMAGES, recovery_patch
    from worker.engine.stages.training import MIN_PATCH
    from worker.spec import Distribution, InputSpec

    imported = import_model(tiny_onnx["resnet"], None)  # fully convolutional
    (name,) = imported.inputs
    big = InputSpec(shape=[1, 3, 128, 128], distribution=Distribution.CALIBRATION)
    imported = dataclasses.replace(imported, inputs={name: big})
    cal = np.tanh(np.random.default_rng(0).normal(size=(20, 3, 128, 128))).astype(np.float32)
    budget = Budget(120.0, heldout_forward_seconds=1.0, heldout_size=10)  # 0.1 s per full-size image
    b = bench_for(imported, InputSampler(imported.inputs, {name: cal}), budget)
    # 8 full-size images fit: 32 crops of side 128 * sqrt(8 / 32) = 64 cost the same
    assert recovery_patch(b, seconds=3 * 0.1 * 8) == (RECOVERY_IMAGES, 64)
    # 1 fits: crops would be 32 px at most; at the smallest side 16 of them fit
    n, side = recovery_patch(b, seconds=3 * 0.1 * 1)
    assert side == MIN_PATCH and n == 16
    assert recovery_patch(b, seconds=3 * 0.1 * 0.5) == (0, None)
    assert recovery_patch(b, seconds=-1.0) == (0, None)  # its share was already spent
    latent = import_model(tiny_onnx["dcgan"], None)  # not an image model
    assert recovery_patch(bench_for(latent, InputSampler(latent.inputs, {}), budget), seconds=0.3) == (
        0,
        None,
    )


def test_the_export_check_catches_a_student_onnx_runtime_does_not_reproduce() -> None:
    import torch
    from torch import nn

    from worker.engine.stages.recovery import exports_faithfully

    class Baked(nn.Module):  # what ONNX Runtime computes differs from torch off the traced input
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x) + float(x.mean())

    heldout = {
        "x": torch.cat([torch.randn(2, 3, 8, 8) + 5.0, torch.randn(2, 3, 8, 8)])
    }  # traced on the first 2
    assert not exports_faithfully(Baked().eval(), heldout)
    assert exports_faithfully(nn.Conv2d(3, 3, 3, padding=1).eval(), heldout)


def test_refits_that_blow_up_deep_layers_are_cut_back_to_the_prefix_that_helps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refit whose deeper layers make held-out outputs worse keeps only the refits of the first
    layers (those that help); one that only hurts is undone."""
    import copy

    import torch
    from torch import nn

    from worker.engine import recover
    from worker.engine.budget import Budget
    from worker.engine.stages import recovery as RS
    from worker.engine.stages.setup import Workbench, forward

    torch.manual_seed(0)
    teacher = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(4)]).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.mul_(0.5)  # "pruning" damage in the first layer
    heldout = {"x": torch.randn(4, 4, 8, 8)}
    bench = Workbench(
        imported=None,  # type: ignore[arg-type]
        teacher=teacher,
        student=student,
        sampler=None,  # type: ignore[arg-type]
        heldout=heldout,
        teacher_heldout=forward(teacher, heldout),
        data_range=2.0,
        example=heldout,
        small=heldout,
        budget=Budget(60.0),
        emit=lambda p: None,
        stop=lambda: False,
    )

    def fake_recover(teacher: nn.Module, s: nn.Module, *a: object, **k: object) -> recover.RecoveryResult:
        with torch.no_grad():
            s[0].weight.copy_(teacher[0].weight)  # a perfect repair of the first layer...
            s[3].weight.mul_(50.0)  # ...and a deep layer whose refit explodes
        return recover.RecoveryResult(refitted=["0", "1", "2", "3"])

    monkeypatch.setattr(recover, "recover", fake_recover)
    monkeypatch.setattr(RS, "exports_faithfully", lambda *a: True)
    out = RS.refit_or_undo(bench, {}, heldout, deadline=float("inf"))
    assert out.kept and out.layers_kept in (1, 2, 3)
    assert torch.equal(student[0].weight, teacher[0].weight)  # the helpful refit stayed
    assert torch.equal(student[3].weight, teacher[3].weight)  # the exploding one is back to pruned
    assert out.mse_after < out.mse_before < out.full_refit_mse

    with torch.no_grad():
        student[0].weight.mul_(0.5)

    def only_harm(teacher: nn.Module, s: nn.Module, *a: object, **k: object) -> recover.RecoveryResult:
        with torch.no_grad():
            s[0].weight.mul_(-3.0)
        return recover.RecoveryResult(refitted=["0"])

    damaged = copy.deepcopy(student.state_dict())
    monkeypatch.setattr(recover, "recover", only_harm)
    out = RS.refit_or_undo(bench, {}, heldout, deadline=float("inf"))
    assert not out.kept and out.layers_kept == 0
    assert all(torch.equal(v, damaged[k]) for k, v in student.state_dict().items())


def test_the_refit_cost_counts_each_layers_gram_at_this_machines_pace(
    tiny_onnx: dict[str, Path], calib_file: Path
) -> None:
    """rows x D^2 multiply-adds per layer at the teacher's measured MACs per second, plus three
    forwards per input; rows are what the layer's outputs hold, at most ``rows_for``."""
    import numpy as np

    from worker.engine import prune, recover
    from worker.engine.budget import Budget
    from worker.engine.importers import import_model
    from worker.engine.result import PruneOutcome
    from worker.engine.sampling import InputSampler
    from worker.engine.stages.recovery import refit_seconds
    from worker.spec import PruneMethod

    imported = import_model(tiny_onnx["resnet"], None)
    budget = Budget(120.0, heldout_forward_seconds=1.0, heldout_size=10)  # 0.1 s per input
    cal = np.load(calib_file)[:, :, :16, :16]
    b = bench_for(imported, InputSampler(imported.inputs, {"image": cal}), budget)
    macs = prune.count_macs(b.student, {k: v[:1] for k, v in b.example.items()})
    pruned = PruneOutcome(PruneMethod.CHANNEL, 0.5, 0.5, macs, macs)
    work = 0.0
    for layer in recover.refittable_layers(b.student).values():
        out_hw = 16 * 16 // (int(layer.stride[0]) ** 2) if hasattr(layer, "stride") else 16 * 16
        d = recover.conv_form_weight(layer).shape[1]
        work += min(recover.rows_for(layer), 32 * out_hw) * d**2
    expected = 3 * 32 * 0.1 + work / (macs / 0.1)
    got = refit_seconds(b, pruned, 32, None)
    assert got > 3 * 32 * 0.1
    assert abs(got - expected) <= 0.35 * expected  # strided / transposed layers' sizes are approximated here
    assert refit_seconds(b, pruned, 32, 8) < got  # crops: fewer pixels, fewer rows


def test_recovery_is_skipped_when_the_whole_refit_would_not_fit_its_share(
    tiny_onnx: dict[str, Path], calib_file: Path
) -> None:
    import numpy as np

    from worker.engine import prune
    from worker.engine.budget import Budget
    from worker.engine.importers import import_model
    from worker.engine.result import PruneOutcome
    from worker.engine.sampling import InputSampler
    from worker.engine.stages.recovery import least_squares, refit_seconds
    from worker.spec import PruneMethod, RecoverSpec

    imported = import_model(tiny_onnx["resnet"], None)
    budget = Budget(120.0, heldout_forward_seconds=1.0, heldout_size=10)
    cal = np.load(calib_file)[:, :, :16, :16]
    b = bench_for(imported, InputSampler(imported.inputs, {"image": cal}), budget)
    macs = prune.count_macs(b.student, {k: v[:1] for k, v in b.example.items()})
    # a machine whose MAC rate is 10^4 times slower than the forwards say: the Gram matrices dominate
    pruned = PruneOutcome(PruneMethod.CHANNEL, 0.5, 0.5, macs // 10_000, macs // 10_000)
    need = refit_seconds(b, pruned, 32, None)
    assert need > 3 * 32 * 0.1 * 2
    import time

    outcome, note = least_squares(b, RecoverSpec(), pruned, deadline=time.perf_counter() + need / 2)
    assert outcome is None and note is not None
    assert note.startswith("skipped: refitting every layer would take about") and "cut short" in note
