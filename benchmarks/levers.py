"""Quick lever experiments: the engine at ratio 0.5 with one setting changed at a time.

Each variant runs ``run_pipeline`` with a short budget and is scored by the shared evaluator
(held-out PSNR/SSIM vs the teacher, ONNX Runtime). Engine code is not changed: a lever is a
different ``CompressionSpec``.

    python -m benchmarks.levers [--budget-seconds 20] [--models dcgan,resnet_i2i] [--out benchmarks/LEVERS.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import setup
from benchmarks.evaluate import quality, teacher_path
from worker.spec import CompressionSpec, Criterion, DistillSpec, PruneSpec
from worker.zoo.registry import model_entry, zoo_dir

log = logging.getLogger("benchmarks.levers")
HERE = Path(__file__).resolve().parent


def variants(budget: float) -> dict[str, CompressionSpec]:
    """Name -> spec; "default" is the engine's default apart from ratio and budget."""

    def spec(prune: dict[str, Any] | None = None, **distill: Any) -> CompressionSpec:
        d = {"budget_seconds": budget, **distill}
        return CompressionSpec(prune=PruneSpec(ratio=0.5, **(prune or {})), distill=DistillSpec(**d))

    free = {"steps": 1_000_000}  # budget-bound: every variant after "default" drops the 300-step cap
    return {
        "default (300-step cap)": spec(),
        "no step cap": spec(**free),
        "no cap + lr 3e-3": spec(**free, lr=3e-3),
        "no cap + batch 16": spec(**free, batch_size=16),
        "no cap + feature distill": spec(**free, losses={"l1": 1.0, "ssim": 0.5, "feature": 1.0}),
        "no cap + L1 + 0.5 SSIM": spec(**free, losses={"l1": 1.0, "ssim": 0.5}),
        "no cap + bn_scale criterion": spec({"criterion": Criterion.BN_SCALE}, **free),
        "no cap + iterative 2 rounds": spec({"iterative_steps": 2}, **free),
    }


def main(argv: list[str] | None = None) -> int:
    from worker.engine.pipeline import run_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-seconds", type=float, default=20.0)
    ap.add_argument("--models", default="dcgan,resnet_i2i")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the benchmark)")
    ap.add_argument("--out", type=Path, default=HERE / "LEVERS.json")
    args = ap.parse_args(argv)
    setup(args.threads)
    only = {v.strip() for v in args.only.split(",") if v.strip()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gc-levers-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            entry = model_entry(name)
            calib = {"": zoo_dir() / entry["calibration"]} if "calibration" in entry else None
            for label, spec in variants(args.budget_seconds).items():
                if only and label not in only:
                    continue
                t0 = time.perf_counter()
                try:
                    r = run_pipeline(
                        teacher_path(name), spec, Path(tmp) / f"{name}_{len(rows)}", calibration=calib
                    )
                    p, s, _ = quality(name, r.student_onnx)
                    row = {
                        "model": name,
                        "variant": label,
                        "psnr_db": p,
                        "ssim": s,
                        "steps": sum(x.steps for x in r.distill_rounds),
                        "distill_s": sum(x.seconds for x in r.distill_rounds),
                        "wall_s": time.perf_counter() - t0,
                    }
                except Exception as e:
                    row = {"model": name, "variant": label, "error": f"{type(e).__name__}: {str(e)[:160]}"}
                log.info("levers.row %s", row)
                rows.append(row)
    args.out.write_text(
        json.dumps({"budget_seconds": args.budget_seconds, "threads": args.threads, "rows": rows}, indent=1)
    )
    print("| model | variant | PSNR dB | SSIM | steps |\n|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | failed: {r['error']} | | |")
        else:
            print(f"| {r['model']} | {r['variant']} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | {r['steps']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
