"""The import stage: the model as a trainable module, its inputs, the frozen teacher, and the
held-out reference every later stage is scored against (``Workbench``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.engine.budget import Budget
from worker.engine.distill import heldout_score
from worker.engine.importers import ImportedModel, check_inputs, dynamic_spatial_inputs, import_model
from worker.engine.sampling import InputSampler, load_calibration, mix_share
from worker.errors import BadCalibrationError, CanceledError
from worker.spec import CompressionSpec, Distribution, Progress

MAX_DYNAMIC_SIDE = 256  # crop side for image inputs of symbolic size
HELDOUT_N = 32  # held-out samples for the quality report (images: all held-out images, at most 32)
PROBE_SIDES = (16, 32)  # image side tried for the cheap structural passes (probing, graph tracing)
ProgressFn = Callable[[Progress], None]


@dataclass
class Workbench:
    """What every stage after import works on: the frozen teacher, the student it changes in
    place, the inputs, the held-out reference, the job's clock and its progress/cancel hooks."""

    imported: ImportedModel
    teacher: nn.Module
    student: nn.Module
    sampler: InputSampler
    heldout: dict[str, torch.Tensor]
    teacher_heldout: torch.Tensor
    data_range: float
    example: dict[str, torch.Tensor]  # two training inputs at the full size
    small: dict[str, torch.Tensor]  # one input for structure-only passes (see probe_inputs)
    budget: Budget
    emit: ProgressFn
    stop: Callable[[], bool]
    seed: int = 0

    def check(self) -> None:
        """Raise ``CanceledError`` when the job was canceled."""
        if self.stop():
            raise CanceledError("canceled")

    def score(self) -> float:
        """The student's held-out score (SSIM for images, else negative mean L1)."""
        return heldout_score(self.student, self.heldout, self.teacher_heldout, self.data_range)


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's (first) output, without gradients."""
    with torch.no_grad():
        out = model(*batch.values())
    return out[0] if isinstance(out, list | tuple) else out


def output_range(out: torch.Tensor) -> float:
    """Width of the output's value range: 2 for tanh ([-1, 1]), 1 for [0, 1], else observed."""
    lo, hi = float(out.min()), float(out.max())
    if lo >= -1.0 - 1e-4 and hi <= 1.0 + 1e-4:
        return 1.0 if lo >= -1e-4 else 2.0
    return max(hi - lo, 1e-6)


def load_calibrations(imported: ImportedModel, files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Calibration arrays per image input (``""``: the only one); inputs of symbolic size take
    the images' size, at most ``MAX_DYNAMIC_SIDE``."""
    image_inputs = [n for n, s in imported.inputs.items() if s.distribution == Distribution.CALIBRATION]
    files = dict(files)
    if "" in files:
        if len(image_inputs) != 1:
            raise BadCalibrationError(
                f"the model has {len(image_inputs)} image inputs {image_inputs}: name the input for each "
                "calibration file (NAME=FILE)"
            )
        files[image_inputs[0]] = files.pop("")
    unknown = sorted(set(files) - set(image_inputs))
    if unknown:
        raise BadCalibrationError(
            f"calibration given for {unknown}, which are not image inputs; image inputs: {image_inputs}"
        )
    dynamic = dynamic_spatial_inputs(imported.onnx_model)
    arrays: dict[str, np.ndarray] = {}
    for n, p in files.items():
        spec = imported.inputs[n]
        if n in dynamic:  # symbolic H, W: train and evaluate at the calibration images' size
            probe = load_calibration(p, spec.model_copy(update={"shape": [1, spec.shape[1], 1, 1]}), n)
            size = [min(probe.shape[2], MAX_DYNAMIC_SIDE), min(probe.shape[3], MAX_DYNAMIC_SIDE)]
            spec = imported.inputs[n] = spec.model_copy(update={"shape": [1, spec.shape[1], *size]})
        arrays[n] = load_calibration(p, spec, n)
    return arrays


def probe_inputs(model: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One input for the passes that only need the graph's structure (layer probing, Torch-Pruning's
    tracing, shape checks): image inputs cropped to the smallest of ``PROBE_SIDES`` at which the
    model runs and its output follows the input size (a 23 GMAC model's probe then costs 1/16 of
    a forward), else the example's first sample at full size."""
    one = {k: v[:1] for k, v in example.items()}
    images = [k for k, v in one.items() if v.dim() == 4 and min(v.shape[-2:]) > 1]
    if not images:
        return one
    full = forward(model, one)
    h, w = one[images[0]].shape[-2:]
    for side in PROBE_SIDES:
        if any(min(one[k].shape[-2:]) <= side for k in images):
            continue
        small = {k: (v[..., :side, :side].contiguous() if k in images else v) for k, v in one.items()}
        try:
            out = forward(model, small)
        except Exception:  # a fixed-size layer, or too many downsamplings for this side
            continue
        expect = (
            [round(full.shape[2] * side / h), round(full.shape[3] * side / w)] if full.dim() == 4 else None
        )
        if (
            expect is not None
            and out.dim() == 4
            and out.shape[:2] == full.shape[:2]
            and list(out.shape[2:]) == expect
        ):
            return small
    return one


def load_workbench(
    model_path: Path,
    spec: CompressionSpec,
    calibration: dict[str, Path],
    budget: Budget,
    emit: ProgressFn,
    stop: Callable[[], bool],
) -> Workbench:
    """Import ``model_path``, load its calibration, and measure the teacher on the held-out set
    (whose forward time sizes every later share of the budget)."""
    # a model whose forward never returns must not outlive the budget by more than a minute
    imported = import_model(model_path, spec.inputs, convert_timeout=max(60.0, spec.distill.budget_seconds))
    arrays = load_calibrations(imported, calibration)
    if dynamic_spatial_inputs(imported.onnx_model) & set(arrays):
        check_inputs(imported)  # symbolic H, W now at the calibration size: the model must run there
    sampler = InputSampler(imported.inputs, arrays, seed=spec.seed, mix=mix_share(spec.distill.augment))
    teacher = copy.deepcopy(imported.module).eval()
    heldout = sampler.heldout(HELDOUT_N)
    tf = time.perf_counter()
    teacher_heldout = forward(teacher, heldout)
    budget.heldout_forward_seconds = time.perf_counter() - tf
    budget.heldout_size = len(teacher_heldout)
    example = sampler.train_batch(2)
    return Workbench(
        imported=imported,
        teacher=teacher,
        student=imported.module,
        sampler=sampler,
        heldout=heldout,
        teacher_heldout=teacher_heldout,
        data_range=output_range(teacher_heldout),
        example=example,
        small=probe_inputs(teacher, example),  # structure-only passes: cheap on big models
        budget=budget,
        emit=emit,
        stop=stop,
        seed=spec.seed,
    )
