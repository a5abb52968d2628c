from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.worker.engine import tiny


@pytest.fixture(autouse=True)
def _quiet_and_seeded() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # the tests build models with torch.jit on purpose (users' uploads are TorchScript)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> ONNX file (opset 17, TorchScript exporter) of a tiny generator."""
    d = tmp_path_factory.mktemp("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: tiny.export(name, d / f"{name}.onnx") for name in tiny.FAMILIES}


@pytest.fixture(scope="session")
def tiny_ts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny_ts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: tiny.export(name, d / f"{name}.pt", fmt="torchscript") for name in tiny.FAMILIES}


@pytest.fixture
def calib_file(tmp_path: Path) -> Path:
    """12 smooth random 3x20x20 images in [-1, 1] as .npy: calibration for the tiny image models."""
    path = tmp_path / "calib.npy"
    np.save(path, np.tanh(np.random.default_rng(0).normal(size=(12, 3, 20, 20))).astype(np.float32))
    return path
