"""Compression benchmark (issue 5): the engine with its defaults vs a hand-written baseline.

For every zoo generator, at the same channel ratio and the same distillation wall-clock budget:

- ours: ``worker.engine.pipeline.run_pipeline`` with the default ``CompressionSpec`` except the
  ratio and ``distill.budget_seconds`` (the report-writing step of ``compress()`` is skipped: it
  only measures, and the written ``model.onnx`` is the same);
- baseline: ``benchmarks.baseline`` (onnx2torch, Torch-Pruning L1 at a uniform ratio, Adam on L1);

both are measured by ``benchmarks.evaluate`` on the exported ONNX files only. Ours is also run at
the other ``--ratios`` for the quality-vs-MACs curve, and its distillation throughput is compared
with a bare PyTorch loop on the same pruned model and batch.

    python -m benchmarks.compress [--budget-seconds 45] [--models dcgan,...] [--ratios 0.25,0.5,0.75]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.baseline import BATCH, run_baseline
from benchmarks.baseline import _sampler as baseline_sampler
from benchmarks.evaluate import evaluate_student, teacher_path
from benchmarks.results import write_results
from worker.spec import CompressionSpec, DistillSpec, PruneSpec
from worker.zoo.registry import ZOO_NAMES, model_entry, zoo_dir

log = logging.getLogger("benchmarks.compress")

DEFAULT_BUDGET_S = 45.0
DEFAULT_RATIOS = (0.25, 0.5, 0.75)
HEADLINE_RATIO = 0.5
LATENCY_BUDGET_S = 8.0
BARE_STEPS = 20
BARE_MAX_S = 10.0
HERE = Path(__file__).resolve().parent


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def bare_loop_steps_per_second(name: str, student: torch.nn.Module, teacher: torch.nn.Module) -> float:
    """Steps/s of the plainest loop (Adam, L1 to the teacher) on ``student`` at the engine's batch."""
    student = copy.deepcopy(student).train(False)
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    batch = baseline_sampler(name, seed=7)
    t0 = 0.0
    timed = 0
    for step in range(BARE_STEPS + 2):
        if step == 2:  # two untimed warm-up steps
            t0 = time.perf_counter()
        elif step > 2 and time.perf_counter() - t0 > BARE_MAX_S:
            break
        timed = step - 1
        x = batch(BATCH)
        with torch.no_grad():
            t = _first(teacher(*x))
        loss = F.l1_loss(_first(student(*x)), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return timed / (time.perf_counter() - t0)


def run_ours(name: str, ratio: float, budget_s: float, out_dir: Path) -> tuple[dict[str, Any], Any]:
    """The engine with default settings except ratio and budget; returns (facts, PipelineResult)."""
    from worker.engine.pipeline import run_pipeline

    spec = CompressionSpec(prune=PruneSpec(ratio=ratio), distill=DistillSpec(budget_seconds=budget_s))
    entry = model_entry(name)
    calib = {"": zoo_dir() / entry["calibration"]} if "calibration" in entry else None
    t0 = time.perf_counter()
    r = run_pipeline(teacher_path(name), spec, out_dir, calibration=calib)
    steps = sum(x.steps for x in r.distill_rounds)
    secs = sum(x.seconds for x in r.distill_rounds)
    facts = {
        "wall_s": time.perf_counter() - t0,
        "steps": steps,
        "distill_s": secs,
        "steps_per_s": steps / secs if secs else 0.0,
        "stopped_by": r.distill_rounds[-1].stopped_by if r.distill_rounds else "",
        "layers_kept": len(r.prune.plan.kept) if r.prune.plan else 0,
        "onnx": str(r.student_onnx),
        "stage_s": {k: round(v, 2) for k, v in r.seconds.items()},
    }
    return facts, r


def bench_model(name: str, ratios: list[float], budget_s: float, work: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"model": name, "ours": {}, "baseline": None, "throughput": None}
    t_model = time.perf_counter()
    for ratio in ratios:
        log.info("bench.ours model=%s ratio=%.2f budget_s=%.0f", name, ratio, budget_s)
        try:
            facts, r = run_ours(name, ratio, budget_s, work / f"{name}_ours_{ratio}")
            facts["eval"] = evaluate_student(name, Path(facts["onnx"]), LATENCY_BUDGET_S).to_dict()
        except Exception as e:
            log.exception("bench.ours_failed model=%s ratio=%.2f", name, ratio)
            res["ours"][str(ratio)] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            continue
        res["ours"][str(ratio)] = facts
        log.info(
            "bench.ours_done model=%s ratio=%.2f wall_s=%.0f stages=%s psnr=%.2f ssim=%.4f",
            name,
            ratio,
            facts["wall_s"],
            facts["stage_s"],
            facts["eval"]["psnr_db"],
            facts["eval"]["ssim"],
        )
        if ratio == HEADLINE_RATIO:
            from worker.engine.importers import to_torch

            teacher = to_torch(r.imported.onnx_model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            bare = bare_loop_steps_per_second(name, r.imported.module, teacher)
            res["throughput"] = {
                "ours_steps_per_s": facts["steps_per_s"],
                "bare_steps_per_s": bare,
                "ratio": facts["steps_per_s"] / bare if bare else float("nan"),
            }
    if HEADLINE_RATIO in ratios:
        log.info("bench.baseline model=%s ratio=%.2f budget_s=%.0f", name, HEADLINE_RATIO, budget_s)
        out = work / f"{name}_baseline.onnx"
        t0 = time.perf_counter()
        b = run_baseline(name, teacher_path(name), HEADLINE_RATIO, budget_s, out)
        base: dict[str, Any] = {
            "steps": b.steps,
            "distill_s": b.seconds,
            "error": b.error,
            "wall_s": time.perf_counter() - t0,
        }
        if b.error is None:
            try:
                base["eval"] = evaluate_student(name, out, LATENCY_BUDGET_S).to_dict()
            except Exception as e:
                base["error"] = f"evaluation: {type(e).__name__}: {str(e)[:200]}"
        res["baseline"] = base
    res["wall_s"] = time.perf_counter() - t_model
    log.info("bench.model_done model=%s wall_s=%.0f", name, res["wall_s"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--budget-seconds",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"distillation wall-clock budget per run, both methods (default {DEFAULT_BUDGET_S:g})",
    )
    ap.add_argument("--models", default=",".join(ZOO_NAMES), help="comma-separated zoo names")
    ap.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)), help="channel ratios for ours")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="markdown results file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("worker", "onnx2torch", "torch_pruning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ratios = [float(r) for r in args.ratios.split(",")]
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="gc-bench-") as tmp:
        for name in models:
            results.append(bench_model(name, ratios, args.budget_seconds, Path(tmp)))
    total = time.perf_counter() - t0
    payload = {
        "budget_seconds": args.budget_seconds,
        "ratios": ratios,
        "total_wall_s": total,
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(payload, indent=1))
    table = write_results(payload, args.out)
    print(table)
    log.info("bench.done total_wall_s=%.0f out=%s", total, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
