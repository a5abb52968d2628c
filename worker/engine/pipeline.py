"""The compression pipeline: import -> prune (+ distill between rounds) -> recover -> distill ->
export -> measure -> quality -> report. Each stage is a function in ``worker.engine.stages`` of
what it needs; torch lives here and below; the API and the CLI call ``compress``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from worker.engine.assemble import write_all
from worker.engine.budget import Budget
from worker.engine.result import PipelineResult, PruneOutcome, RecoveryOutcome
from worker.engine.stages import exporting, pruning, recovery, search, setup, training
from worker.spec import CompressionSpec, Progress, PruneMode, Stage

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]
__all__ = ["PipelineResult", "PruneOutcome", "RecoveryOutcome", "compress", "run_pipeline", "with_job_eta"]


def _noop(_: Progress) -> None:
    pass


def compress(
    model_path: Path,
    spec: CompressionSpec,
    out_dir: Path,
    *,
    calibration: dict[str, Path] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    fid_weights: Path | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Compress ``model_path`` as ``spec`` asks; write model.onnx, report.json, report.html and
    samples.png to ``out_dir``; return the report as a dict (its ``summary`` is flat numbers).
    ``fid_weights``: a torchvision Inception-v3 state dict; adds FID to the quality section.
    ``spec.distill.budget_seconds`` bounds the whole call (see ``budget.py``), counted from
    ``started_at`` (a ``time.time()``; entry points pass theirs, so that importing torch counts)."""
    budget = Budget(spec.distill.budget_seconds)
    if started_at is not None:
        budget.start -= max(0.0, time.time() - started_at)
    emit = with_job_eta(progress or _noop, budget)
    if fid_weights is not None:
        from worker.engine.fid import load_inception

        load_inception(fid_weights)  # a bad file fails now, not after the whole compression
    result = run_pipeline(
        model_path,
        spec,
        out_dir,
        calibration=calibration,
        progress=emit,
        should_stop=should_stop,
        budget=budget,
    )
    result.fid_weights = fid_weights
    return write_all(result, out_dir, emit)


def _picked(
    searched: search.SearchOutcome, emit: ProgressFn
) -> tuple[setup.Workbench, training.Distiller, PruneOutcome, RecoveryOutcome | None, str | None, float]:
    """The search's pick as the pipeline goes on with it: its workbench (reporting to ``emit``),
    distiller, pruning and recovery, and its held-out score after pruning."""
    pick = searched.pick
    assert pick.bench is not None and pick.distiller is not None and pick.pruned is not None
    pick.bench.emit = emit
    after_prune = pick.score_after_prune if pick.score_after_prune is not None else pick.bench.score()
    return pick.bench, pick.distiller, pick.pruned, pick.recovered, pick.recovery_note, after_prune


FINISH_STAGES = (Stage.EXPORT, Stage.MEASURE, Stage.QUALITY, Stage.REPORT)


def with_job_eta(progress: ProgressFn, budget: Budget) -> ProgressFn:
    """Progress events whose ``eta_seconds`` is the whole job's: until distillation ends the job
    ends at its budget (distillation fills it), or earlier when the step limit ends distillation
    first; then the finish reserve counts down from where distillation stopped."""
    finish_started: list[float] = []

    def emit(p: Progress) -> None:
        now = time.perf_counter()
        if p.stage in FINISH_STAGES:
            if not finish_started:
                finish_started.append(now)
            eta = max(0.0, finish_started[0] + budget.finish_reserve() - now)
        elif p.stage == Stage.DISTILL and p.eta_seconds is not None:
            eta = min(p.eta_seconds + budget.finish_reserve(), budget.left())
        elif p.stage == Stage.DONE:
            eta = 0.0
        else:
            eta = budget.left()
        update = {"eta_seconds": round(eta, 1), "elapsed_seconds": round(budget.elapsed(), 1)}
        progress(p.model_copy(update=update))

    return emit


def run_pipeline(
    model_path: Path,
    spec: CompressionSpec,
    out_dir: Path,
    *,
    calibration: dict[str, Path] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    budget: Budget | None = None,
) -> PipelineResult:
    """The stages up to the exported student; ``compress`` adds the measurements and the report."""
    budget = budget or Budget(spec.distill.budget_seconds)
    emit = progress or _noop
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    seconds: dict[str, float] = {}

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t

    emit(Progress(stage=Stage.IMPORT, message="converting the model"))
    with timed("import"):
        bench = setup.load_workbench(
            model_path, spec, calibration or {}, budget, emit, should_stop or (lambda: False)
        )
    bench.check()

    searched: search.SearchOutcome | None = None
    export_spec = spec.export
    if spec.mode == PruneMode.SINGLE:
        emit(Progress(stage=Stage.PRUNE, message=f"{spec.prune.method.value} pruning"))
        distiller = training.Distiller(bench, spec.distill)
        with timed("prune"):
            pruned = pruning.run(bench, spec.prune, distiller)
        between_rounds = sum(r.seconds for r in distiller.rounds)  # distillation, not pruning
        seconds["prune"] -= between_rounds
        bench.check()

        t = time.perf_counter()
        recovered, recovery_note = recovery.run(bench, spec.recover, pruned)
        if recovered is not None:
            seconds["recover"] = time.perf_counter() - t
            score_after_prune = recovered.score_before  # measured there: one held-out pass, not two
        else:
            with timed("prune"):
                score_after_prune = bench.score()
        bench.check()
        distill_notes: list[str] = []
    else:  # candidates at several levels; the pick (its own workbench) is distilled on below
        with timed("search"):
            searched = search.run(bench, spec, out_dir)
        bench, distiller, pruned, recovered, recovery_note, score_after_prune = _picked(searched, emit)
        distill_notes = list(searched.notes)
        between_rounds = 0.0
        export_spec = spec.export.model_copy(update={"quantize": searched.quantize})
        bench.check()

    with timed("distill"):
        distill_notes += training.train(distiller)
        score_after_distill = bench.score()
    seconds["distill"] += between_rounds
    bench.check()
    if searched is not None:
        with timed("search"):  # a pick shipped on its projection that missed: a candidate that met
            fell = searched.fallback(spec.target)
            if fell is not None:
                searched = fell
                bench, distiller, pruned, recovered, recovery_note, score_after_prune = _picked(fell, emit)
                score_after_distill = bench.score()
                distill_notes.append(fell.notes[-1])
                export_spec = spec.export.model_copy(update={"quantize": fell.quantize})

    with timed("export"):
        exported, teacher_onnx, student_onnx = exporting.run(bench, export_spec, out_dir)
    return PipelineResult(
        model_path=model_path,
        spec=spec,
        imported=bench.imported,
        data_range=bench.data_range,
        prune=pruned,
        distill_rounds=distiller.rounds,
        score_after_prune=score_after_prune,
        score_after_distill=score_after_distill,
        recovery=recovered,
        export=exported,
        teacher_onnx=teacher_onnx,
        student_onnx=student_onnx,
        heldout=bench.heldout,
        seconds=seconds,
        budget=budget,
        distill_notes=distill_notes,
        recovery_note=recovery_note,
        search=searched.section if searched is not None else None,
    )
