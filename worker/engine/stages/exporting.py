"""The export stage: the student as ONNX with the teacher's interface (names, fixed or dynamic
batch and size), and the teacher as ONNX beside it for the measurements."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from worker.engine.export import ExportResult, cleanup, export_student
from worker.engine.stages.setup import Workbench
from worker.spec import ExportSpec, Progress, Stage


def run(bench: Workbench, spec: ExportSpec, out_dir: Path) -> tuple[ExportResult, Path, Path]:
    """(export result, teacher ONNX, student ONNX): the student is written to ``out_dir``, the
    teacher to a temporary directory (the report measures both, then it is removed)."""
    bench.emit(Progress(stage=Stage.EXPORT, message=f"ONNX opset {spec.opset}"))
    exported = export(bench, spec)
    student_onnx = out_dir / "model.onnx"
    onnx.save(exported.model, str(student_onnx))
    return exported, save_teacher(bench), student_onnx


def save_teacher(bench: Workbench) -> Path:
    """The teacher graph (after the same cleanup as the student) in a new temporary directory."""
    teacher_onnx = Path(tempfile.mkdtemp(prefix="gc-teacher-")) / "teacher.onnx"
    onnx.save(cleanup(bench.imported.onnx_model), str(teacher_onnx))
    return teacher_onnx


def calibration_batches(bench: Workbench) -> list[dict[str, np.ndarray]]:
    """Inputs that static quantization calibrates on (training inputs, never held-out ones)."""
    return [{k: v.numpy() for k, v in bench.sampler.train_batch(4).items()} for _ in range(8)]


def export(bench: Workbench, spec: ExportSpec) -> ExportResult:
    """The workbench's student as ONNX with the teacher's interface, checked against torch and
    quantized as ``spec`` asks."""
    calib = calibration_batches(bench)
    imported = bench.imported
    return export_student(
        bench.student,
        bench.example,
        imported.output_names,
        spec.opset,
        spec.quantize,
        calib,
        {k: v[:4] for k, v in bench.heldout.items()},  # parity batch
        fixed_batch=imported.fixed_batch,  # the student keeps the teacher's interface
        dynamic_axes=imported.dynamic_axes,
    )
