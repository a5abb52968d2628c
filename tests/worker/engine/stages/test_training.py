"""Distillation crops: only for models whose output follows the input size."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.engine.stages.bench import bench_for


def test_patches_only_for_models_that_follow_the_input_size(
    tiny_onnx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from tests.worker.engine import wild
    from worker.engine.importers import import_model
    from worker.engine.sampling import InputSampler
    from worker.engine.stages import training
    from worker.engine.stages.training import choose_patch

    def bench_with(imported: object, side: int) -> object:
        images = np.tanh(np.random.default_rng(0).normal(size=(12, 3, side, side))).astype(np.float32)
        return bench_for(imported, InputSampler(imported.inputs, {"image": images}, seed=0))  # type: ignore[attr-defined]

    conv = import_model(tiny_onnx["resnet"], None)  # fully convolutional, 16x16
    b = bench_with(conv, 16)
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
    patch, note = choose_patch(bench_with(attn, side), side // 2)
    assert patch is None and note is not None and note.startswith("trained at the full input size")
