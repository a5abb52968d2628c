"""Training inputs from calibration images: crops and flips, optional blending, never held-out."""

from __future__ import annotations

import numpy as np
import torch

from worker.engine.sampling import InputSampler
from worker.spec import Distribution, InputSpec

SPEC = {"image": InputSpec(shape=[1, 3, 8, 8], distribution=Distribution.CALIBRATION)}


def _calib(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=(n, 3, 8, 8)).astype(np.float32)


def _matches_a_training_image(img: torch.Tensor, train: torch.Tensor) -> bool:
    return any(torch.equal(img, t) or torch.equal(img, t.flip(-1)) for t in train)


def test_plain_batches_are_training_images_or_their_flips() -> None:
    s = InputSampler(SPEC, {"image": _calib()}, seed=0)
    batch = s.train_batch(32)["image"]
    assert all(_matches_a_training_image(b, s.train_images["image"]) for b in batch)
    held = s.heldout_images["image"]
    assert not any(_matches_a_training_image(b, held) for b in batch)  # held-out never trained on


def test_mix_blends_pairs_of_training_images() -> None:
    s = InputSampler(SPEC, {"image": _calib()}, seed=0, mix=1.0)
    train = s.train_images["image"]
    batch = s.train_batch(32)["image"]
    blended = [b for b in batch if not _matches_a_training_image(b, train)]
    assert len(blended) >= 24  # all but the images blended with themselves (same index drawn twice)
    assert batch.min() >= train.min() - 1e-6 and batch.max() <= train.max() + 1e-6  # convex combinations
    half = InputSampler(SPEC, {"image": _calib()}, seed=0, mix=0.5).train_batch(256)["image"]
    share = sum(not _matches_a_training_image(b, train) for b in half) / len(half)
    assert 0.3 < share < 0.6


def test_larger_images_are_cropped_to_the_input() -> None:
    big = np.random.default_rng(1).uniform(-1, 1, size=(10, 3, 12, 12)).astype(np.float32)
    s = InputSampler(SPEC, {"image": big}, seed=0)
    batch = s.train_batch(16)["image"]
    assert batch.shape == (16, 3, 8, 8)
    train = s.train_images["image"]
    windows = [
        w
        for t in train
        for top in range(5)
        for left in range(5)
        for w in (t[:, top : top + 8, left : left + 8], t[:, top : top + 8, left : left + 8].flip(-1))
    ]
    assert all(any(torch.equal(b, w) for w in windows) for b in batch)
    assert len({tuple(b.flatten()[:4].tolist()) for b in batch}) > 8  # varied crops, not one window
