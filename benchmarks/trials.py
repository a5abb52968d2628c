"""Sensitivity trials, one copy stepped through the levels vs a fresh copy per level (issue 9).

The sensitivity allocation prunes every layer group alone at each level of ``allocate.LEVELS`` and
measures the output distortion. A fresh copy per level builds a Torch-Pruning dependency graph per
level; the engine steps one copy per group through the levels (one graph per group), each step
rounded to ``round_to`` as a fresh copy is. Both ways are run here back to back, in one process,
on the same inputs: seconds for all trials, and the largest relative difference between the
distortions they measure (the engine's equality test says 0 on the tiny zoo; this checks it on
real-size models).

    python -m benchmarks.trials [--models srresnet,cyclegan_resnet_128,realesr_animevideov3_x4] [--side 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.big import model_files
from worker.engine import allocate as A
from worker.engine.importers import import_model
from worker.engine.prune import plan_channel_pruning
from worker.engine.sampling import example_batch
from worker.spec import PruneSpec


def _at_side(inputs: dict[str, torch.Tensor], side: int) -> dict[str, torch.Tensor]:
    """Image inputs resized to at most ``side`` (the trials of a fully convolutional model run at
    a small size in the engine too)."""
    return {
        k: torch.nn.functional.interpolate(v, size=(side, side), mode="bilinear")
        if v.ndim == 4 and min(v.shape[-2:]) > side
        else v
        for k, v in inputs.items()
    }


def run(name: str, side: int, n: int) -> dict[str, float | str]:
    im = import_model(model_files(name)["model"], None)
    model = im.module.eval()
    example = _at_side(example_batch(im.inputs, batch=1, seed=0), side)
    batch = _at_side(example_batch(im.inputs, batch=n, seed=1), side)
    spec = PruneSpec(ratio=0.5)
    plan = plan_channel_pruning(model, example, spec)
    units = [u for u in A.find_units(model, example, spec, plan) if not u.block_site]
    with torch.no_grad():
        ref = model(*batch.values())
    ref = ref[0] if isinstance(ref, list | tuple) else ref
    worst, fresh_s, stepped_s = 0.0, 0.0, 0.0
    for u in units:
        t = time.perf_counter()
        a = {
            level: A._distortion(m, batch, ref) for level, m in A.fresh_trials(model, example, spec, plan, u)
        }
        fresh_s += time.perf_counter() - t
        t = time.perf_counter()
        b = {
            level: A._distortion(m, batch, ref) for level, m in A._unit_trials(model, example, spec, plan, u)
        }
        stepped_s += time.perf_counter() - t
        assert a.keys() == b.keys(), (u.name, a.keys(), b.keys())
        worst = max([worst, *(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)])
    return {
        "model": name,
        "groups": len(units),
        "fresh_s": round(fresh_s, 2),
        "stepped_s": round(stepped_s, 2),
        "speedup": round(fresh_s / max(stepped_s, 1e-9), 2),
        "max_rel_diff": worst,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="srresnet,cyclegan_resnet_128,realesr_animevideov3_x4")
    ap.add_argument(
        "--side", type=int, default=64, help="input side of the trial inputs (the engine's at most)"
    )
    ap.add_argument("--inputs", type=int, default=4, help="inputs the distortion is measured on")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print("| model | groups | fresh copy per level s | one copy stepped s | speedup | max relative diff |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = run(name, args.side, args.inputs)
        print(
            f"| {r['model']} | {r['groups']} | {r['fresh_s']} | {r['stepped_s']} | {r['speedup']}x | "
            f"{float(r['max_rel_diff']):.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
