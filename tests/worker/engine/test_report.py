"""Tests of worker.report_schema and worker.engine.report: schema validation, gates, the sample
grid and the self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from worker.engine.measure import LatencyResult, LatencyStats, MemoryResult, ThreadLatency, measure_model
from worker.engine.report import (
    GRID_LABEL_W,
    GRID_PAD,
    ReportImages,
    interpretation_warnings,
    latency_section,
    make_grid,
    memory_section,
    quality_section,
    size_section,
    summarize,
    svg_line_chart,
    tool_versions,
    write_report,
)
from worker.report_schema import (
    REPORT_SCHEMA_VERSION,
    Absent,
    CurvePoint,
    DistillationSection,
    ExportSection,
    Figure,
    InputInfo,
    KeptLayer,
    LayerRow,
    PruningSection,
    RecoverySection,
    Report,
    Summary,
    TensorInfo,
    TimingSection,
    evaluate_gates,
    report_json_schema,
)
from worker.spec import CompressionSpec, Gates, ModelFormat

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- fixtures


def _conv_onnx(path: Path, cout: int, zeros: float = 0.0) -> Path:
    w = RNG.standard_normal((cout, 3, 3, 3)).astype(np.float32)
    w[RNG.random(w.shape) < zeros] = 0
    w2 = RNG.standard_normal((3, cout, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Tanh", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _latency() -> LatencyResult:
    def stats(base: float) -> LatencyStats:
        return LatencyStats.from_samples(list(base + RNG.gamma(2.0, 0.05, 30)))

    rows = [
        ThreadLatency(
            t, stats(4.0 / t), stats(1.5 / t), speedup=0.0, rounds=30, warmup=5, stopped_by_budget=t == 2
        )
        for t in (1, 2)
    ]
    for r in rows:
        r.speedup = r.teacher.p50_ms / r.student.p50_ms
    return LatencyResult(rows, 4, {"x": [4, 3, 16, 16]}, {"processor": "test cpu", "onnxruntime": "x"}, "how")


def _images(n: int = 6, c: int = 3, hw: int = 16) -> tuple[np.ndarray, np.ndarray]:
    t = np.tanh(RNG.standard_normal((n, c, hw, hw))).astype(np.float32)
    s = np.clip(t + 0.05 * RNG.standard_normal(t.shape), -1, 1).astype(np.float32)
    return t, s


def build_report(tmp_path: Path, gates: Gates | None = None) -> tuple[Report, ReportImages]:
    from worker.engine.quality import evaluate

    teacher = measure_model(_conv_onnx(tmp_path / "t.onnx", 32), {"x": [4, 3, 16, 16]})
    student = measure_model(_conv_onnx(tmp_path / "s.onnx", 8), {"x": [4, 3, 16, 16]})
    t_out, s_out = _images()
    q = evaluate(s_out, t_out, data_range=2.0, worst_k=3)
    size = size_section(teacher, student)
    lat = latency_section(_latency())
    qual = quality_section(q, inputs="6 held-out N(0, 1) inputs", seed=1)
    spec = CompressionSpec(gates=gates or Gates(min_ssim=0.5, min_psnr=99.0))
    summary, gate_results = summarize(size, lat, qual, spec.gates)
    mem = memory_section(
        MemoryResult(50_000_000, 90_000_000, 40_000_000, 85_000_000, 1, "child process VmHWM"),
        MemoryResult(10_000_000, 50_000_000, 40_000_000, 49_000_000, 1, "child process VmHWM"),
    )
    report = Report(
        tool=tool_versions(),
        input=InputInfo(
            file_name="gen.onnx",
            format=ModelFormat.ONNX,
            sha256="a" * 64,
            bytes=teacher.bytes,
            inputs=[TensorInfo(name="x", shape=["n", 3, 16, 16], dtype="float32")],
            outputs=[TensorInfo(name="y", shape=["n", 3, 16, 16], dtype="float32")],
        ),
        spec=spec.model_dump(mode="json"),
        pruning=PruningSection(
            method="channel",
            criterion="l1",
            ratio_asked=0.75,
            achieved_ratio=Figure(value=0.75, unit="fraction of channels removed"),
            layers=[
                LayerRow(name="conv1", kind="Conv2d", channels_before=32, channels_after=8, pruned=True),
                LayerRow(
                    name="conv_out",
                    kind="Conv2d",
                    channels_before=3,
                    channels_after=3,
                    pruned=False,
                    reason_kept="output layer",
                ),
            ],
            kept_whole=[KeptLayer(name="conv_out", reason="output layer")],
        ),
        recovery=RecoverySection(
            method="least_squares",
            applied=True,
            layers_refitted=5,
            layers_skipped={"mod.conv": "the recovery time share ran out"},
            samples=32,
            rows_per_layer=8192,
            seconds=Figure(value=1.5, unit="s"),
            quality_before={"ssim": 0.41},
            quality_after={"ssim": 0.77},
            layer_error_before=2.5,
            layer_error_after=0.4,
        ),
        distillation=DistillationSection(
            steps=20,
            steps_asked=20,
            seconds=Figure(value=3.2, unit="s"),
            batch_size=4,
            losses={"l1": 1.0, "ssim": 0.5},
            curve=[
                CurvePoint(step=i, loss=None if i == 0 else 1 / (i + 1), heldout_score=0.5 + i / 50)
                for i in range(0, 21, 5)
            ],
            best_step=20,
            quality_after_pruning={"ssim": 0.41},
            quality_after_recovery={"ssim": 0.77},
            quality_after_distillation={"ssim": 0.9},
        ),
        export=ExportSection(
            opset=17,
            quantize="none",
            parity_max_abs_diff=Figure(value=2e-6, unit="output units", how="max over a batch of 4"),
        ),
        size=size,
        latency=lat,
        memory=mem,
        quality=qual,
        gates=gate_results,
        summary=summary,
        timing=TimingSection(budget_seconds=60, total_seconds=58.5, stages={"import": 2.0, "distill": 40.0}),
        warnings=interpretation_warnings(spec.model_dump(mode="json"), summary),
    )
    images = ReportImages(
        teacher=t_out, student=s_out, worst_indices=q.worst_indices, value_range=(-1.0, 1.0)
    )
    return report, images


# ----------------------------------------------------------------------------- schema, gates


def test_report_json_validates_and_round_trips(tmp_path: Path) -> None:
    report, images = build_report(tmp_path)
    out = tmp_path / "out"
    write_report(out, report, images)
    data = json.loads((out / "report.json").read_text())
    jsonschema.Draft202012Validator(report_json_schema()).validate(data)
    assert data["schema_version"] == REPORT_SCHEMA_VERSION
    assert Report.model_validate(data) == report
    assert data["size"]["teacher"]["params"]["unit"] == "parameters"
    assert data["size"]["mac_reduction"]["value"] == pytest.approx(4.0, rel=0.01)
    assert data["latency"]["per_threads"][0]["teacher"]["unit"] == "ms"
    assert data["quality"]["absent"]["ms_ssim"]
    assert data["summary"]["gates_passed"] is False
    assert set(data["summary"]) == set(Summary.model_fields)


def test_invalid_report_is_not_written(tmp_path: Path) -> None:
    report, images = build_report(tmp_path)
    bad = report.model_copy(deep=True)
    bad.quality.metrics["ssim"].mean = float("nan")  # type: ignore[union-attr]  # serialized as null
    with pytest.raises(jsonschema.ValidationError):
        write_report(tmp_path / "bad", bad, images)
    assert not (tmp_path / "bad" / "report.json").exists()


def test_absent_sections_validate_and_render(tmp_path: Path) -> None:
    report, _ = build_report(tmp_path)
    r = report.model_copy(
        update={
            "memory": Absent(reason="sandbox forbids child processes"),
            "distillation": Absent(reason="steps = 0"),
            "latency": Absent(reason="budget spent"),
        }
    )
    write_report(tmp_path / "o", r, None)
    page = (tmp_path / "o" / "report.html").read_text()
    assert "sandbox forbids child processes" in page and 'data-testid="absent-latency"' in page
    assert 'data-testid="samples-absent"' in page
    assert Image.open(tmp_path / "o" / "samples.png").size == (480, 60)
    vec = ReportImages(teacher=np.zeros((4, 10), np.float32), student=np.ones((4, 10), np.float32))
    write_report(tmp_path / "v", r, vec)
    page = (tmp_path / "v" / "report.html").read_text()
    assert 'data-testid="samples-absent"' in page and "not images" in page


def test_evaluate_gates() -> None:
    s = Summary(ssim=0.91, psnr=27.0, speedup=1.4, gates_passed=True)
    r = evaluate_gates(Gates(min_ssim=0.9, min_psnr=30.0, min_speedup=1.4), s)
    assert not r.passed
    assert [(g.gate, g.value, g.passed) for g in r.results] == [
        ("min_ssim", 0.91, True),
        ("min_psnr", 27.0, False),
        ("min_speedup", 1.4, True),
    ]
    assert evaluate_gates(Gates(), s).model_dump() == {"passed": True, "results": []}
    missing = evaluate_gates(Gates(min_ssim=0.5), {"ssim": None})
    assert not missing.passed and "not measured" in (missing.results[0].reason or "")
    assert evaluate_gates(Gates(min_speedup=1.0), {"speedup": float("nan")}).passed is False


def test_summarize_reads_sections(tmp_path: Path) -> None:
    report, _ = build_report(tmp_path, gates=Gates(min_ssim=0.5))
    s = report.summary
    assert s.ssim == report.quality.metrics["ssim"].mean  # type: ignore[union-attr]
    lat = report.latency.per_threads  # type: ignore[union-attr]
    assert s.speedup == lat[0].speedup.value and s.speedup_all_cores == lat[-1].speedup.value
    assert s.gates_passed and report.gates.passed
    assert s.size_reduction == pytest.approx(
        report.size.teacher.bytes.value / report.size.student.bytes.value
    )  # type: ignore[union-attr]
    unstructured = interpretation_warnings({"prune": {"method": "unstructured"}}, s)
    assert any("not faster" in w for w in unstructured)
    slow = interpretation_warnings(
        {"export": {"quantize": "int8-dynamic"}}, Summary(speedup=0.8, gates_passed=True)
    )
    assert any("INT8" in w for w in slow)


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_shape(channels: int) -> None:
    t, s = _images(5, channels, 20)
    g = make_grid(t, s, indices=[0, 2, 4], value_range=(-1, 1), tile_min=0)
    assert g.image is not None and g.rows == ["teacher", "student"] and g.indices == [0, 2, 4]
    assert g.image.shape == (2 * 20 + 3 * GRID_PAD, GRID_LABEL_W + 3 * 20 + 4 * GRID_PAD, 3)
    assert g.image.dtype == np.uint8
    # the first teacher tile holds sample 0 mapped from [-1, 1] to [0, 255]
    tile = g.image[GRID_PAD : GRID_PAD + 20, GRID_LABEL_W + GRID_PAD : GRID_LABEL_W + GRID_PAD + 20]
    expected = np.round((np.clip(t[0], -1, 1) + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(tile, np.repeat(expected, 3, 2) if channels == 1 else expected)


def test_grid_with_inputs_diff_and_downscaling() -> None:
    t, s = _images(3, 3, 64)
    x = RNG.random((3, 1, 16, 16)).astype(np.float32)  # super-resolution style: smaller, 1 channel
    g = make_grid(t, s, inputs=x, diff=True, label_width=0, tile_max=32)
    assert g.rows == ["input", "teacher", "student", "|diff|"]
    assert g.image is not None and g.image.shape == (4 * 32 + 5 * GRID_PAD, 3 * 32 + 4 * GRID_PAD, 3)
    assert "|diff| white" in g.caption
    small = make_grid(*_images(2, 3, 10), label_width=0)  # 10 px tiles are enlarged 7x (to >= 64 px)
    assert small.image is not None and small.image.shape == (2 * 70 + 3 * GRID_PAD, 2 * 70 + 3 * GRID_PAD, 3)


def test_grid_non_image_outputs() -> None:
    g = make_grid(np.zeros((4, 10)), np.zeros((4, 10)))
    assert g.image is None and "not images" in (g.reason or "")
    with pytest.raises(ValueError, match="differ"):
        make_grid(np.zeros((4, 3, 8, 8)), np.zeros((4, 3, 8, 9)))


# ----------------------------------------------------------------------------- html


def test_html_is_self_contained_and_shows_the_numbers(tmp_path: Path) -> None:
    report, images = build_report(tmp_path)
    out = tmp_path / "out"
    write_report(out, report, images)
    page = (out / "report.html").read_text()
    s = report.summary
    assert s.ssim is not None and s.psnr is not None and s.speedup is not None
    assert s.size_reduction is not None and s.mac_reduction is not None

    def testid(name: str) -> str:
        m = re.search(rf'data-testid="{name}"[^>]*>([^<]*)<', page)
        assert m, name
        return m.group(1)

    assert testid("headline-ssim") == f"{s.ssim:.4f}"
    assert testid("headline-psnr") == f"{s.psnr:.2f}"
    assert testid("headline-speedup") == f"{s.speedup:.2f}×"
    assert testid("headline-size") == f"{s.size_reduction:.2f}×"
    assert testid("headline-macs") == f"{s.mac_reduction:.2f}×"
    assert testid("gate-badge") == "Gates failed"
    for tid in ("samples-grid", "worst-grid", "chart-loss", "chart-heldout", "chart-layers", "chart-latency"):
        assert f'data-testid="{tid}"' in page, tid
    assert "1.0 / 1.5" not in page  # sanity: no Python reprs of tuples leak
    assert "min_psnr" in page and "output layer" in page
    assert testid("timing-total") == "58.5 s"
    recovery = page[page.index('data-testid="recovery-quality"') :]
    assert "0.4100" in recovery[:400] and "0.7700" in recovery[:400]
    assert "the recovery time share ran out" in page

    # only data: URIs, no external references of any kind
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(srcs) == 2 and all(u.startswith("data:image/png;base64,") for u in srcs)
    hrefs = re.findall(r'\bhref="([^"]*)"', page)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in without_data.lower()
    assert "<script" not in page.lower() and "<link" not in page.lower() and "url(" not in page

    png = Image.open(out / "samples.png")
    assert png.mode == "RGB" and png.size[0] > GRID_LABEL_W


def test_html_escapes_user_text(tmp_path: Path) -> None:
    report, images = build_report(tmp_path)
    r = report.model_copy(update={"warnings": ['<img src="x" onerror="alert(1)">']})
    write_report(tmp_path / "o", r, images)
    page = (tmp_path / "o" / "report.html").read_text()
    assert '<img src="x"' not in page and "&lt;img" in page


def test_line_chart_handles_single_point_and_no_data() -> None:
    assert "<circle" in svg_line_chart([("a", [0], [1.0], "#000")], "x", "y")
    assert "No data" in svg_line_chart([("a", [0, 1], [None, float("nan")], "#000")], "x", "y")
