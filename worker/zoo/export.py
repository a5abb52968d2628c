"""Exports of a trained zoo generator: TorchScript, ONNX (both exporters, several opsets), checks.

Every ONNX file is single-file (no external data), has a dynamic batch axis on every input and on
``image_out``, passes ``onnx.checker`` and matches the eager model in ONNX Runtime (CPU) at batch 1
and 3 within :data:`PARITY_ATOL`. A variant that an exporter cannot produce, or that fails a check,
is returned as skipped with the reason instead of a file.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from worker.core.storage import sha256_file
from worker.zoo.registry import OUTPUT_NAME

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class OnnxVariant:
    """One ONNX export: file name, opset and exporter (``"torchscript"``: dynamo=False, or ``"dynamo"``)."""

    filename: str
    opset: int
    exporter: str


ONNX_VARIANTS: tuple[OnnxVariant, ...] = (
    OnnxVariant("model.op13.onnx", 13, "torchscript"),
    OnnxVariant("model.op17.onnx", 17, "torchscript"),
    OnnxVariant("model.op18.dynamo.onnx", 18, "dynamo"),
)


def file_record(root: Path, path: Path, fmt: str, opset: int | None, exporter: str, **extra: object) -> dict:
    """The manifest record of a stored file (``path`` relative to ``root``)."""
    return {
        "path": path.relative_to(root).as_posix(),
        "format": fmt,
        "opset": opset,
        "exporter": exporter,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        **extra,
    }


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def export_torchscript(model: nn.Module, args: tuple[Tensor, ...], path: Path) -> str:
    """Save ``model`` (eval mode) as TorchScript at ``path``; returns ``"script"`` or ``"trace"``.

    Scripting is tried first; tracing (on ``args``) is the fallback. The reloaded module must match
    the eager model on ``args`` within :data:`PARITY_ATOL`.
    """
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            ts = torch.jit.script(model)
            method = "script"
        except Exception as exc:  # pragma: no cover - all zoo models script today
            log.warning("zoo.export torchscript script failed (%s); tracing", exc)
            ts = torch.jit.trace(model, args)
            method = "trace"
        torch.jit.save(ts, str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        diff = (loaded(*args) - model(*args)).abs().max().item()
    if diff > PARITY_ATOL:
        raise RuntimeError(f"TorchScript parity failed: max abs diff {diff:.3g}")
    return method


def _export_one(
    model: nn.Module, args: tuple[Tensor, ...], names: list[str], v: OnnxVariant, path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if v.exporter == "torchscript":
            axes = {n: {0: "batch"} for n in [*names, OUTPUT_NAME]}
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=v.opset,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                opset_version=v.opset,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_shapes={n: {0: batch} for n in names},
                external_data=False,
                optimize=True,
                verbose=False,
            )
            if program is None:
                raise RuntimeError("dynamo exporter returned no program")
            program.save(str(path), external_data=False)


def check_onnx(path: Path, model: nn.Module, feeds: list[dict[str, Tensor]]) -> float:
    """Check the ONNX file at ``path``: checker, single file, dynamic batch, ORT parity on ``feeds``.

    Returns the largest absolute difference to the eager ``model`` (raises above :data:`PARITY_ATOL`).
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError("initializer stored as external data")
    for vi in [*proto.graph.input, *proto.graph.output]:
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise RuntimeError(f"{vi.name}: batch dimension is fixed ({dim0.dim_value})")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feed in feeds:
        got = sess.run([OUTPUT_NAME], {k: v.numpy() for k, v in feed.items()})[0]
        with torch.no_grad():
            want = model(*feed.values()).numpy()
        if got.shape != want.shape:
            raise RuntimeError(f"shape {got.shape} != {want.shape}")
        worst = max(worst, _max_diff(got, want))
    if worst > PARITY_ATOL:
        raise RuntimeError(f"ONNX Runtime parity failed: max abs diff {worst:.3g} > {PARITY_ATOL}")
    return worst


def onnx_opset(path: Path) -> int:
    """The default-domain opset actually stored in the ONNX file at ``path``."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx_variants(
    model: nn.Module,
    args: tuple[Tensor, ...],
    names: list[str],
    feeds: list[dict[str, Tensor]],
    out_dir: Path,
    root: Path,
) -> tuple[list[dict], list[dict]]:
    """Export every :data:`ONNX_VARIANTS` entry of ``model`` into ``out_dir`` and check it.

    ``args`` (batch >= 2, so that no exporter specialises the batch to 1) are the export example
    inputs named ``names``; ``feeds`` are the parity inputs. Returns ``(file records, skipped)``
    where each skipped entry is ``{"file", "opset", "exporter", "reason"}``.
    """
    records: list[dict] = []
    skipped: list[dict] = []
    for v in ONNX_VARIANTS:
        path = out_dir / v.filename
        try:
            _export_one(model, args, names, v, path)
            diff = check_onnx(path, model, feeds)
            opset = onnx_opset(path)
            records.append(file_record(root, path, "onnx", opset, v.exporter, parity_max_abs_diff=diff))
            log.info("zoo.export %s ok (opset %d, max diff %.2e)", path.relative_to(root), opset, diff)
        except Exception as exc:
            path.unlink(missing_ok=True)
            reason = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            )
            skipped.append({"file": v.filename, "opset": v.opset, "exporter": v.exporter, "reason": reason})
            log.warning("zoo.export %s skipped: %s", v.filename, reason)
    return records, skipped
