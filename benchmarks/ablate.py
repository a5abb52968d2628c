"""Where does the gap to the baseline come from? A fixed-step decomposition (issue 5).

Pruning and training are swapped between the engine and the hand-written baseline, at a fixed
number of optimizer steps (not wall clock, so machine load cannot move the result):

- pruning ``engine`` (import, rewrites, probes, aligned blocks) at the baseline's MACs, or
  ``baseline`` (onnx2torch + Torch-Pruning L1, output layer ignored);
- training ``engine`` (``worker.engine.distill.distill`` with a spec) or ``bare`` (Adam, constant
  lr, L1 on the output, as ``benchmarks.baseline``).

Scored in torch on the benchmark's held-out inputs (``benchmarks.evaluate.heldout_feeds``).

    python -m benchmarks.ablate --model dcgan --steps 3000 [--variants ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import onnx
import onnx2torch
import torch
import torch_pruning as tp
from torch import nn

from benchmarks.baseline import PRUNABLE, _sampler, train_l1
from benchmarks.common import setup
from benchmarks.evaluate import data_range_of, heldout_feeds, teacher_path
from worker.engine.quality import psnr, ssim
from worker.spec import CompressionSpec, DistillSpec, PruneSpec
from worker.zoo.registry import model_entry, zoo_dir

log = logging.getLogger("benchmarks.ablate")


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def baseline_pruned(name: str, ratio: float) -> tuple[nn.Module, nn.Module]:
    """(teacher, student) as the baseline script builds them."""
    model = onnx2torch.convert(onnx.load(str(teacher_path(name)))).eval()
    teacher = copy.deepcopy(model).eval()
    example = _sampler(name, 0)(2)
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    tp.pruner.MagnitudePruner(
        model,
        example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=layers[-1:],
    ).step()
    return teacher, model


def engine_pruned(name: str, prune: dict[str, Any]) -> tuple[nn.Module, nn.Module, Any]:
    """(teacher, student, sampler) as the engine's pipeline builds them, before distillation."""
    from worker.engine import prune as P
    from worker.engine.importers import import_model
    from worker.engine.sampling import InputSampler, load_calibration
    from worker.spec import Distribution

    prune = dict(prune)
    keep = prune.pop("target_macs_fraction", None)
    mix = prune.pop("mix", 0.0)  # sampler option riding along with the pruning overrides
    spec = CompressionSpec(prune=PruneSpec(**prune))
    imported = import_model(teacher_path(name), spec.inputs)
    entry = model_entry(name)
    arrays = {
        n: load_calibration(zoo_dir() / entry["calibration"], s, n)
        for n, s in imported.inputs.items()
        if s.distribution == Distribution.CALIBRATION
    }
    sampler = InputSampler(imported.inputs, arrays, seed=spec.seed, mix=mix)
    teacher = copy.deepcopy(imported.module).eval()
    student = imported.module
    example = sampler.train_batch(2)
    plan = P.plan_channel_pruning(student, example, spec.prune)
    ratio = spec.prune.ratio
    if spec.prune.allocation == "sensitivity":
        from worker.engine import allocate as A

        base = P.count_macs(student, {k: v[:1] for k, v in example.items()})
        target = (
            int(keep * base)
            if keep is not None
            else P.macs_at_ratio(student, example, spec.prune, plan, ratio)
        )
        alloc = A.allocate(student, example, sampler.train_batch(16), spec.prune, plan, target)
        print("allocation", alloc.ratios, alloc.macs, target, f"{alloc.seconds:.1f}s")
        pruner = P.make_pruner(student, example, spec.prune, plan, 0.0, layer_ratios=alloc.layer_ratios())
        P.prune_step(student, example, pruner, plan, alloc.site_ratios())
        return teacher, student, sampler
    if keep is not None:
        target = int(keep * P.count_macs(student, {k: v[:1] for k, v in example.items()}))
        ratio, _ = P.ratio_for_target_macs(student, example, spec.prune, plan, target)
    pruner = P.make_pruner(student, example, spec.prune, plan, float(ratio), 1)
    P.prune_step(student, example, pruner, plan, float(ratio))
    return teacher, student, sampler


def macs(model: nn.Module, name: str) -> int:
    x = tuple(torch.from_numpy(v[:1]) for v in heldout_feeds(name).values())
    return int(tp.utils.count_ops_and_params(model, x)[0])


def bare_train(name: str, teacher: nn.Module, student: nn.Module, steps: int) -> float:
    t0 = time.perf_counter()
    train_l1(student, teacher, _sampler(name, 0), steps=steps)
    return time.perf_counter() - t0


def engine_train(
    name: str, teacher: nn.Module, student: nn.Module, sampler: Any, steps: int, distill: dict[str, Any]
) -> float:
    from worker.engine.distill import distill as run

    if sampler is None:  # the baseline's modules take positional inputs in the ONNX input order
        from worker.engine.importers import import_model
        from worker.engine.sampling import InputSampler, load_calibration
        from worker.spec import Distribution

        imported = import_model(teacher_path(name), CompressionSpec().inputs)
        entry = model_entry(name)
        arrays = {
            n: load_calibration(zoo_dir() / entry["calibration"], s, n)
            for n, s in imported.inputs.items()
            if s.distribution == Distribution.CALIBRATION
        }
        sampler = InputSampler(imported.inputs, arrays, seed=0)
    t0 = time.perf_counter()
    run(
        teacher,
        student,
        sampler,
        DistillSpec(**distill),
        data_range=_range(name, teacher),
        steps=steps,
        budget_seconds=1e9,
    )
    return time.perf_counter() - t0


def _range(name: str, teacher: nn.Module) -> float:
    x = [torch.from_numpy(v) for v in heldout_feeds(name).values()]
    with torch.no_grad():
        return data_range_of(_first(teacher(*x)).numpy())


def score(name: str, teacher: nn.Module, student: nn.Module) -> tuple[float, float]:
    x = [torch.from_numpy(v) for v in heldout_feeds(name).values()]
    with torch.no_grad():
        t, s = _first(teacher(*x)), _first(student.eval()(*x))
    dr = data_range_of(t.numpy())
    return float(psnr(s, t, data_range=dr).mean()), float(ssim(s, t, data_range=dr, reduction="mean"))


VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (pruning, training, distill spec overrides)
    "baseline prune + bare": ("baseline", "bare", {}),
    "baseline prune + engine": ("baseline", "engine", {}),
    "engine prune + bare": ("engine", "bare", {}),
    "engine prune + engine": ("engine", "engine", {}),
    "engine prune + engine L1": ("engine", "engine", {"losses": {"l1": 1.0}}),
    "engine prune + engine lr 3e-3": ("engine", "engine", {"lr": 3e-3}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="dcgan")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--variants", default="", help="comma-separated names (default: all)")
    ap.add_argument("--engine-prune", default="{}", help="JSON PruneSpec overrides for engine pruning")
    ap.add_argument(
        "--no-match", action="store_true", help="engine pruning at the ratio, not the baseline's MACs"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    setup(1)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()] or list(VARIANTS)
    keep = 1.0
    if not args.no_match:
        b_teacher, b_student = baseline_pruned(args.model, args.ratio)
        keep = macs(b_student, args.model) / macs(b_teacher, args.model)  # the baseline's MAC fraction
    rows = []
    for label in chosen:
        pruning, training, dspec = VARIANTS[label]
        torch.manual_seed(0)
        sampler = None
        if pruning == "baseline":
            teacher, student = baseline_pruned(args.model, args.ratio)
        else:
            prune = {"ratio": args.ratio, **json.loads(args.engine_prune)}
            if not args.no_match:
                prune["target_macs_fraction"] = keep
            teacher, student, sampler = engine_pruned(args.model, prune)
        for p in teacher.parameters():
            p.requires_grad_(False)
        p0, s0 = score(args.model, teacher, student)
        if training == "bare":
            secs = bare_train(args.model, teacher, student, args.steps)
        else:
            secs = engine_train(args.model, teacher, student, sampler, args.steps, dspec)
        p1, s1 = score(args.model, teacher, student)
        row = {
            "variant": label,
            "macs": macs(student, args.model),
            "psnr_pruned": p0,
            "ssim_pruned": s0,
            "psnr": p1,
            "ssim": s1,
            "seconds": secs,
            "steps": args.steps,
        }
        log.info("%s", row)
        rows.append(row)
    print(f"\n{args.model} ratio {args.ratio}, {args.steps} steps, baseline keeps {keep:.3f} of the MACs")
    print("| variant | MMACs | PSNR pruned | PSNR | SSIM | s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['macs'] / 1e6:.2f} | {r['psnr_pruned']:.2f} | {r['psnr']:.2f} | "
            f"{r['ssim']:.4f} | {r['seconds']:.1f} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "steps": args.steps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
