"""Optional FID between teacher and student outputs, with a user-supplied Inception-v3 file.

Nothing can be downloaded, so FID runs only when the user gives the weights: a PyTorch state dict
of ``torchvision.models.inception_v3`` (``torch.save(model.state_dict(), path)``; the auxiliary
classifier may be left out). Features are the 2048-d pool3 activations; both image sets are
scaled from the output range to [0, 1], grey is repeated to RGB, resized to 299x299 (bilinear)
and ImageNet-normalised. FID is a set statistic: with few held-out samples it is biased upward,
so compare FIDs computed on the same number of samples only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import BadInputError

log = logging.getLogger(__name__)

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class FidWeightsError(BadInputError):
    code = "bad_fid_weights"
    title = "FID weights cannot be used"


def load_inception(path: Path) -> nn.Module:
    """torchvision's Inception-v3 with the user's weights, returning pool3 features."""
    from torchvision.models import inception_v3

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise FidWeightsError(f"{path.name}: not a loadable PyTorch state dict ({type(e).__name__})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FidWeightsError(f"{path.name}: expected a state dict of torchvision inception_v3")
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    needed = [k for k in missing if not k.startswith(("AuxLogits.", "fc."))]
    if needed or unexpected:
        raise FidWeightsError(
            f"{path.name}: not torchvision inception_v3 weights "
            f"(missing {needed[:3]}{'...' if len(needed) > 3 else ''}, unexpected {list(unexpected)[:3]})"
        )
    model.fc = nn.Identity()  # type: ignore[assignment]
    model.AuxLogits = None
    model.aux_logits = False
    return model.eval()


@torch.no_grad()
def features(
    model: nn.Module, images: torch.Tensor, value_range: tuple[float, float], batch: int = 16
) -> np.ndarray:
    """``images [N, C, H, W]`` (C = 1 or 3) in ``value_range`` -> pool3 features ``[N, 2048]``."""
    lo, hi = value_range
    out = []
    for chunk in images.split(batch):
        x = ((chunk.float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:
            x = x[:, :3]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(model((x - _MEAN) / _STD).flatten(1).double().numpy())
    return np.concatenate(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets ``[N, D]``: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2).
    The trace of the matrix square root is the sum of the square roots of the eigenvalues of
    ``S_a S_b`` (real and non-negative up to rounding)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def fid(
    weights: Path, teacher: torch.Tensor, student: torch.Tensor, value_range: tuple[float, float]
) -> float:
    """FID of the student's outputs against the teacher's on the same inputs (lower is better)."""
    if teacher.dim() != 4:
        raise FidWeightsError("FID needs image outputs [N, C, H, W]")
    model = load_inception(weights)
    value = frechet_distance(features(model, teacher, value_range), features(model, student, value_range))
    log.info("quality.fid value=%.3f samples=%d", value, teacher.shape[0])
    return value
