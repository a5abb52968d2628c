"""Inline SVG charts drawn here (no plotting library): held-out quality over training, channels per
layer, latency boxes, and the target search's latency-quality front."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from worker.report_schema import (
    LatencySection,
    LayerRow,
    SearchCandidate,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

TEAL, ORANGE, GREY, INK = "#0f766e", "#ea580c", "#94a3b8", "#1e293b"


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


def _frame(
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    box: tuple[int, int, int, float],
    width: int,
    height: int,
    x_label: str,
    y_label: str,
) -> str:
    """A chart's frame: horizontal grid lines with y ticks, x ticks, both axes and their labels.
    ``box``: left and right margins, top, and the y of the x axis."""
    ml, mr, mt, bottom = box
    pw, ph = width - ml - mr, bottom - mt
    parts = [
        f'<line x1="{ml}" x2="{width - mr}" y1="{sy(ty):.1f}" y2="{sy(ty):.1f}" class="grid"/>'
        f'<text x="{ml - 6}" y="{sy(ty) + 4:.1f}" text-anchor="end" class="tick">{_fmt_tick(ty)}</text>'
        for ty in _nice_ticks(*y_range)
    ]
    parts += [
        f'<text x="{sx(tx):.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">{_fmt_tick(tx)}</text>'
        for tx in _nice_ticks(*x_range)
    ]
    parts.append(
        f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{bottom}" class="axis"/>'
        f'<line x1="{ml}" x2="{width - mr}" y1="{bottom}" y2="{bottom}" class="axis"/>'
        f'<text x="{ml + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="label">'
        f"{_esc(x_label)}</text>"
        f'<text x="14" y="{mt + ph / 2:.0f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 14 {mt + ph / 2:.0f})">{_esc(y_label)}</text>'
    )
    return "".join(parts)


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
    parts.append(
        _frame(sx, sy, (x0, x1), (y0, y1), (ml, mr, mt, height - mb), width, height, x_label, y_label)
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


def svg_front(
    cands: Sequence[SearchCandidate],
    min_ssim: float | None = None,
    max_latency_ms: float | None = None,
    width: int = 640,
    height: int = 320,
    testid: str = "chart-front",
    min_psnr: float | None = None,
) -> str:
    """The target search's latency-quality front, every candidate a point: x is its p50 at 1 thread
    (ms), y its mean SSIM vs the teacher on the held-out inputs (PSNR where no candidate has SSIM).
    Pareto points are teal and joined, the pick is ringed, quantized copies are squares, the target
    lines are dashed. Candidates without a quality figure (structural ones, only pruned and timed)
    are hollow marks on a strip under the x axis, at their latency.

    Each point is a ``<g class="point">`` with ``data-id``, ``data-picked``, ``data-pareto`` and
    ``data-quantize``; measured ones have ``data-testid="front-point"``, the others
    ``"front-point-unmeasured"``."""
    metric = "ssim" if any(c.ssim is not None for c in cands) else "psnr"
    pts = [(c, c.latency_ms, getattr(c, metric)) for c in cands if getattr(c, metric) is not None]
    unmeasured = [c for c in cands if getattr(c, metric) is None]
    if not pts:
        return f'<p class="muted" data-testid="{_esc(testid)}">No candidate was measured for quality.</p>'
    y_target = min_ssim if metric == "ssim" else min_psnr
    strip = 26 if unmeasured else 0
    height += strip
    ml, mr, mt, mb = 64, 20, 34, 42 + strip
    xs = [c.latency_ms for c in cands] + ([max_latency_ms] if max_latency_ms else [])
    ys = [y for _, _, y in pts] + ([y_target] if y_target is not None else [])
    x0, x1 = 0.0, (max(xs) * 1.08) or 1.0
    y0, y1 = min(ys), max(ys)
    pad = 0.08 * ((y1 - y0) or abs(y1) or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - ml - mr, height - mt - mb
    bottom = mt + ph

    def sx(x: float) -> float:
        return ml + (x - x0) / ((x1 - x0) or 1.0) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y0) / ((y1 - y0) or 1.0)) * ph

    label = "SSIM vs the teacher (held-out)" if metric == "ssim" else "PSNR vs the teacher (dB, held-out)"
    parts = [
        f'<svg class="chart" data-testid="{_esc(testid)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_esc(label)} by latency of every candidate" data-metric="{metric}" '
        f'data-candidates="{len(cands)}">'
    ]
    x_label = "latency: p50 at 1 thread (ms, ONNX Runtime CPU, interleaved with the teacher)"
    parts.append(_frame(sx, sy, (x0, x1), (y0, y1), (ml, mr, mt, bottom), width, height, x_label, label))
    if y_target is not None:
        name = f"SSIM {y_target:g}" if metric == "ssim" else f"PSNR {y_target:g} dB"
        parts.append(
            f'<line data-testid="target-{metric}" x1="{ml}" x2="{width - mr}" y1="{sy(y_target):.1f}" '
            f'y2="{sy(y_target):.1f}" stroke="{ORANGE}" stroke-dasharray="5 4"/>'
            f'<text x="{width - mr - 4}" y="{sy(y_target) - 4:.1f}" text-anchor="end" class="legend">'
            f"target: {metric.upper()} at least {y_target:g}{' dB' if metric == 'psnr' else ''}"
            f"<title>{_esc(name)}</title></text>"
        )
    if max_latency_ms:
        parts.append(
            f'<line data-testid="target-latency" x1="{sx(max_latency_ms):.1f}" x2="{sx(max_latency_ms):.1f}" '
            f'y1="{mt}" y2="{bottom}" stroke="{ORANGE}" stroke-dasharray="5 4"/>'
            f'<text x="{sx(max_latency_ms) + 4:.1f}" y="{mt + 12}" class="legend">'
            f"target: at most {max_latency_ms:g} ms</text>"
        )
    front = sorted((x, y) for c, x, y in pts if c.pareto)
    if len(front) > 1:
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        parts.append(
            f'<polyline data-testid="front-line" points="{line}" fill="none" stroke="{TEAL}" stroke-width="1.5"/>'
        )

    def attrs(c: SearchCandidate, tid: str) -> str:
        return (
            f'class="point" data-testid="{tid}" data-id="{_esc(c.id)}" data-picked="{str(c.picked).lower()}" '
            f'data-pareto="{str(c.pareto).lower()}" data-quantize="{_esc(c.quantize)}"'
        )

    for c, x, y in pts:
        colour = TEAL if c.pareto else GREY
        tip = (
            f"{c.id}: level {c.level:g}, {c.quantize}, {x:.3g} ms at 1 thread, {metric.upper()} {y:.4g}"
            f"{', on the front' if c.pareto else ''}{', picked' if c.picked else ''}"
        )
        quantized = c.quantize != "none"
        shape = (
            f'<rect x="{sx(x) - 4:.1f}" y="{sy(y) - 4:.1f}" width="8" height="8" fill="{colour}"/>'
            if quantized
            else f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}"/>'
        )
        ring = (
            f'<circle data-testid="front-pick" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="8" fill="none" '
            f'stroke="{ORANGE}" stroke-width="2"/>'
            if c.picked
            else ""
        )
        ly = sy(y) - 8 if quantized else sy(y) + 14  # a copy and its source often share a latency
        parts.append(
            f"<g {attrs(c, 'front-point')}><title>{_esc(tip)}</title>{shape}{ring}"
            f'<text x="{sx(x) + 7:.1f}" y="{ly:.1f}" class="tick">{_esc(c.id)}</text></g>'
        )
    if unmeasured:
        yc = bottom + 30
        parts.append(
            f'<text x="{ml - 6}" y="{yc + 4}" text-anchor="end" class="tick">no {metric.upper()}</text>'
        )
        for c in unmeasured:
            tip = f"{c.id}: level {c.level:g}, {c.quantize}, {c.latency_ms:.3g} ms at 1 thread, not trained"
            parts.append(
                f"<g {attrs(c, 'front-point-unmeasured')}><title>{_esc(tip)}</title>"
                f'<circle cx="{sx(c.latency_ms):.1f}" cy="{yc}" r="4" fill="none" stroke="{GREY}" '
                'stroke-width="1.5"/></g>'
            )
    # the legend, in the top margin (symbols drawn as paths: the data marks are the only rects)
    legend: list[tuple[str, str]] = [
        (f'<circle cx="0" cy="-4" r="4" fill="{TEAL}"/>', "float candidate"),
        (f'<path d="M-4 -8h8v8h-8z" fill="{TEAL}"/>', "INT8 / FP16 copy"),
        (f'<circle cx="0" cy="-4" r="4" fill="{GREY}"/>', "beaten on both axes"),
        (f'<circle cx="0" cy="-4" r="7" fill="none" stroke="{ORANGE}" stroke-width="2"/>', "the pick"),
    ]
    if y_target is not None or max_latency_ms:
        legend.append((f'<path d="M-6 -4h14" stroke="{ORANGE}" stroke-dasharray="5 4"/>', "target"))
    if unmeasured:
        legend.append(
            (f'<circle cx="0" cy="-4" r="4" fill="none" stroke="{GREY}" stroke-width="1.5"/>', "not trained")
        )
    lx = ml + 6
    parts.append('<g class="legend-box">')
    for mark, text in legend:
        parts.append(
            f'<g transform="translate({lx},18)">{mark}<text x="12" y="0" class="legend">{_esc(text)}</text></g>'
        )
        lx += 24 + int(6.6 * len(text))
    parts.append("</g></svg>")
    return "".join(parts)
