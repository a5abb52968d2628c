"""The API's upload check and the engine apply the same rules (worker/model_checks.py): each bad
file is refused by both with the same error code and the same reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from app.sniff import sniff_model
from tests.app.files import onnx_bytes, torchscript_zip
from worker.engine.importers import import_model
from worker.errors import GanCompressError


def _graph(opset: int = 17, ir: int = 8, op: str = "Relu") -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir
    ).SerializeToString()


def _checker_fails() -> bytes:
    """Decodes, has a graph, but a node reads a tensor nothing produces."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "nowhere"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _external_in_function() -> bytes:
    m = onnx.load_from_string(_graph())
    t = onnx.numpy_helper.from_array(np.ones(4, np.float32), "c")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    t.external_data.add(key="location", value="/etc/passwd")
    node = helper.make_node("Constant", [], ["c"], value=t)
    fn = helper.make_function("local", "f", [], ["c"], [node], [helper.make_opsetid("", 17)])
    m.functions.append(fn)
    return m.SerializeToString()


def _checkpoint() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3")
    return buf.getvalue()


CASES = {
    "empty": (b"", "corrupt_model"),
    "garbage": (b"\x00\xffnot a model at all" * 10, "unsupported_format"),
    "truncated-onnx": (_graph()[:-9], "corrupt_model"),
    "opset-11": (_graph(opset=11), "unsupported_op"),
    "checker": (_checker_fails(), "corrupt_model"),
    "unknown-op": (_graph(op="NotARealOp"), "unsupported_op"),
    "cli-garbage": (b"\x08\x01garbage that is no protobuf \xff\xfe" * 4, "unsupported_format"),
    "external-data": (onnx_bytes(external=True), "external_data"),
    "external-data-in-a-function": (_external_in_function(), "external_data"),
    "torch-save-checkpoint": (_checkpoint(), "unsupported_format"),
    "zip-of-other-things": (torchscript_zip(layout="checkpoint"), "unsupported_format"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_api_and_the_engine_refuse_alike(name: str, tmp_path: Path) -> None:
    data, code = CASES[name]
    path = tmp_path / "upload"
    path.write_bytes(data)
    with pytest.raises(GanCompressError) as api:
        sniff_model(path)
    with pytest.raises(GanCompressError) as engine:
        import_model(path, None)
    assert api.value.code == engine.value.code == code, (api.value.detail, engine.value.detail)
    assert api.value.detail == engine.value.detail


def test_what_the_api_accepts_the_engine_imports(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(_graph(ir=14))  # onnx.helper's newest IR: accepted by both
    assert sniff_model(path).format == "onnx"
    assert import_model(path, None).format == "onnx"
