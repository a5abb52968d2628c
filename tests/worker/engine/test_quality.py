"""Tests of worker.engine.quality: the metrics registry, PSNR / SSIM / MS-SSIM / L1 and evaluate()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worker.engine.quality import (
    MS_SSIM_MIN_SIDE,
    PSNR_CAP_DB,
    MetricNotApplicableError,
    evaluate,
    metrics,
    ms_ssim,
    psnr,
    ssim,
    ssim_map,
    ssim_window_for,
)
from worker.spec import MetricName

torch.set_num_threads(1)


def _images(n: int = 4, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth-ish images in [-1, 1]: upsampled noise, so SSIM has structure to compare."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, max(2, h // 4), max(2, w // 4), generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


def _noisy(x: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + std * torch.randn(x.shape, generator=g)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", list(MetricName))
def test_every_metric_name_has_an_implementation(name: MetricName) -> None:
    m = metrics.get(name)
    assert m.name == name and m.unit and isinstance(m.higher_is_better, bool)
    x = _images(2, 3, MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE)
    vals = m.fn(_noisy(x, 0.1), x, 2.0)
    assert vals.shape == (2,) and torch.isfinite(vals).all()


def test_registry_refuses_duplicates_and_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        metrics.add(MetricName.PSNR, metrics.get(MetricName.PSNR))
    with pytest.raises(KeyError, match=r"valid: .*psnr"):
        metrics.get("fid")
    assert set(metrics) == set(MetricName) and len(metrics) == len(MetricName) and not metrics.missing()


# ----------------------------------------------------------------------------- PSNR, L1


def test_identical_outputs_cap_psnr_and_give_ssim_one() -> None:
    x = _images()
    r = evaluate(x, x.clone(), data_range=2.0)
    assert r.metrics["ssim"].min == pytest.approx(1.0, abs=1e-6)
    assert r.metrics["psnr"].values == [PSNR_CAP_DB] * 4 and r.metrics["psnr"].capped == 4
    assert r.metrics["l1"].max == 0.0
    assert any("capped" in n for n in r.notes)


@pytest.mark.parametrize("std", [0.01, 0.05, 0.2])
def test_psnr_matches_closed_form(std: float) -> None:
    x = _images(2, 3, 128, 128)
    p = psnr(_noisy(x, std), x, 2.0)
    expected = 20 * math.log10(2.0 / std)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.full((2,), expected, dtype=p.dtype), atol=0.1)


def test_l1_is_mean_absolute_difference() -> None:
    x = _images(3)
    r = evaluate(x + 0.25, x, data_range=2.0, names=["l1"])
    assert r.metrics["l1"].mean == pytest.approx(0.25, abs=1e-6)
    assert r.metrics["l1"].higher_is_better is False


# ----------------------------------------------------------------------------- SSIM


def test_ssim_matches_skimage() -> None:
    import skimage.metrics as skm

    x = _images(1, 3, 48, 40, seed=3)[0]
    y = _noisy(x, 0.15, seed=4).clamp(-1, 1)
    ref = skm.structural_similarity(
        x.double().numpy(),
        y.double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=2.0,
        channel_axis=0,
    )
    ours = float(ssim(x[None], y[None], 2.0, reduction="none")[0])
    assert ours == pytest.approx(ref, abs=1e-3)
    # grayscale, float64 path
    ref1 = skm.structural_similarity(
        x[0].double().numpy(),
        y[0].double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=2.0,
    )
    assert float(ssim(x[None, :1].double(), y[None, :1].double(), 2.0)) == pytest.approx(ref1, abs=1e-6)


def test_ssim_and_psnr_decrease_monotonically_with_noise() -> None:
    x = _images(2, 3, 64, 64)
    stds = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    s = [float(ssim(_noisy(x, sd), x, 2.0)) for sd in stds]
    p = [float(psnr(_noisy(x, sd), x, 2.0).mean()) for sd in stds]
    assert s == sorted(s, reverse=True) and len(set(s)) == len(s)
    assert p == sorted(p, reverse=True) and len(set(p)) == len(p)


def test_ssim_is_differentiable() -> None:
    t = _images(2, 3, 24, 24)
    s = _noisy(t, 0.2).requires_grad_(True)
    loss = 1 - ssim(s, t, data_range=2.0)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert ssim_map(s, t, 2.0).shape == (2, 3, 14, 14)
    assert ssim(s, t, 2.0, reduction="sum").shape == ()
    with pytest.raises(ValueError, match="reduction"):
        ssim(s, t, 2.0, reduction="max")  # type: ignore[arg-type]


def test_small_images_shrink_the_window() -> None:
    assert ssim_window_for(64, 64) == (11, 1.5)
    win, sigma = ssim_window_for(8, 20)
    assert win == 7 and sigma == pytest.approx(1.5 * 7 / 11)
    x = _images(2, 1, 8, 8)
    assert ssim_map(x, _noisy(x, 0.1), 2.0).shape == (2, 1, 2, 2)
    r = evaluate(_noisy(x, 0.1), x, 2.0)
    assert "ssim" in r.metrics and any("window 7" in n for n in r.notes)


# ----------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_needs_big_images_and_says_why() -> None:
    small = _images(2, 3, 64, 64)
    with pytest.raises(MetricNotApplicableError, match=str(MS_SSIM_MIN_SIDE)):
        ms_ssim(small, small, 2.0)
    r = evaluate(_noisy(small, 0.1), small, 2.0)
    assert "ms_ssim" not in r.metrics and str(MS_SSIM_MIN_SIDE) in r.absent["ms_ssim"]
    big = _images(2, 3, MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE + 8)
    assert torch.allclose(ms_ssim(big, big, 2.0), torch.ones(2), atol=1e-5)
    lo, hi = ms_ssim(_noisy(big, 0.3), big, 2.0), ms_ssim(_noisy(big, 0.05), big, 2.0)
    assert (lo < hi).all() and (hi < 1).all()


# ----------------------------------------------------------------------------- evaluate


def test_worst_indices_are_the_lowest_ssim_samples() -> None:
    x = _images(6, 3, 32, 32)
    stds = torch.tensor([0.05, 0.4, 0.01, 0.3, 0.02, 0.2]).view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(7)
    s = x + stds * torch.randn(x.shape, generator=g)
    r = evaluate(s, x, data_range=2.0, worst_k=3)
    assert r.worst_by == "ssim" and r.worst_indices == [1, 3, 5]
    assert r.n_samples == 6 and r.is_image and r.output_shape == [6, 3, 32, 32]
    ss = r.metrics["ssim"]
    assert ss.min <= ss.mean <= ss.max and ss.std > 0 and len(ss.values) == 6


def test_non_image_outputs_get_psnr_and_l1_only() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 16, generator=g)
    noise = torch.tensor([0.0, 0.5, 0.1, 0.3, 0.2]).view(-1, 1) * torch.randn(5, 16, generator=g)
    r = evaluate((t + noise).numpy(), t.numpy(), data_range=4.0, worst_k=2)
    assert set(r.metrics) == {"psnr", "l1"}
    assert set(r.absent) == {"ssim", "ms_ssim"} and "[5, 16]" in r.absent["ssim"]
    assert not r.is_image and any("not images" in n for n in r.notes)
    assert r.worst_by == "psnr" and r.worst_indices == [1, 3]


def test_evaluate_chunks_give_the_same_values() -> None:
    x = _images(5)
    s = _noisy(x, 0.1)
    a, b = evaluate(s, x, 2.0, chunk=2), evaluate(s, x, 2.0, chunk=16)
    for k in a.metrics:
        np.testing.assert_allclose(a.metrics[k].values, b.metrics[k].values, rtol=1e-6)


def test_evaluate_rejects_bad_input() -> None:
    x = _images(2)
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(x, x[:1], 2.0)
    with pytest.raises(ValueError, match="data_range"):
        evaluate(x, x, 0.0)
    with pytest.raises(KeyError, match="valid"):
        evaluate(x, x, 2.0, names=["lpips"])
