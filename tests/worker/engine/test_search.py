"""Target search: the torch-free decisions (engine/search.py) on hand-made candidates, and whole
searches and sweeps through ``run_pipeline`` on the tiny generators (real pruning, ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from worker.engine import search as S
from worker.report_schema import Report, SearchCandidate
from worker.spec import CompressionSpec, Progress, PruneMode, Stage, TargetSpec


def cand(cid: str, level: float, latency: float, ssim: float | None, **kw: Any) -> SearchCandidate:
    row: dict[str, Any] = {
        "id": cid,
        "level": level,
        "allocation": "sensitivity",
        "quantize": "none",
        "macs": int(1e9 * (1 - level)),
        "params": 1000,
        "size_bytes": int(4e6 * (1 - level)),
        "latency_ms": latency,
        "speedup": 10.0 / latency,
        "latency_runs": 20,
        "ssim": ssim,
        "meets": None,
        "seconds": 1.0,
    }
    return SearchCandidate.model_validate(row | kw)


def judged(rows: list[SearchCandidate], target: TargetSpec | None) -> list[SearchCandidate]:
    for r in rows:
        S.judge(r, target)
    return rows


# --- decisions ------------------------------------------------------------------------------


def test_judge_names_each_miss_with_its_numbers() -> None:
    t = TargetSpec(min_ssim=0.95, max_latency_ms=5.0)
    (r,) = judged([cand("c1", 0.5, 6.0, 0.93)], t)
    assert r.meets is False and r.misses == ["latency_ms 6ms > 5ms", "ssim 0.93 < 0.95"]
    (r,) = judged([cand("c1", 0.5, 4.0, 0.96)], t)
    assert r.meets is True and r.misses == []


def test_an_untrained_candidate_is_undecided_unless_a_cost_target_already_fails() -> None:
    t = TargetSpec(min_ssim=0.9, max_latency_ms=5.0)
    fast, slow = judged([cand("c1", 0.5, 4.0, None), cand("c2", 0.25, 8.0, None)], t)
    assert fast.meets is None and slow.meets is False
    assert S.meets_cost(fast, t) and not S.meets_cost(slow, t)


def test_quality_targets_pick_the_fastest_that_meets() -> None:
    t = TargetSpec(min_ssim=0.9)
    rows = judged([cand("c1", 0.25, 8.0, 0.97), cand("c2", 0.5, 5.0, 0.93), cand("c3", 0.625, 4.0, 0.85)], t)
    pick, met, why = S.choose(rows, t)
    assert pick.id == "c2" and met and "fastest of 2" in why


def test_cost_targets_only_pick_the_best_quality_that_meets() -> None:
    t = TargetSpec(max_latency_ms=6.0)
    rows = judged([cand("c1", 0.25, 8.0, 0.97), cand("c2", 0.5, 5.0, 0.93), cand("c3", 0.625, 4.0, 0.85)], t)
    pick, met, why = S.choose(rows, t)
    assert pick.id == "c2" and met and "best quality" in why


def test_when_nothing_meets_the_closest_is_shipped_and_the_why_says_what_helps() -> None:
    t = TargetSpec(min_ssim=0.99, max_latency_ms=4.5)
    rows = judged([cand("c1", 0.25, 8.0, 0.97), cand("c2", 0.5, 5.0, 0.96)], t)
    pick, met, why = S.choose(rows, t)
    # c1: latency 78% over, c2: latency 11% over and SSIM 3% short
    assert pick.id == "c2" and not met
    assert "no candidate met" in why and "budget_seconds" in why and "latency_ms 5ms > 4.5ms" in why
    assert S.shortfall(rows[1], t) == pytest.approx(0.5 / 4.5 + 0.03 / 0.99)


def test_without_a_target_the_candidate_at_the_asked_ratio_is_shipped() -> None:
    rows = judged([cand("c1", 0.25, 8.0, 0.97), cand("c2", 0.5, 5.0, 0.9), cand("c3", 0.75, 3.0, 0.8)], None)
    assert all(r.meets for r in rows)
    assert S.choose(rows, None, 0.75)[0].id == "c3"
    with pytest.raises(ValueError, match="no candidate was measured"):
        S.choose([cand("c1", 0.5, 5.0, None)], None)


def test_a_learning_curve_projects_the_error_on_its_power_law() -> None:
    """Error 0.1 * t^-0.5 measured to t = 10 s: at 40 s the law says 0.1 / sqrt(40); GAIN_COUNTED
    of the gain is counted. A flat or rising curve, or one too short, projects nothing."""
    curve = [(t, 1 - 0.1 * t**-0.5) for t in (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)]
    at10 = 1 - 0.1 * 10**-0.5
    full = 1 - 0.1 * 40**-0.5
    assert S.project_ssim(at10, curve, 10.0, 40.0) == pytest.approx(
        at10 + S.GAIN_COUNTED * (full - at10), rel=1e-6
    )
    steep = [(t, 1 - 0.1 * t**-2.0) for t in (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)]
    capped = 1 - (1 - steep[-1][1]) * 4**-S.MAX_EXPONENT  # the exponent is capped
    assert S.project_ssim(steep[-1][1], steep, 10.0, 40.0) == pytest.approx(
        steep[-1][1] + S.GAIN_COUNTED * (capped - steep[-1][1]), rel=1e-6
    )
    assert S.project_ssim(0.9, [(t, 0.9) for t in (1.0, 2.0, 3.0, 4.0, 5.0)], 5.0, 40.0) is None
    assert S.project_ssim(0.9, [(t, 0.9 - 0.01 * t) for t in (1.0, 2.0, 3.0, 4.0)], 4.0, 40.0) is None
    assert S.project_ssim(at10, curve[-2:], 10.0, 40.0) is None


def test_a_candidate_projected_to_meet_is_picked_when_faster_but_not_called_met() -> None:
    t = TargetSpec(min_ssim=0.95)
    rows = judged([cand("c1", 0.25, 8.0, 0.96), cand("c2", 0.625, 4.0, 0.94, ssim_projected=0.955)], t)
    for r in rows:
        S.judge_projected(r, t)
    assert rows[1].meets is False and rows[1].meets_projected is True
    pick, met, why = S.choose(rows, t)
    assert pick.id == "c2" and not met and "projected" in why
    rows[1].ssim_projected = 0.945  # projected short as well: the measured pass wins
    S.judge_projected(rows[1], t)
    assert S.choose(rows, t)[0].id == "c1"
    # a PSNR target has no projection
    tp = TargetSpec(min_ssim=0.95, min_psnr=30)
    S.judge_projected(rows[1], tp)
    assert rows[1].meets_projected is None


def test_a_projected_pick_that_misses_after_its_training_falls_back_to_the_fastest_measured_pass() -> None:
    t = TargetSpec(min_ssim=0.95)
    rows = judged(
        [
            cand("c1", 0.25, 8.0, 0.97, psnr=33.0),
            cand("c2", 0.375, 6.0, 0.955, psnr=31.0),
            cand("c3", 0.625, 4.0, 0.94, psnr=29.0, ssim_projected=0.956),
        ],
        t,
    )
    pick = rows[2]
    fell = S.fallback(rows, pick, {"ssim": 0.941, "psnr": 30.0}, t)
    assert fell is not None
    best, why = fell
    assert best.id == "c2"  # the faster of the two that met, not the best quality
    assert "c3 was projected" in why and "ssim 0.941 < 0.95" in why and "6 ms" in why
    # no fallback: the pick reached the target, was a measured pass, no rival met, or no target
    assert S.fallback(rows, pick, {"ssim": 0.951, "psnr": 30.0}, t) is None
    assert S.fallback(rows, rows[1], {"ssim": 0.9, "psnr": 30.0}, t) is None
    assert S.fallback([pick], pick, {"ssim": 0.9, "psnr": 30.0}, t) is None
    assert S.fallback(rows, pick, {"ssim": 0.9, "psnr": 30.0}, None) is None
    # a quality value the pick was not measured on counts as a miss
    tp = TargetSpec(min_psnr=30.0)
    fell = S.fallback(judged(rows, tp), pick, {"ssim": 0.9, "psnr": None}, tp)
    assert fell is not None and fell[0].id == "c2" and "psnr not measured" in fell[1]


def test_the_front_holds_only_candidates_nothing_beats_on_both_axes() -> None:
    rows = [
        cand("c1", 0.25, 8.0, 0.97),
        cand("c2", 0.5, 5.0, 0.93),
        cand("c3", 0.5, 6.0, 0.92),  # slower and worse than c2
        cand("c4", 0.75, 3.0, 0.80),
        cand("c5", 0.6, 4.0, None),  # not measured: never on the front
    ]
    S.mark_front(rows)
    assert [r.id for r in rows if r.pareto] == ["c1", "c2", "c4"]


def test_a_finer_level_lies_between_neighbours_only() -> None:
    assert S.between([0.25, 0.375, 0.5], 0.375, 0.5) == 0.4375
    assert S.between([0.25, 0.375, 0.4375, 0.5], 0.375, 0.5) is None  # tried already
    assert S.between([0.5], None, 0.5) is None and S.between([0.5], 0.5, 0.25) is None
    assert tuple(sorted(S.GRID)) == S.GRID and max(S.GRID) <= 0.8


def test_the_shipped_model_is_judged_on_its_own_numbers() -> None:
    t = TargetSpec(min_ssim=0.9, max_size_mb=1.0, min_speedup=2.0)
    values: dict[str, float | None] = {"ssim": 0.95, "psnr": None, "speedup": 1.5, "size_mb": 0.5}
    assert S.final_misses(values, t) == ["speedup 1.5x < 2x"]
    assert S.final_misses(values | {"speedup": None}, t) == ["speedup not measured"]


# --- the spec -------------------------------------------------------------------------------


def test_a_target_alone_means_search() -> None:
    spec = CompressionSpec.model_validate({"target": {"min_ssim": 0.9}})
    assert spec.mode == PruneMode.SEARCH
    assert CompressionSpec().mode == PruneMode.SINGLE
    assert CompressionSpec.model_validate({"prune": {"mode": "sweep"}}).mode == PruneMode.SWEEP


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"target": {}}, "at least one of"),
        ({"target": {"min_ssim": 0.9}, "prune": {"mode": "single"}}, "needs prune.mode"),
        ({"prune": {"mode": "search"}}, "needs a target"),
        ({"target": {"min_ssim": 0.9}, "prune": {"method": "block"}}, "needs prune.method 'channel'"),
        ({"target": {"min_ssim": 0.9}, "prune": {"target_macs": 1000}}, "leave out target_macs"),
        ({"prune": {"mode": "sweep", "iterative_steps": 2}}, "iterative_steps"),
        ({"target": {"min_ssim": 2}}, "less than or equal to 1"),
    ],
)
def test_contradictory_targets_are_refused(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CompressionSpec.model_validate(doc)


# --- whole searches on tiny generators ---------------------------------------------------------


def _inputs(sess: ort.InferenceSession) -> list[tuple[str, list[Any]]]:
    return [(i.name, list(i.shape)) for i in sess.get_inputs()]


def _run(model: Path, doc: dict[str, Any], out: Path, calib: Path | None) -> tuple[list[Progress], Report]:
    from worker.engine.pipeline import compress

    spec = CompressionSpec.model_validate(doc)
    events: list[Progress] = []
    got = compress(model, spec, out, calibration={"": calib} if calib else None, progress=events.append)
    report = Report.model_validate(json.loads((out / "report.json").read_text()))
    assert got == report.model_dump(mode="json")
    return events, report


def _page(out: Path) -> str:
    """report.html's search section (the page itself is checked by the report tests)."""
    page = (out / "report.html").read_text()
    start = page.index('<section id="search"')
    return page[start : page.index("</section>", start)]


def test_the_front_chart_draws_each_measured_candidate_and_the_target_lines() -> None:
    from worker.engine.report.charts import svg_front

    rows = [
        cand("c1", 0.25, 8.0, 0.97, pareto=True),
        cand("c2", 0.5, 5.0, 0.93, pareto=True, picked=True),
        cand("c3", 0.5, 3.0, 0.91, quantize="int8-static", pareto=True),
        cand("c4", 0.625, 4.0, None),
    ]
    svg = svg_front(rows, min_ssim=0.95, max_latency_ms=6.0)
    assert svg.count('data-testid="front-point"') == 3  # c4 has no quality
    assert svg.count("<rect") == 1 and svg.count('data-testid="front-pick"') == 1
    assert 'data-testid="target-ssim"' in svg and 'data-testid="target-latency"' in svg
    assert svg.count("<polyline") == 1
    assert "No candidate" in svg_front([rows[3]])


def test_a_quality_target_ships_the_fastest_candidate_that_meets_it(
    tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    out = tmp_path / "out"
    events, report = _run(
        tiny_onnx["resnet"],
        {"target": {"min_ssim": 0.5, "quantize": False}, "distill": {"budget_seconds": 40}},
        out,
        calib_file,
    )
    s = report.search
    assert s is not None and s.mode == "search" and s.objective == "latency"
    trained = [c for c in s.candidates if c.ssim is not None]
    assert len(trained) >= 2 and len({c.level for c in trained}) == len(trained)
    # a level whose rounded channel counts equal an earlier one's is not evaluated twice
    assert len({c.macs for c in trained}) == len(trained)
    (pick,) = [c for c in s.candidates if c.picked]
    assert pick.id == s.pick and pick.pareto
    if s.met:  # the fastest that met: no faster candidate met too
        assert pick.meets and not any(c.meets and c.latency_ms < pick.latency_ms for c in trained)
    for c in trained:
        assert c.latency_ms > 0 and c.speedup > 0 and c.size_bytes > 0 and c.macs > 0
    # the shipped model is the pick distilled further, judged again on the report's own numbers
    assert report.summary.target_met == (not report.summary.target_misses)
    assert report.spec["target"]["min_ssim"] == 0.5
    assert not list(out.glob("candidate-*.onnx"))  # only a sweep returns candidates
    # the page: one chart point and one table row per candidate measured for quality, the pick marked
    page = _page(out)
    measured = [c for c in s.candidates if c.ssim is not None]
    assert page.count('data-testid="front-point"') == len(measured)
    assert page.count('data-testid="search-row"') == len(s.candidates)
    assert page.count('data-testid="front-pick"') == 1 and 'data-testid="target-ssim"' in page
    verdict = "Target met" if report.summary.target_met else "Target missed"
    assert verdict in page
    assert any(e.stage == Stage.SEARCH for e in events) and events[-1].stage == Stage.DONE
    # its interface is the teacher's
    t = ort.InferenceSession(str(tiny_onnx["resnet"]), providers=["CPUExecutionProvider"])
    m = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert _inputs(m) == _inputs(t)
    assert [o.name for o in m.get_outputs()] == [o.name for o in t.get_outputs()]


def test_a_sweep_returns_every_candidate_as_a_valid_onnx_file(
    tiny_onnx: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _, report = _run(
        tiny_onnx["dcgan"],
        {
            "prune": {"mode": "sweep", "ratio": 0.5, "allocation": "uniform"},
            "distill": {"budget_seconds": 30},
        },
        out,
        None,
    )
    s = report.search
    assert s is not None and s.mode == "sweep" and s.targets == {} and s.met
    assert [c.level for c in s.candidates] == [0.5, 0.25, 0.75]  # the asked ratio first
    assert s.candidates[0].picked and report.summary.target_met is None
    macs = [c.macs for c in sorted(s.candidates, key=lambda c: c.level)]
    assert macs == sorted(macs, reverse=True)  # more pruned, fewer MACs
    z = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    page = _page(out)
    assert "no target (a sweep)" in page and 'data-testid="search-verdict"' not in page
    for c in s.candidates:
        assert f'href="{c.artifact}"' in page
        assert c.artifact == f"candidate-{c.id[1:]}.onnx"
        path = out / c.artifact
        onnx.checker.check_model(str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: z})  # a dynamic batch still
        assert y.shape[0] == 3 and np.isfinite(y).all()


def test_a_cost_target_is_met_by_the_best_quality_level(tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    events, report = _run(
        tiny_onnx["dcgan"],
        {"target": {"min_speedup": 1.05, "quantize": False}, "distill": {"budget_seconds": 30}},
        out,
        None,
    )
    s = report.search
    assert s is not None and s.objective == "quality"
    structural = [c for c in s.candidates if c.ssim is None]
    assert structural, "cost targets are bisected on untrained candidates"
    (pick,) = [c for c in s.candidates if c.picked]
    assert pick.ssim is not None
    meeting = [c for c in s.candidates if S.meets_cost(c, TargetSpec(min_speedup=1.05))]
    if meeting:  # the least pruned level that is fast enough
        assert pick.level == min(c.level for c in meeting)
    assert report.summary.mac_reduction is not None and report.summary.mac_reduction > 1
    # progress events carry the live front: the last search event lists every candidate
    last = [e for e in events if e.stage == Stage.SEARCH and e.candidates][-1]
    assert [p.id for p in last.candidates or []] == [c.id for c in s.candidates]
    assert all(e.elapsed_seconds is not None for e in events)


def test_a_projected_pick_that_missed_ships_a_candidate_that_met_as_it_was_measured(
    tiny_onnx: dict[str, Path], tmp_path: Path, calib_file: Path
) -> None:
    """The stage's fallback on a real sweep, its rows turned into a search whose pick (the most
    pruned) was shipped on its projection: with a target between its quality and the next level's,
    the distilled pick misses, and the outcome ships the fastest candidate that met, whose own
    student still scores what its exported ONNX scored in the search."""
    from worker.engine import quality
    from worker.engine.budget import Budget
    from worker.engine.stages import search as stage
    from worker.engine.stages import setup

    spec = CompressionSpec.model_validate(
        {"prune": {"mode": "sweep", "allocation": "uniform"}, "distill": {"budget_seconds": 30}}
    )
    bench = setup.load_workbench(
        tiny_onnx["resnet"], spec, {"": calib_file}, Budget(30), lambda p: None, lambda: False
    )
    outcome = stage.run(bench, spec, tmp_path)
    rows = sorted((r for r in outcome.section.candidates if r.ssim is not None), key=lambda r: r.level)
    assert len(rows) >= 3 and rows[0].ssim > rows[-1].ssim
    pick = rows[-1]
    pick_bench = next(c for c in outcome.candidates if c.row is pick).bench
    assert pick_bench is not None
    got = quality.evaluate(
        setup.forward(pick_bench.student, pick_bench.heldout),
        pick_bench.teacher_heldout,
        pick_bench.data_range,
    ).mean("ssim")
    met_ssim = max(r.ssim for r in rows[:-1] if r.ssim is not None)
    assert got < met_ssim
    target = TargetSpec(min_ssim=(got + met_ssim) / 2)
    for r in outcome.section.candidates:
        S.judge(r, target)
        r.picked = r is pick
    pick.meets_projected, pick.ssim_projected = True, target.min_ssim + 0.01
    outcome.section.pick = pick.id
    assert outcome.fallback(TargetSpec(min_ssim=got - 0.01)) is None  # the distilled pick meets that one

    fell = outcome.fallback(target)
    assert fell is not None and fell.section.met
    (shipped,) = [r for r in fell.section.candidates if r.picked]
    assert shipped.id == fell.section.pick != pick.id and shipped.meets
    assert not any(r.meets and r.latency_ms < shipped.latency_ms for r in fell.section.candidates)
    assert f"{pick.id} was projected" in fell.section.why and fell.notes[-1] == fell.section.why
    assert fell.pick.row.id == (shipped.from_candidate or shipped.id) and fell.pick.bench is not None
    b = fell.pick.bench
    again = quality.evaluate(setup.forward(b.student, b.heldout), b.teacher_heldout, b.data_range).mean(
        "ssim"
    )
    assert again == pytest.approx(shipped.ssim, abs=0.01) and again >= target.min_ssim - 0.01
