"""Format sniffing from content, and the API's promise never to import torch or onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.sniff import sniff_calibration, sniff_model
from tests.app.files import image_zip, npy_bytes, onnx_bytes, torchscript_zip
from worker.errors import BadCalibrationError, CorruptModelError, ExternalDataError, UnsupportedFormatError


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "upload"
    p.write_bytes(data)
    return p


def test_onnx_inputs(tmp_path: Path) -> None:
    info = sniff_model(_file(tmp_path, onnx_bytes(name="latent", shape=(1, 16, 1, 1))))
    assert info.format == "onnx"
    assert [(i.name, i.shape, i.dtype) for i in info.inputs or []] == [("latent", [1, 16, 1, 1], "float32")]


def test_torchscript_layout(tmp_path: Path) -> None:
    assert sniff_model(_file(tmp_path, torchscript_zip())).format == "torchscript"
    # Garbage inside a well-formed archive is the sandbox's problem, not the API's.
    assert sniff_model(_file(tmp_path, torchscript_zip(garbage=True))).format == "torchscript"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", CorruptModelError),
        (b"\x08\x07" + b"\xff" * 50, CorruptModelError),
        (b"PK\x03\x04" + b"\x00" * 100, CorruptModelError),
        (torchscript_zip(layout="checkpoint"), UnsupportedFormatError),
        (image_zip(), UnsupportedFormatError),
        (onnx_bytes(external=True), ExternalDataError),
    ],
    ids=["empty", "cut-onnx", "cut-zip", "torch-save", "zip-of-images", "external-data"],
)
def test_rejections(tmp_path: Path, data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        sniff_model(_file(tmp_path, data))


def test_external_data_in_a_subgraph(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    inner = onnx.load_from_string(onnx_bytes(external=True)).graph
    node = helper.make_node("If", ["c"], ["img"], then_branch=inner, else_branch=inner)
    g = helper.make_graph(
        [node], "outer", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, None)],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExternalDataError):
        sniff_model(_file(tmp_path, m.SerializeToString()))


def test_calibration_formats(tmp_path: Path) -> None:
    assert sniff_calibration(_file(tmp_path, npy_bytes((5, 3, 8, 8)))).arrays == {"arr_0": [5, 3, 8, 8]}
    assert sniff_calibration(_file(tmp_path, image_zip(4))).images == 4
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, a=np.zeros((2, 8, 8, 3), np.uint8), b=np.zeros((2, 3, 8, 8), np.float32))
    info = sniff_calibration(_file(tmp_path, buf.getvalue()))
    assert info.format == "npz" and info.arrays == {"a": [2, 8, 8, 3], "b": [2, 3, 8, 8]}
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}] * 2, dtype=object), allow_pickle=True)
    with pytest.raises(BadCalibrationError, match="objects"):
        sniff_calibration(_file(tmp_path, buf.getvalue()))


def test_api_never_imports_torch_or_onnxruntime() -> None:
    code = (
        "import sys; from app.main import create_app; from worker.core.settings import Settings; "
        "create_app(Settings(storage_url='/tmp/gc-notorch')); import app.cli, app.client, app.serve; "
        "bad = [m for m in ('torch', 'onnxruntime', 'torchvision') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
