"""The committed zoo: files, manifest, ONNX/TorchScript parity and that the models learned something.

Fast: nothing is trained here; every check loads the files in ``worker/zoo/data``.
"""

from __future__ import annotations

import hashlib
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from worker.spec import InputSpec
from worker.zoo import (
    OUTPUT_NAME,
    ZOO_NAMES,
    build_model,
    example_inputs,
    image_set,
    load_manifest,
    model_path,
    zoo_dir,
)
from worker.zoo.models import ZOO

LATENT = [n for n in ZOO_NAMES if ZOO[n].kind == "latent"]
IMAGE = [n for n in ZOO_NAMES if ZOO[n].kind == "image"]
PARITY_ATOL = 1e-4
MAX_DATA_BYTES = 30 * 1024 * 1024


def _models() -> dict[str, Any]:
    return load_manifest()["models"]


def _file_params() -> list[Any]:
    return [
        pytest.param(name, f, id=f["path"])
        for name, entry in load_manifest()["models"].items()
        for f in entry["files"]
    ]


def _onnx_params() -> list[Any]:
    return [p for p in _file_params() if p.values[1]["format"] == "onnx"]


@cache
def _ts(name: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(model_path(name, fmt="torchscript")), map_location="cpu").eval()


def _run_torch(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def _trained_and_fresh(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return _ts(name), build_model(name)


# ---------------------------------------------------------------------------------- manifest, files


def test_registry_names_match_manifest_and_architectures() -> None:
    assert tuple(ZOO) == ZOO_NAMES
    assert tuple(_models()) == ZOO_NAMES


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_manifest_entry_is_complete(name: str) -> None:
    entry = _models()[name]
    for key in ("family", "description", "inputs", "outputs", "params", "macs", "output_range", "files"):
        assert key in entry, key
    assert entry["family"] == name
    for inp, spec in entry["inputs"].items():
        parsed = InputSpec(**spec)
        assert parsed.shape[0] == 1, inp
    assert [o["name"] for o in entry["outputs"]] == [OUTPUT_NAME]
    assert entry["outputs"][0]["shape"][0] == 1
    assert entry["params"] == sum(p.numel() for p in build_model(name).parameters())
    assert entry["macs"] > 0
    assert entry["training"]["steps"] > 0
    # every promised variant is either stored or skipped with a reason
    onnx_files = {(f["exporter"], f["opset"]) for f in entry["files"] if f["format"] == "onnx"}
    skipped = {(s["exporter"], s["opset"]) for s in entry["skipped_exports"]}
    assert all(s["reason"] for s in entry["skipped_exports"])
    for want in (("torchscript", 13), ("torchscript", 17), ("dynamo", 18)):
        assert want in onnx_files or want in skipped, want
    assert sum(f["format"] == "torchscript" for f in entry["files"]) == 1
    if ZOO[name].kind == "image":
        for key in ("heldout", "heldout_target", "calibration"):
            assert (zoo_dir() / entry[key]).is_file(), key


@pytest.mark.parametrize(("name", "record"), _file_params())
def test_file_sha256_and_bytes_match_manifest(name: str, record: dict[str, Any]) -> None:
    path = zoo_dir() / record["path"]
    data = path.read_bytes()
    assert len(data) == record["bytes"]
    assert hashlib.sha256(data).hexdigest() == record["sha256"]


def test_data_dir_is_small() -> None:
    total = sum(p.stat().st_size for p in zoo_dir().rglob("*") if p.is_file())
    assert total < MAX_DATA_BYTES, f"worker/zoo/data is {total / 1e6:.1f} MB"


def test_model_path_lookup() -> None:
    assert model_path("dcgan", fmt="onnx", opset=17).name == "model.op17.onnx"
    assert model_path("dcgan", fmt="onnx", opset=18, exporter="dynamo").name == "model.op18.dynamo.onnx"
    assert model_path("dcgan", fmt="torchscript").name == "model.pt"
    with pytest.raises(FileNotFoundError, match="stored"):
        model_path("dcgan", fmt="onnx", opset=11)
    with pytest.raises(KeyError, match="valid"):
        model_path("no_such_model")


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_example_inputs_follow_the_specs(name: str) -> None:
    feeds = example_inputs(name, batch=5, seed=3)
    again = example_inputs(name, batch=5, seed=3)
    specs = _models()[name]["inputs"]
    assert list(feeds) == list(specs)
    for inp, arr in feeds.items():
        spec = InputSpec(**specs[inp])
        assert list(arr.shape) == [5, *spec.shape[1:]]
        assert arr.dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(arr, again[inp])
        if spec.distribution == "randint":
            assert arr.min() >= spec.low and arr.max() < spec.high


@pytest.mark.parametrize("name", IMAGE)
def test_image_sets_match_the_input_spec(name: str) -> None:
    shape = _models()[name]["inputs"]["image"]["shape"]
    held, calib = image_set(name, "heldout"), image_set(name, "calibration")
    target = image_set(name, "heldout_target")
    for arr in (held, calib):
        assert arr.dtype == np.float32 and list(arr.shape[1:]) == shape[1:]
        assert arr.min() >= -1.0 and arr.max() <= 1.0
    assert (
        target.shape[0] == held.shape[0]
        and list(target.shape[1:]) == _models()[name]["outputs"][0]["shape"][1:]
    )
    # no held-out input appears in the calibration (training-distribution) set
    flat_c = calib.reshape(len(calib), -1)
    for h in held.reshape(len(held), -1):
        assert np.abs(flat_c - h).max(axis=1).min() > 1e-3


# ------------------------------------------------------------------------------------ loading, parity


@pytest.mark.parametrize(("name", "record"), _onnx_params())
def test_onnx_matches_torchscript_with_dynamic_batch(name: str, record: dict[str, Any]) -> None:
    path = zoo_dir() / record["path"]
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == record["opset"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(_models()[name]["inputs"])
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME]
    for batch in (1, 3):
        feeds = example_inputs(name, batch=batch, seed=batch)
        got = sess.run([OUTPUT_NAME], feeds)[0]
        want = _run_torch(_ts(name), feeds)
        assert got.shape == want.shape == (batch, *_models()[name]["outputs"][0]["shape"][1:])
        assert np.abs(got - want).max() < PARITY_ATOL


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_torchscript_weights_load_into_the_architecture(name: str) -> None:
    ts = _ts(name)
    eager = build_model(name)
    eager.load_state_dict(ts.state_dict())
    feeds = example_inputs(name, batch=2, seed=0)
    assert np.abs(_run_torch(eager, feeds) - _run_torch(ts, feeds)).max() < 1e-5


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if ZOO[n].tanh_output])
def test_tanh_outputs_are_in_range(name: str) -> None:
    out = _run_torch(_ts(name), example_inputs(name, batch=16, seed=1))
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert _models()[name]["output_range"]["nominal"] == [-1.0, 1.0]


# ------------------------------------------------------------------------ the models learned something


@lru_cache(maxsize=1)
def _digits_32() -> np.ndarray:
    """sklearn digits as the zoo sees them: ``[1797, 1024]`` in [-1, 1]."""
    from worker.zoo.data_sources import load_digits_32

    return load_digits_32()[0].reshape(1797, -1).numpy()


def digit_structure(images: np.ndarray) -> dict[str, float]:
    """Statistics of ``images [N, 1, 32, 32]`` in [-1, 1] that separate digits from untrained output.

    - ``diversity``: mean per-pixel std across samples (constant output -> 0);
    - ``border``: mean value of the outer 3-pixel frame (digit backgrounds are black, -1);
    - ``neighbour_corr``: correlation of horizontally adjacent pixels (noise -> low);
    - ``nn_rms``: mean RMS distance of a sample to its nearest real digit.
    """
    x = images[:, 0].astype(np.float64)
    frame = np.ones(x.shape[1:], bool)
    frame[3:-3, 3:-3] = False
    a, b = x[:, :, :-1].ravel(), x[:, :, 1:].ravel()
    real = _digits_32().astype(np.float64)
    flat = x.reshape(len(x), -1)
    d2 = (flat**2).sum(1)[:, None] + (real**2).sum(1)[None] - 2 * flat @ real.T
    return {
        "diversity": float(x.std(axis=0).mean()),
        "border": float(x[:, frame].mean()),
        "neighbour_corr": float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0,
        "nn_rms": float(np.sqrt(np.maximum(d2.min(1), 0) / flat.shape[1]).mean()),
    }


def looks_like_digits(s: dict[str, float]) -> bool:
    """Thresholds set from the trained zoo and fresh initialisations (see the test below)."""
    return s["diversity"] > 0.15 and s["border"] < -0.5 and s["neighbour_corr"] > 0.93 and s["nn_rms"] < 0.4


@pytest.mark.parametrize("name", LATENT)
def test_digit_generators_make_digits_and_untrained_ones_do_not(name: str) -> None:
    trained, fresh = _trained_and_fresh(name)
    feeds = example_inputs(name, batch=128, seed=7)
    s_trained = digit_structure(_run_torch(trained, feeds))
    s_fresh = digit_structure(_run_torch(fresh, feeds))
    assert looks_like_digits(s_trained), s_trained
    assert not looks_like_digits(s_fresh), s_fresh


def test_cgan_follows_its_label() -> None:
    """A logistic regression on sklearn's 8x8 digits reads the cGAN samples (4x4-pooled) as their label."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    clf = LogisticRegression(max_iter=2000).fit(digits.data / 16.0, digits.target)

    def agreement(model: torch.nn.Module) -> float:
        feeds = example_inputs("cgan", batch=200, seed=11)
        feeds["label"] = np.arange(200, dtype=np.int64) % 10
        imgs = torch.from_numpy(_run_torch(model, feeds))
        small = (F.avg_pool2d(imgs, 4).reshape(200, 64).numpy() + 1.0) / 2.0
        return float((clf.predict(small) == feeds["label"]).mean())

    trained, fresh = _trained_and_fresh("cgan")
    assert agreement(trained) > 0.8
    assert agreement(fresh) < 0.4


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.mark.parametrize("name", IMAGE)
def test_image_models_beat_input_baselines_and_an_untrained_model(name: str) -> None:
    """i2i: much closer to the target than the input itself. SR: clearly better than nearest and
    bilinear upsampling of the input (a minute of CPU training does not beat bicubic; the manifest
    records that comparison). Both: far better than a freshly initialised model."""
    held, target = image_set(name, "heldout"), image_set(name, "heldout_target")
    trained, fresh = _trained_and_fresh(name)
    out = _run_torch(trained, {"image": held})
    l1_model = _l1(out, target)
    l1_fresh = _l1(_run_torch(fresh, {"image": held}), target)
    if name == "srresnet":
        x = torch.from_numpy(held)
        nearest = F.interpolate(x, scale_factor=2.0, mode="nearest").numpy()
        bilinear = (
            F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False).clamp(-1, 1).numpy()
        )
        assert l1_model < 0.9 * _l1(nearest, target), (l1_model, _l1(nearest, target))
        assert l1_model < _l1(bilinear, target), (l1_model, _l1(bilinear, target))
    else:
        assert l1_model < 0.75 * _l1(held, target), (l1_model, _l1(held, target))
    assert l1_model < 0.4 * l1_fresh, (l1_model, l1_fresh)
    # the output depends on the input: not a constant image
    assert out.std(axis=0).mean() > 0.05
    assert _models()[name]["heldout_l1"]["model"] == pytest.approx(l1_model, abs=1e-4)


def test_macs_match_a_hand_count_for_dcgan() -> None:
    """DCGAN at batch 1: Linear 64 -> 64*16, then ConvTranspose 4x4 stride 2 layers (Cin*Cout*16*Hin*Win)."""
    m = build_model("dcgan")
    c0 = m.project.out_features // 16
    convs = [layer for layer in m.body if isinstance(layer, torch.nn.ConvTranspose2d)]
    macs = 64 * c0 * 16
    hw = 4
    for conv in convs:
        macs += conv.in_channels * conv.out_channels * 16 * hw * hw
        hw *= 2
    assert _models()["dcgan"]["macs"] == macs


def test_samples_png_exist() -> None:
    for name in ZOO_NAMES:
        assert Path(zoo_dir() / _models()[name]["samples"]).stat().st_size > 1000
