"""Uploaded model (TorchScript or ONNX) -> a trainable, prunable eager torch module.

Route (DESIGN §5): a ``torch.jit.load``-ed module cannot be pruned (Torch-Pruning finds nothing in
it and says nothing), so every upload goes through ONNX:

    TorchScript --torch.onnx.export(dynamo=False)--> ONNX --onnxslim--> --onnx2torch--> fx.GraphModule

followed by our own fx passes that turn onnx2torch's functional leftovers into real layers
(``PRelu`` with a constant slope -> ``nn.PReLU``) so that they can be pruned and trained.
The converted module is checked against ONNX Runtime on the original graph (max abs diff, at
batch 2; image inputs with symbolic height/width at a size the model runs at, not 1x1).

Models as people export them: a graph with a fixed batch of 1 gets a symbolic batch axis for
training (batching.py; where that is impossible it runs one sample at a time) and the student
keeps the fixed batch; StyleGAN2's fused modulated convs (``groups = batch``) become per-sample
``BatchedConv2d`` layers (modconv.py). ``ImportedModel.fixed_batch`` / ``dynamic_axes`` record
the upload's interface for the export.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from torch import fx, nn

from worker import model_checks
from worker.errors import (
    ConversionError,
    MissingInputSpecError,
    UnsupportedOpError,
    first_line,
)
from worker.spec import Distribution, InputSpec, ModelFormat, default_distribution

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
GRAPH_IR_VERSION = 10  # the IR version of the opset 21 release: enough for every supported graph
# onnx2torch knows these opsets best; newer graphs are converted down first (DESIGN §5).
CONVERT_OPSET = 17

_ONNX_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
}


@dataclass
class ImportedModel:
    """A converted model with everything later stages need."""

    module: fx.GraphModule  # eval mode, float32, CPU
    onnx_model: onnx.ModelProto  # the teacher graph as uploaded (or as exported from TorchScript)
    format: ModelFormat
    inputs: dict[str, InputSpec]  # merged: read from the graph, overridden by the user's spec
    input_names: list[str]
    output_names: list[str]
    parity_max_abs_diff: float
    notes: list[str] = field(default_factory=list)
    # the batch baked into the upload's inputs (exported without a dynamic batch axis), else None;
    # the student is exported with the same fixed batch (export_student's ``fixed_batch``)
    fixed_batch: int | None = None
    # symbolic axes of the upload's inputs and outputs, as torch.onnx.export's ``dynamic_axes``
    # (batch, and height/width of fully convolutional image models); export_student's ``dynamic_axes``
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # how the TorchScript converter was isolated (convert.isolation()); None for ONNX uploads,
    # whose import runs no code of the model
    isolation: dict[str, object] | None = None


def sniff_format(path: Path) -> ModelFormat:
    """Decide the format from content, not from the file name (the API's rules: model_checks)."""
    return model_checks.detect_format(path)


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


def torchscript_to_onnx(
    path: Path, inputs: dict[str, InputSpec], opset: int = CONVERT_OPSET, timeout: float | None = None
) -> tuple[onnx.ModelProto, dict[str, object]]:
    """Export a TorchScript archive to ONNX in the converter sandbox (convert.py: the uploaded code
    runs there and nowhere else). Returns the graph and how the converter was isolated."""
    from worker.engine.convert import TIMEOUT_SECONDS
    from worker.engine.convert import torchscript_to_onnx as convert

    specs = {k: v.model_dump(mode="json") for k, v in inputs.items()}
    data, isolation = convert(path, specs, opset, timeout=timeout or TIMEOUT_SECONDS)
    try:
        return onnx.load_from_string(data), isolation
    except Exception as e:
        raise ConversionError(
            f"the TorchScript export did not produce a readable ONNX graph: {first_line(e)}"
        ) from e


def to_torch(model: onnx.ModelProto) -> fx.GraphModule:
    """onnxslim -> (opset down-conversion) -> onnx2torch -> our fx passes. Raises UnsupportedOpError
    naming the op when a converter is missing, ConversionError when a known op fails to convert."""
    import onnx2torch
    import onnxslim

    model = _allowzero_off(resolve_static_sequences(model))
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # slim is an optimisation; an unslimmable graph is still convertible
        log.warning("import.slim_failed error=%s", first_line(e))
        slim = model
    if onnx_opset(slim) > CONVERT_OPSET:
        slim = downgrade_opset(slim)
    from worker.engine.modconv import register_converters, weights_to_parameters

    register_converters()
    try:
        gm = onnx2torch.convert(slim, save_input_names=True)
    except NotImplementedError as e:
        m = re.search(r"operation_type='([^']+)'", str(e))
        op = m.group(1) if m else first_line(e)
        raise UnsupportedOpError(f"unsupported ONNX operator {op!r}: {first_line(e)}") from e
    except Exception as e:
        raise ConversionError(f"ONNX graph could not be converted to torch: {_describe(e)}") from e
    gm = gm.float().eval()
    weights_to_parameters(gm)
    _prelu_to_module(gm)
    from worker.engine.rewrite import (
        channel_constants_to_layers,
        demodulation_to_layers,
        drop_identity_slices,
        reshape_infers_channels,
    )

    drop_identity_slices(gm)
    demodulation_to_layers(gm)
    channel_constants_to_layers(gm)
    reshape_infers_channels(gm)
    return gm


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


def _attr_i(attrs: dict[str, onnx.AttributeProto], name: str, default: int = 0) -> int:
    return int(attrs[name].i) if name in attrs else default


def _attr_s(attrs: dict[str, onnx.AttributeProto], name: str, default: str = "") -> str:
    return attrs[name].s.decode() if name in attrs else default


def _const_of(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    if node.op != "get_attr":
        return None
    obj: object = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


def _prelu_to_module(gm: fx.GraphModule) -> None:
    """onnx2torch keeps PReLU slopes as constant inputs (not trainable, not prunable): make them
    ``nn.PReLU`` layers so Torch-Pruning couples their slopes with the producing conv."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(str(node.target))).__name__ != "OnnxPReLU":
            continue
        if len(node.args) != 2 or not isinstance(node.args[1], fx.Node):
            continue
        slope = _const_of(gm, node.args[1])
        if slope is None:
            continue
        prelu = nn.PReLU(num_parameters=slope.numel())
        with torch.no_grad():
            prelu.weight.copy_(slope.reshape(-1))
        gm.add_submodule(str(node.target), prelu)  # replaces the OnnxPReLU under the same name
        node.args = (node.args[0],)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()


def onnx_io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def parity(gm: nn.Module, model: onnx.ModelProto, inputs: dict[str, InputSpec], seed: int = 0) -> float:
    """Max abs diff between the torch module and ONNX Runtime on the same (batch-2) inputs (a
    fixed-batch graph runs sample by sample). ``MissingInputSpecError`` when the original graph
    does not run on these inputs, ``ConversionError`` when only the converted module fails."""
    from worker.engine.export import ort_run
    from worker.engine.sampling import example_batch

    batch = example_batch(inputs, batch=2, seed=seed)
    try:
        ref = ort_run(model, {k: v.numpy() for k, v in batch.items()})
    except Exception as e:
        raise MissingInputSpecError(
            f"the model does not run on inputs {_shapes(batch)} in ONNX Runtime: {_describe(e)}; "
            "give the input shapes in the input spec"
        ) from e
    try:
        with torch.no_grad():
            out = gm(*batch.values())
    except Exception as e:
        raise ConversionError(
            f"the converted model fails on inputs {_shapes(batch)} where the original runs: {_describe(e)}"
        ) from e
    outs = out if isinstance(out, list | tuple) else [out]
    if len(ref) != len(outs):
        raise ConversionError(f"converted model has {len(outs)} outputs, the graph has {len(ref)}")
    for o, r in zip(outs, ref, strict=True):
        if tuple(o.shape) != r.shape:
            raise ConversionError(
                f"the converted model's output has shape {list(o.shape)}, the original's {list(r.shape)}"
            )
    return float(max(np.abs(o.detach().numpy() - r).max() for o, r in zip(outs, ref, strict=True)))


def _shapes(batch: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in batch.items())


def _describe(e: BaseException) -> str:
    """One line for an exception from ONNX Runtime, torch or onnx2torch: its first line without
    ONNX Runtime's bracketed prefix, or the type and missing name for a KeyError."""
    if type(e) is KeyError and e.args and " " not in str(e.args[0]):
        return f"value {e.args[0]!r} is computed where the converter needs a constant"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(e))
    return text.rstrip(" :") or type(e).__name__


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


PROBE_SIDES = (64, 128, 256, 32, 16)  # image side for symbolic H/W: the first ONNX Runtime runs


def probe_spatial_size(
    model: onnx.ModelProto, inputs: dict[str, InputSpec], user: dict[str, InputSpec] | None
) -> dict[str, InputSpec]:
    """Image inputs with symbolic height/width (and no shape from the user) get a size the model
    runs at, instead of 1x1: the first of ``PROBE_SIDES`` that ONNX Runtime accepts."""
    from worker.engine.export import ort_run
    from worker.engine.sampling import example_batch

    dims = {vi.name: vi.type.tensor_type.shape.dim for vi in model.graph.input}
    dyn = {n for n in dynamic_spatial_inputs(model) if n in inputs and n not in (user or {})}
    if not dyn:
        return inputs
    errors: list[str] = []
    for side in PROBE_SIDES:
        trial = dict(inputs)
        for n in dyn:
            hw = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else side for d in dims[n][2:]]
            trial[n] = inputs[n].model_copy(update={"shape": [*inputs[n].shape[:2], *hw]})
        try:
            ort_run(model, {k: v.numpy() for k, v in example_batch(trial, batch=1, seed=0).items()})
        except Exception as e:
            errors.append(f"{side}: {_describe(e)}")
            continue
        log.info("import.probe_size inputs=%s side=%d", sorted(dyn), side)
        return trial
    raise MissingInputSpecError(
        f"the model runs at none of the image sizes {list(PROBE_SIDES)} (e.g. {errors[0]}); "
        f'give the input shape in the input spec, e.g. {{"{sorted(dyn)[0]}": {{"shape": [1, C, H, W]}}}}'
    )


def _convert_checked(
    model: onnx.ModelProto, inputs: dict[str, InputSpec], batch: int | None
) -> tuple[fx.GraphModule, float, list[str]]:
    """Convert ``model`` (fused modulated convs first, modconv.py) and check it against ONNX
    Runtime at batch 2. A fixed-batch graph is converted with a symbolic batch axis
    (batching.py); where that fails it is run one sample at a time (``per_sample_module``)."""
    from worker.engine.modconv import fuse_batched_convs

    fused, n_fused = fuse_batched_convs(model)
    if batch is None:
        gm = to_torch(fused)
        return gm, _checked_parity(gm, model, inputs), []
    converted = _convert_with_symbolic_batch(model, fused, n_fused, inputs, batch)
    if not isinstance(converted, str):
        return (*converted, [f"The graph's fixed batch of {batch} was made symbolic for compression."])
    why = converted
    from worker.engine.batching import per_sample_module

    gm = per_sample_module(to_torch(fused))
    diff = _checked_parity(gm, model, inputs)
    log.info("import.per_sample batch=%d reason=%s", batch, why)
    note = (
        f"The graph bakes its batch of {batch} into its shapes ({why}): the model runs one sample "
        "at a time during compression."
    )
    return gm, diff, [note]


def _convert_with_symbolic_batch(
    model: onnx.ModelProto,
    fused: onnx.ModelProto,
    n_fused: int,
    inputs: dict[str, InputSpec],
    batch: int,
) -> tuple[fx.GraphModule, float] | str:
    """The module converted with a symbolic batch axis and its parity, or why there is none."""
    from worker.engine.batching import batched_matches_per_sample, make_batch_symbolic
    from worker.engine.sampling import example_batch

    sym = make_batch_symbolic(fused, batch)
    if sym is None:
        return "an input or output does not lead with the batch axis"
    if not n_fused:  # plain ONNX: check the rewrite in ONNX Runtime before converting it
        feeds = {k: v.numpy() for k, v in example_batch(inputs, batch=2, seed=0).items()}
        if batched_matches_per_sample(sym, model, feeds, PARITY_TOLERANCE) is None:
            return "ONNX Runtime cannot run it at batch 2 with a symbolic batch axis"
    gm = to_torch(sym)
    try:
        diff = parity(gm, model, inputs)
    except ConversionError as e:
        return e.detail
    return (gm, diff) if diff <= PARITY_TOLERANCE else f"differs by {diff:.3g} at batch 2"


def _checked_parity(gm: nn.Module, model: onnx.ModelProto, inputs: dict[str, InputSpec]) -> float:
    diff = parity(gm, model, inputs)
    if not diff <= PARITY_TOLERANCE:
        raise _mismatch(diff)
    return diff


def check_inputs(imported: ImportedModel, inputs: dict[str, InputSpec] | None = None) -> float:
    """Parity of the imported module at ``inputs`` (default: ``imported.inputs``), e.g. once image
    inputs with symbolic height/width took the calibration images' size. Raises
    ``MissingInputSpecError`` when the original does not run at that size (one line, with ONNX
    Runtime's reason), ``ConversionError`` when only the converted module fails or differs."""
    return _checked_parity(imported.module, imported.onnx_model, inputs or imported.inputs)


def _mismatch(diff: float) -> ConversionError:
    return ConversionError(
        f"converted model differs from the original by {diff:.3g} (tolerance {PARITY_TOLERANCE}); "
        "an operator is not converted faithfully"
    )


def import_model(
    path: Path,
    user_inputs: dict[str, InputSpec] | None,
    log_fn: Callable[[str], None] | None = None,
    convert_timeout: float | None = None,
) -> ImportedModel:
    """Load ``path`` (either format) as a trainable module that matches the original.
    ``convert_timeout``: wall clock of the TorchScript converter (a model that never returns)."""
    from worker.engine.batching import fixed_batch

    notes: list[str] = []
    isolation: dict[str, object] | None = None
    onnx_model = None if model_checks.is_zip(path) else load_onnx(path)  # decoded and checked once
    fmt = ModelFormat.ONNX if onnx_model is not None else sniff_format(path)
    if fmt == ModelFormat.TORCHSCRIPT:
        inputs = merge_inputs(None, user_inputs)
        model, isolation = torchscript_to_onnx(path, inputs, timeout=convert_timeout)
        notes.append(
            "TorchScript was exported to ONNX (opset 17, TorchScript exporter) in the converter sandbox "
            f"({isolation['converter']}) before conversion."
        )
        if not isolation["isolated"]:
            notes.append(f"Not isolated: {isolation['detail']}.")
    else:
        model = onnx_model
        inputs = merge_inputs(graph_inputs(model), user_inputs)  # type: ignore[arg-type]
    model = resolve_static_sequences(model)
    input_names, output_names = onnx_io_names(model)
    if list(inputs) != input_names:
        inputs = {n: inputs[n] for n in input_names if n in inputs} or inputs
    if len(output_names) != 1:
        raise UnsupportedOpError(
            f"generators with one output are supported; this one has {len(output_names)}"
        )
    inputs = probe_spatial_size(model, inputs, user_inputs)
    batch = fixed_batch(model)
    gm, diff, batch_notes = _convert_checked(model, inputs, batch)
    notes += batch_notes
    if batch is not None and fmt == ModelFormat.TORCHSCRIPT:
        notes.append(f"It exports only with a fixed batch of {batch}; the compressed model keeps it.")
    log.info("import.done format=%s inputs=%s parity=%.3g fixed_batch=%s", fmt, list(inputs), diff, batch)
    return ImportedModel(
        gm,
        model,
        fmt,
        inputs,
        list(inputs),
        output_names,
        diff,
        notes,
        fixed_batch=batch,
        dynamic_axes=interface_axes(model),
        isolation=isolation if fmt == ModelFormat.TORCHSCRIPT else None,
    )
