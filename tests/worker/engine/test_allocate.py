"""Sensitivity allocation: per-layer ratios for a MAC budget, least output distortion first."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.engine import allocate as A
from worker.engine.importers import import_model
from worker.engine.pipeline import run_pipeline
from worker.engine.prunable import prunable_layers
from worker.engine.prune import (
    count_macs,
    macs_at_ratio,
    make_pruner,
    out_channels,
    plan_channel_pruning,
    prune_step,
)
from worker.engine.sampling import example_batch
from worker.errors import CanceledError, PruningError
from worker.spec import CompressionSpec, PruneSpec


def _load(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    im = import_model(path, None)
    return im.module, example_batch(im.inputs, batch=2, seed=0), example_batch(im.inputs, batch=16, seed=1)


def _one(example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v[:1] for k, v in example.items()}


def _mse(model: nn.Module, reference: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return float((model(*batch.values()) - reference(*batch.values())).pow(2).mean())


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("family", ["dcgan", "resnet", "sr", "style"])
def test_allocation_meets_the_uniform_budget_with_less_distortion(
    family: str, round_to: int, tiny_onnx: dict[str, Path]
) -> None:
    """At the MACs uniform 0.5 leaves, the allocated model has at most those MACs (+1%) and no
    more output distortion than the uniform one; the ratios are not all equal. With kept channels
    rounded to multiples of 8 the tiny models' levels are coarse (a 16-channel layer has three),
    so the allocation may land well under the budget but never over it."""
    model, ex, batch = _load(tiny_onnx[family])
    spec = PruneSpec(ratio=0.5, round_to=round_to)
    plan = plan_channel_pruning(model, ex, spec)
    uniform = copy.deepcopy(model)
    prune_step(uniform, ex, make_pruner(uniform, ex, spec, plan, 0.5), plan, 0.5)
    budget = count_macs(uniform, _one(ex))
    assert macs_at_ratio(model, ex, spec, plan, 0.5) == budget

    alloc = A.allocate(model, ex, batch, spec, plan, budget)
    student = copy.deepcopy(model)
    pruner = make_pruner(student, ex, spec, plan, 0.0, layer_ratios=alloc.layer_ratios())
    prune_step(student, ex, pruner, plan, alloc.site_ratios())
    got = count_macs(student, _one(ex))
    assert got == alloc.macs <= budget * 1.01
    if round_to == 1:  # rounded, it may keep fewer MACs than uniform, so it may distort more
        assert got >= budget * 0.7  # the last step is trimmed to the least level that suffices
        assert _mse(student, model, batch) <= _mse(uniform, model, batch)
    assert student(*ex.values()).shape == model(*ex.values()).shape
    assert {u.name for u in alloc.units} == set(alloc.ratios)
    assert all(0.0 <= r <= max(A.LEVELS) for r in alloc.ratios.values())


def test_units_are_dependency_groups(tiny_onnx: dict[str, Path]) -> None:
    """The residual trunk of the ResNet is one unit (its convs share channels through the adds);
    the PixelShuffle producer of the SR model is a block-site unit."""
    model, ex, _ = _load(tiny_onnx["resnet"])
    plan = plan_channel_pruning(model, ex, PruneSpec(ratio=0.5))
    units = A.find_units(model, ex, PruneSpec(ratio=0.5), plan)
    assert any(len(u.layers) > 1 for u in units)
    names = [n for u in units for n in u.layers]
    assert len(names) == len(set(names))
    sr, ex_sr, _ = _load(tiny_onnx["sr"])
    plan_sr = plan_channel_pruning(sr, ex_sr, PruneSpec(ratio=0.5))
    sites = [u for u in A.find_units(sr, ex_sr, PruneSpec(ratio=0.5), plan_sr) if u.block_site]
    assert [u.name for u in sites] == list(plan_sr.shuffle)


def test_greedy_prefers_the_cheaper_distortion_per_mac() -> None:
    a = A.Unit("a", ["a"], False, {0.25: 1.0, 0.5: 4.0}, {0.25: 100, 0.5: 200})
    b = A.Unit("b", ["b"], False, {0.25: 0.1, 0.5: 5.0}, {0.25: 100, 0.5: 200})
    levels = {"a": 0.0, "b": 0.0}
    assert A._greedy_step([a, b], levels) and levels == {"a": 0.0, "b": 0.25}
    assert A._greedy_step([a, b], levels) and levels == {"a": 0.25, "b": 0.25}
    assert A._greedy_step([a, b], levels) and levels == {"a": 0.5, "b": 0.25}  # 3/100 < 4.9/100
    assert A._greedy_step([a, b], levels) and levels == {"a": 0.5, "b": 0.5}
    assert not A._greedy_step([a, b], levels)


def test_per_site_ratios_for_pixelshuffle_producers() -> None:
    """Two PixelShuffle producers, each pruned to its own ratio in aligned blocks."""
    from worker.engine.shuffle import prune_shuffle_producers

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1),
        nn.PixelShuffle(2),
        nn.Conv2d(8, 32, 3, 1, 1),
        nn.PixelShuffle(2),
        nn.Conv2d(8, 3, 3, 1, 1),
    ).eval()
    x = {"x": torch.randn(1, 3, 4, 4)}
    done = prune_shuffle_producers(model, x, {"0": 32, "2": 32}, {"0": 0.25, "2": 0.75})
    assert done == {"0": (32, 24), "2": (32, 8)}
    assert model(x["x"]).shape == (1, 3, 16, 16)


def test_ignore_pattern_keeps_a_block_site_whole(tiny_onnx: dict[str, Path]) -> None:
    """A user's ignore pattern wins over the Linear -> reshape block handling."""
    model, ex, _ = _load(tiny_onnx["dcgan"])
    (linear,) = [n for n, m in prunable_layers(model).items() if isinstance(m, nn.Linear)]
    plan = plan_channel_pruning(model, ex, PruneSpec(ratio=0.5, ignore=[linear]))
    assert "ignore pattern" in plan.kept[linear] and linear not in plan.shuffle


def test_pipeline_reports_the_allocation(tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    spec = CompressionSpec.model_validate(
        {"prune": {"ratio": 0.5, "allocation": "sensitivity"}, "distill": {"steps": 3, "budget_seconds": 60}}
    )
    events = []
    r = run_pipeline(tiny_onnx["dcgan"], spec, tmp_path / "out", progress=events.append)
    groups = [e for e in events if e.message and e.message.startswith("sensitivity of layer group")]
    assert groups and groups[-1].total == len(r.prune.allocation.units)
    a = r.prune.allocation
    assert a is not None and r.prune.macs_after == a.macs <= a.target_macs * 1.01
    assert r.prune.ratio_used is None
    from worker.engine.stage_sections import pruning_section

    section = pruning_section(r)
    assert section.allocation == "sensitivity"
    assert any(n.startswith("sensitivity allocation: budget") for n in section.notes)
    assert any(n.startswith("ratio per group:") for n in section.notes)


def test_pipeline_target_macs_with_sensitivity(
    tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    model, ex, _ = _load(tiny_onnx["resnet"])
    base = count_macs(model, _one(ex))
    spec = CompressionSpec.model_validate(
        {
            "prune": {"ratio": None, "target_macs": base // 2, "allocation": "sensitivity"},
            "distill": {"steps": 2, "budget_seconds": 60},
        }
    )
    calib = {"": calib_file}
    r = run_pipeline(tiny_onnx["resnet"], spec, tmp_path / "out", calibration=calib)
    assert r.prune.macs_after <= base // 2 * 1.01
    too_far = spec.model_copy(update={"prune": spec.prune.model_copy(update={"target_macs": 10})})
    with pytest.raises(PruningError, match="out of reach"):
        run_pipeline(tiny_onnx["resnet"], too_far, tmp_path / "out2", calibration=calib)


def test_iterative_rounds_reach_the_allocation(tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    """Two rounds, each pruning half of every group's allocated share, end at the allocation."""
    spec = CompressionSpec.model_validate(
        {"prune": {"ratio": 0.5, "iterative_steps": 2}, "distill": {"steps": 4, "budget_seconds": 60}}
    )
    r = run_pipeline(tiny_onnx["style"], spec, tmp_path / "out")
    a = r.prune.allocation
    assert a is not None and len(r.distill_rounds) == 2
    assert r.prune.macs_after <= a.target_macs * 1.05


def test_allocation_can_be_canceled_between_groups(tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    """The first check follows the import; the next ones come before each layer group's sensitivity
    trials: a stop there ends the job inside the allocation, after group 1."""
    calls: list[int] = []
    events = []

    def stop_in_second_group() -> bool:
        calls.append(1)
        return len(calls) > 2

    spec = CompressionSpec.model_validate(
        {"prune": {"ratio": 0.5}, "distill": {"steps": 3, "budget_seconds": 60}}
    )
    with pytest.raises(CanceledError):
        run_pipeline(
            tiny_onnx["style"], spec, tmp_path / "o", progress=events.append, should_stop=stop_in_second_group
        )
    groups = [e.message for e in events if e.message and e.message.startswith("sensitivity")]
    assert len(groups) == 1 and groups[0].startswith("sensitivity of layer group 1/")


def test_distortion_batch_shrinks_with_image_size() -> None:
    assert A.batch_size_for({"z": torch.zeros(2, 64)}) == A.BATCH
    assert A.batch_size_for({"x": torch.zeros(2, 3, 64, 64)}) == A.BATCH
    assert A.batch_size_for({"x": torch.zeros(2, 3, 128, 128)}) == 4
    assert A.batch_size_for({"x": torch.zeros(2, 3, 512, 512)}) == 2


def test_allocation_gives_up_when_its_trials_cannot_meet_the_deadline(tiny_onnx: dict[str, Path]) -> None:
    import time

    model, ex, batch = _load(tiny_onnx["resnet"])
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(model, ex, spec)
    budget = macs_at_ratio(model, ex, spec, plan, 0.5)
    t0 = time.perf_counter()
    with pytest.raises(A.AllocationTimeout, match="would take about"):
        A.allocate(model, ex, batch, spec, plan, budget, deadline=time.perf_counter() + 1e-3)
    assert time.perf_counter() - t0 < 5.0  # it gives up before the first trial
    with pytest.raises(
        A.AllocationTimeout, match=r"sensitivity trials: 0 of .* before the first"
    ):  # the pace check
        A.measure_units(
            model,
            ex,
            batch,
            spec,
            plan,
            A.find_units(model, ex, spec, plan),
            deadline=time.perf_counter() + 1e-3,
        )


def test_probe_matches_a_fresh_graph_per_layer(tiny_onnx: dict[str, Path]) -> None:
    """The probe copies one dependency graph per trial: the verdicts are those of building a
    fresh graph for every layer (the slow way it replaced)."""
    import torch_pruning as tp

    from worker.engine.prunable import _out_pruning_fn, probe_exclusions
    from worker.engine.rewrite import CUSTOM_PRUNERS

    model, ex, _ = _load(tiny_onnx["style"])
    fast = probe_exclusions(model, ex, set())
    for name, layer in prunable_layers(model).items():
        trial = copy.deepcopy(model)
        target = trial.get_submodule(name)
        try:
            dg = tp.DependencyGraph().build_dependency(
                trial, example_inputs=tuple(ex.values()), customized_pruners=CUSTOM_PRUNERS
            )
            group = dg.get_pruning_group(target, _out_pruning_fn(target), idxs=[0])
            group.prune()
            breaks = trial(*ex.values()).shape != model(*ex.values()).shape
        except Exception:
            breaks = True
        assert (name in fast) == (breaks or layer.weight.shape[0] < 2), name


def test_trials_shrink_their_batch_then_their_levels_to_fit_or_give_up_before_starting() -> None:
    full, coarse = len(A.LEVELS), len(A.COARSE_LEVELS)
    assert coarse < full
    assert A.plan_trials(10, 0.1, 0.01, 16, None) == (16, A.LEVELS)

    def cost(levels: int, b: int) -> float:  # forwards of b inputs per trial, plus a copy per trial
        return 10 * levels * b * 0.01 + (10 * levels + 20) * 0.01

    assert A.plan_trials(10, 0.01, 0.01, 16, cost(full, 16)) == (16, A.LEVELS)
    assert A.plan_trials(10, 0.01, 0.01, 16, cost(full, 4) + 1e-9) == (4, A.LEVELS)
    # not even 4 inputs at every level: every other level, on as many inputs as then fit
    assert A.plan_trials(10, 0.01, 0.01, 16, cost(full, 4) - 1e-3) == (8, A.COARSE_LEVELS)
    assert A.plan_trials(10, 0.01, 0.01, 16, cost(coarse, 2) + 1e-9) == (2, A.COARSE_LEVELS)
    with pytest.raises(A.AllocationTimeout, match="would take about"):
        A.plan_trials(10, 0.01, 0.01, 16, cost(coarse, 2) - 1e-3)


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("family", ["dcgan", "resnet", "sr", "style"])
def test_one_copy_stepped_through_the_levels_equals_a_fresh_copy_per_level(
    family: str, round_to: int, tiny_onnx: dict[str, Path]
) -> None:
    """The trials prune each group in one copy, a step per level: at every level that copy must
    be the fresh copy pruned straight to that level (same channels, same output), rounded to
    ``round_to`` as the fresh copy is. Unrounded trials once made an allocation miss its MAC
    budget by 36%."""
    model, ex, batch = _load(tiny_onnx[family])
    spec = PruneSpec(ratio=0.5, round_to=round_to)
    plan = plan_channel_pruning(model, ex, spec)
    units = [u for u in A.find_units(model, ex, spec, plan) if not u.block_site]
    assert units
    compared, rounded = 0, False
    for u in units:
        width = out_channels(model.get_submodule(u.name))
        for level, stepped in A._unit_trials(model, ex, spec, plan, u):
            kept = out_channels(stepped.get_submodule(u.name))
            rounded |= width is not None and kept != int(width * (1 - level))
            fresh = A.pruned_copy(model, ex, spec, plan, *A.split_ratios([u], {u.name: level}))
            for (n, a), (_, b) in zip(stepped.state_dict().items(), fresh.state_dict().items(), strict=True):
                assert a.shape == b.shape, (u.name, level, n)
                torch.testing.assert_close(a, b, msg=f"{u.name} at {level}: {n}")
            with torch.no_grad():
                torch.testing.assert_close(stepped(*batch.values()), fresh(*batch.values()))
            compared += 1
    assert compared >= len(units) * 2
    assert rounded == (round_to > 1)  # rounding was exercised exactly when asked for


def test_coarse_levels_are_a_subset_and_an_allocation_from_them_meets_the_budget(
    tiny_onnx: dict[str, Path],
) -> None:
    assert set(A.COARSE_LEVELS) < set(A.LEVELS)
    model, ex, batch = _load(tiny_onnx["resnet"])
    spec = PruneSpec(ratio=0.5, round_to=1)
    plan = plan_channel_pruning(model, ex, spec)
    units = A.find_units(model, ex, spec, plan)
    A.measure_units(model, ex, batch, spec, plan, units, levels=A.COARSE_LEVELS)
    assert all(set(u.distortion) <= set(A.COARSE_LEVELS) for u in units)
    prof = A.Profile(
        model,
        ex,
        spec,
        plan,
        units,
        A.macs_cost(ex),
        "MACs",
        count_macs(model, _one(ex)),
        16,
        0.0,
        A.COARSE_LEVELS,
    )
    budget = macs_at_ratio(model, ex, spec, plan, 0.5)
    alloc = prof.allocation(budget)
    assert alloc.levels == A.COARSE_LEVELS
    assert alloc.macs <= budget * 1.01
    assert set(alloc.ratios.values()) <= {0.0, *A.COARSE_LEVELS}
