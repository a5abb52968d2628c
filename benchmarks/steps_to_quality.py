"""How many distillation steps does each zoo model need to reach a held-out SSIM? (issue 5)

The engine's student (default pruning: sensitivity allocation at ratio 0.5) is trained with the
engine's recipe (Adam lr 1e-3, betas (0.9, 0.99), cosine decay to 5% over the run, L1 on the
output, batch 8) for each of ``--steps`` in an independent run, on any torch device, and scored on
the benchmark's held-out inputs (PSNR/SSIM vs the teacher, in torch). It answers whether a quality
target missed within the CPU budget is a budget limit (more steps reach it) or a capacity limit.

    python -m benchmarks.steps_to_quality --models dcgan --steps 2000,8000 [--device cuda] [--out f.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.ablate import engine_pruned, score
from benchmarks.common import setup
from worker.spec import DistillSpec

log = logging.getLogger("benchmarks.steps_to_quality")


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def train(teacher: Any, student: Any, sampler: Any, steps: int, device: str) -> float:
    spec = DistillSpec()
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=spec.lr, betas=(0.9, 0.99))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = spec.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        batch = {k: v.to(device) for k, v in sampler.train_batch(spec.batch_size).items()}
        with torch.no_grad():
            t = _first(teacher(*batch.values()))
        loss = F.l1_loss(_first(student(*batch.values())), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dcgan")
    ap.add_argument("--steps", default="2000,8000,32000")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    setup(1)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(0)
        teacher, pruned, sampler = engine_pruned(name, {"ratio": args.ratio})
        for p in teacher.parameters():
            p.requires_grad_(False)
        for n in [int(s) for s in args.steps.split(",")]:
            student = copy.deepcopy(pruned).to(args.device)
            secs = train(teacher.to(args.device), student, sampler, n, args.device)
            p, s = score(name, teacher.cpu(), student.cpu())
            row = {"model": name, "steps": n, "psnr_db": p, "ssim": s, "seconds": secs, "device": args.device}
            log.info("%s", row)
            rows.append(row)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))
    print("| model | steps | PSNR dB | SSIM | s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
