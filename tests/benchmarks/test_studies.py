"""The fixed-step ablation and the steps-to-quality study run end to end on the real zoo dcgan
(a handful of steps: this checks the harness, not the numbers in benchmarks/NOTES.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import ablate, steps_to_quality


def test_ablation_swaps_pruning_and_training(tmp_path: Path) -> None:
    out = tmp_path / "ablate.json"
    variants = "baseline prune + bare,engine prune + engine"
    assert ablate.main(["--model", "dcgan", "--steps", "4", "--variants", variants, "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(variants.split(","))
    base, ours = rows["baseline prune + bare"], rows["engine prune + engine"]
    # the engine is pruned to the baseline's share of MACs (counted by Torch-Pruning here, which
    # counts ConvTranspose differently from the engine: within 25%)
    assert abs(ours["macs"] / base["macs"] - 1) < 0.25
    for r in rows.values():
        assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and r["steps"] == 4


def test_steps_to_quality_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert (
        steps_to_quality.main(["--models", "dcgan", "--steps", "2,3", "--device", "cpu", "--out", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["steps"] for r in rows] == [2, 3]
    assert all(r["device"] == "cpu" and 0 < r["ssim"] <= 1 and math.isfinite(r["psnr_db"]) for r in rows)


def test_profile_nodes_prints_per_node_times(capsys) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import profile_nodes

    assert profile_nodes.main(["--model", "dcgan", "--runs", "3", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "teacher:" in out and "student:" in out
    speedup = float(out.split("kernel-time speedup ")[1].split("x")[0])
    mac_red = float(out.split("MAC reduction ")[1].split("x")[0])
    assert speedup > 0 and mac_red > 1.5  # the default ratio-0.5 student really is smaller


def test_baseline_trains_and_exports_or_says_where_it_broke(tmp_path: Path) -> None:
    import onnx

    from benchmarks.baseline import run_baseline
    from benchmarks.evaluate import teacher_path

    ok = run_baseline("dcgan", teacher_path("dcgan"), 0.5, 0.5, tmp_path / "b.onnx")
    assert ok.error is None and ok.steps >= 1
    onnx.checker.check_model(onnx.load(str(tmp_path / "b.onnx")))
    bad = run_baseline("srresnet", teacher_path("srresnet"), 0.5, 0.5, tmp_path / "c.onnx")
    assert bad.error is not None and bad.error.startswith("pruning: ") and not (tmp_path / "c.onnx").exists()


def test_recovery_study_compares_the_ridges_on_one_pruned_student(tmp_path: Path) -> None:
    from benchmarks import recovery_study

    assert recovery_study.main(["--models", "unet_i2i", "--samples", "8", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["pruned", "zero-1e-3", "pruned-1e-3", "auto"]
    assert all(r["mse_ratio"] > 1 for r in rows[1:])  # every refit repairs some of the pruning
    assert "| unet_i2i | auto |" in (tmp_path / "RESULTS.md").read_text()


def test_recovery_layers_prints_each_refitted_layer(capsys) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import recovery_layers

    assert recovery_layers.main(["--model", "unet_i2i", "--crop", "32", "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "refitted" in out and "heldout.npy: per-image MSE" in out
    assert sum(1 for line in out.splitlines() if line.endswith(tuple("0123456789")) and "/" in line) >= 3
