"""report.html (Jinja2, offline: inline CSS, ``data:`` images, inline SVG) and writing the three
artifacts, report.json validated against its schema first."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import jinja2
import jsonschema

from worker.engine.report.charts import (
    ORANGE,
    TEAL,
    svg_bar_chart,
    svg_front,
    svg_latency_boxes,
    svg_line_chart,
)
from worker.engine.report.images import Grid, ReportImages, _data_uri, _placeholder_png, make_grid, png_bytes
from worker.report_schema import (
    Absent,
    LatencySection,
    Report,
    SearchCandidate,
    SizeSection,
    report_json_schema,
)

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


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


# target (TargetSpec field) -> (what it bounds, comparison, unit, figure of a candidate / the summary)
TARGETS: dict[str, tuple[str, str, str, str]] = {
    "min_ssim": ("SSIM vs the original", ">=", "", "ssim"),
    "min_psnr": ("PSNR vs the original", ">=", " dB", "psnr"),
    "max_latency_ms": ("p50 latency at 1 thread", "<=", " ms", "latency_ms"),
    "max_size_mb": ("model.onnx size", "<=", " MB", "size_mb"),
    "min_speedup": ("speedup at 1 thread", ">=", "×", "speedup"),
}


def shipped_values(report: Report) -> dict[str, float | None]:
    """The shipped model's figures the targets bound, from this report's own sections (as the
    summary's ``target_misses`` are judged)."""
    s = report.summary
    one = None
    if isinstance(report.latency, LatencySection):
        one = next((t.student.p50_ms for t in report.latency.per_threads if t.threads == 1), None)
    size_mb = None
    if isinstance(report.size, SizeSection) and report.size.student.bytes.value is not None:
        size_mb = report.size.student.bytes.value / 1e6
    return {"ssim": s.ssim, "psnr": s.psnr, "speedup": s.speedup, "latency_ms": one, "size_mb": size_mb}


def _candidate_value(c: SearchCandidate, figure: str) -> float | None:
    return c.size_bytes / 1e6 if figure == "size_mb" else getattr(c, figure, None)


def target_rows(report: Report) -> list[dict[str, Any]]:
    """One row per target of the search: what was asked, the pick's figure in the search, the
    shipped model's, whether the shipped model meets it and by how much it misses."""
    if report.search is None:
        return []
    pick = next((c for c in report.search.candidates if c.picked), None)
    shipped = shipped_values(report)
    rows = []
    for name, want in report.search.targets.items():
        what, op, unit, figure = TARGETS.get(name, (name, "", "", name))
        got = shipped.get(figure)
        met: bool | None = None
        gap: str | None = None
        if op and got is not None:
            met = got >= want if op == ">=" else got <= want
            if not met:
                diff = abs(got - want)
                rel = f" ({diff / abs(want):.1%})" if want else ""
                gap = f"{'short' if op == '>=' else 'over'} by {diff:.2g}{unit}{rel}"
        rows.append(
            {
                "name": name,
                "asked": f"{what} {'≥' if op == '>=' else '≤' if op == '<=' else '='} {want:g}{unit}",
                "unit": unit,
                "pick": _candidate_value(pick, figure) if pick is not None else None,
                "shipped": got,
                "met": met,
                "gap": gap,
            }
        )
    return rows


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
        "front": "",
    }
    if report.search is not None:
        t = report.search.targets
        charts["front"] = svg_front(
            report.search.candidates, t.get("min_ssim"), t.get("max_latency_ms"), min_psnr=t.get("min_psnr")
        )
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
            targets=target_rows(report),
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
