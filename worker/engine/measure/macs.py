"""Parameters, file sizes and MACs of ONNX models, read from the graph (torch-free).

- :func:`count_params_onnx` / :func:`count_nonzero_params_onnx`: elements of weight initializers.
- :func:`count_macs_onnx`: multiply-accumulates of Conv / ConvTranspose / Gemm / MatMul (and their
  quantized forms) from the graph with inferred shapes, per node, plus the ops not counted.
- :func:`file_sizes`: bytes on disk and gzip-9 bytes of the file.
- :func:`measure_model`: all of them for one file.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

logger = logging.getLogger(__name__)

# Weight dtypes: floating point, and 8/4-bit integers (quantized weights). int64/int32 initializers
# are shapes, axes and indices, not parameters.
_WEIGHT_DTYPES: frozenset[int] = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BFLOAT16,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT4,
        TensorProto.UINT4,
    }
)

# op type -> (index of the weight input, how to count). See _node_macs.
COUNTED_OPS: frozenset[str] = frozenset(
    {
        "Conv",
        "ConvInteger",
        "QLinearConv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "MatMulInteger",
        "QLinearMatMul",
    }
)


# ----------------------------------------------------------------------------- parameters, sizes


def _weight_initializers(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if t.data_type in _WEIGHT_DTYPES]


def count_params_onnx(model: onnx.ModelProto) -> int:
    """Number of parameters: the elements of all floating-point and 8/4-bit integer initializers.

    Integer initializers of 32/64 bits (shapes, axes, indices) are not parameters. In a quantized
    model the int8 weights count, and so do its scales and zero points (a few per layer).
    """
    return sum(math.prod(t.dims) for t in _weight_initializers(model))


def count_nonzero_params_onnx(model: onnx.ModelProto) -> int:
    """Number of parameters (as :func:`count_params_onnx`) whose stored value is not exactly 0."""
    total = 0
    for t in _weight_initializers(model):
        total += int(np.count_nonzero(numpy_helper.to_array(t)))
    return total


class FileSizes(TypedDict):
    bytes: int
    gzip_bytes: int


def file_sizes(path: Path | str) -> FileSizes:
    """Size of the file on disk and of its gzip (zlib level 9, gzip container) compression.

    The gzip size is what unstructured sparsity improves: zeros compress, they do not run faster.
    """
    p = Path(path)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container, mtime 0
    gz = 0
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            gz += len(comp.compress(chunk))
    gz += len(comp.flush())
    return FileSizes(bytes=p.stat().st_size, gzip_bytes=gz)


# ----------------------------------------------------------------------------- MACs


@dataclass
class NodeMacs:
    name: str
    op_type: str
    macs: int


@dataclass
class MacCount:
    """MACs of one model at the given input shapes.

    ``total`` sums ``per_node``. ``not_counted`` maps every op type that carries no MAC formula here
    (activations, norms, elementwise, reshapes, control flow) to its node count; ``unresolved``
    names counted-type nodes whose shapes could not be determined (then ``complete`` is false and
    ``total`` is a lower bound).
    """

    total: int
    per_node: list[NodeMacs]
    not_counted: dict[str, int]
    unresolved: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    how: str = ""

    @property
    def complete(self) -> bool:
        return not self.unresolved

    def by_op_type(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for n in self.per_node:
            out[n.op_type] += n.macs
        return dict(out)


MACS_HOW = (
    "Counted from the ONNX graph after onnx.shape_inference (data_prop=True; onnxruntime for shapes "
    "still unknown) at the stated input shapes. One MAC = one multiply-accumulate. "
    "Conv: N*Cout*Hout*Wout*(Cin/groups)*kH*kW; ConvTranspose: N*Cin*Hin*Win*(Cout/groups)*kH*kW "
    "(no stride^2 over-count); Gemm/MatMul: M*K*N per batch element. Bias adds, activations, "
    "normalizations and resampling are not counted."
)


def _static_shape(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(int(d.dim_value))
    return dims


def _with_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if m.functions:
        m = onnx.inliner.inline_local_functions(m)
    init_names = {t.name for t in m.graph.initializer}
    known = {i.name for i in m.graph.input if i.name not in init_names}
    unknown = set(input_shapes) - known
    if unknown:
        raise ValueError(f"input_shapes names {sorted(unknown)} are not graph inputs; valid: {sorted(known)}")
    for inp in m.graph.input:
        if inp.name in input_shapes:
            shape = inp.type.tensor_type.shape
            del shape.dim[:]
            for v in input_shapes[inp.name]:
                shape.dim.add().dim_value = int(v)
    # Stale or symbolic shapes recorded at export time would clash with the new input shapes.
    del m.graph.value_info[:]
    for out in m.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return m


_NP_OF_ONNX: dict[int, Any] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64,
    TensorProto.INT32: np.int32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.BOOL: np.bool_,
}


def _zero_feeds(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        shape = input_shapes.get(inp.name) or _static_shape(inp)
        if shape is None:
            raise ValueError(f"no shape for input {inp.name!r}: pass it in input_shapes")
        dtype = _NP_OF_ONNX.get(inp.type.tensor_type.elem_type, np.float32)
        feeds[inp.name] = np.zeros(list(shape), dtype=dtype)
    return feeds


def _shapes_from_ort(
    model: onnx.ModelProto, names: Sequence[str], input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Run the model once on zeros with ``names`` added as graph outputs; return their shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(names), _zero_feeds(m, input_shapes))
    return {n: list(np.shape(v)) for n, v in zip(names, outs, strict=True)}


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(onnx.helper.get_attribute_value(a))
    return default


def _needed(node: onnx.NodeProto) -> list[str]:
    """Tensor names whose shapes the MAC formula of ``node`` needs."""
    op, i, o = node.op_type, list(node.input), list(node.output)
    if op in ("Conv", "ConvInteger"):
        return [i[1], o[0]]
    if op == "QLinearConv":
        return [i[3], o[0]]
    if op == "ConvTranspose":
        return [i[0], i[1]]
    if op == "Gemm":
        return [i[0], i[1]]
    if op in ("MatMul", "MatMulInteger"):
        return [i[0], o[0]]
    if op == "QLinearMatMul":
        return [i[0], o[0]]
    return []


def _node_macs(node: onnx.NodeProto, s: Mapping[str, list[int]]) -> int:
    op, i, o = node.op_type, list(node.input), list(node.output)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = s[i[3] if op == "QLinearConv" else i[1]]  # [Cout, Cin/groups, k...]
        y = s[o[0]]  # [N, Cout, out...]
        return math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = s[i[0]], s[i[1]]  # x [N, Cin, in...], w [Cin, Cout/groups, k...]
        return math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        a, b = s[i[0]], s[i[1]]
        m_, k = (a[1], a[0]) if _attr(node, "transA") else (a[0], a[1])
        n_ = b[0] if _attr(node, "transB") else b[1]
        return m_ * k * n_
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a, y = s[i[0]], s[o[0]]
        return math.prod(y) * a[-1]  # every output element is a K-long dot product
    raise AssertionError(op)


def count_macs_onnx(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> MacCount:
    """Count multiply-accumulates of ``model`` at ``input_shapes`` (input name -> full shape,
    batch included; inputs with fully static shapes may be left out).

    Shapes come from ``onnx.shape_inference.infer_shapes(data_prop=True)``; a shape that
    stays unknown is read by running the graph once on zeros in onnxruntime with that tensor added
    as an output. Nodes inside control-flow subgraphs are not visited (their op, e.g. ``If``, is
    listed in ``not_counted``).
    """
    m = _with_input_shapes(model, input_shapes)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # inference is best effort; onnxruntime fills the gaps below
        logger.warning("macs.shape_inference_failed error=%s", e)
    shapes: dict[str, list[int]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        sh = _static_shape(vi)
        if sh is not None:
            shapes[vi.name] = sh
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = list(n.attribute[0].t.dims)

    counted = [n for n in m.graph.node if n.op_type in COUNTED_OPS and n.domain in ("", "ai.onnx")]
    missing = sorted({t for n in counted for t in _needed(n) if t not in shapes})
    if missing:
        logger.info("macs.ort_shape_fallback tensors=%d", len(missing))
        try:
            shapes.update(_shapes_from_ort(m, missing, input_shapes))
        except Exception as e:
            logger.warning("macs.ort_shape_fallback_failed error=%s", e)

    per_node: list[NodeMacs] = []
    unresolved: list[str] = []
    for idx, n in enumerate(counted):
        name = n.name or f"{n.op_type}_{idx}"
        if any(t not in shapes for t in _needed(n)):
            unresolved.append(name)
            continue
        per_node.append(NodeMacs(name=name, op_type=n.op_type, macs=int(_node_macs(n, shapes))))
    counted_ids = {id(n) for n in counted}
    not_counted = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in m.graph.node
        if id(n) not in counted_ids
    )
    return MacCount(
        total=sum(n.macs for n in per_node),
        per_node=per_node,
        not_counted=dict(sorted(not_counted.items())),
        unresolved=unresolved,
        input_shapes={k: [int(v) for v in s] for k, s in input_shapes.items()},
        how=MACS_HOW,
    )


@dataclass
class ModelFigures:
    """Static figures of one ONNX file (see the functions that fill each field)."""

    path: str
    params: int
    nonzero_params: int
    bytes: int
    gzip_bytes: int
    macs: MacCount | None
    macs_error: str | None = None


def measure_model(path: Path | str, input_shapes: Mapping[str, Sequence[int]]) -> ModelFigures:
    """Parameters, non-zero parameters, file sizes and MACs of the ONNX file at ``path``.

    A MAC-count failure does not fail the measurement: ``macs`` is None and ``macs_error`` says why.
    """
    model = onnx.load(str(path))
    sizes = file_sizes(path)
    macs: MacCount | None = None
    err: str | None = None
    try:
        macs = count_macs_onnx(model, input_shapes)
    except Exception as e:
        logger.warning("macs.failed path=%s error=%s", path, e)
        err = f"{type(e).__name__}: {e}"
    return ModelFigures(
        path=str(path),
        params=count_params_onnx(model),
        nonzero_params=count_nonzero_params_onnx(model),
        bytes=sizes["bytes"],
        gzip_bytes=sizes["gzip_bytes"],
        macs=macs,
        macs_error=err,
    )
