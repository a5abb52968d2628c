"""Student -> ONNX: export, graph cleanup (onnxslim), checker, parity with torch, quantization."""

from __future__ import annotations

import contextlib
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

from worker.engine.registry import Registry
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
    model: nn.Module,
    example: dict[str, torch.Tensor],
    output_names: list[str],
    opset: int,
    *,
    fixed_batch: int | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> onnx.ModelProto:
    """TorchScript-based exporter (``dynamo=False``): it handles onnx2torch's modules, which carry
    their own ONNX export.

    The interface follows the teacher's: ``dynamic_axes`` (input/output name -> axis -> name, as
    ``ImportedModel.dynamic_axes``) names the symbolic axes, e.g. height and width of a fully
    convolutional model; ``fixed_batch`` exports with that batch baked in (traced on the first
    ``fixed_batch`` samples of ``example``) and drops any symbolic batch axis. With neither, the
    batch axis of every input and output is dynamic."""
    from worker.engine.batching import PerSample

    if fixed_batch is None and any(isinstance(m, PerSample) for m in model.modules()):
        raise ExportError(
            "this model runs one sample at a time (its graph bakes in a fixed batch): export it with "
            "fixed_batch=1"
        )
    names = list(example)
    axes = _export_axes([*names, *output_names], fixed_batch, dynamic_axes)
    if fixed_batch is not None:
        example = {k: v[:fixed_batch] for k, v in example.items()}
    buf = io.BytesIO()
    model.eval()
    export_opset = min(opset, TORCHSCRIPT_EXPORTER_MAX_OPSET)
    from worker.engine.modconv import set_export_fixed_batch

    set_export_fixed_batch(model, fixed_batch is not None)
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
                dynamic_axes=axes or None,
                do_constant_folding=True,
            )
    except Exception as e:
        raise ExportError(f"ONNX export failed at opset {export_opset}: {first_line(e)}") from e
    finally:
        set_export_fixed_batch(model, False)
    exported = onnx.load_from_string(buf.getvalue())
    if opset > export_opset:
        try:
            exported = onnx.version_converter.convert_version(exported, opset)
        except Exception as e:
            raise ExportError(
                f"converting the export from opset {export_opset} to {opset} failed: {first_line(e)}"
            ) from e
    return exported


def _export_axes(
    names: list[str], fixed_batch: int | None, dynamic_axes: dict[str, dict[int, str]] | None
) -> dict[str, dict[int, str]]:
    """torch.onnx.export's ``dynamic_axes`` for the given interface (see ``export_onnx``)."""
    if dynamic_axes is None:
        axes = {} if fixed_batch is not None else {n: {0: "batch"} for n in names}
    else:
        axes = {n: dict(dynamic_axes[n]) for n in names if n in dynamic_axes}
    if fixed_batch is not None:
        axes = {n: {i: a for i, a in ax.items() if i != 0} for n, ax in axes.items()}
    return {n: ax for n, ax in axes.items() if ax}


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
    """Run ``model`` on ``feeds`` in ONNX Runtime (one thread). A graph with a fixed batch
    (exported without a dynamic batch axis) is run in chunks of that batch and the outputs
    concatenated, so fixed-batch teachers and students take batches of any multiple of it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    fixed = _session_fixed_batch(sess)
    n = next((len(v) for v in feeds.values() if np.ndim(v) > 0), 0)
    if fixed is None or n == fixed or n % fixed:
        return sess.run(None, feeds)
    chunks = [sess.run(None, {k: v[i : i + fixed] for k, v in feeds.items()}) for i in range(0, n, fixed)]
    return [np.concatenate(outs, axis=0) for outs in zip(*chunks, strict=True)]


def _session_fixed_batch(sess: object) -> int | None:
    """The batch every input of an ONNX Runtime session has fixed on its first axis, or None."""
    sizes = {i.shape[0] if i.shape else None for i in sess.get_inputs()}  # type: ignore[attr-defined]
    size = sizes.pop() if len(sizes) == 1 else None
    return size if isinstance(size, int) and size > 0 else None


def torch_vs_onnx(model: nn.Module, onnx_model: onnx.ModelProto, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        out = model(*batch.values())
    out = out[0] if isinstance(out, list | tuple) else out
    ref = ort_run(onnx_model, {k: v.numpy() for k, v in batch.items()})[0]
    return float(np.abs(out.numpy() - ref).max())


QUANTIZERS: Registry[Quantize, QuantizeFn] = Registry("quantize mode", Quantize, ExportError)


@QUANTIZERS.register(Quantize.NONE)
def _none(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    return model


def _with_files(fn: Callable[[Path, Path], None], model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.onnx", Path(d) / "out.onnx"
        onnx.save(model, str(src))
        fn(src, dst)
        return onnx.load(str(dst))


@QUANTIZERS.register(Quantize.INT8_DYNAMIC)
def _int8_dynamic(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """Weights int8 ahead of time, activations quantized per batch at run time (ConvInteger /
    MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _with_files(lambda s, d: quantize_dynamic(str(s), str(d), weight_type=QuantType.QInt8), model)


# What static INT8 quantizes: the weighted layers only (QDQ around InstanceNormalization and the
# activations costs quality and buys no speed), and not the first and last of them (an image's
# 3 channels at full resolution: the layers whose rounding the output shows most). Activation
# ranges: the 99.999th percentile of the calibration histogram, not the min/max, which a few
# outliers stretch. Measured on the 0.75 students of two real-size generators (held-out SSIM vs
# the teacher, float -> min/max INT8 -> this): CycleGAN 128 0.939 -> 0.781 -> 0.867, pretrained
# animevideov3 x4 0.903 -> 0.901 -> 0.903; 1-thread latency of this INT8 vs float 0.77-0.89x.
INT8_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _int8_excluded(model: onnx.ModelProto) -> list[str]:
    weighted = [n.name for n in model.graph.node if n.op_type in INT8_OPS and n.name]
    return [weighted[0], weighted[-1]] if len(weighted) > 2 else []


@QUANTIZERS.register(Quantize.INT8_STATIC)
def _int8_static(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """QDQ int8 of the weighted layers but the first and last, activation ranges calibrated on the
    distillation inputs (percentile; see ``INT8_OPS``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    if not calib:
        raise ExportError("int8-static needs calibration batches")

    def quantize(src: Path, dst: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
            quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(INT8_OPS),
                nodes_to_exclude=_int8_excluded(model),
                calibrate_method=CalibrationMethod.Percentile,
            )

    return _with_files(quantize, model)


@QUANTIZERS.register(Quantize.FP16)
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
    *,
    fixed_batch: int | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> ExportResult:
    """Export, clean up and check the student; quantize if asked. ``fixed_batch`` and
    ``dynamic_axes`` keep the teacher's interface (pass ``ImportedModel.fixed_batch`` and
    ``ImportedModel.dynamic_axes``; see ``export_onnx``)."""
    raw = export_onnx(
        student, example, output_names, opset, fixed_batch=fixed_batch, dynamic_axes=dynamic_axes
    )
    n_before = len(raw.graph.node)
    model = cleanup(raw)
    diff = torch_vs_onnx(student, model, parity_batch)
    if not diff <= PARITY_TOLERANCE * max(1.0, _scale(student, parity_batch)):
        raise ExportError(
            f"exported ONNX differs from the torch student by {diff:.3g} (tolerance {PARITY_TOLERANCE})"
        )
    shipped, qdiff, notes = model, None, []
    if quantize != Quantize.NONE:
        if fixed_batch is not None:  # calibration batches in chunks the fixed-batch graph takes
            calib = [
                {k: v[i : i + fixed_batch] for k, v in b.items()}
                for b in calib
                for i in range(0, _rows(b), fixed_batch)
            ]
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


def _rows(batch: dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _scale(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Output magnitude, so the parity tolerance is relative for models with large outputs."""
    with torch.no_grad():
        out = model(*batch.values())
    out = out[0] if isinstance(out, list | tuple) else out
    return float(out.abs().max())
