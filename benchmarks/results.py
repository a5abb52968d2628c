"""RESULTS.md and the quality-vs-MACs plot from one benchmark payload (see ``compress.py``)."""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SSIM_TARGET = 0.95
PSNR_MARGIN_DB = 2.0
EFFICIENCY_TARGET = 0.85
EFFICIENCY_MIN_MACS = 100_000_000
THROUGHPUT_TARGET = 0.9
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _f(x: Any, fmt: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _versions() -> str:
    import onnx
    import onnx2torch  # noqa: F401
    import onnxruntime
    import torch
    import torch_pruning

    from worker.engine.measure import environment_info

    env = environment_info()
    return (
        f"CPU {env['processor']}, {env['cpu_count']} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch-pruning {torch_pruning.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; {platform.platform()}"
    )


def plot(payload: dict[str, Any], path: Path) -> None:
    """Two panels (PSNR, SSIM vs MAC reduction), one line per model, drawn with PIL."""
    w, h, pad = 1100, 500, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    series = []
    for m in payload["models"]:
        pts = [
            (v["eval"]["mac_reduction"], v["eval"]["psnr_db"], v["eval"]["ssim"])
            for _, v in sorted(m["ours"].items(), key=lambda kv: float(kv[0]))
            if "eval" in v
        ]
        if pts:
            series.append((m["model"], pts))
    if not series:
        img.save(path)
        return
    xmax = max(p[0] for _, pts in series for p in pts) * 1.05
    panels = [("PSNR vs teacher (dB)", 1), ("SSIM vs teacher", 2)]
    pw = (w - 3 * pad) // 2
    for k, (title, idx) in enumerate(panels):
        x0, y0, x1, y1 = pad + k * (pw + pad), pad, pad + k * (pw + pad) + pw, h - pad
        vals = [p[idx] for _, pts in series for p in pts if not math.isnan(p[idx])]
        lo, hi = min(vals), max(vals)
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0, y0 - 20), title, fill="black")
        d.text(((x0 + x1) // 2 - 90, y1 + 22), "MAC reduction (teacher / student)", fill="black")

        def px(
            x: float,
            y: float,
            box: tuple[int, int, int, int] = (x0, y0, x1, y1),
            span: tuple[float, float] = (lo, hi),
        ) -> tuple[int, int]:
            x0, y0, x1, y1 = box
            lo, hi = span
            return (
                int(x0 + (x - 1.0) / (xmax - 1.0) * (x1 - x0)),
                int(y1 - (y - lo) / (hi - lo) * (y1 - y0)),
            )

        for i in range(5):
            xv = 1.0 + i * (xmax - 1.0) / 4
            yv = lo + i * (hi - lo) / 4
            gx, _ = px(xv, lo)
            _, gy = px(1.0, yv)
            d.line([gx, y1, gx, y1 + 5], fill="black")
            d.text((gx - 10, y1 + 8), f"{xv:.1f}x", fill="black")
            d.line([x0 - 5, gy, x0, gy], fill="black")
            d.text((x0 - 48, gy - 6), f"{yv:.3g}", fill="black")
        if idx == 2 and lo < SSIM_TARGET < hi:
            _, ty = px(1.0, SSIM_TARGET)
            d.line([x0, ty, x1, ty], fill=(180, 180, 180))
            d.text((x1 - 90, ty - 14), "target 0.95", fill=(120, 120, 120))
        for c, (name, pts) in enumerate(series):
            color = COLORS[c % len(COLORS)]
            xy = [px(p[0], p[idx]) for p in pts if not math.isnan(p[idx])]
            if len(xy) > 1:
                d.line(xy, fill=color, width=2)
            for x, y in xy:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            if k == 0:  # legend: one row under both panels
                lx = pad + c * 170
                d.rectangle([lx, h - 16, lx + 10, h - 6], fill=color)
                d.text((lx + 14, h - 17), name, fill="black")
    img.save(path)


def _headline(payload: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    key = "0.5"
    rows = [
        "| model | method | PSNR dB | SSIM | MAC red. | param red. | bytes | speedup 1t | speedup 2t "
        "| efficiency (1t) | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    facts: dict[str, Any] = {
        "ssim_miss": [],
        "eff_miss": [],
        "psnr_gain": [],
        "psnr_gain_matched": [],
        "tp": [],
    }
    for m in payload["models"]:
        name = m["model"]
        runs = (
            ("ours", m["ours"].get(key)),
            ("ours @ baseline MACs", m.get("matched")),
            ("baseline", m.get("baseline")),
        )
        for method, r in runs:
            if r is None:
                continue
            e = r.get("eval")
            if e is None:
                rows.append(f"| {name} | {method} | failed: {r.get('error')} | | | | | | | | |")
                continue
            rows.append(
                f"| {name} | {method} | {_f(e['psnr_db'])} | {_f(e['ssim'], '.4f')} | {_f(e['mac_reduction'])}x "
                f"| {_f(e['param_reduction'])}x | {e['student_bytes'] / 1024:.0f} KiB "
                f"| {_f(e['speedup_1t'])}x | {_f(e['speedup_2t'])}x | {_f(e['efficiency'])} | {r.get('steps')} |"
            )
        o = (m["ours"].get(key) or {}).get("eval")
        if o:
            if not o["ssim"] >= SSIM_TARGET:
                facts["ssim_miss"].append((name, o["ssim"]))
            if o["teacher_macs"] > EFFICIENCY_MIN_MACS and not o["efficiency"] >= EFFICIENCY_TARGET:
                facts["eff_miss"].append((name, o["efficiency"], o["teacher_macs"]))
            b = (m.get("baseline") or {}).get("eval")
            facts["psnr_gain"].append((name, o["psnr_db"] - b["psnr_db"] if b else None))
            mt = (m.get("matched") or {}).get("eval")
            if b and mt:
                facts["psnr_gain_matched"].append((name, mt["psnr_db"] - b["psnr_db"]))
        if m.get("throughput"):
            facts["tp"].append((name, m["throughput"]))
    return rows, facts


def write_results(payload: dict[str, Any], out: Path, extra_md: str | None = None) -> str:
    """Write ``out`` (markdown) and ``quality_vs_macs.png`` beside it; return the headline table."""
    png = out.with_name("quality_vs_macs.png")
    plot(payload, png)
    rows, facts = _headline(payload)
    table = "\n".join(rows)
    gains = [g for _, g in facts["psnr_gain"] if g is not None]
    lines = [
        "# Compression benchmark: gancompress defaults vs a hand-written baseline",
        "",
        f"Run: {payload.get('run_utc') or dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"`{payload.get('command', 'python -m benchmarks.compress')}`  ",
        f"Machine: {_versions()}  ",
        f"Budget: {payload['budget_seconds']:g} s of distillation wall clock per run at ratio 0.5, for both "
        f"methods (the engine's default budget); {payload.get('curve_budget_seconds', payload['budget_seconds']):g} s "
        "for ours at the other ratios of the curve"
        + (
            f" (ours with {payload['overrides']} instead of the engine defaults)"
            if payload.get("overrides")
            else " (ours: the engine defaults, i.e. sensitivity allocation, L1 distillation, budget-bound steps)"
        )
        + f"; torch training threads: {payload.get('train_threads', 'torch default')}; whole benchmark: "
        f"{payload['total_wall_s'] / 60:.1f} min.",
        "",
        "Reproduce: `make bench` (= `python -m benchmarks.compress`). The numbers to trust are the ratios "
        "(quality vs the teacher, reductions, speedups): absolute times vary with the machine and its load.",
        "",
        "**ours** = `worker.engine.pipeline.run_pipeline` with the default `CompressionSpec` except the ratio "
        "and the budget (calibration: the zoo's `calibration.npy` for image models). **baseline** = "
        "`benchmarks/baseline.py`: onnx2torch on the same ONNX, Torch-Pruning `MagnitudePruner` with "
        "`GroupMagnitudeImportance(p=1)` at the uniform ratio ignoring only the output layer, Adam lr 1e-3 "
        "on L1(student, teacher) with fresh latents / calibration images, batch 8, `torch.onnx.export`.",
        "",
        "Both are measured by `benchmarks/evaluate.py` on the exported ONNX files only (ONNX Runtime CPU): "
        "held-out inputs never trained on (the zoo's held-out images; 64 latents of seed 12345, labels from "
        "`example_inputs`), PSNR/SSIM vs the zoo teacher, MACs counted on the ONNX graph at batch 1, "
        "latency p50 at batch 1 with teacher and student interleaved after warm-up at 1 and 2 threads; "
        "efficiency = speedup (1 thread) / MAC reduction.",
        "",
        "## Headline: ratio 0.5 (the baseline removes 50% of the channels of every prunable layer; ours "
        "removes the MACs that uniform 50% pruning of its own graph would, spread over layers by sensitivity)",
        "",
        table,
        "",
    ]
    if gains:
        lines.append(
            f"Mean PSNR gain of ours over the baseline where both ran: **{sum(gains) / len(gains):+.2f} dB** "
            f"({', '.join(f'{n} {g:+.2f}' for n, g in facts['psnr_gain'] if g is not None)}); baseline "
            f"failed on: {', '.join(n for n, g in facts['psnr_gain'] if g is None) or 'none'}."
        )
        lines.append("")
    if facts["psnr_gain_matched"]:
        gm = [g for _, g in facts["psnr_gain_matched"]]
        lines.append(
            "At the same ratio ours can remove more MACs than the baseline (its uniform budget includes the "
            "Linear -> reshape projection the baseline cannot prune), so where the two differ by more than 5% "
            "ours was also pruned to the "
            f"baseline's MACs (`target_macs`, row *ours @ baseline MACs*): mean PSNR gain there "
            f"**{sum(gm) / len(gm):+.2f} dB** ({', '.join(f'{n} {g:+.2f}' for n, g in facts['psnr_gain_matched'])})."
        )
        lines.append("")
    lines += ["## Distillation throughput (ratio 0.5 student, batch 8)", ""]
    lines += [
        "| model | ours steps/s | ours + 0.5 SSIM | bare loop steps/s | ours / bare | ours + SSIM / bare |",
        "|---|---|---|---|---|---|",
    ]
    for n, t in facts["tp"]:
        lines.append(
            f"| {n} | {t['ours_steps_per_s']:.1f} | {t.get('ours_ssim_steps_per_s', float('nan')):.1f} "
            f"| {t['bare_steps_per_s']:.1f} | {t['ratio']:.2f} | {t.get('ratio_ssim', float('nan')):.2f} |"
        )
    lines += [
        "",
        "ours = `worker.engine.distill.distill` with the default spec (L1; held-out checks and "
        "best-weight snapshots every 50 steps; random crops for image inputs); "
        "ours + 0.5 SSIM = the same loop with the loss L1 + 0.5 (1 - SSIM); bare = `out = student(x); "
        "F.l1_loss(out, teacher(x)).backward(); opt.step()` on a fixed batch. All on copies of the same "
        "ratio-0.5 student at batch 8, alternating 3 times for 4 s each (the machine is shared), medians.",
        "",
        "## Quality vs MACs (ours)",
        "",
        "![quality vs MACs](quality_vs_macs.png)",
        "",
        "| model | ratio | MAC red. | PSNR dB | SSIM | speedup 1t | efficiency | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in payload["models"]:
        for ratio, r in sorted(m["ours"].items(), key=lambda kv: float(kv[0])):
            e = r.get("eval")
            if e is None:
                lines.append(f"| {m['model']} | {ratio} | failed: {r.get('error')} | | | | | |")
                continue
            lines.append(
                f"| {m['model']} | {ratio} | {e['mac_reduction']:.2f}x | {e['psnr_db']:.2f} | {e['ssim']:.4f} "
                f"| {e['speedup_1t']:.2f}x | {e['efficiency']:.2f} | {r['steps']} |"
            )
    lines += ["", "## Targets", ""]
    ssim_ok = not facts["ssim_miss"]
    lines.append(
        f"- SSIM >= {SSIM_TARGET} on every model at ratio 0.5: **{'met' if ssim_ok else 'missed'}**"
        + ("" if ssim_ok else f" ({', '.join(f'{n} {s:.4f}' for n, s in facts['ssim_miss'])})")
    )
    mean_gain = sum(gains) / len(gains) if gains else float("nan")
    lines.append(
        f"- mean PSNR >= {PSNR_MARGIN_DB} dB above the baseline: **{'met' if mean_gain >= PSNR_MARGIN_DB else 'missed'}** "
        f"({mean_gain:+.2f} dB over the models where the baseline produced a model)"
    )
    lines.append(
        f"- efficiency >= {EFFICIENCY_TARGET} (1 thread) on models over 100 MMACs: "
        f"**{'met' if not facts['eff_miss'] else 'missed'}**"
        + "".join(f" {n} {e:.2f} ({mac / 1e6:.0f} MMACs)" for n, e, mac in facts["eff_miss"])
    )
    if facts["tp"]:
        worst = min(t["ratio"] for _, t in facts["tp"])
        mean_tp = sum(t["ratio"] for _, t in facts["tp"]) / len(facts["tp"])
        lines.append(
            f"- distillation throughput >= {THROUGHPUT_TARGET}x the bare loop: "
            f"**{'met' if worst >= THROUGHPUT_TARGET else 'missed'}** (mean {mean_tp:.2f}x, worst {worst:.2f}x)"
        )
    lines.append("")
    if extra_md:
        lines += [extra_md, ""]
    notes = out.with_name("NOTES.md")
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    lines.append(f"Raw numbers: [{out.with_suffix('.json').name}]({out.with_suffix('.json').name}).")
    out.write_text("\n".join(lines) + "\n")
    return table


if __name__ == "__main__":  # re-render RESULTS.md from the saved JSON
    p = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("RESULTS.json")
    print(write_results(json.loads(p.read_text()), p.with_suffix(".md")))
