"""Decide what an uploaded file is from its content, never from its name (torch-free).

- Model: the rules of ``worker/model_checks.py``, which the engine applies too (so the API and the
  engine accept and refuse the same files for the same stated reason): TorchScript's zip layout,
  or an ONNX ``ModelProto`` with a graph, no external data, accepted by ``onnx.checker``, opset 13-21;
  anything else is ``415 unsupported_format`` (``422`` ``corrupt_model``, ``external_data`` or
  ``unsupported_op`` for the ones that are models but cannot be used). The ONNX graph's inputs
  (names, shapes, dtypes) are returned.
- Calibration: ``.npy`` (magic ``\\x93NUMPY``), ``.npz`` (a zip of ``.npy``) or a zip of images.

Nothing here executes or unpickles the upload: zips are only listed, ``.npy`` headers only parsed,
ONNX only decoded as protobuf (after the upload's size was checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker import model_checks
from worker.core.uploads import CalibrationInfo, InputInfo, ModelInfo
from worker.errors import BadCalibrationError
from worker.spec import ModelFormat, default_distribution

ZIP_MAGIC = model_checks.ZIP_MAGIC
NPY_MAGIC = b"\x93NUMPY"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def sniff_model(path: Path) -> ModelInfo:
    """Identify an uploaded model file by the engine's own rules (``worker.model_checks``); raises
    UnsupportedFormatError / CorruptModelError / ExternalDataError / UnsupportedOpError."""
    if model_checks.is_zip(path):
        model_checks.check_torchscript(path)
        return ModelInfo(format=ModelFormat.TORCHSCRIPT)
    return ModelInfo(format=ModelFormat.ONNX, inputs=_inputs(model_checks.load_onnx(path).graph))


def _inputs(graph: Any) -> list[InputInfo]:
    import onnx

    init = {t.name for t in graph.initializer}
    out: list[InputInfo] = []
    for vi in graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        except (KeyError, ValueError, TypeError):
            dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
        out.append(
            InputInfo(name=vi.name, shape=dims, dtype=dtype, distribution=_guess(graph, vi.name, dtype, dims))
        )
    return out


def _guess(graph: Any, name: str, dtype: str, dims: list[int | str | None]) -> str | None:
    """The engine's default for an input without a spec (``worker.spec.default_distribution``)."""
    init = {t.name for t in graph.initializer}
    indexes_table = any(
        node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == name and node.input[0] in init
        for node in graph.node
    )
    found = default_distribution(dims, dtype, indexes_table)
    return found.value if found is not None else None


def sniff_calibration(path: Path) -> CalibrationInfo:
    """Identify a calibration upload; raises BadCalibrationError."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if head.startswith(NPY_MAGIC):
            fh.seek(0)
            shape = _npy_header(fh, "the .npy file")
            return CalibrationInfo(format="npy", arrays={"arr_0": shape})
    if not head.startswith(ZIP_MAGIC):
        raise BadCalibrationError(
            "calibration must be a .npy array, an .npz archive or a .zip of images (PNG/JPEG/...)"
        )
    with model_checks.open_zip(path, BadCalibrationError, "the calibration archive") as zf:
        files = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
        npys = [i for i in files if i.filename.endswith(".npy")]
        images = [i for i in files if i.filename.lower().endswith(IMAGE_SUFFIXES)]
        if npys and len(npys) == len(files):
            arrays: dict[str, list[int]] = {}
            for info in npys:
                with zf.open(info) as fh:
                    arrays[info.filename[: -len(".npy")]] = _npy_header(fh, info.filename)
            return CalibrationInfo(format="npz", arrays=arrays)
        if not images:
            raise BadCalibrationError("the zip holds no images (.png, .jpg, .jpeg, .bmp, .webp, .tif)")
        return CalibrationInfo(format="zip", images=len(images))


def _npy_header(fh: Any, what: str) -> list[int]:
    import numpy as np

    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError, EOFError) as e:
        raise BadCalibrationError(f"{what} is not a valid .npy array: {e}") from e
    if dtype.hasobject:
        raise BadCalibrationError(f"{what} holds Python objects; calibration arrays must be numeric")
    if dtype.kind not in "biuf":
        raise BadCalibrationError(f"{what} has dtype {dtype}; calibration arrays must be numeric")
    if len(shape) not in (3, 4) or not shape[0]:
        raise BadCalibrationError(
            f"{what} has shape {list(shape)}; expected images as [N, C, H, W], [N, H, W, C] or [N, H, W]"
        )
    return [int(s) for s in shape]
