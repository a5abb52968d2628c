"""report.json, report.html and samples.png of one compression.

- Builders turn measurement results into report sections: :func:`size_section`,
  :func:`latency_section`, :func:`memory_section`, :func:`quality_section`, :func:`summarize`,
  :func:`tool_versions`, :func:`interpretation_warnings`.
- :func:`make_grid` lays teacher / student (/ input, / difference) samples out as one RGB image.
- :func:`write_report` validates report.json against :func:`report_json_schema` and writes the
  three artifacts. The HTML opens offline: inline CSS, images as ``data:`` URIs, charts as inline
  SVG drawn here (:func:`svg_line_chart`, :func:`svg_bar_chart`, :func:`svg_latency_boxes`).

Torch is not needed here (quality results are read by attribute).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jsonschema
import numpy as np
from PIL import Image, ImageDraw

from worker.engine.measure import MACS_HOW, LatencyResult, MemoryResult, ModelFigures
from worker.report_schema import (
    FACTOR_UNIT,
    Absent,
    Figure,
    GateResults,
    LatencyAtThreads,
    LatencySection,
    LatencyStatsOut,
    LayerRow,
    MemorySection,
    MetricSummary,
    ModelSize,
    QualitySection,
    Report,
    SizeSection,
    Summary,
    ToolVersions,
    evaluate_gates,
    report_json_schema,
)
from worker.spec import Gates

if TYPE_CHECKING:
    from worker.engine.quality import QualityResult

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TEAL, ORANGE, GREY, INK = "#0f766e", "#ea580c", "#94a3b8", "#1e293b"


# ----------------------------------------------------------------------------- section builders


def _ratio(a: float | None, b: float | None, unit: str = FACTOR_UNIT, how: str | None = None) -> Figure:
    if a is None or b is None:
        return Figure(value=None, unit=unit, how=how, reason="not measured for both models")
    if b <= 0:
        return Figure(value=None, unit=unit, how=how, reason="student figure is 0")
    return Figure(value=a / b, unit=unit, how=how)


SIZE_HOW = (
    "params: elements of the floating-point and 8/4-bit integer initializers of the ONNX file "
    "(int32/int64 shape constants excluded; quantized models include their scales and zero points); "
    "nonzero_params: those whose stored value is not exactly 0; bytes: file size on disk; gzip_bytes: "
    "size of the file compressed with gzip level 9. Reductions are teacher / student. MACs: " + MACS_HOW
)


def _model_size(f: ModelFigures) -> ModelSize:
    if f.macs is not None:
        macs = Figure(value=f.macs.total, unit="MACs")
        if not f.macs.complete:
            macs.how = f"lower bound: {len(f.macs.unresolved)} node(s) with unknown shapes not counted"
    else:
        macs = Figure(value=None, unit="MACs", reason=f.macs_error or "MACs not counted")
    return ModelSize(
        params=Figure(value=f.params, unit="parameters"),
        nonzero_params=Figure(value=f.nonzero_params, unit="parameters"),
        bytes=Figure(value=f.bytes, unit="bytes"),
        gzip_bytes=Figure(value=f.gzip_bytes, unit="bytes"),
        macs=macs,
    )


def size_section(teacher: ModelFigures, student: ModelFigures) -> SizeSection:
    """Size figures of teacher and student ONNX files (from :func:`measure.measure_model`)."""
    tm = teacher.macs.total if teacher.macs else None
    sm = student.macs.total if student.macs else None
    notes: list[str] = []
    for who, f in (("teacher", teacher), ("student", student)):
        if f.macs is not None and not f.macs.complete:
            notes.append(
                f"{who} MACs are a lower bound: shapes unknown for {', '.join(f.macs.unresolved[:5])}"
            )
    if student.params and student.nonzero_params < 0.9 * student.params:
        notes.append(
            f"{1 - student.nonzero_params / student.params:.0%} of the student's weights are exactly zero: "
            "zeros make the gzip file smaller; onnxruntime still multiplies them (no speedup)"
        )
    return SizeSection(
        teacher=_model_size(teacher),
        student=_model_size(student),
        param_reduction=_ratio(teacher.params, student.params),
        nonzero_param_reduction=_ratio(teacher.nonzero_params, student.nonzero_params),
        mac_reduction=_ratio(tm, sm),
        size_reduction=_ratio(teacher.bytes, student.bytes),
        gzip_size_reduction=_ratio(teacher.gzip_bytes, student.gzip_bytes),
        input_shapes=dict(student.macs.input_shapes) if student.macs else {},
        macs_not_counted_ops=dict(student.macs.not_counted) if student.macs else {},
        notes=notes,
        how_measured=SIZE_HOW,
    )


def _stats(s: Any) -> LatencyStatsOut:
    return LatencyStatsOut(
        p50_ms=s.p50_ms,
        p90_ms=s.p90_ms,
        p99_ms=s.p99_ms,
        mean_ms=s.mean_ms,
        min_ms=s.min_ms,
        max_ms=s.max_ms,
        std_ms=s.std_ms,
        runs=s.runs,
        samples_ms=[round(x, 4) for x in s.samples_ms],
    )


def latency_section(result: LatencyResult, notes: Sequence[str] = ()) -> LatencySection:
    """Latency section from :func:`measure.measure_latency`'s result."""
    rows = [
        LatencyAtThreads(
            threads=t.threads,
            teacher=_stats(t.teacher),
            student=_stats(t.student),
            speedup=Figure(value=t.speedup, unit="x (teacher p50 / student p50)"),
            rounds=t.rounds,
            warmup=t.warmup,
            stopped_by_budget=t.stopped_by_budget,
        )
        for t in result.per_threads
    ]
    extra = [
        f"{r.threads} thread(s): the time budget stopped after {r.rounds} rounds"
        for r in rows
        if r.stopped_by_budget
    ]
    return LatencySection(
        batch_size=result.batch_size,
        input_shapes=result.input_shapes,
        per_threads=rows,
        environment=result.environment,
        notes=[*notes, *extra],
        how_measured=result.how,
    )


def memory_section(teacher: MemoryResult, student: MemoryResult) -> MemorySection:
    """Peak session memory of teacher and student (from :func:`measure.measure_peak_memory`)."""
    return MemorySection(
        teacher=Figure(value=teacher.session_bytes, unit="bytes"),
        student=Figure(value=student.session_bytes, unit="bytes"),
        reduction=_ratio(teacher.session_bytes, student.session_bytes),
        how_measured=student.how,
    )


def quality_section(
    result: QualityResult, inputs: str, seed: int | None, how: str | None = None
) -> QualitySection:
    """Quality section from :func:`quality.evaluate`'s result. ``inputs`` says what the held-out
    inputs were (e.g. "64 latent vectors N(0, 1), seed 1, never used in distillation")."""
    how = how or (
        f"Teacher and student ran on the same {result.n_samples} held-out inputs ({inputs}); each "
        "metric is computed per sample of the student's output against the teacher's (the teacher is "
        f"the reference, value range width {result.data_range:g}), then mean/min/max/std over samples."
    )
    return QualitySection(
        metrics={
            k: MetricSummary(
                unit=m.unit,
                higher_is_better=m.higher_is_better,
                mean=m.mean,
                min=m.min,
                max=m.max,
                std=m.std,
                values=[round(v, 6) for v in m.values],
                description=m.description,
            )
            for k, m in result.metrics.items()
        },
        absent=dict(result.absent),
        n_samples=result.n_samples,
        seed=seed,
        inputs=inputs,
        data_range=result.data_range,
        is_image=result.is_image,
        worst_indices=list(result.worst_indices),
        worst_by=result.worst_by,
        notes=list(result.notes),
        how_measured=how,
    )


def summarize(
    size: SizeSection | Absent,
    latency: LatencySection | Absent,
    quality: QualitySection | Absent,
    gates: Gates,
) -> tuple[Summary, GateResults]:
    """The flat summary and the gate results. ``speedup`` is at 1 thread, ``speedup_all_cores`` at
    the largest thread count measured."""
    vals: dict[str, float | None] = dict.fromkeys(
        (
            "ssim",
            "psnr",
            "l1",
            "speedup",
            "speedup_all_cores",
            "mac_reduction",
            "param_reduction",
            "size_reduction",
            "gzip_size_reduction",
        )
    )
    if isinstance(quality, QualitySection):
        for k in ("ssim", "psnr", "l1"):
            if k in quality.metrics:
                vals[k] = quality.metrics[k].mean
    if isinstance(latency, LatencySection) and latency.per_threads:
        by_t = {r.threads: r.speedup.value for r in latency.per_threads}
        vals["speedup"] = by_t.get(1)
        vals["speedup_all_cores"] = by_t[max(by_t)]
    if isinstance(size, SizeSection):
        for k in ("mac_reduction", "param_reduction", "size_reduction", "gzip_size_reduction"):
            vals[k] = getattr(size, k).value
    gate_results = evaluate_gates(gates, vals)
    return Summary(**vals, gates_passed=gate_results.passed), gate_results


def tool_versions() -> ToolVersions:
    """Versions of the packages the figures depend on (read from package metadata, no imports)."""

    def v(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return ToolVersions(
        gancompress=v("gancompress") or "unknown",
        torch=v("torch"),
        onnx=v("onnx"),
        onnxruntime=v("onnxruntime"),
        torch_pruning=v("torch-pruning"),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count() or 1,
    )


def interpretation_warnings(spec: dict[str, Any], summary: Summary) -> list[str]:
    """Plain-language warnings about what the figures do not mean for this run."""
    out: list[str] = []
    method = (spec.get("prune") or {}).get("method")
    quant = (spec.get("export") or {}).get("quantize")
    if method == "unstructured":
        out.append(
            "Unstructured pruning only zeroes weights: onnxruntime does not skip zeros, so the model is "
            "not faster; only the gzip-compressed file is smaller"
            + (f" ({summary.gzip_size_reduction:.2f}x)." if summary.gzip_size_reduction else ".")
        )
    if summary.speedup is not None and summary.speedup < 1.0:
        msg = f"The student is slower than the teacher at 1 thread (speedup {summary.speedup:.2f}x)."
        if quant and str(quant).startswith("int8"):
            msg += " INT8 quantization often slows small models on CPU; try quantize 'none'."
        out.append(msg)
    if (
        summary.mac_reduction is not None
        and summary.speedup is not None
        and summary.mac_reduction >= 1.5
        and summary.speedup < 0.5 * summary.mac_reduction
    ):
        out.append(
            f"MACs fell {summary.mac_reduction:.2f}x but latency only {summary.speedup:.2f}x: fewer MACs "
            "is not proportionally lower latency (memory traffic, per-op overhead)."
        )
    return out


# ----------------------------------------------------------------------------- images


@dataclass
class ReportImages:
    """Sample arrays for the report pages. Outputs are ``[N, C, H, W]`` (C = 1 or 3 shown as is,
    C = 4 as its first three, other C as channel 0 in grey) in the model's value range
    ``value_range`` (inferred from the teacher's min/max when None); ``inputs`` ``[N, C', H', W']``
    (image-to-image / super-resolution; scaled by their own min/max, resized to the output size)
    or None. Non-image outputs give no grid and the page says why."""

    teacher: np.ndarray
    student: np.ndarray
    inputs: np.ndarray | None = None
    worst_indices: list[int] = field(default_factory=list)
    value_range: tuple[float, float] | None = None
    max_samples: int = 8


@dataclass
class Grid:
    """A sample grid: ``image`` ``[H, W, 3]`` uint8, or None with ``reason``."""

    image: np.ndarray | None
    rows: list[str]
    indices: list[int]
    reason: str | None = None
    caption: str = ""


GRID_PAD = 2
GRID_LABEL_W = 64
GRID_TILE_MAX = 192
GRID_TILE_MIN = 64


def _to_rgb(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[C, H, W]`` in ``[lo, hi]`` -> ``[H, W, 3]`` uint8."""
    c = a.shape[0]
    sel = a[:3] if c in (3, 4) else a[:1]
    x = (np.clip((sel.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)
    x = np.transpose(x, (1, 2, 0))
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def _fit(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    if tile.shape[:2] == (h, w):
        return tile
    up = tile.shape[0] < h
    return np.asarray(
        Image.fromarray(tile).resize((w, h), Image.Resampling.NEAREST if up else Image.Resampling.BOX)
    )


def _tile_size(h: int, w: int, tile_max: int, tile_min: int) -> tuple[int, int]:
    """Display size of an ``h x w`` tile: shrunk to ``tile_max`` on the long side, or enlarged by an
    integer factor (nearest neighbour, pixels stay sharp) until the long side reaches ``tile_min``."""
    long = max(h, w)
    if long > tile_max:
        s = tile_max / long
        return max(1, round(h * s)), max(1, round(w * s))
    k = max(1, min(-(-tile_min // long), tile_max // long))
    return h * k, w * k


def make_grid(
    teacher: np.ndarray,
    student: np.ndarray,
    inputs: np.ndarray | None = None,
    indices: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
    diff: bool = False,
    label_width: int = GRID_LABEL_W,
    tile_max: int = GRID_TILE_MAX,
    tile_min: int = GRID_TILE_MIN,
) -> Grid:
    """Grid of samples ``indices`` (default all): one column per sample, rows ``input`` (when
    ``inputs`` are 4-d images), ``teacher``, ``student``, and ``|diff|`` (mean absolute difference
    over channels, scaled so the largest shown difference is white) when ``diff``.

    ``teacher`` / ``student``: ``[N, C, H, W]`` in ``value_range`` (default the shown teacher's
    min/max). Tiles ``th x tw`` are the outputs scaled down to at most ``tile_max`` pixels on their
    long side, or up by an integer factor to reach ``tile_min``. Image shape:
    ``rows * th + (rows + 1) * 2`` by ``label_width + cols * tw + (cols + 1) * 2``, 3 channels.
    Non-image outputs return ``image=None`` with a reason.
    """
    if teacher.shape != student.shape:
        raise ValueError(f"teacher and student shapes differ: {teacher.shape} vs {student.shape}")
    if teacher.ndim != 4:
        return Grid(
            None, [], [], reason=f"outputs are not images (shape {list(teacher.shape)}): no sample grid"
        )
    idx = list(range(teacher.shape[0])) if indices is None else [int(i) for i in indices]
    if not idx:
        return Grid(None, [], [], reason="no samples to show")
    t, s = teacher[idx], student[idx]
    lo, hi = value_range if value_range is not None else (float(t.min()), float(t.max()))
    rows: list[tuple[str, list[np.ndarray]]] = []
    notes = []
    if inputs is not None and inputs.ndim == 4:
        x = inputs[idx]
        ilo, ihi = float(x.min()), float(x.max())
        rows.append(("input", [_to_rgb(a, ilo, ihi) for a in x]))
    rows.append(("teacher", [_to_rgb(a, lo, hi) for a in t]))
    rows.append(("student", [_to_rgb(a, lo, hi) for a in s]))
    if teacher.shape[1] not in (1, 3, 4):
        notes.append(f"{teacher.shape[1]} output channels: channel 0 shown in grey")
    if diff:
        d = np.abs(s.astype(np.float64) - t.astype(np.float64)).mean(axis=1, keepdims=True)
        dmax = float(d.max())
        rows.append(("|diff|", [_to_rgb(a, 0.0, dmax if dmax > 0 else 1.0) for a in d]))
        notes.append(f"|diff| white = {dmax:.3g} (mean over channels)")
    th, tw = _tile_size(teacher.shape[2], teacher.shape[3], tile_max, tile_min)
    n_rows, n_cols = len(rows), len(idx)
    height = n_rows * th + (n_rows + 1) * GRID_PAD
    width = label_width + n_cols * tw + (n_cols + 1) * GRID_PAD
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, (_, tiles) in enumerate(rows):
        y = GRID_PAD + r * (th + GRID_PAD)
        for c, tile in enumerate(tiles):
            xx = label_width + GRID_PAD + c * (tw + GRID_PAD)
            canvas[y : y + th, xx : xx + tw] = _fit(tile, th, tw)
    if label_width > 0:
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for r, (label, _) in enumerate(rows):
            draw.text((4, GRID_PAD + r * (th + GRID_PAD) + th // 2 - 5), label, fill=(30, 41, 59))
        canvas = np.asarray(img)
    return Grid(canvas, [r[0] for r in rows], idx, caption="; ".join(notes))


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def _placeholder_png(text: str) -> np.ndarray:
    img = Image.new("RGB", (480, 60), (248, 250, 252))
    ImageDraw.Draw(img).text((10, 24), text[:78], fill=(30, 41, 59))
    return np.asarray(img)


# ----------------------------------------------------------------------------- SVG charts


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def svg_line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None], str]],
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 260,
    testid: str = "chart-line",
) -> str:
    """Inline SVG line chart. ``series``: (label, xs, ys, colour); None / non-finite ys are skipped."""
    pts = [
        (x, y)
        for _, xs, ys, _ in series
        for x, y in zip(xs, ys, strict=False)
        if y is not None and math.isfinite(y)
    ]
    if not pts:
        return f'<p class="muted" data-testid="{_esc(testid)}">No data to plot.</p>'
    ml, mr, mt, mb = 60, 16, 16, 40
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg class="chart" data-testid="{_esc(testid)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_esc(y_label)} by {_esc(x_label)}">'
    ]
    for ty in _nice_ticks(y0, y1):
        parts.append(
            f'<line x1="{ml}" x2="{width - mr}" y1="{sy(ty):.1f}" y2="{sy(ty):.1f}" class="grid"/>'
            f'<text x="{ml - 6}" y="{sy(ty) + 4:.1f}" text-anchor="end" class="tick">{_fmt_tick(ty)}</text>'
        )
    for tx in _nice_ticks(x0, x1):
        parts.append(
            f'<text x="{sx(tx):.1f}" y="{height - mb + 16}" text-anchor="middle" class="tick">'
            f"{_fmt_tick(tx)}</text>"
        )
    parts.append(
        f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{height - mb}" class="axis"/>'
        f'<line x1="{ml}" x2="{width - mr}" y1="{height - mb}" y2="{height - mb}" class="axis"/>'
        f'<text x="{ml + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="label">'
        f"{_esc(x_label)}</text>"
        f'<text x="14" y="{mt + ph / 2:.0f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 14 {mt + ph / 2:.0f})">{_esc(y_label)}</text>'
    )
    for li, (label, xs, ys, colour) in enumerate(series):
        p = [
            f"{sx(x):.1f},{sy(y):.1f}"
            for x, y in zip(xs, ys, strict=False)
            if y is not None and math.isfinite(y)
        ]
        if not p:
            continue
        if len(p) == 1:
            cx, cy = p[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
        else:
            parts.append(f'<polyline points="{" ".join(p)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        lx = ml + 10 + li * 150
        parts.append(
            f'<rect x="{lx}" y="{mt + 4}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{lx + 16}" y="{mt + 10}" class="legend">{_esc(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_bar_chart(layers: Sequence[LayerRow], width: int = 640, testid: str = "chart-layers") -> str:
    """Horizontal bars per layer: channels before (grey) and after (teal); kept layers marked."""
    if not layers:
        return f'<p class="muted" data-testid="{_esc(testid)}">No per-layer table for this method.</p>'
    ml, mr, row_h, mt = 180, 60, 18, 24
    height = mt + len(layers) * row_h + 8
    vmax = max(max(r.channels_before, r.channels_after) for r in layers) or 1
    pw = width - ml - mr
    parts = [
        f'<svg class="chart" data-testid="{_esc(testid)}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="channels before and after pruning per layer">',
        f'<rect x="{ml}" y="4" width="12" height="8" fill="{GREY}"/><text x="{ml + 16}" y="12" '
        'class="legend">before</text>'
        f'<rect x="{ml + 80}" y="4" width="12" height="8" fill="{TEAL}"/><text x="{ml + 96}" y="12" '
        'class="legend">after</text>',
    ]
    for i, r in enumerate(layers):
        y = mt + i * row_h
        wb, wa = r.channels_before / vmax * pw, r.channels_after / vmax * pw
        name = r.name if len(r.name) <= 28 else "…" + r.name[-27:]
        parts.append(
            f'<text x="{ml - 6}" y="{y + 12}" text-anchor="end" class="tick"><title>{_esc(r.name)}</title>'
            f"{_esc(name)}</text>"
            f'<rect x="{ml}" y="{y + 2}" width="{wb:.1f}" height="13" fill="{GREY}"/>'
            f'<rect x="{ml}" y="{y + 5}" width="{wa:.1f}" height="7" fill="{TEAL if r.pruned else INK}"/>'
            f'<text x="{ml + wb + 4:.1f}" y="{y + 12}" class="tick">{r.channels_after}/{r.channels_before}'
            f"{' kept' if not r.pruned else ''}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_latency_boxes(latency: LatencySection, width: int = 640, testid: str = "chart-latency") -> str:
    """Box plots of the raw latency samples (ms): teacher and student per thread count. Box =
    p25..p75, line = p50, whiskers = min..p99 (points above p99 are not drawn)."""
    rows: list[tuple[str, list[float], str]] = []
    for r in latency.per_threads:
        for who, st, colour in (("teacher", r.teacher, GREY), ("student", r.student, TEAL)):
            samples = st.samples_ms or [st.min_ms, st.p50_ms, st.p99_ms]
            rows.append((f"{who}, {r.threads} thr", samples, colour))
    if not rows:
        return f'<p class="muted" data-testid="{_esc(testid)}">No latency samples.</p>'
    ml, mr, mt, mb, row_h = 120, 20, 10, 36, 26
    height = mt + len(rows) * row_h + mb
    hi = max(float(np.percentile(s, 99)) for _, s, _ in rows)
    lo = 0.0
    pw = width - ml - mr

    def sx(v: float) -> float:
        return ml + (v - lo) / ((hi - lo) or 1) * pw

    parts = [
        f'<svg class="chart" data-testid="{_esc(testid)}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="latency distribution">'
    ]
    for tx in _nice_ticks(lo, hi):
        parts.append(
            f'<line x1="{sx(tx):.1f}" x2="{sx(tx):.1f}" y1="{mt}" y2="{height - mb}" class="grid"/>'
            f'<text x="{sx(tx):.1f}" y="{height - mb + 14}" text-anchor="middle" class="tick">'
            f"{_fmt_tick(tx)}</text>"
        )
    for i, (label, s, colour) in enumerate(rows):
        a = np.asarray(s, dtype=np.float64)
        mn, q1, med, q3, p99 = (float(v) for v in np.percentile(a, [0, 25, 50, 75, 99]))
        yc = mt + i * row_h + row_h / 2
        parts.append(
            f'<text x="{ml - 6}" y="{yc + 4:.1f}" text-anchor="end" class="tick">{_esc(label)}</text>'
            f'<line x1="{sx(mn):.1f}" x2="{sx(p99):.1f}" y1="{yc:.1f}" y2="{yc:.1f}" stroke="{INK}"/>'
            f'<rect x="{sx(q1):.1f}" y="{yc - 8:.1f}" width="{max(1.0, sx(q3) - sx(q1)):.1f}" height="16" '
            f'fill="{colour}" stroke="{INK}"/>'
            f'<line x1="{sx(med):.1f}" x2="{sx(med):.1f}" y1="{yc - 8:.1f}" y2="{yc + 8:.1f}" stroke="{INK}" '
            'stroke-width="2"/>'
        )
    parts.append(
        f'<text x="{ml + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="label">'
        f"latency per run (ms, batch {latency.batch_size})</text></svg>"
    )
    return "".join(parts)


# ----------------------------------------------------------------------------- HTML + files


def _num(v: float | None, digits: int = 2, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:,.{digits}f}{suffix}"


def _sig(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def _factor(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def _human_bytes(v: float | None) -> str:
    if v is None:
        return "n/a"
    n = float(v)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _count(v: float | None) -> str:
    if v is None:
        return "n/a"
    n = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:,.0f}"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, sig=_sig, factor=_factor, hbytes=_human_bytes, count=_count)
    env.tests["absent"] = lambda x: isinstance(x, Absent)
    return env


def render_html(report: Report, images: ReportImages | None) -> tuple[str, Grid | None]:
    """The report page as one self-contained HTML string, and the main sample grid."""
    grid: Grid | None = None
    worst: Grid | None = None
    grid_reason = "no sample images were provided"
    if images is not None:
        n = min(images.max_samples, images.teacher.shape[0]) if images.teacher.ndim >= 1 else 0
        vr = images.value_range
        grid = make_grid(images.teacher, images.student, images.inputs, list(range(n)), vr)
        grid_reason = grid.reason or ""
        if images.worst_indices and grid.image is not None:
            worst = make_grid(
                images.teacher, images.student, images.inputs, images.worst_indices, vr, diff=True
            )
    pruning = report.pruning
    distill = report.distillation
    charts = {
        "layers": svg_bar_chart(pruning.layers) if not isinstance(pruning, Absent) else "",
        "loss": "",
        "heldout": "",
        "latency": svg_latency_boxes(report.latency) if isinstance(report.latency, LatencySection) else "",
    }
    if not isinstance(distill, Absent) and distill.curve:
        xs = [p.step for p in distill.curve]
        charts["loss"] = svg_line_chart(
            [("training loss", xs, [p.loss for p in distill.curve], ORANGE)],
            "step",
            "loss",
            width=460,
            testid="chart-loss",
        )
        if any(p.heldout_score is not None for p in distill.curve):
            charts["heldout"] = svg_line_chart(
                [(f"held-out {distill.heldout_metric}", xs, [p.heldout_score for p in distill.curve], TEAL)],
                "step",
                distill.heldout_metric,
                width=460,
                testid="chart-heldout",
            )
    page = (
        _env()
        .get_template("report.html.j2")
        .render(
            r=report,
            s=report.summary,
            charts=charts,
            grid=grid,
            grid_uri=_data_uri(grid.image) if grid is not None and grid.image is not None else None,
            grid_reason=grid_reason,
            worst=worst,
            worst_uri=_data_uri(worst.image) if worst is not None and worst.image is not None else None,
            spec_json=json.dumps(report.spec, indent=2, sort_keys=True, default=str),
        )
    )
    return page, grid


def validate_report_json(data: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``data`` does not match :func:`report_json_schema`."""
    jsonschema.Draft202012Validator(report_json_schema()).validate(data)


def write_report(out_dir: Path, report: Report, images: ReportImages | None) -> None:
    """Write ``report.json`` (validated against :func:`report_json_schema` first; an invalid report
    raises ``jsonschema.ValidationError`` and writes nothing), ``report.html`` and ``samples.png``
    into ``out_dir`` (created if missing). ``samples.png`` is the teacher/student grid, or a small
    image that says why there is none."""
    text = report.model_dump_json(indent=2)
    data = json.loads(text)
    validate_report_json(data)
    page, grid = render_html(report, images)
    out_dir.mkdir(parents=True, exist_ok=True)
    if grid is not None and grid.image is not None:
        png = png_bytes(grid.image)
    else:
        png = png_bytes(_placeholder_png(grid.reason if grid and grid.reason else "no sample images"))
    (out_dir / "samples.png").write_bytes(png)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    (out_dir / "report.json").write_text(text + "\n", encoding="utf-8")
    logger.info("report.written out_dir=%s html_bytes=%d", out_dir, len(page))
