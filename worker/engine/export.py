"""Student -> ONNX: export, graph cleanup (onnxslim), checker, parity with torch, quantization."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from worker.errors import ExportError, first_line
from worker.spec import Quantize

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
TORCHSCRIPT_EXPORTER_MAX_OPSET = 20  # higher opsets: export at 20, then onnx's version converter
QuantizeFn = Callable[[onnx.ModelProto, list[dict[str, np.ndarray]]], onnx.ModelProto]


@dataclass
class ExportResult:
    model: onnx.ModelProto  # what is shipped (quantized if asked)
    float_model: onnx.ModelProto  # the float student after cleanup
    opset: int
    quantize: Quantize
    parity_max_abs_diff: float  # float ONNX vs torch student
    quantized_max_abs_diff: float | None  # quantized vs float ONNX, on the same inputs
    nodes_before_cleanup: int
    nodes_after_cleanup: int
    notes: list[str] = field(default_factory=list)


def export_onnx(
    model: nn.Module, example: dict[str, torch.Tensor], output_names: list[str], opset: int
) -> onnx.ModelProto:
    """TorchScript-based exporter (``dynamo=False``): it handles onnx2torch's modules, which carry
    their own ONNX export; batch axis dynamic on every input and output."""
    names = list(example)
    buf = io.BytesIO()
    model.eval()
    export_opset = min(opset, TORCHSCRIPT_EXPORTER_MAX_OPSET)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                tuple(example.values()),
                buf,
                dynamo=False,
                opset_version=export_opset,
                input_names=names,
                output_names=output_names,
                dynamic_axes={n: {0: "batch"} for n in [*names, *output_names]},
                do_constant_folding=True,
            )
    except Exception as e:
        raise ExportError(f"ONNX export failed at opset {export_opset}: {first_line(e)}") from e
    exported = onnx.load_from_string(buf.getvalue())
    if opset > export_opset:
        try:
            exported = onnx.version_converter.convert_version(exported, opset)
        except Exception as e:
            raise ExportError(
                f"converting the export from opset {export_opset} to {opset} failed: {first_line(e)}"
            ) from e
    return exported


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim (constant folding, dead nodes, fusions), then the ONNX checker."""
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception as e:
        log.warning("export.slim_failed error=%s", first_line(e))
        slim = model
    try:
        onnx.checker.check_model(slim, full_check=True)
    except Exception as e:
        raise ExportError(f"exported graph fails the ONNX checker: {first_line(e)}") from e
    return slim


def ort_run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def torch_vs_onnx(model: nn.Module, onnx_model: onnx.ModelProto, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        out = model(*batch.values())
    out = out[0] if isinstance(out, list | tuple) else out
    ref = ort_run(onnx_model, {k: v.numpy() for k, v in batch.items()})[0]
    return float(np.abs(out.numpy() - ref).max())


QUANTIZERS: dict[Quantize, QuantizeFn] = {}


def register_quantizer(name: Quantize) -> Callable[[QuantizeFn], QuantizeFn]:
    def deco(fn: QuantizeFn) -> QuantizeFn:
        if name in QUANTIZERS:
            raise ValueError(f"quantizer {name!r} registered twice")
        QUANTIZERS[name] = fn
        return fn

    return deco


@register_quantizer(Quantize.NONE)
def _none(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    return model


def _with_files(fn: Callable[[Path, Path], None], model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.onnx", Path(d) / "out.onnx"
        onnx.save(model, str(src))
        fn(src, dst)
        return onnx.load(str(dst))


@register_quantizer(Quantize.INT8_DYNAMIC)
def _int8_dynamic(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """Weights int8 ahead of time, activations quantized per batch at run time (ConvInteger /
    MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _with_files(lambda s, d: quantize_dynamic(str(s), str(d), weight_type=QuantType.QInt8), model)


@register_quantizer(Quantize.INT8_STATIC)
def _int8_static(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """QDQ int8 with activation ranges calibrated on the distillation inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    if not calib:
        raise ExportError("int8-static needs calibration batches")
    return _with_files(
        lambda s, d: quantize_static(
            str(s),
            str(d),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        ),
        model,
    )


@register_quantizer(Quantize.FP16)
def _fp16(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """Weights and activations in float16; inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def export_student(
    student: nn.Module,
    example: dict[str, torch.Tensor],
    output_names: list[str],
    opset: int,
    quantize: Quantize,
    calib: list[dict[str, np.ndarray]],
    parity_batch: dict[str, torch.Tensor],
) -> ExportResult:
    raw = export_onnx(student, example, output_names, opset)
    n_before = len(raw.graph.node)
    model = cleanup(raw)
    diff = torch_vs_onnx(student, model, parity_batch)
    if not diff <= PARITY_TOLERANCE * max(1.0, _scale(student, parity_batch)):
        raise ExportError(
            f"exported ONNX differs from the torch student by {diff:.3g} (tolerance {PARITY_TOLERANCE})"
        )
    shipped, qdiff, notes = model, None, []
    if quantize != Quantize.NONE:
        try:
            shipped = QUANTIZERS[quantize](model, calib)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"quantization {quantize.value} failed: {first_line(e)}") from e
        feeds = {k: v.numpy() for k, v in parity_batch.items()}
        qdiff = float(np.abs(ort_run(shipped, feeds)[0] - ort_run(model, feeds)[0]).max())
        notes.append(f"{quantize.value}: max abs diff vs the float student {qdiff:.4g} on the parity batch")
    log.info(
        "export.done opset=%d nodes=%d->%d parity=%.3g quantize=%s",
        opset,
        n_before,
        len(model.graph.node),
        diff,
        quantize,
    )
    return ExportResult(shipped, model, opset, quantize, diff, qdiff, n_before, len(model.graph.node), notes)


def _scale(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Output magnitude, so the parity tolerance is relative for models with large outputs."""
    with torch.no_grad():
        out = model(*batch.values())
    out = out[0] if isinstance(out, list | tuple) else out
    return float(out.abs().max())
