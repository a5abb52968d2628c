"""report.json, report.html and samples.png of one compression.

- Builders turn measurement results into report sections: :func:`size_section`,
  :func:`latency_section`, :func:`memory_section`, :func:`quality_section`, :func:`summarize`,
  :func:`tool_versions`, :func:`interpretation_warnings`.
- :func:`make_grid` lays teacher / student (/ input, / difference) samples out as one RGB image.
- :func:`write_report` validates report.json against :func:`report_json_schema` and writes the
  three artifacts. The HTML opens offline: inline CSS, images as ``data:`` URIs, charts as inline
  SVG drawn here (:func:`svg_line_chart`, :func:`svg_bar_chart`, :func:`svg_latency_boxes`,
  :func:`svg_front` for a target search).

Torch is not needed here (quality results are read by attribute).
"""

from worker.engine.report.charts import svg_bar_chart, svg_front, svg_latency_boxes, svg_line_chart
from worker.engine.report.html import render_html, validate_report_json, write_report
from worker.engine.report.images import GRID_LABEL_W, GRID_PAD, Grid, ReportImages, make_grid, png_bytes
from worker.engine.report.sections import (
    SIZE_HOW,
    interpretation_warnings,
    latency_section,
    memory_section,
    quality_section,
    size_section,
    summarize,
    tool_versions,
)

__all__ = [
    "GRID_LABEL_W",
    "GRID_PAD",
    "SIZE_HOW",
    "Grid",
    "ReportImages",
    "interpretation_warnings",
    "latency_section",
    "make_grid",
    "memory_section",
    "png_bytes",
    "quality_section",
    "render_html",
    "size_section",
    "summarize",
    "svg_bar_chart",
    "svg_front",
    "svg_latency_boxes",
    "svg_line_chart",
    "tool_versions",
    "validate_report_json",
    "write_report",
]
