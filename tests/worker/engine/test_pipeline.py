"""The pipeline over every pruning method on a tiny image-to-image generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from worker.engine.pipeline import run_pipeline
from worker.spec import CompressionSpec, PruneMethod


@pytest.mark.parametrize("method", list(PruneMethod))
def test_every_method_runs_and_exports(
    method: PruneMethod, tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    calib = calib_file
    spec = CompressionSpec.model_validate(
        {"prune": {"method": method.value, "ratio": 0.5}, "distill": {"steps": 10, "budget_seconds": 60}}
    )
    r = run_pipeline(tiny_onnx["resnet"], spec, tmp_path / "out", calibration={"": calib})
    sess = ort.InferenceSession(str(r.student_onnx), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": np.zeros((2, 3, 16, 16), np.float32)})
    assert out.shape == (2, 3, 16, 16)
    if method == PruneMethod.UNSTRUCTURED:
        assert r.prune.sparsity == pytest.approx(0.5, abs=0.01)
        assert r.prune.macs_after == r.prune.macs_before  # zeros are still multiplied
    else:
        assert r.prune.macs_after < r.prune.macs_before
    if method == PruneMethod.BLOCK:
        assert len(r.prune.removed_blocks) == 1 and len(r.prune.candidate_blocks) == 2
    # the student keeps the best weights distillation saw (its own held-out score), not the last ones
    best = r.distill_rounds[-1]
    assert best.steps > 0 and r.score_after_distill == pytest.approx(best.best_score, abs=1e-6)


def test_iterative_rounds_alternate_with_distillation(tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    spec = CompressionSpec.model_validate(
        {
            "prune": {"ratio": 0.5, "iterative_steps": 3, "allocation": "uniform"},
            "distill": {"steps": 9, "budget_seconds": 60},
        }
    )
    r = run_pipeline(tiny_onnx["dcgan"], spec, tmp_path / "out")
    assert len(r.distill_rounds) == 3 and sum(x.steps for x in r.distill_rounds) == 9
    recs = [x for x in r.prune.plan.layers.values() if x.pruned]
    assert recs and all(x.channels_after == x.channels_before // 2 for x in recs)


@pytest.mark.parametrize("augment", ["flip", "mix"])
def test_report_says_how_training_images_were_varied(
    augment: str, tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    from worker.engine.assemble import distillation_section

    calib = calib_file
    spec = CompressionSpec.model_validate(
        {"prune": {"ratio": 0.5}, "distill": {"steps": 2, "budget_seconds": 60, "augment": augment}}
    )
    r = run_pipeline(tiny_onnx["resnet"], spec, tmp_path / "out", calibration={"": calib})
    (note,) = [n for n in distillation_section(r, "ssim").notes if n.startswith("training images")]
    assert ("blended" in note) == (augment == "mix")


@pytest.mark.parametrize("family", ["resnet", "sr", "dcgan"])
def test_recovery_repairs_pruning_before_any_gradient_step(
    family: str, tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    spec = CompressionSpec.model_validate(
        {"prune": {"ratio": 0.5, "allocation": "uniform"}, "distill": {"steps": 0, "budget_seconds": 60}}
    )
    calibration = {"": calib_file} if family != "dcgan" else None
    r = run_pipeline(tiny_onnx[family], spec, tmp_path / "out", calibration=calibration)
    assert r.recovery is not None and r.recovery.kept
    res = r.recovery.result
    assert res.refitted and res.error_after < res.error_before
    assert r.recovery.score_after > r.recovery.score_before == pytest.approx(r.score_after_prune)
    assert r.recovery.mse_after < r.recovery.mse_before
    assert r.score_after_distill == pytest.approx(r.recovery.score_after, abs=1e-6)  # no steps ran
    assert "recover" in r.seconds


def test_recovery_none_starts_distillation_from_the_pruned_weights(
    tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    spec = CompressionSpec.model_validate(
        {
            "prune": {"ratio": 0.5},
            "recover": {"method": "none"},
            "distill": {"steps": 0, "budget_seconds": 60},
        }
    )
    r = run_pipeline(tiny_onnx["resnet"], spec, tmp_path / "out", calibration={"": calib_file})
    assert r.recovery is None and "recover" not in r.seconds
    assert r.score_after_distill == pytest.approx(r.score_after_prune, abs=1e-6)


def test_the_budget_bounds_the_whole_job(
    tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    import time

    from worker.engine.pipeline import compress

    budget = 20.0  # fixed costs (imports, conversion, latency rounds) take about 10 s of it here
    spec = CompressionSpec.model_validate({"prune": {"ratio": 0.5}, "distill": {"budget_seconds": budget}})
    t0 = time.perf_counter()
    report = compress(tiny_onnx["resnet"], spec, tmp_path / "out", calibration={"": calib_file})
    elapsed = time.perf_counter() - t0
    assert elapsed <= 1.15 * budget + 5.0  # the bound is + 20 s
    timing = report["timing"]
    assert list(timing["stages"]) == [
        "import", "prune", "recover", "distill", "export", "measure", "quality", "report"
    ]  # fmt: skip
    assert timing["budget_seconds"] == budget and timing["total_seconds"] <= elapsed
    assert report["distillation"]["stopped_by"] == "budget_seconds"  # distillation took what was left
    assert report["distillation"]["steps"] > 0


def test_a_short_budget_falls_back_to_uniform_allocation(
    tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    # 3 s cannot hold the sensitivity trials next to the finish reserve: uniform, said in the notes
    spec = CompressionSpec.model_validate({"prune": {"ratio": 0.5}, "distill": {"budget_seconds": 3}})
    r = run_pipeline(tiny_onnx["resnet"], spec, tmp_path / "out", calibration={"": calib_file})
    assert r.prune.allocation is None
    assert any(n.startswith("sensitivity allocation skipped") for n in r.prune.notes)
    assert r.prune.macs_after < r.prune.macs_before


def test_progress_eta_is_the_whole_jobs() -> None:
    from worker.engine.budget import Budget
    from worker.engine.pipeline import with_job_eta
    from worker.spec import Progress, Stage

    seen: list[Progress] = []
    budget = Budget(100.0)
    emit = with_job_eta(seen.append, budget)
    emit(Progress(stage=Stage.PRUNE))
    assert 99.0 < seen[-1].eta_seconds <= 100.0  # distillation fills the budget: the job ends there
    emit(Progress(stage=Stage.DISTILL, step=5, total=10, eta_seconds=4.0))  # the step limit comes first
    assert seen[-1].eta_seconds == pytest.approx(4.0 + budget.finish_reserve(), abs=0.1)
    emit(Progress(stage=Stage.DISTILL, step=5, total=10, eta_seconds=500.0))
    assert seen[-1].eta_seconds <= 100.0
    emit(Progress(stage=Stage.MEASURE))
    assert seen[-1].eta_seconds == pytest.approx(budget.finish_reserve(), abs=0.1)
    emit(Progress(stage=Stage.DONE))
    assert seen[-1].eta_seconds == 0.0


def _bench(imported: object, sampler: object, budget: object = None) -> object:
    """A workbench around ``imported`` for the stage functions that need only part of it."""
    from worker.engine.budget import Budget
    from worker.engine.stages.setup import Workbench, forward

    teacher = imported.module.eval()  # type: ignore[attr-defined]
    heldout = sampler.heldout(2)  # type: ignore[attr-defined]
    example = sampler.train_batch(2)  # type: ignore[attr-defined]
    return Workbench(
        imported=imported,  # type: ignore[arg-type]
        teacher=teacher,
        student=teacher,
        sampler=sampler,  # type: ignore[arg-type]
        heldout=heldout,
        teacher_heldout=forward(teacher, heldout),
        data_range=2.0,
        example=example,
        small=example,
        budget=budget or Budget(60.0),  # type: ignore[arg-type]
        emit=lambda p: None,
        stop=lambda: False,
    )


def test_patches_only_for_models_that_follow_the_input_size(
    tiny_onnx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from tests.worker.engine import wild
    from worker.engine.importers import import_model
    from worker.engine.sampling import InputSampler
    from worker.engine.stages import training
    from worker.engine.stages.training import choose_patch

    def bench_for(imported: object, side: int) -> object:
        images = np.tanh(np.random.default_rng(0).normal(size=(12, 3, side, side))).astype(np.float32)
        return _bench(imported, InputSampler(imported.inputs, {"image": images}, seed=0))  # type: ignore[attr-defined]

    conv = import_model(tiny_onnx["resnet"], None)  # fully convolutional, 16x16
    b = bench_for(conv, 16)
    assert choose_patch(b, None) == (None, None)  # auto: half of 16 is below 32
    patch, note = choose_patch(b, 8)
    assert patch == 8 and note is not None and "8x8 crops" in note
    assert choose_patch(b, 0) == (None, None)
    monkeypatch.setattr(training, "MIN_PATCH", 8)  # the automatic choice, as for a 64x64 model
    assert choose_patch(b, None, full_size_steps=10_000) == (None, None)  # many steps
    patch, note = choose_patch(b, None, full_size_steps=50)  # few steps: patches
    assert patch == 8 and "about 50 full-size steps" in str(note)
    s = b.sampler  # type: ignore[attr-defined]
    s.patch = 8
    assert s.train_batch(3)["image"].shape == (3, 3, 8, 8)
    assert s.heldout(2)["image"].shape == (2, 3, 16, 16)  # held-out stays at the full size

    attn = import_model(wild.export_onnx("attention", tmp_path / "attn.onnx"), None)  # x.view(C, H*W)
    side = attn.inputs["image"].shape[2]
    patch, note = choose_patch(bench_for(attn, side), side // 2)
    assert patch is None and note is not None and note.startswith("trained at the full input size")


def test_structure_passes_run_on_a_small_crop_where_the_model_allows(
    tiny_onnx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from tests.worker.engine import wild
    from worker.engine.importers import import_model
    from worker.engine.stages import setup as S

    monkeypatch.setattr(S, "PROBE_SIDES", (4, 8))
    conv = import_model(tiny_onnx["resnet"], None)  # fully convolutional, 16x16
    example = {"image": torch.rand(2, 3, 16, 16) * 2 - 1}
    small = S.probe_inputs(conv.module, example)
    assert small["image"].shape == (1, 3, 4, 4)  # the smallest side it runs at
    attn = import_model(wild.export_onnx("attention", tmp_path / "attn.onnx"), None)  # fixed size
    example = {"image": torch.rand(2, 3, 8, 8) * 2 - 1}
    assert S.probe_inputs(attn.module, example)["image"].shape == (1, 3, 8, 8)  # its full size
    z = {"z": torch.randn(2, 16)}
    assert S.probe_inputs(import_model(tiny_onnx["dcgan"], None).module, z)["z"].shape == (1, 16)


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
    b = _bench(image_model, InputSampler(image_model.inputs, {"image": cal}), budget)
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
    b = _bench(imported, InputSampler(imported.inputs, {name: cal}), budget)
    # 8 full-size images fit: 32 crops of side 128 * sqrt(8 / 32) = 64 cost the same
    assert recovery_patch(b, seconds=3 * 0.1 * 8) == (RECOVERY_IMAGES, 64)
    # 1 fits: crops would be 32 px at most; at the smallest side 16 of them fit
    n, side = recovery_patch(b, seconds=3 * 0.1 * 1)
    assert side == MIN_PATCH and n == 16
    assert recovery_patch(b, seconds=3 * 0.1 * 0.5) == (0, None)
    assert recovery_patch(b, seconds=-1.0) == (0, None)  # its share was already spent
    latent = import_model(tiny_onnx["dcgan"], None)  # not an image model
    assert recovery_patch(_bench(latent, InputSampler(latent.inputs, {}), budget), seconds=0.3) == (0, None)
