"""StyleGAN2's fused modulated convolution (``conv2d(groups=batch)`` on a per-sample weight)
imports from ONNX and from TorchScript, trains at any batch and exports.

Such ONNX files always have a fixed batch: ONNX's Conv group count is an attribute, and both
torch exporters refuse a symbolic batch for this pattern ("kernel of unknown shape"; dynamo: a
symbolic ``groups``). Scripted TorchScript fails our batch-2 dynamic export ("Expected node type
'onnx::Constant' for argument 'groups'") and is exported at a fixed batch of 1 instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.worker.engine import wild
from worker.engine.batching import PerSample
from worker.engine.export import export_student, ort_run
from worker.engine.importers import import_model
from worker.engine.modconv import BatchedConv2d, DynamicConv
from worker.engine.prune import make_pruner, plan_channel_pruning, prune_step
from worker.engine.sampling import example_batch
from worker.spec import InputSpec, ModelFormat, PruneSpec, Quantize

Z = {"z": InputSpec(shape=[1, 16])}
TOL = 1e-4


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("style")
    return {
        "onnx": wild.export_onnx("stylegan2", d / "g.onnx"),  # batch 1 fixed: how it exports
        "script": wild.export_torchscript("stylegan2", d / "g_script.pt", "script"),
        "trace": wild.export_torchscript("stylegan2", d / "g_trace.pt", "trace"),
    }


@pytest.mark.parametrize("kind", ["onnx", "script", "trace"])
def test_fused_modconv_imports_with_parity(kind: str, uploads: dict[str, Path]) -> None:
    im = import_model(uploads[kind], None if kind == "onnx" else Z)
    assert im.format == (ModelFormat.ONNX if kind == "onnx" else ModelFormat.TORCHSCRIPT)
    assert im.parity_max_abs_diff < TOL
    assert im.fixed_batch == 1, "the teacher graph has a fixed batch: so will the student"
    assert sum(isinstance(m, BatchedConv2d) for m in im.module.modules()) == 4
    assert not any(isinstance(m, PerSample) for m in im.module.modules()), "runs batched, not per sample"
    z = wild.example("stylegan2", 3, seed=8)
    with torch.no_grad():
        got = im.module(z)
        assert torch.allclose(got, wild.build("stylegan2")(z), atol=TOL)
    ref = ort_run(im.onnx_model, {"z": z.numpy()})[0]  # the teacher graph, sample by sample
    assert float(np.abs(got.numpy() - ref).max()) < TOL


def test_modulated_weights_are_trainable(uploads: dict[str, Path]) -> None:
    im = import_model(uploads["onnx"], None)
    shapes = sorted(tuple(p.shape) for p in im.module.parameters() if p.dim() == 5)
    assert shapes == [(1, 3, 16, 1, 1), (1, 16, 16, 3, 3), (1, 16, 16, 3, 3), (1, 16, 16, 3, 3)]
    z = wild.example("stylegan2", 2)
    im.module(z).square().mean().backward()
    assert all(p.grad is not None for p in im.module.parameters() if p.dim() == 5)


def test_pruned_and_exported_with_a_fixed_and_a_dynamic_batch(uploads: dict[str, Path]) -> None:
    """The modulated convs are left whole (their channels are tied to the style affines); the
    rest prunes. Fixed batch 1 exports the plain grouped Conv, a dynamic batch unfold + matmul."""
    im = import_model(uploads["onnx"], None)
    ex = example_batch(im.inputs, 2, 0)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(im.module, ex, spec)
    prune_step(im.module, ex, make_pruner(im.module, ex, spec, plan, 0.5), plan, 0.5)
    batch4 = example_batch(im.inputs, 4, 1)
    fixed = export_student(im.module, ex, im.output_names, 17, Quantize.NONE, [], batch4, fixed_batch=1)
    convs = [n for n in fixed.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and fixed.parity_max_abs_diff < TOL
    assert fixed.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    dynamic = export_student(im.module, ex, im.output_names, 17, Quantize.NONE, [], batch4)
    assert dynamic.parity_max_abs_diff < TOL
    assert not any(n.op_type == "Conv" for n in dynamic.model.graph.node)
    onnx.checker.check_model(dynamic.model)


def test_batched_conv_matches_a_loop_over_samples() -> None:
    torch.manual_seed(0)
    conv = BatchedConv2d((2, 1), (1, 0, 2, 1), (1, 1), 1)  # stride 2x1, asymmetric pads
    x, w, b = torch.rand(3, 4, 9, 7), torch.rand(3, 5, 4, 3, 3), torch.rand(5)

    def one(xi: torch.Tensor, wi: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(nn.functional.pad(xi, (0, 1, 1, 2)), wi, b, (2, 1))

    ref = torch.cat([one(x[i : i + 1], w[i]) for i in range(3)])
    assert torch.allclose(conv(x, w, b), ref, atol=1e-5)
    assert torch.allclose(conv._unfolded(x, w) + b.view(1, -1, 1, 1), ref, atol=1e-5)
    broadcast = torch.cat([one(x[:1], w[i]) for i in range(3)])  # a batch-1 x (learned constant)
    assert torch.allclose(conv(x[:1], w, b), broadcast, atol=1e-5)


class _Hyper(nn.Module):
    """A conv whose weight is computed from a learned base (what ``DynamicConv`` converts)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = DynamicConv((1, 2), (0, 1, 2, 1), (1, 1), 1)
        self.base = nn.Parameter(torch.rand(5, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.base * 2.0)


def test_dynamic_conv_runs_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _Hyper().eval(), torch.rand(2, 4, 8, 9)
    with torch.no_grad():
        ref = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 0, 2)), model.base * 2.0, None, (1, 2))
        assert torch.allclose(model(x), ref, atol=1e-5)
        torch.onnx.export(
            model, (x,), str(tmp_path / "h.onnx"), dynamo=False, input_names=["x"], output_names=["y"]
        )
    (out,) = ort_run(onnx.load(str(tmp_path / "h.onnx")), {"x": x.numpy()})
    assert float(np.abs(out - ref.numpy()).max()) < 1e-5
