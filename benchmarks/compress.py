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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.baseline import run_baseline
from benchmarks.common import setup
from benchmarks.evaluate import evaluate_student, teacher_path
from benchmarks.results import write_results
from worker.spec import CompressionSpec, DistillSpec, PruneSpec
from worker.zoo.registry import ZOO_NAMES, model_entry, zoo_dir

log = logging.getLogger("benchmarks.compress")

DEFAULT_BUDGET_S = 120.0  # the engine's default distill.budget_seconds
CURVE_BUDGET_S = 30.0  # the other points of the quality-vs-MACs curve
DEFAULT_RATIOS = (0.25, 0.5, 0.75)
HEADLINE_RATIO = 0.5
LATENCY_BUDGET_S = 8.0
TP_SECONDS = 4.0
HERE = Path(__file__).resolve().parent


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def _sampler_for(name: str, r: Any) -> Any:
    """An engine ``InputSampler`` over the zoo calibration set of a pipeline result's model."""
    from worker.engine.sampling import InputSampler, load_calibration, mix_share
    from worker.spec import Distribution

    entry = model_entry(name)
    arrays = {
        n: load_calibration(zoo_dir() / entry["calibration"], spec, n)
        for n, spec in r.imported.inputs.items()
        if spec.distribution == Distribution.CALIBRATION
    }
    return InputSampler(r.imported.inputs, arrays, seed=11, mix=mix_share(DistillSpec().augment))


def throughput(name: str, r: Any, rounds: int = 3, seconds: float = TP_SECONDS) -> dict[str, float]:
    """Steps/s of the engine's ``distill`` (default spec: L1, held-out checks every 50 steps) vs a
    bare loop (fixed batch, ``l1_loss(student(x), teacher(x))``, Adam) on copies of the same pruned
    student at the same batch size. They alternate ``rounds`` times for ``seconds`` each (the
    machine is shared: alternation spreads the noise); medians are reported. ``ours_ssim`` is the
    engine loop with L1 + 0.5 SSIM (the SSIM term's cost)."""
    from worker.engine.distill import distill
    from worker.engine.importers import to_torch

    teacher = to_torch(r.imported.onnx_model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    sampler = _sampler_for(name, r)
    spec = DistillSpec()
    x = sampler.train_batch(spec.batch_size)
    cadence = max(1, min(50, spec.steps // 10))
    got: dict[str, list[float]] = {"ours": [], "ours_ssim": [], "bare": []}
    with_ssim = spec.model_copy(update={"losses": {"l1": 1.0, "ssim": 0.5}})
    for _ in range(rounds):
        for label, dspec in (("ours", spec), ("ours_ssim", with_ssim)):
            res = distill(
                teacher,
                copy.deepcopy(r.imported.module),
                sampler,
                dspec,
                data_range=r.data_range,
                steps=1_000_000,
                budget_seconds=seconds,
                eval_every=cadence,
            )
            got[label].append(res.steps / res.seconds)
        student = copy.deepcopy(r.imported.module)
        params = [p for p in student.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=spec.lr)
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            out = _first(student(*x.values()))
            with torch.no_grad():
                t = _first(teacher(*x.values()))
            loss = F.l1_loss(out, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        got["bare"].append(steps / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in got.items()}
    return {
        "ours_steps_per_s": med["ours"],
        "ours_ssim_steps_per_s": med["ours_ssim"],
        "bare_steps_per_s": med["bare"],
        "ratio": med["ours"] / med["bare"],
        "ratio_ssim": med["ours_ssim"] / med["bare"],
    }


def run_ours(
    name: str,
    ratio: float,
    budget_s: float,
    out_dir: Path,
    distill_overrides: dict[str, Any] | None = None,
    target_macs: int | None = None,
) -> tuple[dict[str, Any], Any]:
    """The engine with default settings except ratio (or ``target_macs``), budget and
    ``distill_overrides`` (whose ``allocation`` key, if any, goes to the prune spec); returns
    (facts, PipelineResult)."""
    distill_extra = dict(distill_overrides or {})
    prune_extra = {"allocation": distill_extra.pop("allocation")} if "allocation" in distill_extra else {}
    from worker.engine.pipeline import run_pipeline

    spec = CompressionSpec(
        prune=PruneSpec(ratio=ratio, target_macs=target_macs, **prune_extra),
        distill=DistillSpec(budget_seconds=budget_s, **distill_extra),
    )
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


def _ours(
    name: str, label: str, ratio: float, budget_s: float, work: Path, overrides: dict[str, Any], **kw: Any
) -> tuple[dict[str, Any], Any]:
    log.info("bench.ours model=%s run=%s budget_s=%.0f", name, label, budget_s)
    try:
        facts, r = run_ours(name, ratio, budget_s, work / f"{name}_ours_{label}", overrides, **kw)
        facts["eval"] = evaluate_student(name, Path(facts["onnx"]), LATENCY_BUDGET_S).to_dict()
    except Exception as e:
        log.exception("bench.ours_failed model=%s run=%s", name, label)
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}, None
    log.info(
        "bench.ours_done model=%s run=%s wall_s=%.0f steps=%d stages=%s psnr=%.2f ssim=%.4f",
        name,
        label,
        facts["wall_s"],
        facts["steps"],
        facts["stage_s"],
        facts["eval"]["psnr_db"],
        facts["eval"]["ssim"],
    )
    return facts, r


def bench_model(
    name: str,
    ratios: list[float],
    budget_s: float,
    work: Path,
    overrides: dict[str, Any],
    match: bool,
    curve_budget_s: float = CURVE_BUDGET_S,
) -> dict[str, Any]:
    """Baseline and ours at the headline ratio with ``budget_s`` (+ throughput), ours at the other
    ratios with ``curve_budget_s``, and ours pruned to the baseline's MACs when ``match`` and the
    two differ by more than 5%."""
    res: dict[str, Any] = {"model": name, "ours": {}, "baseline": None, "throughput": None, "matched": None}
    t_model = time.perf_counter()
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
        log.info("bench.baseline_done model=%s %s", name, {k: v for k, v in base.items() if k != "eval"})
        res["baseline"] = base
    for ratio in ratios:
        b_s = budget_s if ratio == HEADLINE_RATIO else curve_budget_s
        facts, r = _ours(name, str(ratio), ratio, b_s, work, overrides)
        facts["budget_s"] = b_s
        res["ours"][str(ratio)] = facts
        if ratio == HEADLINE_RATIO and r is not None:
            res["throughput"] = throughput(name, r)
            log.info("bench.throughput model=%s %s", name, res["throughput"])
    be = (res["baseline"] or {}).get("eval")
    oe = res["ours"].get(str(HEADLINE_RATIO), {}).get("eval")
    differ = oe is None or be is None or abs(oe["mac_reduction"] / be["mac_reduction"] - 1) > 0.05
    if match and be and be["mac_reduction"] > 1.0 and differ:
        # the same MACs as the baseline's student (torch count of the teacher / the ONNX reduction)
        target = int(model_entry(name)["macs"] / be["mac_reduction"])
        res["matched"], _ = _ours(
            name, "matched", HEADLINE_RATIO, budget_s, work, overrides, target_macs=target
        )
        res["matched"]["target_macs"] = target
    res["wall_s"] = time.perf_counter() - t_model
    log.info("bench.model_done model=%s wall_s=%.0f", name, res["wall_s"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--budget-seconds",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"distillation wall-clock budget per run at the headline ratio, both methods (default "
        f"{DEFAULT_BUDGET_S:g}, the engine's default)",
    )
    ap.add_argument(
        "--curve-budget-seconds",
        type=float,
        default=CURVE_BUDGET_S,
        help=f"budget of ours at the other ratios (default {CURVE_BUDGET_S:g})",
    )
    ap.add_argument("--models", default=",".join(ZOO_NAMES), help="comma-separated zoo names")
    ap.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)), help="channel ratios for ours")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="override the engine's distill.steps cap for ours (default: the engine default)",
    )
    ap.add_argument("--lr", type=float, default=None, help="override distill.lr for ours")
    ap.add_argument("--allocation", default=None, help="override prune.allocation for ours (uniform)")
    ap.add_argument("--batch-size", type=int, default=None, help="override distill.batch_size for ours")
    ap.add_argument(
        "--losses", default=None, help="override distill.losses for ours, JSON, e.g. '{\"l1\": 1.0}'"
    )
    ap.add_argument(
        "--no-match",
        action="store_true",
        help="skip ours pruned to the baseline's MACs (target_macs) at the headline ratio",
    )
    ap.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads for pruning and training, both methods (default 1: on a shared 2-core box "
        "one thread per process is far steadier than two; ONNX Runtime latency sets its own threads)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="markdown results file")
    args = ap.parse_args(argv)
    setup(args.train_threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ratios = [float(r) for r in args.ratios.split(",")]
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "steps": args.steps,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "losses": json.loads(args.losses) if args.losses else None,
            "allocation": args.allocation,
        }.items()
        if v is not None
    }
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="gc-bench-") as tmp:
        for name in models:
            results.append(
                bench_model(
                    name,
                    ratios,
                    args.budget_seconds,
                    Path(tmp),
                    overrides,
                    not args.no_match,
                    args.curve_budget_seconds,
                )
            )
    total = time.perf_counter() - t0
    payload = {
        "run_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "overrides": overrides,
        "command": " ".join(["python -m benchmarks.compress", *(argv if argv is not None else sys.argv[1:])]),
        "budget_seconds": args.budget_seconds,
        "curve_budget_seconds": args.curve_budget_seconds,
        "train_threads": args.train_threads,
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
