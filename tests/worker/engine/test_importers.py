"""Importers: both formats in, a trainable module out that matches the original."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.worker.engine import tiny
from worker.engine.importers import (
    PARITY_TOLERANCE,
    graph_inputs,
    import_model,
    interface_axes,
    load_onnx,
    sniff_format,
)
from worker.engine.prunable import prunable_layers
from worker.engine.prune import require_eager
from worker.errors import (
    CorruptModelError,
    ExternalDataError,
    MissingInputSpecError,
    PruningError,
    UnsupportedFormatError,
    UnsupportedOpError,
)
from worker.spec import Distribution, InputSpec, ModelFormat
from worker.zoo.registry import model_path

TS_INPUTS = {
    "dcgan": {"z": InputSpec(shape=[1, 16])},
    "cgan": {
        "z": InputSpec(shape=[1, 8]),
        "label": InputSpec(shape=[1], dtype="int64", distribution="randint", high=5),
    },
    "resnet": {"image": InputSpec(shape=[1, 3, 16, 16], distribution="calibration")},
    "sr": {"image": InputSpec(shape=[1, 3, 8, 8], distribution="calibration")},
    "style": {"z": InputSpec(shape=[1, 16])},
}


def _torch_out(name: str, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return tiny.build(name)(*args)


@pytest.mark.parametrize("name", list(tiny.FAMILIES))
def test_onnx_import_matches_original(name: str, tiny_onnx: dict[str, Path]) -> None:
    im = import_model(tiny_onnx[name], None)
    assert im.format == ModelFormat.ONNX
    assert im.parity_max_abs_diff < PARITY_TOLERANCE
    args = tiny.example(name, batch=3, seed=7)
    with torch.no_grad():
        got = im.module(*args)
    assert torch.allclose(got, _torch_out(name, args), atol=PARITY_TOLERANCE)
    assert prunable_layers(im.module), "the converted module must expose prunable layers"


@pytest.mark.parametrize("name", list(tiny.FAMILIES))
def test_torchscript_import_matches_original(name: str, tiny_ts: dict[str, Path]) -> None:
    im = import_model(tiny_ts[name], TS_INPUTS[name])
    assert im.format == ModelFormat.TORCHSCRIPT
    assert not isinstance(im.module, torch.jit.ScriptModule)
    args = tiny.example(name, batch=2, seed=3)
    with torch.no_grad():
        got = im.module(*args)
    assert torch.allclose(got, _torch_out(name, args), atol=PARITY_TOLERANCE)
    assert prunable_layers(im.module)


def test_pruning_a_script_module_is_refused(tiny_ts: dict[str, Path]) -> None:
    """Torch-Pruning silently does nothing on a ScriptModule: we must refuse, never no-op."""
    ts = torch.jit.load(str(tiny_ts["dcgan"]))
    with pytest.raises(PruningError, match="TorchScript"):
        require_eager(ts)


def test_torchscript_without_input_spec_is_a_clear_error(tiny_ts: dict[str, Path]) -> None:
    with pytest.raises(MissingInputSpecError, match="input spec"):
        import_model(tiny_ts["dcgan"], None)


def test_dynamo_exported_opset18_imports(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tiny.export("resnet", tmp_path / "r18.onnx", opset=18, dynamo=True)
    im = import_model(path, None)
    args = tiny.example("resnet", batch=2)
    with torch.no_grad():
        assert torch.allclose(im.module(*args), _torch_out("resnet", args), atol=PARITY_TOLERANCE)


@pytest.mark.parametrize("opset", [13, 21])
def test_other_opsets_import(opset: int, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tiny.export("sr", tmp_path / "sr.onnx", opset=opset if opset < 21 else 20)
    m = onnx.load(str(path))
    if opset == 21:  # the TorchScript exporter stops at 20: convert up
        m = onnx.version_converter.convert_version(m, 21)
        onnx.save(m, str(path))
    im = import_model(path, None)
    assert im.parity_max_abs_diff < PARITY_TOLERANCE


def test_graph_inputs_guess_distributions(tiny_onnx: dict[str, Path]) -> None:
    cg = graph_inputs(load_onnx(tiny_onnx["cgan"]))
    assert cg["z"].distribution == Distribution.NORMAL and cg["z"].shape == [1, 8]
    assert cg["label"].distribution == Distribution.RANDINT
    assert (cg["label"].low, cg["label"].high) == (0, 5), "label range comes from the embedding table"
    img = graph_inputs(load_onnx(tiny_onnx["resnet"]))["image"]
    assert img.distribution == Distribution.CALIBRATION and img.shape == [1, 3, 16, 16]


def test_user_spec_with_unknown_input_name(tiny_onnx: dict[str, Path]) -> None:
    with pytest.raises(MissingInputSpecError, match=r"not inputs of the model.*\['z'\]"):
        import_model(tiny_onnx["dcgan"], {"latent": InputSpec(shape=[1, 16])})


def test_sniff_by_content_not_name(
    tmp_path: Path, tiny_onnx: dict[str, Path], tiny_ts: dict[str, Path]
) -> None:
    disguised = tmp_path / "model.onnx"
    disguised.write_bytes(tiny_ts["dcgan"].read_bytes())
    assert sniff_format(disguised) == ModelFormat.TORCHSCRIPT
    other = tmp_path / "model.pt"
    other.write_bytes(tiny_onnx["dcgan"].read_bytes())
    assert sniff_format(other) == ModelFormat.ONNX


def test_garbage_and_empty_files(tmp_path: Path) -> None:
    g = tmp_path / "g.bin"
    g.write_bytes(b"\x00\xffnot a model at all" * 10)
    with pytest.raises(UnsupportedFormatError):
        import_model(g, None)
    e = tmp_path / "e.onnx"
    e.write_bytes(b"")
    with pytest.raises(CorruptModelError, match="empty"):
        import_model(e, None)


def test_truncated_onnx(tmp_path: Path, tiny_onnx: dict[str, Path]) -> None:
    data = tiny_onnx["dcgan"].read_bytes()
    t = tmp_path / "t.onnx"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises((CorruptModelError, UnsupportedFormatError)):
        import_model(t, None)


def test_torchscript_zip_with_garbage_inside(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("archive/data.pkl", b"definitely not a pickle")
        zf.writestr("archive/constants.pkl", b"nor this")
    with pytest.raises(CorruptModelError, match="TorchScript"):
        import_model(bad, {"z": InputSpec(shape=[1, 16])})


def _single_op_model(op: str, path: Path, **attrs: object) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    path = _single_op_model("Hardmax", tmp_path / "h.onnx", axis=1)
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        import_model(path, None)


def test_external_data_is_refused(tmp_path: Path) -> None:
    w = np.ones((4, 4), np.float32)
    init = onnx.numpy_helper.from_array(w, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [init])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(
        m,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    with pytest.raises(ExternalDataError, match="external files"):
        import_model(path, None)


def test_opset_out_of_range(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    path = tmp_path / "o11.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedOpError, match="opset 11"):
        import_model(path, None)


def test_a_graph_with_the_newest_ir_version_imports(tmp_path: Path) -> None:
    """onnx.helper writes IR 14 (onnx 1.23), which ONNX Runtime refuses: it was reported as a
    missing input spec. An opset 17 graph needs nothing newer than IR 10."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert m.ir_version > 10
    path = tmp_path / "ir.onnx"
    onnx.save(m, str(path))
    imported = import_model(path, None)
    assert imported.onnx_model.ir_version == 10 and imported.parity_max_abs_diff <= PARITY_TOLERANCE


class _ListSkips(torch.nn.Module):
    """Keeps skip tensors in a Python list, as scripted U-Nets do (TorchScript -> ONNX sequences)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Conv2d(4, 8, 3, 2, 1)])
        self.up = torch.nn.ModuleList(
            [torch.nn.ConvTranspose2d(8, 4, 4, 2, 1), torch.nn.ConvTranspose2d(8, 3, 4, 2, 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for d in self.down:
            x = torch.relu(d(x))
            skips.append(x)
        skips = skips[:-1]
        x = torch.relu(self.up[0](x))
        x = torch.cat([x, skips[len(skips) - 1]], dim=1)
        return torch.tanh(self.up[1](x))


def test_scripted_lists_become_plain_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _ListSkips().eval()
    path = tmp_path / "unet.pt"
    torch.jit.script(model).save(str(path))
    im = import_model(path, {"image": InputSpec(shape=[1, 3, 16, 16], distribution="calibration")})
    ops = {n.op_type for n in im.onnx_model.graph.node}
    assert not any(op.startswith("Sequence") for op in ops), ops
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(im.module(x), model(x), atol=PARITY_TOLERANCE)


def test_onnxslim_processed_upload_imports(tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    """A graph the user already ran through onnxslim (BatchNorm folded, constants folded)."""
    import onnxslim

    slim = tmp_path / "slim.onnx"
    onnx.save(onnxslim.slim(onnx.load(str(tiny_onnx["dcgan"]))), str(slim))
    im = import_model(slim, None)
    args = tiny.example("dcgan", batch=2)
    with torch.no_grad():
        assert torch.allclose(im.module(*args), _torch_out("dcgan", args), atol=PARITY_TOLERANCE)


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_dynamo_reshape_with_allowzero_imports(name: str) -> None:
    """The dynamo exporter writes ``allowzero=1`` on every Reshape; onnx2torch refuses it, and
    with a constant shape without zeros it changes nothing."""
    path = model_path(name, opset=18, exporter="dynamo")
    assert any(a.name == "allowzero" and a.i for n in onnx.load(str(path)).graph.node for a in n.attribute)
    im = import_model(path, None)
    assert im.parity_max_abs_diff < PARITY_TOLERANCE


def test_interface_axes_keep_only_real_symbolic_axes() -> None:
    """A fixed-size output whose height the exporter left symbolic (even named ``batch``) is not
    a dynamic axis of the interface; height and width of a fully convolutional model are."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, "batch", "w"])
    g = helper.make_graph([], "g", [x], [y])
    assert interface_axes(helper.make_model(g)) == {"x": {0: "batch"}, "y": {0: "batch"}}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "N", None])
    g = helper.make_graph([], "g", [x], [y])
    assert interface_axes(helper.make_model(g)) == {
        "x": {0: "N", 2: "H", 3: "W"},
        "y": {0: "N", 2: "y_2", 3: "y_3"},
    }
