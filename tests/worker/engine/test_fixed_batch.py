"""ONNX exported with a fixed batch of 1 (no dynamic_axes): imports, trains at any batch, and the
student keeps the fixed batch of 1."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.worker.engine import tiny, wild
from worker.engine.batching import BATCH_PARAM, fixed_batch, make_batch_symbolic
from worker.engine.export import export_student, ort_run
from worker.engine.importers import PARITY_TOLERANCE, import_model
from worker.engine.prune import make_pruner, plan_channel_pruning, prune_step
from worker.engine.sampling import example_batch
from worker.errors import ExportError
from worker.spec import PruneSpec, Quantize


def _export_tiny_fixed(name: str, path: Path) -> Path:
    args = tiny.example(name, batch=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tiny.build(name),
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=list(tiny.FAMILIES[name][1]),
            output_names=["out"],
        )
    return path


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fixed")
    out = {name: _export_tiny_fixed(name, d / f"{name}.onnx") for name in ("cgan", "sr", "style")}
    for name in ("dcgan", "attention"):
        out[name] = wild.export_onnx(name, d / f"wild_{name}.onnx")
    return out


def _build(name: str) -> torch.nn.Module:
    return wild.build(name) if name in wild.MODELS else tiny.build(name)


def _example(name: str, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    return (wild.example(name, batch, seed),) if name in wild.MODELS else tiny.example(name, batch, seed)


def _dim0(vi: onnx.ValueInfoProto) -> int | str:
    d = vi.type.tensor_type.shape.dim[0]
    return d.dim_value if d.HasField("dim_value") else d.dim_param


@pytest.mark.parametrize("name", ["dcgan", "cgan", "sr", "style"])
def test_fixed_batch_onnx_imports_and_runs_at_any_batch(name: str, fixed: dict[str, Path]) -> None:
    im = import_model(fixed[name], None)
    assert im.fixed_batch == 1
    assert im.parity_max_abs_diff < PARITY_TOLERANCE
    assert im.dynamic_axes == {}, "a fixed-batch upload has no symbolic axis"
    args = _example(name, batch=3, seed=5)
    with torch.no_grad():
        assert torch.allclose(im.module(*args), _build(name)(*args), atol=PARITY_TOLERANCE)
    assert any("made symbolic" in n for n in im.notes)


def test_reshape_that_bakes_the_batch_is_rewritten(fixed: dict[str, Path]) -> None:
    """``fc(z).view(z.shape[0], 32, 4, 4)`` exports as Reshape [1, 32, 4, 4] at batch 1: it must
    copy the batch (0) instead, and ONNX Runtime then runs the graph at batch 2 like twice at 1."""
    model = onnx.load(str(fixed["dcgan"]))
    assert fixed_batch(model) == 1
    sym = make_batch_symbolic(model, 1)
    assert sym is not None
    assert _dim0(sym.graph.input[0]) == BATCH_PARAM and _dim0(sym.graph.output[0]) == BATCH_PARAM
    inits = {i.name: numpy_helper.to_array(i) for i in sym.graph.initializer}
    shapes = [inits[n.input[1]].tolist() for n in sym.graph.node if n.op_type == "Reshape"]
    assert shapes == [[0, 32, 4, 4]], shapes
    z = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
    (both,) = ort_run(sym, {"z": z})
    ref = np.concatenate([ort_run(model, {"z": z[i : i + 1]})[0] for i in range(2)])
    assert np.abs(both - ref).max() < 1e-5


def test_fixed_batch_student_keeps_batch_1(fixed: dict[str, Path]) -> None:
    im = import_model(fixed["dcgan"], None)
    ex = example_batch(im.inputs, 2, 0)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(im.module, ex, spec)
    prune_step(im.module, ex, make_pruner(im.module, ex, spec, plan, 0.5), plan, 0.5)
    calib = [{k: v.numpy() for k, v in example_batch(im.inputs, 4, s).items()} for s in range(2)]
    parity_batch = example_batch(im.inputs, 4, 1)
    res = export_student(
        im.module,
        ex,
        im.output_names,
        17,
        Quantize.INT8_STATIC,
        calib,
        parity_batch,
        fixed_batch=im.fixed_batch,
        dynamic_axes=im.dynamic_axes,
    )
    assert _dim0(res.model.graph.input[0]) == 1 and _dim0(res.model.graph.output[0]) == 1
    assert res.parity_max_abs_diff < 1e-4  # a batch of 4 runs through the batch-1 graph in chunks
    (one,) = ort_run(res.float_model, {"z": parity_batch["z"][:1].numpy()})
    assert one.shape == (1, 1, 16, 16)


def test_batch_squeezing_graph_runs_one_sample_at_a_time(fixed: dict[str, Path]) -> None:
    """``x.view(C, H*W)`` bakes the batch of 1 in beyond repair: the converted model runs per
    sample, can still be pruned, and exports at batch 1."""
    im = import_model(fixed["attention"], None)
    assert im.fixed_batch == 1
    assert any("one sample at a time" in n for n in im.notes), im.notes
    x = wild.example("attention", 3, seed=2)
    with torch.no_grad():
        ref = torch.cat([wild.build("attention")(x[i : i + 1]) for i in range(3)])
        assert torch.allclose(im.module(x), ref, atol=PARITY_TOLERANCE)
    ex = {"image": x[:2]}
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(im.module, ex, spec)
    prune_step(im.module, ex, make_pruner(im.module, ex, spec, plan, 0.5), plan, 0.5)
    res = export_student(im.module, ex, im.output_names, 17, Quantize.NONE, [], ex, fixed_batch=1)
    assert _dim0(res.model.graph.input[0]) == 1
    assert res.parity_max_abs_diff < 1e-4
    with pytest.raises(ExportError, match="fixed_batch=1"):  # a dynamic batch would bake in 2
        export_student(im.module, ex, im.output_names, 17, Quantize.NONE, [], ex)
