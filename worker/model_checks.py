"""What an uploaded model file is, and whether it may be used: one set of rules for the API's upload
check (``app/sniff.py``) and the engine (``worker/engine/importers/``), so both accept and refuse
the same files for the same stated reason. Torch-free and onnxruntime-free: zips are only listed,
ONNX is only decoded as protobuf and checked with ``onnx.checker``.

- A zip (``PK\\x03\\x04``) with TorchScript's layout (``<dir>/data.pkl`` plus ``<dir>/constants.pkl``
  or ``<dir>/code/``) is TorchScript; a ``torch.save`` checkpoint or any other zip is
  ``unsupported_format``; a damaged zip or one that claims to expand 20x is ``corrupt_model``.
- Otherwise the file must decode as an ONNX ``ModelProto`` (else ``unsupported_format``, or
  ``corrupt_model`` when it starts like ONNX: truncated), with a graph that has nodes and outputs,
  no tensor in external files anywhere (graph, subgraphs, sparse initializers, attributes,
  model-local functions: ``external_data``), that ``onnx.checker`` accepts (``corrupt_model``) and of
  a default-domain opset in [13, 21] (``unsupported_op``).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from worker.errors import CorruptModelError, ExternalDataError, UnsupportedFormatError, UnsupportedOpError
from worker.spec import ModelFormat

ZIP_MAGIC = b"PK\x03\x04"
MAX_ZIP_ENTRIES = 100_000
MAX_EXPANSION = 20  # a zip that claims to unpack to more than 20x its size is refused
MIN_OPSET, MAX_OPSET = 13, 21
NOT_A_MODEL = (
    "neither a TorchScript archive nor an ONNX model; supported formats: TorchScript (.pt from "
    "torch.jit.save) and ONNX"
)


def detect_format(path: Path) -> ModelFormat:
    """TorchScript or ONNX, from the content; an ONNX file is fully checked (``load_onnx``)."""
    head = _head(path)
    if head.startswith(ZIP_MAGIC):
        check_torchscript(path)
        return ModelFormat.TORCHSCRIPT
    load_onnx(path)
    return ModelFormat.ONNX


def is_zip(path: Path) -> bool:
    """Starts like a zip (so: TorchScript or nothing); raises ``corrupt_model`` for an empty file."""
    return _head(path).startswith(ZIP_MAGIC)


def _head(path: Path) -> bytes:
    with path.open("rb") as fh:
        head = fh.read(16)
    if not head:
        raise CorruptModelError("the file is empty")
    return head


def open_zip(path: Path, error: type[Exception], what: str) -> zipfile.ZipFile:
    """Open a zip that is listable, not huge in entries and not a zip bomb; else ``error``."""
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        raise error(f"{what} is a damaged or truncated zip: {e}") from e
    if len(infos) > MAX_ZIP_ENTRIES:
        raise error(f"{what} has too many entries ({len(infos)})")
    size = path.stat().st_size
    if sum(i.file_size for i in infos) > MAX_EXPANSION * max(size, 1024 * 1024):
        raise error(f"{what} expands to far more than its size (a zip bomb?)")
    return zf


def check_torchscript(path: Path) -> None:
    """The zip has TorchScript's layout (its members are not read: that is the converter's job)."""
    with open_zip(path, CorruptModelError, "the TorchScript archive") as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    for top in tops:
        has_data = f"{top}/data.pkl" in names
        has_code = f"{top}/constants.pkl" in names or any(n.startswith(f"{top}/code/") for n in names)
        if has_data and has_code:
            return
        if has_data:
            raise UnsupportedFormatError(
                "this zip is a torch.save() checkpoint, not TorchScript: export the generator with "
                "torch.jit.script/trace and torch.jit.save, or as ONNX"
            )
    raise UnsupportedFormatError(
        "a zip file but not a TorchScript archive (no data.pkl + code/ or constants.pkl); "
        "supported formats: TorchScript (.pt from torch.jit.save) and ONNX"
    )


def _looks_like_onnx(head: bytes) -> bool:
    """ModelProto starts with field 1 (ir_version, varint) in every writer we know of."""
    return len(head) >= 2 and head[0] == 0x08 and 3 <= head[1] <= 20  # IR 1-2 predate opset 13


def load_onnx(path: Path) -> Any:
    """Decode and check an ONNX file (the rules above); returns the ``onnx.ModelProto``."""
    import onnx
    from google.protobuf.message import DecodeError

    head = _head(path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as e:
        if _looks_like_onnx(head):
            raise CorruptModelError(f"the ONNX file cannot be decoded (truncated?): {e}") from e
        raise UnsupportedFormatError(NOT_A_MODEL) from e
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        if _looks_like_onnx(head):
            raise CorruptModelError("the ONNX model has no graph (no nodes or no outputs)")
        raise UnsupportedFormatError(NOT_A_MODEL)
    external = external_tensors(model)
    if external:
        raise ExternalDataError(
            f"{len(external)} tensor(s) (e.g. {external[0]!r}) are stored in external files; "
            "save the model as one file (onnx.save(model, path, save_as_external_data=False))",
            tensors=external[:20],
        )
    opset = onnx_opset(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        reason = str(e).splitlines()[0]
        unknown = re.search(r"No Op registered for (\w+)", reason)
        if unknown:
            raise UnsupportedOpError(f"unsupported ONNX operator {unknown.group(1)!r}: {reason}") from e
        raise CorruptModelError(f"ONNX checker: {reason}") from e
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedOpError(
            f"opset {opset} is not supported; supported opsets: {MIN_OPSET} to {MAX_OPSET} "
            "(re-export with opset_version=17)"
        )
    return model


def onnx_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def external_tensors(model: Any) -> list[str]:
    """Names of tensors in the model's graph, its subgraphs and its model-local functions that use
    external data."""
    import onnx

    found: list[str] = []

    def tensors(t: Any) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            found.append(t.name or "(unnamed)")

    def walk(g: Any) -> None:
        for t in g.initializer:
            tensors(t)
        for st in g.sparse_initializer:
            tensors(st.values)
            tensors(st.indices)
        nodes(g.node)

    def nodes(ns: Any) -> None:
        for node in ns:
            for a in node.attribute:
                if a.HasField("t"):
                    tensors(a.t)
                for t in a.tensors:
                    tensors(t)
                if a.HasField("g"):
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(model.graph)
    for fn in model.functions:
        nodes(fn.node)
    return found
