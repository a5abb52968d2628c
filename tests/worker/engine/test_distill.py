"""Distillation: every loss trains the student toward the teacher; budget, masks, cancel."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.engine.distill import LOSSES, FeatureTaps, distill, get_loss, heldout_score
from worker.engine.importers import import_model
from worker.engine.prune import apply_masks, magnitude_masks, make_pruner, plan_channel_pruning
from worker.engine.sampling import InputSampler, example_batch
from worker.errors import BadSpecError, CanceledError
from worker.spec import DistillSpec, LossName, PruneSpec


def _pruned(path: Path, calib: dict[str, np.ndarray] | None = None):
    im = import_model(path, None)
    teacher = copy.deepcopy(im.module)
    student = im.module
    ex = example_batch(im.inputs, 2, 0)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(student, ex, spec)
    make_pruner(student, ex, spec, plan, 0.5).step()
    return teacher, student, InputSampler(im.inputs, calib, seed=0)


@pytest.fixture
def calib() -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {"image": np.tanh(g.normal(size=(24, 3, 20, 20))).astype(np.float32)}


def test_every_loss_has_an_implementation() -> None:
    assert set(LOSSES) == set(LossName)
    with pytest.raises(BadSpecError, match="valid: l1"):
        get_loss("perceptual")


@pytest.mark.parametrize("loss", list(LossName))
def test_each_loss_improves_heldout_fidelity(
    loss: LossName, tiny_onnx: dict[str, Path], calib: dict[str, np.ndarray]
) -> None:
    teacher, student, sampler = _pruned(tiny_onnx["resnet"], calib)
    weights = {loss: 1.0} if loss != LossName.FEATURE else {LossName.FEATURE: 1.0, LossName.L1: 0.1}
    spec = DistillSpec(steps=40, budget_seconds=60, losses=weights, lr=3e-3, batch_size=4)
    res = distill(teacher, student, sampler, spec, data_range=2.0, eval_every=10)
    first = res.curve[0]["heldout_score"]
    assert res.best_score > first, f"{loss}: held-out score {first:.4f} -> {res.best_score:.4f}"
    # the student keeps the best weights seen
    with torch.no_grad():
        t_out = teacher(*sampler.heldout(16).values())
    assert heldout_score(student, sampler.heldout(16), t_out, 2.0) == pytest.approx(res.best_score, abs=1e-5)


def test_budget_seconds_stops_first(tiny_onnx: dict[str, Path]) -> None:
    teacher, student, sampler = _pruned(tiny_onnx["dcgan"])
    res = distill(teacher, student, sampler, DistillSpec(steps=100_000, budget_seconds=1.0), data_range=2.0)
    assert res.stopped_by == "budget_seconds"
    assert res.seconds < 5.0 and 0 < res.steps < 100_000
    # the last weights are scored even when the budget ends between two evaluations
    assert res.curve[-1]["step"] == res.steps


def test_eval_seconds_times_the_learning_curve(tiny_onnx: dict[str, Path]) -> None:
    """A search candidate's short run: with eval_seconds the curve has a point about every that
    many seconds, far more than every 50 steps would give on a slow model."""
    teacher, student, sampler = _pruned(tiny_onnx["dcgan"])
    spec = DistillSpec(steps=100_000, budget_seconds=1.5)
    res = distill(teacher, student, sampler, spec, data_range=2.0, eval_every=100_000, eval_seconds=0.25)
    timed = [p["seconds"] for p in res.curve[1:]]
    assert len(timed) >= 4
    # (the last point is the score at the budget's end, however soon after the one before)
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(timed[:-1]))


def test_masks_keep_pruned_weights_zero(tiny_onnx: dict[str, Path], calib: dict[str, np.ndarray]) -> None:
    im = import_model(tiny_onnx["resnet"], None)
    teacher, student = copy.deepcopy(im.module), im.module
    masks = magnitude_masks(student, 0.6)
    apply_masks(student, masks)
    distill(
        teacher,
        student,
        InputSampler(im.inputs, calib),
        DistillSpec(steps=10, budget_seconds=30),
        data_range=2.0,
        masks=masks,
    )
    for name, mask in masks.items():
        assert (student.get_submodule(name).weight[~mask] == 0).all()


def test_cancel_is_cooperative(tiny_onnx: dict[str, Path]) -> None:
    teacher, student, sampler = _pruned(tiny_onnx["dcgan"])
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(CanceledError):
        distill(
            teacher,
            student,
            sampler,
            DistillSpec(steps=1000, budget_seconds=60),
            data_range=2.0,
            should_stop=stop,
        )


def test_feature_taps_adapt_pruned_channels(tiny_onnx: dict[str, Path], calib: dict[str, np.ndarray]) -> None:
    teacher, student, sampler = _pruned(tiny_onnx["resnet"], calib)
    taps = FeatureTaps(teacher, student)
    assert taps.names
    b = sampler.train_batch(2)
    teacher(*b.values())
    student(*b.values())
    pairs = taps.pairs()
    assert pairs and all(a.shape == t.shape for a, t in pairs)
    taps.close()


def test_progress_reports_loss_and_eta(tiny_onnx: dict[str, Path]) -> None:
    teacher, student, sampler = _pruned(tiny_onnx["dcgan"])
    seen = []
    distill(
        teacher,
        student,
        sampler,
        DistillSpec(steps=5, budget_seconds=30),
        data_range=2.0,
        progress=seen.append,
    )
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 and p.loss is not None and p.eta_seconds is not None for p in seen)
