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
    assert r.score_after_distill >= r.score_after_prune


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
