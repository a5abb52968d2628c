"""Tiny model and calibration files for the service tests, built without torch."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np


def onnx_bytes(
    *,
    name: str = "z",
    shape: tuple[int | str, ...] = (1, 8),
    external: bool = False,
    op: str = "ConvTranspose",
    then: str | None = None,
) -> bytes:
    """A tiny generator graph (opset 17): a latent ``z [1, C]`` (reshaped to ``[N, C, 1, 1]``) or, with
    a rank-4 ``shape``, an image-like input, then ``ConvTranspose -> Tanh -> img``. ``then``: one
    more single-input op after Tanh (``"Hardmax"``: a valid graph that the engine cannot convert)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = int(shape[1])
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 4, 4)).astype(np.float32), "w")
    if external:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "1536")):
            entry = w.external_data.add()
            entry.key, entry.value = k, v
    inits = [w]
    nodes = []
    x = name
    if len(shape) == 2:
        inits.append(numpy_helper.from_array(np.array([-1, channels, 1, 1], np.int64), "to4d"))
        nodes.append(helper.make_node("Reshape", [name, "to4d"], ["x4"]))
        x = "x4"
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]} if op == "ConvTranspose" else {}
    nodes += [
        helper.make_node(op, [x, "w"], ["h"], **attrs),
        helper.make_node("Tanh", ["h"], ["img" if then is None else "t"]),
    ]
    if then is not None:
        nodes.append(helper.make_node(then, ["t"], ["img"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def torchscript_zip(*, layout: str = "torchscript", garbage: bool = False) -> bytes:
    """A zip with TorchScript's layout (``layout='checkpoint'``: a torch.save() zip instead)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        payload = os.urandom(256) if garbage else b"\x80\x02}q\x00."
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
        if layout == "torchscript":
            zf.writestr("archive/constants.pkl", payload)
            zf.writestr("archive/code/__torch__.py", "garbage" if garbage else "class G: pass\n")
        zf.writestr("archive/data/0", os.urandom(64))
    return buf.getvalue()


def npy_bytes(shape: tuple[int, ...] = (4, 3, 8, 8), dtype: str = "float32") -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype=dtype), allow_pickle=False)
    return buf.getvalue()


def image_zip(n: int = 3) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            img = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(img, format="PNG")
            zf.writestr(f"imgs/{i}.png", img.getvalue())
    return buf.getvalue()


def i2i_onnx_bytes(channels: int = 8, size: int = 16) -> bytes:
    """A tiny image-to-image generator: ``img -> Conv -> Relu -> Conv -> Tanh -> out`` (opset 17)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(channels, np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((3, channels, 3, 3)) * 0.3).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(3, np.float32), "b2")
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["img", "w1", "b1"], ["h1"], **pads),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["h3"], **pads),
        helper.make_node("Tanh", ["h3"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "i2i",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, size, size])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def generator_onnx_bytes(latent: int = 8, hidden: int = 16) -> bytes:
    """A tiny noise-to-image generator with a prunable hidden layer and a dynamic batch:
    ``z [N, latent] -> [N, latent, 1, 1] -> ConvT(4) -> Relu -> ConvT(4, s2, p1) -> Tanh -> img [N, 3, 8, 8]``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((latent, hidden, 4, 4)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, 3, 4, 4)) * 0.3).astype(np.float32), "w2")
    to4d = numpy_helper.from_array(np.array([-1, latent, 1, 1], np.int64), "to4d")
    nodes = [
        helper.make_node("Reshape", ["z", "to4d"], ["z4"]),
        helper.make_node("ConvTranspose", ["z4", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("ConvTranspose", ["h2", "w2"], ["h3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["h3"], ["img"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gen",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent])],
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [w1, w2, to4d],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
