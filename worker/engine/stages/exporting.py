"""The export stage: the student as ONNX with the teacher's interface (names, fixed or dynamic
batch and size), and the teacher as ONNX beside it for the measurements."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from worker.engine.export import ExportResult, cleanup, export_student
from worker.engine.stages.setup import Workbench
from worker.spec import ExportSpec, Progress, Stage


def run(bench: Workbench, spec: ExportSpec, out_dir: Path) -> tuple[ExportResult, Path, Path]:
    """(export result, teacher ONNX, student ONNX): the student is written to ``out_dir``, the
    teacher to a temporary directory (the report measures both, then it is removed)."""
    bench.emit(Progress(stage=Stage.EXPORT, message=f"ONNX opset {spec.opset}"))
    calib = [{k: v.numpy() for k, v in bench.sampler.train_batch(4).items()} for _ in range(8)]
    imported = bench.imported
    exported = export_student(
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
    student_onnx = out_dir / "model.onnx"
    onnx.save(exported.model, str(student_onnx))
    teacher_onnx = Path(tempfile.mkdtemp(prefix="gc-teacher-")) / "teacher.onnx"
    onnx.save(cleanup(imported.onnx_model), str(teacher_onnx))
    return exported, teacher_onnx, student_onnx
