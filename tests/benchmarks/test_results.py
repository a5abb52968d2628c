"""Smoke test of the benchmark's report writer (no training: a hand-made payload)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from benchmarks.results import write_results


def _eval(psnr: float, ssim: float, mac_red: float) -> dict[str, float]:
    return {
        "psnr_db": psnr,
        "ssim": ssim,
        "mac_reduction": mac_red,
        "param_reduction": 2.0,
        "student_bytes": 4096,
        "speedup_1t": mac_red * 0.9,
        "speedup_2t": mac_red * 0.8,
        "efficiency": 0.9,
        "teacher_macs": 200_000_000,
    }


def test_write_results_table_targets_and_plot(tmp_path: Path) -> None:
    payload = {
        "budget_seconds": 1.0,
        "ratios": [0.25, 0.5],
        "total_wall_s": 60.0,
        "models": [
            {
                "model": "m1",
                "ours": {
                    "0.25": {"steps": 3, "eval": _eval(30.0, 0.97, 1.5)},
                    "0.5": {"steps": 3, "eval": _eval(28.0, 0.96, 3.0)},
                },
                "baseline": {"steps": 4, "eval": _eval(25.0, 0.90, 3.0)},
                "throughput": {"ours_steps_per_s": 9.0, "bare_steps_per_s": 10.0, "ratio": 0.9},
            },
            {
                "model": "m2",
                "ours": {"0.5": {"error": "boom"}},
                "baseline": {"steps": 0, "error": "pruning: IndexError"},
            },
        ],
    }
    out = tmp_path / "RESULTS.md"
    table = write_results(payload, out)
    text = out.read_text()
    assert "| m1 | ours | 28.00 | 0.9600 | 3.00x" in table
    assert "failed: pruning: IndexError" in table
    assert "+3.00 dB" in text
    assert "mean PSNR >= 2.0 dB above the baseline: **met**" in text
    with Image.open(tmp_path / "quality_vs_macs.png") as im:
        assert im.size[0] > 500
