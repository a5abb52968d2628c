"""The search stage (``prune.mode`` search / sweep): candidates at several compression levels, each
pruned from the same teacher, measured on its own exported ONNX like a finished job, and the pick
handed back with its workbench so that the pipeline distills it on for the rest of the budget.

What candidates share (computed once, in ``PruneCache``): the pruning plan (layer probing), the
sensitivity profile of every layer group and its greedy path (each level is a point on it), the
teacher's latency model, the teacher's ONNX Runtime outputs on the held-out inputs. What each
trained candidate gets, the same for all so that they rank fairly: the least-squares refit and
``train_seconds`` of distillation. Untrained ("structural") candidates decide cost targets: latency
and size do not depend on the weights. The decisions (levels, front, pick) are ``engine/search.py``.

Budget: the search may take ``SEARCH_SHARE`` of the time the job has for training when it starts;
the pick's distillation gets the rest, and the finish reserve stays untouched.

Longer than 400 lines because the ``Searcher`` is one piece of state (the candidates, their
workbenches, the shared cache, the clock) that its evaluation steps and the bisection both change;
the decisions that need none of it are already apart, in ``engine/search.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import nn

from worker.engine import measure, quality
from worker.engine import search as S
from worker.engine.budget import PRUNE_SHARE
from worker.engine.export import QUANTIZERS, ExportResult, ort_run
from worker.engine.result import PruneOutcome, RecoveryOutcome
from worker.engine.stages import exporting, pruning, recovery, training
from worker.engine.stages.setup import Workbench, forward
from worker.errors import BadSpecError, first_line
from worker.report_schema import SearchCandidate, SearchSection
from worker.spec import (
    MAX_CANDIDATES,
    CandidatePoint,
    CompressionSpec,
    Progress,
    PruneMode,
    Quantize,
    Stage,
    TargetSpec,
)

log = logging.getLogger(__name__)

SEARCH_SHARE = 0.6  # of the training time left when the search starts; the pick gets the rest
PLANNED_TRAINED = 4  # trained candidates a quality search plans for (3 bisection steps + 1 finer level)
QUANT_WEIGHT = 0.3  # what a quantized copy costs, in trained-candidate slots (export + measure only)
TRAIN_SHARE, RECOVER_SLOT = 0.5, 0.3  # of a trained candidate's slot: distillation, the refit's cap
LATENCY_SLOT, LATENCY_MIN, LATENCY_MAX = 0.12, 1.0, 10.0  # a candidate's latency rounds (seconds)
LATENCY_RUNS = 40
CURVE_POINTS, CURVE_SAMPLES = 7, 8  # a candidate's timed learning curve: points, held-out samples
NEAR_MISS = 0.06  # a miss by at most this relative shortfall may turn into a pass with more training
MAX_REFINES = 3
QUANT_MODES = (Quantize.INT8_STATIC, Quantize.FP16)
HOW = (
    "Each candidate is pruned from the teacher at its level, exported to ONNX with the teacher's interface "
    "and measured there: MACs and parameters from the graph, bytes of the file, p50 latency in ONNX Runtime "
    "(teacher and candidate interleaved in one process, {runs} rounds at most, 1 thread and all cores), SSIM "
    "and PSNR against the teacher's ONNX Runtime outputs on the job's held-out inputs. Trained candidates had "
    "the least-squares refit and {train:.1f} s of distillation each; structural ones (cost targets) were "
    "only pruned and timed."
)


@dataclass
class Candidate:
    """One evaluated candidate: its report row and what the pipeline needs if it is the pick."""

    row: SearchCandidate
    bench: Workbench | None = None  # its own workbench (student: its pruned module); quantized: None
    distiller: training.Distiller | None = None
    pruned: PruneOutcome | None = None
    recovered: RecoveryOutcome | None = None
    recovery_note: str | None = None
    score_after_prune: float | None = None
    exported: ExportResult | None = None
    trained: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class SearchOutcome:
    section: SearchSection
    pick: Candidate  # a float candidate (the source of a quantized pick)
    quantize: Quantize  # how the pick is exported
    notes: list[str]
    candidates: list[Candidate] = field(default_factory=list)

    def fallback(self, target: TargetSpec | None) -> SearchOutcome | None:
        """After the pick's distillation: when it was picked on its projection and now misses a
        quality target on the held-out inputs, the outcome that ships the fastest candidate that met
        every target as measured in the search (as it was then: the budget is spent); else None."""
        if target is None or not target.quality_targets() or self.pick.bench is None:
            return None
        pick_row = next(r for r in self.section.candidates if r.id == self.section.pick)
        if pick_row.meets:
            return None  # measured, not projected: no search candidate can do better on latency
        b = self.pick.bench
        q = quality.evaluate(
            forward(b.student, b.heldout), b.teacher_heldout, data_range=b.data_range, names=["ssim", "psnr"]
        )
        fell = S.fallback(
            self.section.candidates, pick_row, {"ssim": q.mean("ssim"), "psnr": q.mean("psnr")}, target
        )
        if fell is None:
            return None
        row, why = fell
        source = _source(self.candidates, row)
        for r in self.section.candidates:
            r.picked = r is row
        section = self.section.model_copy(
            update={
                "pick": row.id,
                "met": True,
                "why": why,
                "final_note": (
                    f"The shipped model is candidate {row.id} as the search measured it (the budget went to "
                    f"{pick_row.id}'s distillation); the report's other sections measure the shipped model."
                ),
            }
        )
        log.info("search.fallback from=%s to=%s", pick_row.id, row.id)
        return SearchOutcome(section, source, Quantize(row.quantize), [*self.notes, why], self.candidates)


class Searcher:
    """Evaluates candidates of one teacher within the search's deadline."""

    def __init__(self, bench: Workbench, spec: CompressionSpec, out_dir: Path) -> None:
        self.bench, self.spec, self.out_dir = bench, spec, out_dir
        self.target: TargetSpec | None = spec.target
        self.sweep = spec.mode == PruneMode.SWEEP
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + SEARCH_SHARE * bench.budget.distill_seconds()
        # what the pick's distillation will get after the search (quality projections aim there)
        self.final_seconds = (1.0 - SEARCH_SHARE) * bench.budget.distill_seconds()
        self.base: nn.Module = copy.deepcopy(bench.student)  # the unpruned student, never changed
        self.cache = pruning.PruneCache(base=self.base)
        self.tmp = Path(tempfile.mkdtemp(prefix="gc-search-"))
        self.teacher_onnx = exporting.save_teacher(bench)
        self.feeds = {k: v.numpy() for k, v in bench.heldout.items()}
        self.one = {k: v[:1] for k, v in self.feeds.items()}
        self.shapes = {k: list(v.shape) for k, v in self.one.items()}
        self.t_out = ort_run(onnx.load(str(self.teacher_onnx)), self.feeds)[0]
        self.cands: list[Candidate] = []
        self.alias: dict[float, Candidate] = {}  # levels that pruned exactly what an earlier one did
        self.train_seconds: float | None = None
        self.slot: float | None = None
        self.planned = 1
        self.notes: list[str] = []

    # --- helpers ----------------------------------------------------------------------------

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def emit(self, message: str) -> None:
        self.bench.emit(
            Progress(
                stage=Stage.SEARCH,
                step=len(self.cands),
                total=max(self.planned, len(self.cands)),
                message=message,
                candidates=[self.point(c.row) for c in self.cands][-MAX_CANDIDATES:],
            )
        )

    @staticmethod
    def point(r: SearchCandidate) -> CandidatePoint:
        return CandidatePoint(
            id=r.id,
            level=r.level,
            quantize=Quantize(r.quantize),
            macs=r.macs,
            size_bytes=r.size_bytes,
            latency_ms=r.latency_ms,
            ssim=r.ssim,
            psnr=r.psnr,
            meets=r.meets,
        )

    def _sub_bench(self, cid: str, level: float) -> Workbench:
        """A workbench of its own for a candidate: a fresh copy of the unpruned student; its progress
        events become search events (the job's stage stays ``search``)."""
        parent = self.bench.emit

        def emit(p: Progress) -> None:
            parent(
                Progress(
                    stage=Stage.SEARCH,
                    step=len(self.cands),
                    total=max(self.planned, len(self.cands) + 1),
                    loss=p.loss,
                    message=f"candidate {cid} (level {level:g}): {p.stage.value} {p.message or ''}".strip(),
                )
            )

        return dataclasses.replace(self.bench, student=copy.deepcopy(self.base), emit=emit)

    def _level_done(self, level: float, quantize: Quantize = Quantize.NONE) -> Candidate | None:
        if quantize == Quantize.NONE and level in self.alias:
            return self.alias[level]
        return next((c for c in self.cands if c.row.level == level and c.row.quantize == quantize), None)

    # --- evaluation ---------------------------------------------------------------------------

    def structural(self, level: float) -> Candidate:
        """Prune at ``level`` (no refit, no training), export, measure size and latency."""
        done = self._level_done(level)
        if done is not None:
            return done
        if len(self.cands) >= MAX_CANDIDATES:
            raise _Exhausted("the most candidates one search evaluates")
        t = time.perf_counter()
        cid = f"c{len(self.cands) + 1}"
        self.emit(f"candidate {cid}: pruning at level {level:g}")
        sub = self._sub_bench(cid, level)
        distiller = training.Distiller(sub, self.spec.distill)
        pspec = self.spec.prune.model_copy(update={"ratio": level, "mode": None})
        first = self.cache.plan is None
        deadline = min(
            time.perf_counter() + PRUNE_SHARE * self.bench.budget.total if first else self.deadline,
            self.deadline,
        )
        pruned = pruning.run(sub, pspec, distiller, cache=self.cache, deadline=deadline)
        same = next(
            (c for c in self.cands if c.row.quantize == "none" and c.row.macs == pruned.macs_after), None
        )
        if same is not None:  # rounded channel counts: this level prunes exactly what another did
            self.alias[level] = same
            self.emit(f"level {level:g} keeps the same channels as {same.row.id} (level {same.row.level:g})")
            return same
        c = Candidate(
            row=SearchCandidate(
                id=cid,
                level=level,
                allocation=self._allocation_text(pruned),
                quantize=Quantize.NONE.value,
                macs=pruned.macs_after,
                params=0,
                size_bytes=0,
                latency_ms=0.0,
                speedup=0.0,
                latency_runs=0,
                meets=None,
                seconds=0.0,
            ),
            bench=sub,
            distiller=distiller,
            pruned=pruned,
        )
        self.cands.append(c)
        c.exported = exporting.export(sub, self.spec.export.model_copy(update={"quantize": Quantize.NONE}))
        self._measure(c, c.exported.model, latency=True, quality_too=False)
        c.row.seconds += time.perf_counter() - t
        S.judge(c.row, self.target)
        self.emit(f"candidate {cid}: level {level:g}, {c.row.latency_ms:.3g} ms")
        return c

    def trained(self, level: float) -> Candidate:
        """A candidate at ``level`` refitted and distilled for ``train_seconds``, then measured."""
        c = self.structural(level)
        if c.trained:
            return c
        assert c.bench is not None and c.distiller is not None and c.pruned is not None
        self._size_slots()
        t = time.perf_counter()
        slot = self.slot or 0.0
        sub = c.bench
        rec, note = recovery.run(
            sub, self.spec.recover, c.pruned, deadline=time.perf_counter() + RECOVER_SLOT * slot
        )
        c.recovered, c.recovery_note = rec, note
        c.score_after_prune = rec.score_before if rec is not None else sub.score()
        sub.check()
        c.notes += self._train(c)
        c.trained = True
        c.row.recovered = bool(rec is not None and rec.kept)
        self._remeasure(c)
        c.row.seconds += time.perf_counter() - t
        self.emit(f"candidate {c.row.id}: level {level:g}, {_quality(c.row)}")
        return c

    def train_more(self, c: Candidate) -> None:
        """Another ``train_seconds`` of distillation for a trained candidate (its own state goes on),
        then measure it again: spent where a near miss may turn into a pass."""
        assert c.distiller is not None and c.bench is not None
        t = time.perf_counter()
        c.notes += self._train(c)
        self._remeasure(c)
        c.row.seconds += time.perf_counter() - t
        self.emit(f"candidate {c.row.id}: trained on, {_quality(c.row)}")

    def _train(self, c: Candidate) -> list[str]:
        """``train_seconds`` of distillation, its held-out curve timed (``CURVE_POINTS`` points on
        ``CURVE_SAMPLES`` samples) so that its SSIM can be projected; the pick's later training
        evaluates as any job."""
        assert c.distiller is not None and self.train_seconds is not None
        d = c.distiller
        d.eval_seconds, d.heldout_n = self.train_seconds / CURVE_POINTS, CURVE_SAMPLES
        try:
            return training.train(d, seconds=self.train_seconds)
        finally:
            d.eval_seconds, d.heldout_n = None, training.Distiller.heldout_n

    def _remeasure(self, c: Candidate) -> None:
        assert c.distiller is not None and c.bench is not None
        c.exported = exporting.export(
            c.bench, self.spec.export.model_copy(update={"quantize": Quantize.NONE})
        )
        c.row.distill_steps = c.distiller.steps
        c.row.train_seconds = round(sum(r.seconds for r in c.distiller.rounds), 2)
        self._measure(c, c.exported.model, latency=False, quality_too=True)
        S.judge(c.row, self.target)
        self._project(c)

    def _project(self, c: Candidate) -> None:
        """``ssim_projected``: its SSIM after the training the pick gets, from its own curve."""
        assert c.distiller is not None
        if c.row.ssim is None or not self._image_outputs():
            return
        curve, offset = [], 0.0
        for r in c.distiller.rounds:
            curve += [(offset + p["seconds"], p["heldout_score"]) for p in r.curve]
            offset += r.seconds
        proj = S.project_ssim(c.row.ssim, curve, offset, offset + self.final_seconds)
        c.row.ssim_projected = None if proj is None else round(proj, 5)
        S.judge_projected(c.row, self.target)

    def quantized(self, src: Candidate, mode: Quantize) -> Candidate | None:
        """A quantized copy of trained candidate ``src``, measured like any other (None when the
        quantizer fails on this graph; the report's notes say why)."""
        assert src.exported is not None and src.bench is not None
        if len(self.cands) >= MAX_CANDIDATES:
            return None
        t = time.perf_counter()
        cid = f"c{len(self.cands) + 1}"
        self.emit(f"candidate {cid}: {mode.value} copy of {src.row.id}")
        calib = exporting.calibration_batches(src.bench)
        if self.bench.imported.fixed_batch is not None:
            fb = self.bench.imported.fixed_batch
            calib = [
                {k: v[i : i + fb] for k, v in b.items()}
                for b in calib
                for i in range(0, len(next(iter(b.values()))), fb)
            ]
        try:
            model = QUANTIZERS[mode](src.exported.float_model, calib)
        except Exception as e:
            self.notes.append(f"{mode.value} copy of {src.row.id} could not be made: {first_line(e)}")
            return None
        row = src.row.model_copy(
            update={
                "id": cid,
                "quantize": mode.value,
                "from_candidate": src.row.id,
                "pareto": False,
                "picked": False,
            }
        )
        c = Candidate(row=row, trained=True)
        self.cands.append(c)
        self._measure(c, model, latency=True, quality_too=True)
        c.row.seconds = time.perf_counter() - t
        S.judge(c.row, self.target)
        src_row = src.row
        if src_row.ssim_projected is not None and src_row.ssim is not None and c.row.ssim is not None:
            # the copy keeps the source's projected gain, less what quantization cost it
            c.row.ssim_projected = round(src_row.ssim_projected - (src_row.ssim - c.row.ssim), 5)
        S.judge_projected(c.row, self.target)
        self.emit(
            f"candidate {cid}: {mode.value} of {src.row.id}, {c.row.latency_ms:.3g} ms, {_quality(c.row)}"
        )
        return c

    def _measure(self, c: Candidate, model: onnx.ModelProto, *, latency: bool, quality_too: bool) -> None:
        path = self.tmp / f"{c.row.id}.onnx"
        onnx.save(model, str(path))
        figs = measure.measure_model(path, self.shapes)
        c.row.params, c.row.size_bytes = figs.params, figs.bytes
        if figs.macs is not None:
            c.row.macs = figs.macs.total
        if latency:
            seconds = min(LATENCY_MAX, max(LATENCY_MIN, LATENCY_SLOT * (self.slot or self.left() / 4)))
            lat = measure.measure_latency(
                self.teacher_onnx, path, self.one, warmup=3, runs=LATENCY_RUNS, budget_seconds=seconds
            )
            one = lat.at(1)
            c.row.latency_ms, c.row.speedup, c.row.latency_runs = one.student.p50_ms, one.speedup, one.rounds
            many = [t for t in lat.per_threads if t.threads > 1]
            if many:
                c.row.latency_ms_all_cores, c.row.speedup_all_cores = (
                    many[-1].student.p50_ms,
                    many[-1].speedup,
                )
        if quality_too:
            s_out = ort_run(model, self.feeds)[0]
            q = quality.evaluate(s_out, self.t_out, data_range=self.bench.data_range, names=["ssim", "psnr"])
            c.row.ssim, c.row.psnr = q.mean("ssim"), q.mean("psnr")
        if self.sweep:
            name = f"candidate-{c.row.id[1:]}.onnx"
            shutil.copyfile(path, self.out_dir / name)
            c.row.artifact = name

    def _size_slots(self) -> None:
        """Before the first trained candidate: the seconds each trained candidate gets (the same
        for all), from the time left and how many the search plans."""
        if self.slot is not None:
            return
        quant = len(QUANT_MODES) if self._quantize() else 0
        slots = self.planned + QUANT_WEIGHT * quant
        self.slot = max(1.0, self.left() / max(1.0, slots))
        self.train_seconds = max(1.0, TRAIN_SHARE * self.slot)

    def _quantize(self) -> bool:
        return bool(self.target and self.target.quantize and self.spec.export.quantize == Quantize.NONE)

    def _allocation_text(self, pruned: PruneOutcome) -> str:
        if pruned.allocation is not None:
            return self.spec.prune.allocation.value
        return "uniform" if self.spec.prune.allocation.value == "uniform" else "uniform (trials did not fit)"

    def room(self) -> bool:
        """Whether another trained candidate fits before the deadline."""
        return self.slot is None or self.left() >= 0.8 * self.slot

    # --- the search ---------------------------------------------------------------------------

    def run(self) -> SearchOutcome:
        try:
            self._search()
        except _Exhausted as e:
            self.notes.append(f"the search stopped early: {e}")
        return self._pick()

    def _search(self) -> None:
        target, grid = self.target, list(S.GRID)
        if target is None:  # a sweep without a target
            asked = float(self.spec.prune.ratio or 0.5)
            levels = sorted(set(S.SWEEP_LEVELS) | {asked}, key=lambda x: abs(x - asked))
            self.planned = len(levels)
            for i, lv in enumerate(levels):
                if i and not self.room():
                    self.notes.append(
                        f"levels {levels[i:]} were not tried: the search's share of the budget was spent"
                    )
                    break
                self.trained(lv)
            return
        if target.min_ssim is not None and not self._image_outputs():
            raise BadSpecError(
                "target min_ssim needs image outputs (4-d); this model's are not: use min_psnr"
            )
        lo = 0
        if target.cost_targets():  # structural bisection: the least pruned level meeting the cost targets
            a, b, found = 0, len(grid) - 1, None
            while a <= b:
                i = S.bisect_index(a, b)
                c = self.structural(grid[i])
                self.bench.check()
                if S.meets_cost(c.row, target):
                    found, b = i, i - 1
                else:
                    a = i + 1
            lo = found if found is not None else len(grid) - 1
            if found is None:
                self.notes.append(
                    f"no level up to {grid[-1]:g} meets the cost targets: the most pruned is the closest"
                )
        if not target.quality_targets():
            self.planned = 1
            self.trained(grid[lo])
            self._quantized_copies()
            return
        # quality bisection over [lo, end]: the most pruned level that still meets every target
        self.planned = max(1, math.ceil(math.log2(len(grid) - lo + 1))) + 1
        a, b = lo, len(grid) - 1
        met: float | None = None
        missed: float | None = None
        first = True
        while a <= b:
            if not first and not self.room():
                self.notes.append("the quality bisection stopped: the search's share of the budget was spent")
                break
            first = False
            i = S.bisect_index(a, b)
            c = self.trained(grid[i])
            self.bench.check()
            if S.passes(c.row):  # met, or projected to with the pick's training
                met, a = grid[i], i + 1
            else:
                missed, b = grid[i], i - 1
        finer = S.between([c.row.level for c in self.cands], met, missed)
        if finer is not None and self.room():
            self.trained(finer)
        self._refine_boundary()
        self._quantized_copies()

    def _refine_boundary(self) -> None:
        """Short training ranks candidates pessimistically (the pick gets far more): while time is
        left, train on the most pruned candidate that missed narrowly (within ``NEAR_MISS`` of
        the targets) and is more pruned than every candidate that met."""
        assert self.target is not None
        for _ in range(MAX_REFINES):
            if not self.room():
                return
            met = [
                c.row.level for c in self.cands if c.trained and S.passes(c.row) and c.row.quantize == "none"
            ]
            near = [
                c
                for c in self.cands
                if c.trained
                and c.row.quantize == "none"
                and c.row.meets is False
                and not c.row.meets_projected
                and c.row.level > max(met, default=-1.0)
                and S.shortfall(c.row, self.target) <= NEAR_MISS
                and S.meets_cost(c.row, self.target)
            ]
            if not near:
                return
            self.train_more(min(near, key=lambda c: (S.shortfall(c.row, self.target), -c.row.level)))

    def _quantized_copies(self) -> None:
        if not self._quantize():
            return
        measured = [c for c in self.cands if c.trained and c.row.quantize == Quantize.NONE.value]
        if not measured:
            return
        best, _, _ = S.choose([c.row for c in measured], self.target)
        src = next(c for c in measured if c.row is best)
        for mode in QUANT_MODES:
            if self.left() <= 0:
                self.notes.append(f"no {mode.value} copy: the search's share of the budget was spent")
                continue
            self.quantized(src, mode)

    def _image_outputs(self) -> bool:
        return self.t_out.ndim == 4 and min(self.t_out.shape[-2:]) >= 7

    def _pick(self) -> SearchOutcome:
        rows = [c.row for c in self.cands]
        if not any(c.trained for c in self.cands):  # a search cut short before any training
            fallback = self.cands[0] if self.cands else self.structural(S.GRID[len(S.GRID) // 2])
            self.trained(fallback.row.level)
            rows = [c.row for c in self.cands]
        pick_row, met, why = S.choose(rows, self.target, self.spec.prune.ratio)
        for r in rows:
            r.picked = r is pick_row
        S.mark_front(rows)
        source = _source(self.cands, pick_row)
        seconds = time.perf_counter() - self.t0
        section = SearchSection(
            mode=self.spec.mode.value,
            targets=(self.target.quality_targets() | self.target.cost_targets()) if self.target else {},
            objective="latency" if self.target is None or self.target.quality_targets() else "quality",
            candidates=rows,
            pick=pick_row.id,
            met=met,
            why=why,
            final_note=(
                f"The shipped model is candidate {pick_row.id} distilled further for the rest of the budget "
                f"(its row shows it after {pick_row.distill_steps} steps); the report's other sections measure the "
                "shipped model."
            ),
            seconds=round(seconds, 2),
            how_measured=HOW.format(runs=LATENCY_RUNS, train=self.train_seconds or 0.0),
        )
        log.info(
            "search.done candidates=%d pick=%s met=%s seconds=%.1f", len(rows), pick_row.id, met, seconds
        )
        self.emit(f"picked {pick_row.id}: {why}")
        return SearchOutcome(
            section, source, Quantize(pick_row.quantize), self.notes + source.notes, self.cands
        )


def _source(cands: list[Candidate], row: SearchCandidate) -> Candidate:
    """The float candidate that ships as ``row``: its own, or the one a quantized row was made from."""
    return next(c for c in cands if c.row.id == (row.from_candidate or row.id))


class _Exhausted(Exception):
    """The search reached the most candidates it may evaluate."""


def _quality(r: SearchCandidate) -> str:
    parts = [
        f"SSIM {r.ssim:.4f}" if r.ssim is not None else "",
        f"PSNR {r.psnr:.2f} dB" if r.psnr is not None else "",
    ]
    return ", ".join(p for p in parts if p) or "quality not measured"


def run(bench: Workbench, spec: CompressionSpec, out_dir: Path) -> SearchOutcome:
    """Search the compression level as ``spec.target`` / ``spec.prune.mode`` ask."""
    bench.emit(Progress(stage=Stage.SEARCH, message="target search: the teacher's outputs and latency"))
    searcher = Searcher(bench, spec, out_dir)
    try:
        return searcher.run()
    finally:
        shutil.rmtree(searcher.tmp, ignore_errors=True)
        shutil.rmtree(searcher.teacher_onnx.parent, ignore_errors=True)
