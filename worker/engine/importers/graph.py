"""The uploaded ONNX graph as data: its inputs and interface (names, symbolic axes, how each input
is sampled), and the graph-level rewrites that make it convertible (static sequences resolved,
``allowzero`` dropped where it changes nothing, newer opsets converted down to 17)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from worker import model_checks
from worker.errors import (
    MissingInputSpecError,
    UnsupportedOpError,
    first_line,
)
from worker.spec import Distribution, InputSpec, default_distribution

log = logging.getLogger(__name__)


GRAPH_IR_VERSION = 10  # the IR version of the opset 21 release: enough for every supported graph


# onnx2torch knows these opsets best; newer graphs are converted down first (DESIGN §5).
CONVERT_OPSET = 17


_ONNX_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
}


def load_onnx(path: Path) -> onnx.ModelProto:
    """Decode and check an ONNX file by the API's rules (model_checks: external data, checker,
    opset range), then lower a too-new IR version that ONNX Runtime would refuse."""
    model = model_checks.load_onnx(path)
    if model.ir_version > GRAPH_IR_VERSION:
        # onnx.helper writes its newest IR version (14 with onnx 1.23), which ONNX Runtime refuses;
        # a graph of opset <= 21 uses nothing newer than IR 10 (the opset 21 release)
        log.info("import.ir_version from=%d to=%d", model.ir_version, GRAPH_IR_VERSION)
        model.ir_version = GRAPH_IR_VERSION
    return model


onnx_opset = model_checks.onnx_opset


def graph_inputs(model: onnx.ModelProto) -> dict[str, InputSpec]:
    """Input signature from the graph: shapes (symbolic dims -> 1) and a guessed distribution.

    float rank-4 inputs are taken as images (calibration data needed), other float inputs as
    normal latents, integer inputs as labels ``randint[0, K)`` where K is read from the embedding
    table (Gather on an initializer) they index.
    """
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, InputSpec] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise UnsupportedOpError(
                f"input {vi.name!r} has element type {TensorProto.DataType.Name(tt.elem_type)}; "
                "supported: float32, int64, int32"
            )
        dims: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in tt.shape.dim
        ]
        shape = [d if isinstance(d, int) else 1 for d in dims]
        if shape:
            shape[0] = 1
        else:
            shape = [1]
        high = _embedding_rows(model, vi.name, inits) if dtype != "float32" else None
        dist = default_distribution(dims, dtype, high is not None)
        if dist is None:
            out[vi.name] = None  # type: ignore[assignment]  # needs a user spec
        elif dist == Distribution.RANDINT:
            out[vi.name] = InputSpec(shape=shape, dtype=dtype, distribution=dist, low=0, high=high or 1)
        else:
            out[vi.name] = InputSpec(shape=shape, distribution=dist)
    return out


def dynamic_spatial_inputs(model: onnx.ModelProto) -> set[str]:
    """Image inputs whose height or width is symbolic (fully convolutional exports)."""
    out = set()
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[2:]):
            out.add(vi.name)
    return out


def _embedding_rows(model: onnx.ModelProto, name: str, inits: dict[str, TensorProto]) -> int | None:
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == name:
            table = inits.get(node.input[0])
            if table is not None and len(table.dims) >= 1:
                return int(table.dims[0])
    return None


def merge_inputs(
    from_graph: dict[str, InputSpec | None] | None, user: dict[str, InputSpec] | None
) -> dict[str, InputSpec]:
    """User spec wins; names must match the graph's; every input must end up specified."""
    user = user or {}
    if from_graph is None:
        if not user:
            raise MissingInputSpecError(
                'TorchScript models need an input spec, e.g. --inputs \'{"z": {"shape": [1, 64]}}\''
            )
        return dict(user)
    unknown = sorted(set(user) - set(from_graph))
    if unknown:
        raise MissingInputSpecError(
            f"input spec names {unknown} are not inputs of the model; its inputs: {sorted(from_graph)}"
        )
    merged: dict[str, InputSpec] = {}
    for name, spec in from_graph.items():
        chosen = user.get(name, spec)
        if chosen is None:
            raise MissingInputSpecError(
                f"integer input {name!r}: give its range in the input spec, e.g. "
                f'{{"{name}": {{"shape": [1], "dtype": "int64", "distribution": "randint", "high": 10}}}}'
            )
        merged[name] = chosen
    return merged


def _allowzero_off(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop ``allowzero=1`` (the dynamo exporter writes it on every Reshape; onnx2torch refuses it)
    where the shape is a constant without zeros: there it changes nothing."""
    consts = {i.name: i for i in model.graph.initializer}
    found = [
        n
        for n in model.graph.node
        if n.op_type == "Reshape"
        and any(a.name == "allowzero" and a.i for a in n.attribute)
        and n.input[1] in consts
        and 0 not in numpy_helper.to_array(consts[n.input[1]]).tolist()
    ]
    if not found:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {id(n) for n in found}
    for node, copy in zip(model.graph.node, out.graph.node, strict=True):
        if id(node) in names:
            kept = [a for a in copy.attribute if a.name != "allowzero"]
            del copy.attribute[:]
            copy.attribute.extend(kept)
    return out


def resolve_static_sequences(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace tensor-sequence ops whose contents are known statically (the TorchScript exporter
    writes them for lists kept in scripted code, e.g. U-Net skip connections) by plain tensors.

    Sequences are followed as lists of tensor names through SequenceConstruct/Empty/Insert and
    Slice; SequenceLength and integer Add/Sub/Mul on known scalars become constants; SequenceAt
    with a known index becomes the element and ConcatFromSequence a Concat. Graphs whose
    sequences depend on data are returned unchanged (and fail later, naming the op)."""
    seq_ops = {"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceAt", "ConcatFromSequence"}
    if not any(n.op_type in seq_ops for n in model.graph.node):
        return model
    known: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    seqs: dict[str, list[str]] = {}
    alias: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []

    def const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
        known[name] = value
        return onnx.helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    def scalar(name: str) -> int | None:
        v = known.get(name)
        return int(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    for node in model.graph.node:
        ins = [alias.get(i, i) for i in node.input]
        op, out0 = node.op_type, node.output[0] if node.output else ""
        if op == "Constant" and node.attribute and node.attribute[0].name == "value":
            known[out0] = numpy_helper.to_array(node.attribute[0].t)
        if op == "SequenceConstruct":
            seqs[out0] = list(ins)
        elif op == "SequenceEmpty":
            seqs[out0] = []
        elif op == "SequenceInsert" and ins[0] in seqs:
            items = list(seqs[ins[0]])
            pos = scalar(ins[2]) if len(ins) > 2 and ins[2] else len(items)
            if pos is None:
                return model
            items.insert(pos if pos >= 0 else len(items) + pos + 1, ins[1])
            seqs[out0] = items
        elif op == "Slice" and ins[0] in seqs:
            lo, hi = scalar(ins[1]), scalar(ins[2])
            step = scalar(ins[4]) if len(ins) > 4 and ins[4] else 1
            if lo is None or hi is None or step is None:
                return model
            seqs[out0] = seqs[ins[0]][lo:hi:step]
        elif op == "SequenceLength" and ins[0] in seqs:
            kept.append(const_node(out0, np.array(len(seqs[ins[0]]), dtype=np.int64)))
        elif op == "SequenceAt" and ins[0] in seqs:
            pos = scalar(ins[1])
            if pos is None:
                return model
            alias[out0] = seqs[ins[0]][pos]
        elif op == "ConcatFromSequence" and ins[0] in seqs:
            attrs = {a.name: a.i for a in node.attribute}
            if attrs.get("new_axis", 0):
                return model
            kept.append(
                onnx.helper.make_node("Concat", seqs[ins[0]], [out0], name=node.name, axis=attrs["axis"])
            )
        elif any(i in seqs for i in ins):
            return model  # a sequence flows into an op we do not resolve
        elif op in ("Add", "Sub", "Mul") and all(scalar(i) is not None for i in ins):
            a, b = scalar(ins[0]), scalar(ins[1])
            value = {"Add": a + b, "Sub": a - b, "Mul": a * b}[op]  # type: ignore[operator]
            kept.append(const_node(out0, np.array(value, dtype=known[ins[0]].dtype)))
        else:
            del node.input[:]
            node.input.extend(ins)
            kept.append(node)
    if any(o.name in alias or o.name in seqs for o in model.graph.output):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


# Ops whose newer versions (18..21) only add element types or optional features that a graph
# can be checked for; anything else newer than CONVERT_OPSET must go through onnx's converter.
_TYPE_ONLY = {
    "Cast",
    "CastLike",
    "Constant",
    "ConstantOfShape",
    "Flatten",
    "Identity",
    "Reshape",
    "Shape",
    "Size",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
    "Equal",
    "DequantizeLinear",
    "QuantizeLinear",
    "ScatterND",
    "ScatterElements",
    "AveragePool",
    "If",
    "Loop",
    "Scan",
}


_REDUCE_AXES_AS_INPUT_18 = {
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
}


def downgrade_opset(model: onnx.ModelProto, target: int = CONVERT_OPSET) -> onnx.ModelProto:
    """Bring an opset 18-21 graph to ``target`` for onnx2torch. Tries onnx's version converter
    first; where it has no adapter (e.g. Pad-18), rewrites the nodes we know are equivalent and
    names the first one that is not."""
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as e:
        log.info("import.version_converter_failed error=%s; rewriting by hand", first_line(e))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = onnx_opset(m)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in m.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, max_inclusive_version=opset).since_version
        except Exception:
            continue
        if since <= target:
            continue
        attrs = {a.name: a for a in node.attribute}
        op = node.op_type
        if op in _TYPE_ONLY:
            continue
        if op == "Pad" and (len(node.input) < 4 or not node.input[3]) and _attr_s(attrs, "mode") != "wrap":
            continue
        if (
            op == "Resize"
            and _attr_i(attrs, "antialias") == 0
            and "axes" not in attrs
            and _attr_s(attrs, "keep_aspect_ratio_policy", "stretch") == "stretch"
        ):
            for a in ("antialias", "keep_aspect_ratio_policy"):
                if a in attrs:
                    node.attribute.remove(attrs[a])
            continue
        if op in _REDUCE_AXES_AS_INPUT_18 and _attr_i(attrs, "noop_with_empty_axes") == 0:
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in consts:
                    raise UnsupportedOpError(f"{op} (opset {opset}) with computed axes is not supported")
                axes = [int(a) for a in consts[node.input[1]].reshape(-1)]
                node.input.pop(1)
                node.attribute.append(helper_attr("axes", axes))
            if "noop_with_empty_axes" in attrs:
                node.attribute.remove(attrs["noop_with_empty_axes"])
            continue
        raise UnsupportedOpError(
            f"unsupported ONNX operator {op!r} at opset {opset} (version {since}); export at opset "
            f"{target} or lower, or without this operator"
        )
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    return m


def helper_attr(name: str, value: list[int]) -> onnx.AttributeProto:
    return onnx.helper.make_attribute(name, value)


def onnx_io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def interface_axes(model: onnx.ModelProto) -> dict[str, dict[int, str]]:
    """Symbolic axes of the graph's inputs and outputs (``dynamic_axes`` of torch.onnx.export).

    An output's symbolic non-batch axes are kept only when an input has some too (a fully
    convolutional model); otherwise they are the exporter's shape-inference leftovers on a
    fixed-size output (named ``batch`` at times), not part of the interface."""
    inits = {i.name for i in model.graph.initializer}
    ins = {vi.name: _symbolic_axes(vi) for vi in model.graph.input if vi.name not in inits}
    spatial = any(i > 0 for axes in ins.values() for i in axes)
    batch_names = {axes[0] for axes in ins.values() if 0 in axes}
    out = {name: axes for name, axes in ins.items() if axes}
    for vi in model.graph.output:
        axes = {
            i: (f"{vi.name}_{i}" if i > 0 and a in batch_names else a)
            for i, a in _symbolic_axes(vi).items()
            if i == 0 or spatial
        }
        if axes:
            out[vi.name] = axes
    return out


def _symbolic_axes(vi: onnx.ValueInfoProto) -> dict[int, str]:
    return {
        i: d.dim_param or f"{vi.name}_{i}"
        for i, d in enumerate(vi.type.tensor_type.shape.dim)
        if not (d.HasField("dim_value") and d.dim_value > 0)
    }


def _attr_i(attrs: dict[str, onnx.AttributeProto], name: str, default: int = 0) -> int:
    return int(attrs[name].i) if name in attrs else default


def _attr_s(attrs: dict[str, onnx.AttributeProto], name: str, default: str = "") -> str:
    return attrs[name].s.decode() if name in attrs else default
