"""Target search benchmark (issue 12): ``--target 'ssim>=0.95'`` against single-ratio runs of the
current defaults, latency efficiency of the allocations, search cost, and an independent check of
every candidate's numbers.

Per model, every run one ``gancompress compress`` process, timed from outside:

- ``single r``: the defaults at ``--ratio r`` for r in ``--ratios``, budget B;
- ``latency 0.5``: ``--allocation latency --ratio 0.5``, budget B (latency efficiency);
- ``search``: ``--target 'ssim>=0.95' --mode sweep``, budget ``--search-factor`` x B (sweep so
  that every candidate's ONNX comes back and can be checked).

Then, in this process, independently of the jobs:

- quality of every shipped model and every candidate: teacher and student ONNX files in ONNX
  Runtime on (a) the job's own held-out inputs, rebuilt with the engine's sampler and seed (to
  compare with the report's candidate rows: within 0.01 SSIM), and (b) ``heldout.npy``, images no
  job saw (the number the targets are judged on);
- MACs of every file at batch 1 by onnx2torch + ``torch.utils.flop_counter`` (the report counts
  them on the ONNX graph), bytes from the file;
- 1-thread p50 latency of the teacher and every file, interleaved round by round in one process.

    python -m benchmarks.search [--budget-seconds 60] [--models a,b] [--ratios 0.25,0.5,0.75] [--tag T]
    python -m benchmarks.search --tag T --models a --configs search   # rerun one config, keep the rest
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.big import _f, model_files

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs" / "search"
MODELS = ("realesr_animevideov3_x4", "cyclegan_resnet_128", "srresnet", "resnet_i2i", "unet_i2i")
MIN_SSIM = 0.95


@dataclass
class Run:
    model: str
    config: str
    budget_s: float
    wall_s: float
    out: str
    report_ssim: float | None
    steps: int
    mac_reduction: float | None
    speedup_report: float | None
    target_met: bool | None = None
    search_seconds: float | None = None
    # filled by measure()
    ssim_unseen: float | None = None
    psnr_unseen: float | None = None
    p50_ms: float | None = None
    speedup: float | None = None
    macs: int | None = None


@dataclass
class CandidateCheck:
    model: str
    id: str
    quantize: str
    picked: bool
    report: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)


def run_job(name: str, config: str, budget: float, extra: list[str]) -> Run:
    files = model_files(name)
    out = RUNS / f"{name}-{config.replace(' ', '-')}"
    cmd = [
        sys.executable, "-m", "app.cli", "compress", str(files["model"]),
        "--calibration", str(files["calibration"]), "--budget-seconds", str(budget),
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not (out / "report.json").is_file():
        raise RuntimeError(f"{name}/{config} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    rep = json.loads((out / "report.json").read_text())
    s, search = rep["summary"], rep.get("search")
    return Run(
        model=name,
        config=config,
        budget_s=budget,
        wall_s=round(wall, 1),
        out=str(out),
        report_ssim=s.get("ssim"),
        steps=int(rep["distillation"]["steps"]),
        mac_reduction=s.get("mac_reduction"),
        speedup_report=s.get("speedup"),
        target_met=s.get("target_met"),
        search_seconds=search["seconds"] if search else None,
    )


def job_heldout(name: str) -> dict[str, np.ndarray]:
    """The held-out inputs a job of this model scores on (seed 0, default augmentation)."""
    from worker.engine.importers import import_model
    from worker.engine.sampling import InputSampler, mix_share
    from worker.engine.stages.setup import HELDOUT_N, load_calibrations
    from worker.spec import DistillSpec

    files = model_files(name)
    imported = import_model(files["model"], None)
    arrays = load_calibrations(imported, {"": files["calibration"]})
    sampler = InputSampler(imported.inputs, arrays, seed=0, mix=mix_share(DistillSpec().augment))
    return {k: v.numpy() for k, v in sampler.heldout(HELDOUT_N).items()}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = _session(path, 2)
    n = len(next(iter(feeds.values())))
    parts = [sess.run(None, {k: v[i : i + 4] for k, v in feeds.items()})[0] for i in range(0, n, 4)]
    return np.concatenate(parts)


def quality(teacher_out: np.ndarray, student: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    import torch

    from worker.engine.quality import psnr, ssim
    from worker.engine.stages.setup import output_range

    t = torch.from_numpy(teacher_out)
    s = torch.from_numpy(_outputs(student, feeds))
    dr = output_range(t)
    return float(ssim(s, t, data_range=dr, reduction="mean")), float(psnr(s, t, dr).mean())


def macs_at_batch_1(path: Path, feeds: dict[str, np.ndarray]) -> int | None:
    """MACs by converting the ONNX file to torch (onnx2torch) and counting with torch's flop
    counter: not the report's ONNX-graph count. None where onnx2torch cannot convert the file
    (quantized graphs)."""
    import onnx
    import torch
    from onnx2torch import convert
    from torch.utils.flop_counter import FlopCounterMode

    try:
        module = convert(onnx.load(str(path))).eval()
        x = [torch.from_numpy(v[:1]) for v in feeds.values()]
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            module(*x)
        return int(fc.get_total_flops() // 2)
    except Exception:  # QDQ / fp16 graphs: no torch twin, MACs not checked
        return None


def interleaved_p50(
    paths: list[Path], feeds: dict[str, np.ndarray], rounds: int, seconds: float
) -> list[float]:
    """1-thread p50 (ms) of each file, one call each per round, rounds in turn, after a warm-up."""
    one = {k: v[:1] for k, v in feeds.items()}
    sessions = [_session(p, 1) for p in paths]
    for s in sessions:
        for _ in range(3):
            s.run(None, one)
    times: list[list[float]] = [[] for _ in paths]
    t_end = time.perf_counter() + seconds
    for i in range(rounds):
        for s, ts in zip(sessions, times, strict=True):
            t0 = time.perf_counter()
            s.run(None, one)
            ts.append((time.perf_counter() - t0) * 1e3)
        if i >= 10 and time.perf_counter() > t_end:
            break
    return [float(np.median(ts)) for ts in times]


def measure(name: str, runs: list[Run], rounds: int, seconds: float) -> list[CandidateCheck]:
    files = model_files(name)
    teacher = files["model"]
    own = job_heldout(name)
    unseen = {next(iter(own)): np.load(files["heldout"]).astype(np.float32)}
    t_own, t_unseen = _outputs(teacher, own), _outputs(teacher, unseen)
    checks: list[CandidateCheck] = []
    search = next((r for r in runs if r.config == "search"), None)
    if search is not None:
        rep = json.loads((Path(search.out) / "report.json").read_text())
        for c in rep["search"]["candidates"]:
            if c.get("artifact"):
                checks.append(CandidateCheck(name, c["id"], c["quantize"], c["picked"], c))
    paths = [teacher] + [Path(r.out) / "model.onnx" for r in runs]
    paths += [Path(search.out) / c.report["artifact"] for c in checks] if search else []
    p50 = interleaved_p50(paths, own, rounds, seconds)
    teacher_macs = macs_at_batch_1(teacher, own)
    for i, r in enumerate(runs):
        path = Path(r.out) / "model.onnx"
        r.ssim_unseen, r.psnr_unseen = quality(t_unseen, path, unseen)
        r.p50_ms = round(p50[1 + i], 3)
        r.speedup = round(p50[0] / p50[1 + i], 3)
        r.macs = macs_at_batch_1(path, own)
    for j, c in enumerate(checks):
        path = Path(search.out) / c.report["artifact"]  # type: ignore[union-attr]
        s_own, _ = quality(t_own, path, own)
        c.measured = {
            "ssim": s_own,
            "macs": macs_at_batch_1(path, own),
            "bytes": path.stat().st_size,
            "p50_ms": p50[1 + len(runs) + j],
            "teacher_p50_ms": p50[0],
            "teacher_macs": teacher_macs,
        }
    return checks


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else abs(a - b) / abs(b)


def write(runs: list[Run], checks: list[CandidateCheck], args: argparse.Namespace) -> Path:
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "results.json").write_text(
        json.dumps({"runs": [asdict(r) for r in runs], "checks": [asdict(c) for c in checks]}, indent=1)
    )
    lines = [
        f"# Target search benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python -m benchmarks.search --budget-seconds {args.budget_seconds:g} --ratios {args.ratios} "
        f"--search-factor {args.search_factor:g}`; {os.cpu_count()} cores. Each run one `gancompress compress` "
        "process (wall time from outside). SSIM unseen / PSNR: the shipped model vs the teacher in ONNX "
        "Runtime on held-out images no job saw. p50 / speedup: 1 thread, every file of a model and its "
        "teacher interleaved round by round in one process after the jobs. MACs: onnx2torch + torch's flop "
        "counter at batch 1. Efficiency: speedup / MAC reduction.",
        "",
        "| model | config | budget s | wall s | steps | SSIM (report) | SSIM unseen | PSNR unseen | MACs cut | "
        "p50 ms | speedup 1t | efficiency | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        eff = r.speedup / r.mac_reduction if r.speedup and r.mac_reduction else None
        lines.append(
            f"| {r.model} | {r.config} | {r.budget_s:g} | {r.wall_s:.0f} | {r.steps} | {_f(r.report_ssim)} | "
            f"{_f(r.ssim_unseen)} | {_f(r.psnr_unseen, '.2f')} | {_f(r.mac_reduction, '.2f')}x | "
            f"{_f(r.p50_ms, '.2f')} | {_f(r.speedup, '.2f')}x | {_f(eff, '.2f')} | "
            f"{'' if r.target_met is None else ('yes' if r.target_met else 'NO')} |"
        )
    lines += ["", f"## Against the targets (ssim >= {MIN_SSIM})", ""]
    lines += [
        "On the job's own held-out inputs (what the job judges its target on: calibration images it never "
        "trained on) and on `heldout.npy` (images from elsewhere, no job saw). *pick faster by*: 1-thread p50 "
        "of the fastest single-ratio run that meets the target / the search's pick (target: >= 1.3x).",
        "",
        "| model | pick p50 ms | pick SSIM (job held-out) | fastest single meeting it | pick faster by | "
        "pick SSIM unseen | fastest single meeting it (unseen) | pick faster by | search wall / single wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r.model for r in runs):
        mine = [r for r in runs if r.model == name]
        pick = next((r for r in mine if r.config == "search"), None)
        s05 = next((r for r in mine if r.config == "single 0.5"), None)
        if pick is None:
            continue
        cells = []
        for attr in ("report_ssim", "ssim_unseen"):
            singles = [
                r for r in mine if r.config.startswith("single") and (getattr(r, attr) or 0) >= MIN_SSIM
            ]
            best = min(singles, key=lambda r: r.p50_ms or 1e9) if singles else None
            ratio = best.p50_ms / pick.p50_ms if best and best.p50_ms and pick.p50_ms else None
            cells += [
                f"{_f(getattr(pick, attr))} ({'meets' if (getattr(pick, attr) or 0) >= MIN_SSIM else 'misses'})",
                f"{best.config} ({_f(best.p50_ms, '.2f')} ms)" if best else "none",
                f"{_f(ratio, '.2f')}x",
            ]
        lines.append(
            f"| {name} | {_f(pick.p50_ms, '.2f')} | {' | '.join(cells)} | "
            f"{_f(pick.wall_s / s05.wall_s if s05 else None, '.2f')} |"
        )
    lines += [
        "",
        "## Every candidate: the report's numbers against an independent run",
        "",
        "Limits (issue 12): 2% for MACs and bytes, 0.01 SSIM (the job's own held-out inputs, rebuilt), 25% "
        "latency (the report's speedup vs the independent one, each against its own teacher timing).",
        "",
        "| model | candidate | quantize | picked | MACs report / measured | bytes | SSIM report / measured | "
        "speedup report / measured | within limits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        rp, m = c.report, c.measured
        sp_m = m["teacher_p50_ms"] / m["p50_ms"]
        d_macs = _rel(rp["macs"], m["macs"])
        d_bytes = _rel(rp["size_bytes"], m["bytes"])
        d_ssim = None if rp["ssim"] is None else abs(rp["ssim"] - m["ssim"])
        d_lat = _rel(rp["speedup"], sp_m)
        ok = (
            (d_macs is None or d_macs <= 0.02)
            and (d_bytes or 0) <= 0.02
            and (d_ssim is None or d_ssim <= 0.01)
            and (d_lat or 0) <= 0.25
        )
        lines.append(
            f"| {c.model} | {c.id} | {c.quantize} | {'yes' if c.picked else ''} | "
            f"{rp['macs'] / 1e6:.1f} M / {_f(None if m['macs'] is None else m['macs'] / 1e6, '.1f')} M | "
            f"{rp['size_bytes']} / {m['bytes']} | {_f(rp['ssim'], '.4f')} / {m['ssim']:.4f} | "
            f"{rp['speedup']:.2f}x / {sp_m:.2f}x | {'yes' if ok else '**NO**'} |"
        )
    path = RUNS / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=60.0)
    ap.add_argument("--search-factor", type=float, default=3.0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--ratios", default="0.25,0.5,0.75")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument(
        "--latency-seconds", type=float, default=40.0, help="per model, at most (after 10 rounds)"
    )
    ap.add_argument("--tag", default="", help="write into benchmarks/runs/search/TAG")
    ap.add_argument(
        "--configs",
        default="",
        help="rerun only these configs (e.g. 'search'); the other rows come from the tag's results.json",
    )
    args = ap.parse_args(argv)
    global RUNS
    RUNS = RUNS / args.tag if args.tag else RUNS
    only = set(filter(None, args.configs.split(",")))
    # the tag's other models (and, with --configs, the other configs) stay as the last run left them
    old = json.loads((RUNS / "results.json").read_text()) if (RUNS / "results.json").is_file() else {}
    runs = [Run(**r) for r in old.get("runs", [])]
    checks = [CandidateCheck(**c) for c in old.get("checks", [])]
    b = args.budget_seconds
    for name in args.models.split(","):
        kept = [r for r in runs if r.model == name and r.config not in only]
        mine: list[Run] = []
        jobs = [(f"single {r}", b, ["--ratio", r]) for r in args.ratios.split(",")]
        jobs += [("latency 0.5", b, ["--ratio", "0.5", "--allocation", "latency"])]
        jobs += [("search", b * args.search_factor, ["--target", f"ssim>={MIN_SSIM}", "--mode", "sweep"])]
        for config, budget, extra in jobs:
            if only and config not in only:
                mine += [r for r in kept if r.config == config]
                continue
            run = run_job(name, config, budget, extra)
            print(json.dumps(asdict(run)), flush=True)
            mine.append(run)
        runs = [r for r in runs if r.model != name]
        checks = [c for c in checks if c.model != name]
        checks += measure(name, mine, args.rounds, args.latency_seconds)  # every file again, interleaved
        runs += mine
        print(f"wrote {write(runs, checks, args)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
