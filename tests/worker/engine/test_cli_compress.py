"""`gancompress compress` on bad input: one line on stderr, exit 2, for each kind of bad model."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from app import cli


def _hardmax(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], axis=1)], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("garbage", "unsupported_format"),
        ("truncated", "corrupt_model"),
        ("torchscript_without_inputs", "missing_input_spec"),
        ("unsupported_op", "unsupported_op"),
    ],
)
def test_bad_models_one_line_exit_2(
    case: str,
    code: str,
    tmp_path: Path,
    tiny_onnx: dict[str, Path],
    tiny_ts: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model.bin"
    if case == "garbage":
        model.write_bytes(b"\x08\x01garbage that is no protobuf \xff\xfe" * 4)
    elif case == "truncated":
        data = tiny_onnx["resnet"].read_bytes()
        model.write_bytes(data[: len(data) // 3])
    elif case == "torchscript_without_inputs":
        model.write_bytes(tiny_ts["dcgan"].read_bytes())
    else:
        _hardmax(model)
    rc = cli.main(["compress", str(model), "--out", str(tmp_path / "out"), "--quiet", "--steps", "1"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("gancompress:")]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"gancompress: error: {code}: "), err
