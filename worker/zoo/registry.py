"""The zoo's small public API (torch-free at import time).

>>> from worker.zoo import ZOO_NAMES, model_path, example_inputs
>>> path = model_path("dcgan", fmt="onnx", opset=17)          # worker/zoo/data/dcgan/model.op17.onnx
>>> feeds = example_inputs("cgan", batch=4, seed=0)           # {"z": [4, 64] f32, "label": [4] i64}

Files live in :func:`zoo_dir` (``worker/zoo/data``), described by ``manifest.json``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

ZOO_NAMES: tuple[str, ...] = ("dcgan", "cgan", "stylegan_lite", "resnet_i2i", "unet_i2i", "srresnet")
MANIFEST_NAME = "manifest.json"
OUTPUT_NAME = "image_out"


ZOO_DIR_ENV = "GANCOMPRESS_ZOO_DIR"


def zoo_dir() -> Path:
    """The directory holding the zoo files and ``manifest.json``: ``worker/zoo/data``, or the
    directory named by ``$GANCOMPRESS_ZOO_DIR`` (e.g. a rebuild under test)."""
    override = os.environ.get(ZOO_DIR_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / "data"


def _check_name(name: str) -> None:
    if name not in ZOO_NAMES:
        raise KeyError(f"unknown zoo model {name!r}; valid: {', '.join(ZOO_NAMES)}")


@lru_cache(maxsize=4)
def _read_manifest(path: str, mtime_ns: int) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_manifest() -> dict[str, Any]:
    """The parsed ``manifest.json`` (``{"schema_version", "models": {name: {...}}, ...}``)."""
    path = zoo_dir() / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `make zoo` to build the zoo")
    return _read_manifest(str(path), path.stat().st_mtime_ns)


def model_entry(name: str) -> dict[str, Any]:
    """The manifest entry of model ``name``."""
    _check_name(name)
    return load_manifest()["models"][name]


def model_path(name: str, fmt: str = "onnx", opset: int | None = 17, exporter: str | None = None) -> Path:
    """Path of a stored file of model ``name``.

    ``fmt`` is ``"onnx"`` or ``"torchscript"`` (``opset``/``exporter`` are ignored for TorchScript).
    For ONNX, ``opset`` picks the opset (``None``: any) and ``exporter`` (``"torchscript"`` or
    ``"dynamo"``, ``None``: any, preferring the TorchScript-based exporter) the exporter.
    Raises ``FileNotFoundError`` listing the stored variants when nothing matches.
    """
    files = model_entry(name)["files"]
    if fmt == "torchscript":
        matches = [f for f in files if f["format"] == "torchscript"]
    elif fmt == "onnx":
        matches = [
            f
            for f in files
            if f["format"] == "onnx"
            and (opset is None or f["opset"] == opset)
            and (exporter is None or f["exporter"] == exporter)
        ]
        matches.sort(key=lambda f: (f["exporter"] != "torchscript", f["opset"]))
    else:
        raise ValueError(f"fmt must be 'onnx' or 'torchscript', not {fmt!r}")
    if not matches:
        have = ", ".join(f"{f['format']}/opset={f['opset']}/{f['exporter']}" for f in files)
        raise FileNotFoundError(
            f"{name}: no {fmt} file with opset={opset}, exporter={exporter}; stored: {have}"
        )
    return zoo_dir() / matches[0]["path"]


def image_set(name: str, which: str = "heldout") -> np.ndarray:
    """A stored image set of an image model: ``"heldout"``, ``"heldout_target"`` or ``"calibration"``.

    Returns float32 NCHW in [-1, 1] (inputs ``[N, 3, H, W]`` per the manifest input shape).
    """
    entry = model_entry(name)
    key = {"heldout": "heldout", "heldout_target": "heldout_target", "calibration": "calibration"}.get(which)
    if key is None or key not in entry:
        raise KeyError(f"{name} has no image set {which!r}")
    return np.load(zoo_dir() / entry[key])


def example_inputs(
    name: str, batch: int = 1, seed: int = 0, source: str = "heldout"
) -> dict[str, np.ndarray]:
    """Inputs for model ``name`` sampled per its manifest ``InputSpec``s, as ``{input name: array}``.

    normal: ``N(0, 1)`` float32; uniform: ``U[low, high)``; randint: integers in ``[low, high)`` of the
    input dtype; calibration: ``batch`` images drawn (with a seeded permutation, repeating when
    ``batch`` exceeds the set) from the stored ``source`` set (``"heldout"`` or ``"calibration"``).
    The first dimension of every array is ``batch``.
    """
    entry = model_entry(name)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for inp, spec in entry["inputs"].items():
        shape = [batch, *spec["shape"][1:]]
        dist = spec["distribution"]
        if dist == "normal":
            out[inp] = rng.standard_normal(shape, dtype=np.float32)
        elif dist == "uniform":
            out[inp] = rng.uniform(spec["low"], spec["high"], shape).astype(np.float32)
        elif dist == "randint":
            out[inp] = rng.integers(int(spec["low"]), int(spec["high"]), shape).astype(spec["dtype"])
        elif dist == "calibration":
            images = image_set(name, source)
            order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-batch // len(images)))])
            out[inp] = np.ascontiguousarray(images[order[:batch]])
        else:
            raise ValueError(f"{name}.{inp}: unknown distribution {dist!r}")
    return out


def build_model(name: str) -> nn.Module:
    """A freshly initialised (untrained) generator of family ``name``, in eval mode."""
    _check_name(name)
    from worker.zoo.models import build_model as _build

    return _build(name)


def load_torchscript(name: str) -> nn.Module:
    """The trained TorchScript generator of ``name`` (``torch.jit.load``), in eval mode."""
    import torch

    return torch.jit.load(str(model_path(name, fmt="torchscript")), map_location="cpu").eval()
