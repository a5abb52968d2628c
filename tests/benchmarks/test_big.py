"""The real-size benchmark's table writer (the jobs themselves run in `make bench-big`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import big


def _row(config: str, mse: tuple[float, float] | None) -> big.Row:
    return big.Row(
        model="m", config=config, macs=2_500_000_000, budget_s=120.0, wall_s=125.0, ssim=0.93, psnr=37.1,
        ssim_after_prune=0.5, ssim_after_recovery=0.9 if mse else None, ssim_after_distill=0.95,
        mse_after_prune=mse[0] if mse else None, mse_after_recovery=mse[1] if mse else None, steps=300,
        mac_reduction=3.8, speedup_1t=3.3, stages={"import": 4.0, "distill": 90.0}, collapse=None,
    )  # fmt: skip


def test_the_table_says_what_each_run_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(big, "RUNS", tmp_path)
    rows = [_row("defaults", (0.02, 0.0005)), _row("no-recovery", None)]
    path = big.write(rows, argparse.Namespace(budget_seconds=120.0, ratio=0.5))
    text = path.read_text()
    assert "| m | 2.50 | defaults | 0.930 | 37.10 |" in text
    assert "0.02 → 0.0005 (40.0x)" in text and "| 125 (120) |" in text
    assert "| m | 2.50 | no-recovery |" in text and text.count("| – |") >= 1
    assert [r["config"] for r in json.loads((tmp_path / "results.json").read_text())] == [
        "defaults",
        "no-recovery",
    ]
    assert "--ratio 0.5`" in text  # no fixed steps or learning rate asked: none shown
    fixed = big.write(
        rows, argparse.Namespace(budget_seconds=600.0, ratio=0.5, steps=1500, lr=3e-4)
    ).read_text()
    assert "--budget-seconds 600 --ratio 0.5 --steps 1500 --lr 0.0003`" in fixed
