"""samples.png: teacher / student (/ input, / difference) samples laid out as one RGB grid, and
PNG / data-URI helpers."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


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
