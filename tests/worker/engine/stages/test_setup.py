"""The import stage: structure-only passes on small crops where the model allows."""

from __future__ import annotations

from pathlib import Path

import pytest


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
