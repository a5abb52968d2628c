"""Closed-form recovery variants on the same pruned students, measured on images no step saw.

For each model: import its ONNX, prune it once (L1, uniform ratio, the engine's Torch-Pruning path),
then from that same pruned state run each recovery variant on the same calibration inputs and
measure the output against the teacher on the benchmark's held-out images (``heldout.npy``, never
in the calibration file): MSE, SSIM, and the MSE ratio against plain pruning (higher is better;
the issue's target is >= 2). Variants:

- ``zero-1e-3``: ridge 1e-3 towards zero, the first version of the step (the baseline);
- ``pruned-1e-3``: the same ridge, shrinking towards the pruned weights instead of zero;
- ``auto``: shrinking towards the pruned weights, the ridge chosen per layer from
  ``recover.RIDGE_GRID`` on the rows of every 4th calibration sample (the engine default).

    python -m benchmarks.recovery_study [--models a,b] [--ratio 0.5] [--samples 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.big import REAL, ZOO, model_files
from worker.engine.sampling import InputSampler

OUT = Path(__file__).resolve().parent / "runs" / "recovery"
VARIANTS: dict[str, dict[str, object]] = {
    "zero-1e-3": {"ridge": 1e-3, "to_pruned": False},
    "pruned-1e-3": {"ridge": 1e-3, "to_pruned": True},
    "auto": {"ridge": None, "to_pruned": True},
}


@dataclass
class Pruned:
    """A benchmark model pruned uniformly (L1), with what a recovery experiment needs."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    sampler: InputSampler
    kept: dict[str, list[int]]  # layer -> teacher channel ids it kept
    heldout: dict[str, torch.Tensor]  # the benchmark's heldout.npy


def prune_uniform(name: str, ratio: float) -> Pruned:
    from worker.engine import prune, recover
    from worker.engine.importers import import_model
    from worker.engine.stages.setup import probe_inputs
    from worker.spec import PruneSpec

    files = model_files(name)
    imported = import_model(files["model"], None)
    (inp,) = imported.inputs
    sampler = InputSampler(imported.inputs, {inp: np.load(files["calibration"]).astype(np.float32)}, seed=0)
    teacher = copy.deepcopy(imported.module).eval()
    student = imported.module
    small = probe_inputs(teacher, sampler.train_batch(2))
    spec = PruneSpec(ratio=ratio, allocation="uniform")
    with recover.track_kept_channels(student) as kept:
        plan = prune.plan_channel_pruning(student, small, spec)
        prune.prune_step(student, small, prune.make_pruner(student, small, spec, plan, ratio), plan, ratio)
    ext = {inp: torch.from_numpy(np.load(files["heldout"]).astype(np.float32))}
    return Pruned(teacher, student, sampler, {k: list(v) for k, v in kept.items()}, ext)


def study(name: str, ratio: float, samples: int, crop: int | None = None) -> list[dict[str, object]]:
    from worker.engine import recover
    from worker.engine.quality import ssim
    from worker.engine.stages.setup import forward, output_range

    p = prune_uniform(name, ratio)
    teacher, student, sampler, kept, ext = p.teacher, p.student, p.sampler, p.kept, p.heldout
    t_ext = forward(teacher, ext)
    dr = output_range(t_ext)
    pruned = copy.deepcopy(student.state_dict())
    torch.manual_seed(0)
    with sampler.crops(crop):  # None: the full input size
        batch = sampler.train_batch(samples)

    def quality() -> tuple[float, float]:
        out = forward(student, ext)
        return float((out - t_ext).pow(2).mean()), float(ssim(out, t_ext, data_range=dr, reduction="mean"))

    mse0, ssim0 = quality()
    rows: list[dict[str, object]] = [
        {"model": name, "variant": "pruned", "mse": mse0, "ssim": ssim0, "mse_ratio": 1.0, "seconds": 0.0}
    ]
    for variant, kw in VARIANTS.items():
        student.load_state_dict(pruned)
        t0 = time.perf_counter()
        res = recover.recover(teacher, student, kept, batch, seed=0, **kw)  # type: ignore[arg-type]
        secs = time.perf_counter() - t0
        mse, s = quality()
        rows.append(
            {
                "model": name,
                "variant": variant,
                "mse": mse,
                "ssim": s,
                "mse_ratio": mse0 / max(mse, 1e-20),
                "seconds": round(secs, 1),
                "refitted": len(res.refitted),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join((*ZOO, *REAL[:1], REAL[2])))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT, help="where RESULTS.md and results.json go")
    ap.add_argument(
        "--crop", type=int, default=None, help="refit on random crops of this side (as big jobs do)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = [r for m in args.models.split(",") for r in study(m, args.ratio, args.samples, args.crop)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# Recovery variants (`python -m benchmarks.recovery_study --ratio {args.ratio} --samples {args.samples}"
        + (f" --crop {args.crop}" if args.crop else "")
        + "`)",
        "",
        *__doc__.split("\n\n")[1:3],
        "",
        "| model | variant | held-out MSE | SSIM | MSE ratio vs pruned | refit s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['variant']} | {r['mse']:.4g} | {r['ssim']:.3f} | {r['mse_ratio']:.2f}x | {r['seconds']} |"
            for r in rows
        ),
    ]
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
