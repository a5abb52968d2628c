"""What one compression produced: the type the pipeline returns and the report is assembled from.

Torch-side objects (the held-out tensors, the pruning plan) live here too: the report reads them
to measure and to describe, never to train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worker.engine import allocate, prune, recover
from worker.engine import blocks as block_prune
from worker.engine.budget import Budget
from worker.engine.distill import DistillResult
from worker.engine.export import ExportResult
from worker.engine.importers import ImportedModel
from worker.report_schema import SearchSection
from worker.spec import CompressionSpec, PruneMethod


@dataclass
class PruneOutcome:
    method: PruneMethod
    ratio_asked: float | None
    ratio_used: float | None
    macs_before: int
    macs_after: int
    plan: prune.PrunePlan | None = None
    removed_blocks: list[block_prune.Block] = field(default_factory=list)
    candidate_blocks: list[block_prune.Block] = field(default_factory=list)
    sparsity: float | None = None
    target_macs: int | None = None
    allocation: allocate.Allocation | None = None
    kept_channels: dict[str, list[int]] = field(default_factory=dict)  # layer -> teacher channel ids
    masks: dict[str, torch.Tensor] | None = None  # unstructured: the zeros distillation must keep
    notes: list[str] = field(default_factory=list)


@dataclass
class RecoveryOutcome:
    result: recover.RecoveryResult
    score_before: float
    score_after: float
    kept: bool  # False: the refit scored worse on held-out inputs and was undone
    mse_before: float = math.nan  # held-out output MSE vs the teacher
    mse_after: float = math.nan
    unstable: bool = False  # undone: ONNX Runtime did not reproduce the refitted student
    crop: int | None = None  # the calibration inputs were random crops of this side
    layers_kept: int | None = None  # refits kept: a prefix of result.refitted in forward order
    full_refit_mse: float = math.nan  # held-out MSE with every layer refitted
    full_refit_worst: float = math.nan  # ... its worst input
    worst_before: float = math.nan  # held-out worst per-input MSE right after pruning


@dataclass
class PipelineResult:
    """Everything the report is assembled from."""

    model_path: Path
    spec: CompressionSpec
    imported: ImportedModel
    data_range: float
    prune: PruneOutcome
    distill_rounds: list[DistillResult]
    score_after_prune: float
    score_after_distill: float
    recovery: RecoveryOutcome | None
    export: ExportResult
    teacher_onnx: Path
    student_onnx: Path
    heldout: dict[str, torch.Tensor]
    seconds: dict[str, float]
    budget: Budget
    warnings: list[str] = field(default_factory=list)
    distill_notes: list[str] = field(default_factory=list)
    recovery_note: str | None = None  # why recovery did not run, when it was asked for
    fid_weights: Path | None = None
    search: SearchSection | None = None  # prune.mode search / sweep: every candidate and the pick
