"""ONNX exported with dynamic batch, height and width (fully convolutional image generators):
imports at a real image size, the student keeps the dynamic axes, and a model that does not run
at the given size says so in one line with the right error code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app import cli
from tests.worker.engine import wild
from worker.engine import importers
from worker.engine.export import export_student, ort_run
from worker.engine.importers import PARITY_TOLERANCE, check_inputs, import_model
from worker.engine.prune import make_pruner, plan_channel_pruning, prune_step
from worker.engine.sampling import example_batch
from worker.errors import ConversionError, MissingInputSpecError
from worker.spec import InputSpec, PruneSpec, Quantize

NHW = {0: "N", 2: "H", 3: "W"}
CASES = [("srgan", 17), ("srgan", 20), ("cyclegan", 17), ("unet", 17)]


@pytest.fixture(scope="module")
def nhw(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    d = tmp_path_factory.mktemp("nhw")
    return {(n, o): wild.export_onnx(n, d / f"{n}_{o}.onnx", axes="nhw", opset=o) for n, o in CASES}


@pytest.mark.parametrize(("name", "opset"), CASES)
def test_dynamic_nhw_imports_at_an_image_size(
    name: str, opset: int, nhw: dict[tuple[str, int], Path]
) -> None:
    im = import_model(nhw[name, opset], None)
    assert im.inputs["image"].shape[2:] == [64, 64], "checked at a real image size, not 1x1"
    assert im.dynamic_axes == {"image": NHW, "image_out": NHW}
    assert im.fixed_batch is None
    assert im.parity_max_abs_diff < PARITY_TOLERANCE
    x = wild.example(name, 3, seed=4, size=(24, 40))  # neither the probe nor the export size
    with torch.no_grad():
        assert torch.allclose(im.module(x), wild.build(name)(x), atol=PARITY_TOLERANCE)


def test_student_keeps_dynamic_height_and_width(nhw: dict[tuple[str, int], Path]) -> None:
    im = import_model(nhw["cyclegan", 17], None)
    im.inputs["image"] = im.inputs["image"].model_copy(update={"shape": [1, 3, 16, 16]})  # "calibration" size
    ex = example_batch(im.inputs, 2, 0)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(im.module, ex, spec)
    prune_step(im.module, ex, make_pruner(im.module, ex, spec, plan, 0.5), plan, 0.5)
    res = export_student(
        im.module,
        ex,
        im.output_names,
        17,
        Quantize.NONE,
        [],
        ex,
        fixed_batch=im.fixed_batch,
        dynamic_axes=im.dynamic_axes,
    )
    dims = [d.dim_param for d in res.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "", "H", "W"]
    x = wild.example("cyclegan", 3, seed=1, size=(24, 40))
    (out,) = ort_run(res.model, {"image": x.numpy()})
    with torch.no_grad():
        ref = im.module(x).numpy()
    assert out.shape == (3, 3, 24, 40)
    assert float(np.abs(out - ref).max()) < 1e-4


def test_model_that_does_not_run_at_the_given_size_is_an_input_spec_error(
    nhw: dict[tuple[str, int], Path],
) -> None:
    """The U-Net needs sides divisible by 4; at 18x18 its skip concatenation fails in ONNX
    Runtime itself: the input spec is wrong, no operator is unsupported."""
    spec = {"image": InputSpec(shape=[1, 3, 18, 18], distribution="calibration")}
    with pytest.raises(MissingInputSpecError, match=r"does not run on inputs image \[2, 3, 18, 18\]") as e:
        import_model(nhw["unet", 17], spec)
    assert "\n" not in e.value.detail and "ONNXRuntimeError" not in e.value.detail


def test_size_check_after_calibration_names_the_cause(nhw: dict[tuple[str, int], Path]) -> None:
    """What the pipeline checks once the calibration images fix the size (here 18x18)."""
    im = import_model(nhw["unet", 17], None)
    assert check_inputs(im) < PARITY_TOLERANCE
    odd = {"image": im.inputs["image"].model_copy(update={"shape": [1, 3, 18, 18]})}
    with pytest.raises(MissingInputSpecError, match=r"image \[2, 3, 18, 18\] in ONNX Runtime: .*Concat"):
        check_inputs(im, odd)


def _broken_to_torch(model: object) -> torch.nn.Module:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2] + x  # "The size of tensor a (2) must match the size of tensor b (3)"

    return Broken()


def test_shape_mismatch_in_the_converted_model_is_a_conversion_error(
    nhw: dict[tuple[str, int], Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(importers.torch_module, "to_torch", _broken_to_torch)  # where conversion looks it up
    with pytest.raises(ConversionError, match=r"converted model fails .* size of tensor a \(2\)") as e:
        import_model(nhw["srgan", 17], None)
    assert e.value.code == "conversion_failed" and "\n" not in e.value.detail
    rc = cli.main(
        ["compress", str(nhw["srgan", 17]), "--out", str(tmp_path / "o"), "--quiet", "--steps", "1"]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gancompress:")]
    assert rc == 2 and len(err) == 1 and err[0].startswith("gancompress: error: conversion_failed: "), err
