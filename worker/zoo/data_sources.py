"""Training data of the zoo, from files that pip packages ship (nothing is downloaded).

- Digits: scikit-learn ``load_digits`` (1797 images, 8x8, values 0..16), bilinearly upsampled to
  32x32 and scaled to [-1, 1].
- Photos: scikit-image ``skimage.data`` colour samples, rescaled so the short side is 256 pixels.
  Each photo is split by columns: the rightmost :data:`HELDOUT_COLUMNS` columns are the held-out
  region (held-out crops only), the rest is the training region (training and calibration crops),
  so held-out crops never overlap a training crop.

All images are float32 NCHW in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)
PHOTO_SHORT_SIDE = 256
HELDOUT_COLUMNS = 72
DIGITS_SOURCE = "sklearn.datasets.load_digits (1797 8x8 digits, bilinear x4 to 32x32, [-1, 1])"
PHOTOS_SOURCE = (
    f"skimage.data {', '.join(PHOTO_NAMES)}; short side rescaled to {PHOTO_SHORT_SIDE}; rightmost "
    f"{HELDOUT_COLUMNS} columns of each photo held out (held-out crops only)"
)


def load_digits_32() -> tuple[Tensor, Tensor]:
    """sklearn digits as ``(images [1797, 1, 32, 32] float32 in [-1, 1], labels [1797] int64)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x * 2.0 - 1.0, torch.from_numpy(d.target.astype(np.int64))


def load_photos() -> list[Tensor]:
    """The skimage colour photos, each ``[3, H, W]`` float32 in [-1, 1] with ``min(H, W) == 256``."""
    import skimage.data

    out: list[Tensor] = []
    for name in PHOTO_NAMES:
        img = torch.from_numpy(np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0)
        img = img[..., :3].permute(2, 0, 1)[None]
        h, w = img.shape[-2:]
        scale = PHOTO_SHORT_SIDE / min(h, w)
        size = (round(h * scale), round(w * scale))
        img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append((img[0].clamp(0.0, 1.0) * 2.0 - 1.0).contiguous())
    return out


def split_photo(img: Tensor) -> tuple[Tensor, Tensor]:
    """``[3, H, W]`` -> ``(training region [3, H, W - 72], held-out region [3, H, 72])`` (disjoint)."""
    return img[..., :-HELDOUT_COLUMNS], img[..., -HELDOUT_COLUMNS:]


def random_crops(regions: list[Tensor], n: int, size: int, gen: torch.Generator, flip: bool = True) -> Tensor:
    """``n`` random ``size x size`` crops ``[n, 3, size, size]`` from ``regions`` (each ``[3, H, W]``).

    Regions are picked uniformly; crops are optionally flipped horizontally (prob. 0.5).
    """
    idx = torch.randint(len(regions), (n,), generator=gen)
    crops: list[Tensor] = []
    for i in idx.tolist():
        r = regions[i]
        h, w = r.shape[-2:]
        y = int(torch.randint(h - size + 1, (1,), generator=gen))
        x = int(torch.randint(w - size + 1, (1,), generator=gen))
        c = r[:, y : y + size, x : x + size]
        if flip and bool(torch.rand(1, generator=gen) < 0.5):
            c = c.flip(-1)
        crops.append(c)
    return torch.stack(crops)


def heldout_crops(regions: list[Tensor], n: int, size: int) -> Tensor:
    """``n`` deterministic ``[n, 3, size, size]`` crops spread over the held-out ``regions``."""
    crops: list[Tensor] = []
    k = 0
    while len(crops) < n:
        r = regions[k % len(regions)]
        h, w = r.shape[-2:]
        rounds = k // len(regions)
        y = (h - size) * ((2 * rounds + 1) % 5) // 5
        crops.append(r[:, y : y + size, (w - size) // 2 : (w - size) // 2 + size])
        k += 1
    return torch.stack(crops)


# ----------------------------------------------------------------------------- fixed target styles


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflect padding."""
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


_GRADE = torch.tensor([[0.80, 0.30, 0.00], [0.10, 0.75, 0.10], [0.00, 0.25, 0.60]])
_CAST = torch.tensor([0.30, 0.05, -0.25])


def graded_style(x: Tensor) -> Tensor:
    """The ``resnet_i2i`` target, "auto-tone + sharpen + warm film grade": ``[N, 3, H, W]`` in [-1, 1].

    Per image: remove each channel's mean and divide by the image's std (auto-levels), unsharp
    mask (amount 1, sigma 1), a 3x3 colour matrix plus a warm cast, then a ``tanh`` tone curve.
    The target is invariant to per-channel offsets and a global gain of the input, as the
    InstanceNorm ResNet generator is (its first InstanceNorm removes them), so it is learnable.
    """
    u = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 0.05)
    u = u + 1.0 * (u - _gaussian_blur(u, 1.0))
    v = torch.einsum("oc,nchw->nohw", _GRADE, u) + _CAST[None, :, None, None]
    return torch.tanh(0.8 * v)


def to_gray3(x: Tensor) -> Tensor:
    """The ``unet_i2i`` input: luma (BT.601) of ``[N, 3, H, W]`` repeated to 3 channels, same range."""
    y = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return y.repeat(1, 3, 1, 1)


def bicubic_down(x: Tensor, factor: int = 2) -> Tensor:
    """The ``srresnet`` input: antialiased bicubic downsampling of ``[N, 3, H, W]`` by ``factor``, clamped."""
    h, w = x.shape[-2:]
    y = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    return y.clamp(-1.0, 1.0)


def bicubic_up(x: Tensor, factor: int = 2) -> Tensor:
    """The super-resolution baseline: bicubic upsampling of ``[N, 3, H, W]`` by ``factor``, clamped."""
    return F.interpolate(x, scale_factor=float(factor), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)
