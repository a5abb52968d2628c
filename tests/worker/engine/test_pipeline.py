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
    from worker.engine.stage_sections import distillation_section

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
