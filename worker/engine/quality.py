"""Quality of the student against the teacher on the same inputs: the ``metrics`` registry.

Every metric is ``fn(student, teacher, data_range) -> Tensor[N]`` (one value per sample) where
``student`` and ``teacher`` are ``[N, C, H, W]`` image batches (or ``[N, ...]`` for metrics that do
not need images) in the model's output value range, and ``data_range`` is the width of that range
(``2.0`` for tanh outputs in ``[-1, 1]``). The registry maps every :class:`MetricName` to a
:class:`Metric`; :func:`evaluate` runs them all and summarizes.

SSIM details (shared by the metric and the differentiable loss :func:`ssim`): Wang et al. 2004,
gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, computed per channel on the valid
region (no padding) and averaged over channels and positions; equal to
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``. An image smaller than the window in H or W gets the largest odd
window that fits, with sigma scaled by the same factor (``window / 11``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.registry import Registry
from worker.spec import MetricName

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIDE = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)  # 176: the coarsest scale fits a window


class MetricNotApplicableError(ValueError):
    """The metric cannot be computed on these outputs; the message says why (shown in the report)."""


MetricFn = Callable[[Tensor, Tensor, float], Tensor]


@dataclass(frozen=True)
class Metric:
    """One quality metric. ``fn(student, teacher, data_range) -> Tensor[N]`` per sample."""

    name: str
    fn: MetricFn
    higher_is_better: bool
    unit: str
    needs_image: bool
    description: str


metrics: Registry[MetricName, Metric] = Registry("metric", MetricName, KeyError)


# ----------------------------------------------------------------------------- SSIM core


def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1-D gaussian of ``size`` taps summing to 1 (the 2-D window is its outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim_window_for(
    h: int, w: int, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA
) -> tuple[int, float]:
    """The (window, sigma) used for an ``h x w`` image: the defaults, or the largest odd window that
    fits with sigma scaled by ``window_used / window``."""
    fit = min(window, h, w)
    if fit % 2 == 0:
        fit -= 1
    fit = max(fit, 1)
    return fit, sigma * fit / window


def _ssim_cs_maps(
    x: Tensor, y: Tensor, data_range: float | Tensor, window: int, sigma: float
) -> tuple[Tensor, Tensor]:
    """SSIM map and contrast-structure map, both ``[N, C, H-win+1, W-win+1]``.

    The gaussian window is separable: the five local statistics (mu_x, mu_y, E[x^2], E[y^2],
    E[xy]) are filtered together with two 1-D depthwise passes. Same values as the dense 2-D
    window (to 1e-7), about 2-11x cheaper; it is the inner loop of the SSIM distillation loss
    (measured in benchmarks/NOTES.md)."""
    c = x.shape[1]
    win, sig = ssim_window_for(x.shape[-2], x.shape[-1], window, sigma)
    g = _gaussian_1d(win, sig, x.dtype, x.device)
    k = 5 * c
    kh = g.view(1, 1, 1, win).expand(k, 1, 1, win).contiguous()
    kv = g.view(1, 1, win, 1).expand(k, 1, win, 1).contiguous()
    stacked = torch.cat([x, y, x * x, y * y, x * y], 1)
    mu_x, mu_y, exx, eyy, exy = F.conv2d(F.conv2d(stacked, kh, groups=k), kv, groups=k).split(c, 1)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    cs = (2 * (exy - mu_x * mu_y) + c2) / (exx - mu_x * mu_x + eyy - mu_y * mu_y + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return lum * cs, cs


def _as_float(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise MetricNotApplicableError(f"needs [N, C, H, W] images, got shape {tuple(x.shape)}")


def ssim_map(
    x: Tensor,
    y: Tensor,
    data_range: float | Tensor,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """Differentiable SSIM map ``[N, C, H', W']`` of ``x`` and ``y`` (both ``[N, C, H, W]``) on the
    valid region (``H' = H - window + 1`` with the window shrunk to fit small images)."""
    _check_images(x, y)
    x, y = _as_float(x), _as_float(y)
    return _ssim_cs_maps(x, y, data_range, window, sigma)[0]


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float | Tensor,
    reduction: Literal["mean", "sum", "none"] = "mean",
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """Differentiable SSIM of ``[N, C, H, W]`` batches: per sample ``[N]`` (``reduction="none"``),
    or their mean / sum (a scalar). Use ``1 - ssim(...)`` as a loss."""
    per = ssim_map(x, y, data_range, window, sigma).flatten(1).mean(1)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        return per.mean()
    raise ValueError(f"reduction must be one of ['mean', 'sum', 'none'], got {reduction!r}")


def ms_ssim(x: Tensor, y: Tensor, data_range: float | Tensor) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003) per sample ``[N]``: 5 scales with 2x2 average pooling,
    weights ``MS_SSIM_WEIGHTS``; contrast-structure at the first four scales, full SSIM at the
    last; each term clamped at 0 before the power (so the product stays real). Needs
    ``min(H, W) >= MS_SSIM_MIN_SIDE`` (176) so the coarsest scale still fits an 11x11 window;
    otherwise raises :class:`MetricNotApplicableError`."""
    _check_images(x, y)
    h, w = x.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        raise MetricNotApplicableError(
            f"MS-SSIM needs min(H, W) >= {MS_SSIM_MIN_SIDE} for its {len(MS_SSIM_WEIGHTS)} scales "
            f"(11x11 window at 1/16 size); outputs are {h}x{w}"
        )
    x, y = _as_float(x), _as_float(y)
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    vals = []
    for i in range(len(MS_SSIM_WEIGHTS)):
        s_map, cs_map = _ssim_cs_maps(x, y, data_range, SSIM_WINDOW, SSIM_SIGMA)
        term = s_map if i == len(MS_SSIM_WEIGHTS) - 1 else cs_map
        vals.append(term.flatten(2).mean(2).clamp_min(0))  # [N, C]
        if i < len(MS_SSIM_WEIGHTS) - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(vals, dim=-1)  # [N, C, scales]
    return torch.prod(stacked**weights, dim=-1).mean(1)


# ----------------------------------------------------------------------------- simple metrics


def psnr(student: Tensor, teacher: Tensor, data_range: float) -> Tensor:
    """PSNR in dB per sample ``[N]``: ``10 log10(data_range^2 / MSE)`` over all non-batch dims,
    capped at ``PSNR_CAP_DB`` (identical outputs give the cap, not infinity)."""
    if student.shape != teacher.shape:
        raise ValueError(f"shapes differ: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    d = (_as_float(student) - _as_float(teacher)).flatten(1)
    mse = d.pow(2).mean(1).double()
    out = 10 * torch.log10(torch.as_tensor(float(data_range) ** 2, dtype=torch.float64) / mse)
    return out.clamp(max=PSNR_CAP_DB).nan_to_num(PSNR_CAP_DB)


def mean_l1(student: Tensor, teacher: Tensor, data_range: float) -> Tensor:
    """Mean absolute difference per sample ``[N]``, in output units (``data_range`` unused)."""
    if student.shape != teacher.shape:
        raise ValueError(f"shapes differ: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    return (_as_float(student) - _as_float(teacher)).abs().flatten(1).mean(1)


def _ssim_metric(student: Tensor, teacher: Tensor, data_range: float) -> Tensor:
    return ssim(student, teacher, data_range, reduction="none")


metrics.add(
    MetricName.PSNR,
    Metric(
        MetricName.PSNR,
        psnr,
        higher_is_better=True,
        unit="dB",
        needs_image=False,
        description=f"10*log10(data_range^2/MSE) per sample, capped at {PSNR_CAP_DB:g} dB",
    ),
)
metrics.add(
    MetricName.SSIM,
    Metric(
        MetricName.SSIM,
        _ssim_metric,
        higher_is_better=True,
        unit="ratio (-1..1)",
        needs_image=True,
        description="SSIM, gaussian window 11 sigma 1.5, per channel, valid region, averaged",
    ),
)
metrics.add(
    MetricName.MS_SSIM,
    Metric(
        MetricName.MS_SSIM,
        ms_ssim,
        higher_is_better=True,
        unit="ratio (0..1)",
        needs_image=True,
        description=f"MS-SSIM, 5 scales (needs min(H, W) >= {MS_SSIM_MIN_SIDE})",
    ),
)
metrics.add(
    MetricName.L1,
    Metric(
        MetricName.L1,
        mean_l1,
        higher_is_better=False,
        unit="output units (mean |student - teacher|)",
        needs_image=False,
        description="mean absolute difference per sample",
    ),
)


# ----------------------------------------------------------------------------- evaluate


@dataclass
class MetricValues:
    name: str
    unit: str
    higher_is_better: bool
    mean: float
    min: float
    max: float
    std: float
    values: list[float]
    description: str
    capped: int = 0  # PSNR only: samples at the cap (identical outputs)


@dataclass
class QualityResult:
    """Per-metric summaries over ``n_samples`` held-out samples, the metrics left out (with why),
    and the indices of the ``worst_k`` worst samples by ``worst_by``."""

    metrics: dict[str, MetricValues]
    absent: dict[str, str]
    worst_indices: list[int]
    worst_by: str | None
    n_samples: int
    is_image: bool
    data_range: float
    output_shape: list[int]
    notes: list[str] = field(default_factory=list)

    def mean(self, name: str) -> float | None:
        m = self.metrics.get(str(name))
        return m.mean if m else None


def _to_tensor(a: Tensor | np.ndarray) -> Tensor:
    t = a if isinstance(a, Tensor) else torch.from_numpy(np.asarray(a))
    return _as_float(t.detach())


def evaluate(
    student_outputs: Tensor | np.ndarray,
    teacher_outputs: Tensor | np.ndarray,
    data_range: float,
    worst_k: int = 4,
    names: Sequence[str] | None = None,
    chunk: int = 16,
) -> QualityResult:
    """Every registered metric (or ``names``) of student vs teacher outputs, both ``[N, ...]``
    (``[N, C, H, W]`` for images) in the model's value range of width ``data_range``.

    Non-image outputs (not 4-d) get only the metrics that do not need images (PSNR, L1); the
    others are in ``absent`` with the reason, as is MS-SSIM on images too small for it. Samples
    are processed ``chunk`` at a time. Worst samples: lowest SSIM, or lowest PSNR without SSIM.
    """
    s, t = _to_tensor(student_outputs), _to_tensor(teacher_outputs)
    if s.shape != t.shape:
        raise ValueError(f"student and teacher outputs differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
    if s.ndim < 1 or s.shape[0] == 0:
        raise ValueError(f"need a non-empty batch [N, ...], got shape {tuple(s.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    is_image = s.ndim == 4
    n = int(s.shape[0])
    wanted = [str(metrics.get(x).name) for x in (names or metrics.names())]
    out: dict[str, MetricValues] = {}
    absent: dict[str, str] = {}
    notes: list[str] = []
    if not is_image:
        notes.append(
            f"outputs are not images (shape {list(s.shape)}): only metrics that need no image "
            "structure (PSNR, L1) apply"
        )
    elif min(s.shape[-2:]) < SSIM_WINDOW:
        win, sig = ssim_window_for(int(s.shape[-2]), int(s.shape[-1]))
        notes.append(
            f"images are smaller than the 11x11 SSIM window: SSIM used window {win}, sigma {sig:.3g}"
        )
    for name in wanted:
        m = metrics.get(name)
        if m.needs_image and not is_image:
            absent[name] = f"needs [N, C, H, W] image outputs; outputs have shape {list(s.shape)}"
            continue
        try:
            with torch.no_grad():
                vals = torch.cat(
                    [m.fn(s[i : i + chunk], t[i : i + chunk], data_range) for i in range(0, n, chunk)]
                )
        except MetricNotApplicableError as e:
            absent[name] = str(e)
            continue
        v = vals.double().cpu().numpy()
        capped = int(np.sum(v >= PSNR_CAP_DB)) if name == MetricName.PSNR else 0
        out[name] = MetricValues(
            name=name,
            unit=m.unit,
            higher_is_better=m.higher_is_better,
            mean=float(v.mean()),
            min=float(v.min()),
            max=float(v.max()),
            std=float(v.std(ddof=1)) if n > 1 else 0.0,
            values=[float(x) for x in v],
            description=m.description,
            capped=capped,
        )
        if capped:
            notes.append(f"PSNR of {capped} sample(s) capped at {PSNR_CAP_DB:g} dB (outputs identical)")
    worst_by = next((x for x in (MetricName.SSIM, MetricName.PSNR) if x in out), None)
    worst: list[int] = []
    if worst_by is not None:
        vals_np = np.asarray(out[worst_by].values)
        worst = [int(i) for i in np.argsort(vals_np, kind="stable")[: max(0, worst_k)]]
    for k, why in absent.items():
        logger.info("quality.metric_absent metric=%s reason=%s", k, why)
    return QualityResult(
        metrics=out,
        absent=absent,
        worst_indices=worst,
        worst_by=str(worst_by) if worst_by else None,
        n_samples=n,
        is_image=is_image,
        data_range=float(data_range),
        output_shape=[int(x) for x in s.shape],
        notes=notes,
    )
