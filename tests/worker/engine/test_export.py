"""Export: ONNX Runtime parity, dynamic batch, opsets, every quantization mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from worker.engine.export import QUANTIZERS, export_student, ort_run
from worker.engine.importers import import_model
from worker.engine.prune import make_pruner, plan_channel_pruning
from worker.engine.sampling import example_batch
from worker.spec import PruneSpec, Quantize


def _pruned(path: Path):
    im = import_model(path, None)
    ex = example_batch(im.inputs, 2, 0)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(im.module, ex, spec)
    make_pruner(im.module, ex, spec, plan, 0.5).step()
    return im, ex


def test_every_quantize_mode_has_an_implementation() -> None:
    assert set(QUANTIZERS) == set(Quantize)


@pytest.mark.parametrize("mode", list(Quantize))
def test_export_modes_run_in_onnxruntime(mode: Quantize, tiny_onnx: dict[str, Path]) -> None:
    im, ex = _pruned(tiny_onnx["resnet"])
    calib = [{k: v.numpy() for k, v in example_batch(im.inputs, 2, s).items()} for s in range(4)]
    res = export_student(im.module, ex, im.output_names, 17, mode, calib, ex)
    assert res.parity_max_abs_diff < 1e-4
    feeds = {k: v.numpy() for k, v in example_batch(im.inputs, 5, 9).items()}
    (out,) = ort_run(res.model, feeds)
    assert out.shape == (5, 3, 16, 16), "dynamic batch axis"
    assert [i.name for i in res.model.graph.input] == ["image"]
    if mode == Quantize.NONE:
        assert res.quantized_max_abs_diff is None
    else:
        assert res.quantized_max_abs_diff is not None and res.quantized_max_abs_diff < 0.5
        ops = {n.op_type for n in res.model.graph.node}
        expect = {
            Quantize.INT8_DYNAMIC: "DynamicQuantizeLinear",
            Quantize.INT8_STATIC: "QuantizeLinear",
            Quantize.FP16: "Cast",
        }[mode]
        assert expect in ops, ops
        if mode == Quantize.FP16:
            assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in res.model.graph.initializer)


@pytest.mark.parametrize("opset", [13, 17, 20, 21])
def test_export_opsets(opset: int, tiny_onnx: dict[str, Path]) -> None:
    im, ex = _pruned(tiny_onnx["sr"])
    res = export_student(im.module, ex, im.output_names, opset, Quantize.NONE, [], ex)
    got = next(o.version for o in res.model.opset_import if o.domain in ("", "ai.onnx"))
    assert got == opset
    onnx.checker.check_model(res.model, full_check=True)
    assert res.nodes_after_cleanup <= res.nodes_before_cleanup


def test_pruned_export_is_smaller(tiny_onnx: dict[str, Path]) -> None:
    original = onnx.load(str(tiny_onnx["resnet"]))
    im, ex = _pruned(tiny_onnx["resnet"])
    res = export_student(im.module, ex, im.output_names, 17, Quantize.NONE, [], ex)
    size = lambda m: sum(np.prod(i.dims) for i in m.graph.initializer)  # noqa: E731
    assert size(res.model) < 0.5 * size(original)


def test_int8_static_keeps_the_first_and_last_weighted_layers_and_the_norms_in_float(
    tiny_onnx: dict[str, Path],
) -> None:
    im, ex = _pruned(tiny_onnx["resnet"])
    calib = [{k: v.numpy() for k, v in example_batch(im.inputs, 2, s).items()} for s in range(4)]
    res = export_student(im.module, ex, im.output_names, 17, Quantize.INT8_STATIC, calib, ex)
    graph = res.float_model.graph
    weighted = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert len(weighted) > 2
    produced = {o: n for n in res.model.graph.node for o in n.output}

    def quantized_input(name: str) -> bool:  # a weighted node whose weight comes out of a DequantizeLinear
        node = next(n for n in res.model.graph.node if n.name == name)
        src = produced.get(node.input[1])
        return src is not None and src.op_type == "DequantizeLinear"

    assert not quantized_input(weighted[0].name) and not quantized_input(weighted[-1].name)
    assert all(quantized_input(n.name) for n in weighted[1:-1])
    norms = [n for n in res.model.graph.node if n.op_type == "InstanceNormalization"]
    assert all(produced[n.input[1]].op_type != "DequantizeLinear" for n in norms if n.input[1] in produced)
