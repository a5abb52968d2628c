"""FID with user-supplied Inception-v3 weights (here: a random initialisation saved to a file,
since no real weights can be downloaded; FID's arithmetic does not depend on them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.engine.fid import FidWeightsError, features, fid, frechet_distance, load_inception


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid") / "inception.pt"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    return path


def test_frechet_distance_closed_form() -> None:
    """Same covariance, means apart by d: FID = |d|^2."""
    g = np.random.default_rng(0)
    a = g.normal(size=(4000, 3))
    b = g.normal(size=(4000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.05)


def test_fid_of_images(weights: Path) -> None:
    g = torch.Generator().manual_seed(1)
    teacher = torch.rand(8, 1, 32, 32, generator=g) * 2 - 1
    noisy = (teacher + 0.5 * torch.randn(8, 1, 32, 32, generator=g)).clamp(-1, 1)
    same = fid(weights, teacher, teacher, (-1.0, 1.0))
    worse = fid(weights, teacher, noisy, (-1.0, 1.0))
    assert abs(same) < 1e-3 * max(1.0, worse)
    assert worse > same
    model = load_inception(weights)
    assert features(model, teacher[:2], (-1.0, 1.0)).shape == (2, 2048)


def test_bad_weights_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(FidWeightsError, match="not a loadable"):
        load_inception(junk)
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(FidWeightsError, match="inception_v3"):
        load_inception(other)


@pytest.mark.e2e
def test_report_has_fid(weights: Path, tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    from worker.engine.pipeline import compress
    from worker.spec import CompressionSpec

    calib = tmp_path / "calib.npy"
    np.save(calib, np.tanh(np.random.default_rng(0).normal(size=(12, 3, 16, 16))).astype(np.float32))
    spec = CompressionSpec.model_validate({"distill": {"steps": 3}})
    compress(tiny_onnx["resnet"], spec, tmp_path / "out", calibration={"": calib}, fid_weights=weights)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    m = report["quality"]["metrics"]["fid"]
    assert m["higher_is_better"] is False and m["mean"] >= 0 and "sha256" in m["description"]
