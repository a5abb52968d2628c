"""Kept channel counts rounded to multiples of 8/16 (``prune.round_to``): does ONNX Runtime run
them faster per MAC on this CPU? For each real-size model, uniform pruning at ratios whose kept
counts are not multiples of 8, with ``round_to`` 1 (as asked), 8 and 16: MACs, 1-thread p50 of
each candidate interleaved with the unrounded one in one process (measure_latency), and the
latency per MAC relative to the unrounded copy. Writes benchmarks/runs/rounding/RESULTS.md.

    python -m benchmarks.rounding [--ratios 0.3 0.4]
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import torch

from worker.engine.importers import import_model
from worker.engine.measure import measure_latency
from worker.engine.prune import count_macs, plan_channel_pruning, uniform_copy
from worker.engine.sampling import example_batch
from worker.spec import PruneSpec

HERE = Path(__file__).resolve().parent
MODELS = ("realesr_animevideov3_x4", "cyclegan_resnet_128")


def export(model: torch.nn.Module, one: dict[str, torch.Tensor], path: Path) -> Path:
    with torch.no_grad():
        torch.onnx.export(model, tuple(one.values()), str(path), dynamo=False, opset_version=17,
                          input_names=list(one))  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.4])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    t0 = time.time()
    for name in args.models:
        path = HERE / "runs" / "realmodels" / name / "model.onnx"
        im = import_model(path, None)
        ex = example_batch(im.inputs, batch=2, seed=0)
        one = {k: v[:1] for k, v in ex.items()}
        with tempfile.TemporaryDirectory() as tmp:
            for ratio in args.ratios:
                files = {}
                for r2 in (1, 8, 16):
                    spec = PruneSpec(ratio=ratio, allocation="uniform", round_to=r2)
                    plan = plan_channel_pruning(copy.deepcopy(im.module), ex, spec)
                    m = uniform_copy(im.module, ex, spec, plan, ratio)
                    files[r2] = (export(m, one, Path(tmp) / f"{ratio}-{r2}.onnx"), count_macs(m, one))
                base_path, base_macs = files[1]
                feeds = {k: v.numpy() for k, v in one.items()}
                for r2 in (8, 16):
                    p, macs = files[r2]
                    lat = measure_latency(
                        base_path, p, feeds, threads=[1], warmup=3, runs=30, budget_seconds=40
                    )
                    one_t = lat.at(1)
                    speed = one_t.speedup  # unrounded p50 / rounded p50
                    rows.append((name, ratio, r2, base_macs, macs, one_t.teacher.p50_ms, one_t.student.p50_ms,
                                 speed, speed * macs / base_macs))  # fmt: skip
                    print(rows[-1], flush=True)
    out = HERE / "runs" / "rounding" / "RESULTS.md"
    lines = [
        "# Rounding kept channels (`prune.round_to`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - t0:.0f} s, "
        f"{platform.processor() or platform.machine()}, 1 thread. `python -m benchmarks.rounding`.",
        "",
        "Uniform channel pruning at `ratio`; `round_to` N keeps the multiple of N nearest to what the ratio "
        "keeps. p50 of the unrounded and the rounded copy interleaved in one process (30 rounds at most). "
        "`per-MAC gain` = (unrounded p50 / rounded p50) x (rounded MACs / unrounded MACs): above 1, the "
        "rounded widths run faster per MAC.",
        "",
        "| model | ratio | round_to | MACs unrounded | MACs rounded | p50 unrounded ms | p50 rounded ms "
        "| speedup | per-MAC gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r, r2, bm, m, tb, tr, sp, g in rows:
        lines.append(f"| {n} | {r} | {r2} | {bm / 1e9:.3f} G | {m / 1e9:.3f} G | {tb:.2f} | {tr:.2f} | "
                     f"{sp:.2f}x | {g:.2f} |")  # fmt: skip
    out.write_text("\n".join(lines) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
