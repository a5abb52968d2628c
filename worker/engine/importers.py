"""Uploaded model (TorchScript or ONNX) -> a trainable, prunable eager torch module.

Route (DESIGN §5): a ``torch.jit.load``-ed module cannot be pruned (Torch-Pruning finds nothing in
it and says nothing), so every upload goes through ONNX:

    TorchScript --torch.onnx.export(dynamo=False)--> ONNX --onnxslim--> --onnx2torch--> fx.GraphModule

followed by our own fx passes that turn onnx2torch's functional leftovers into real layers
(``PRelu`` with a constant slope -> ``nn.PReLU``) so that they can be pruned and trained.
The converted module is checked against ONNX Runtime on the original graph (max abs diff).
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from torch import fx, nn

from worker.errors import (
    CorruptModelError,
    MissingInputSpecError,
    UnsupportedFormatError,
    UnsupportedOpError,
    first_line,
)
from worker.spec import Distribution, InputSpec, ModelFormat, default_distribution

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
MIN_OPSET, MAX_OPSET = 13, 21
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


def sniff_format(path: Path) -> ModelFormat:
    """Decide the format from content, not from the file name."""
    with path.open("rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return ModelFormat.TORCHSCRIPT
    if not head:
        raise CorruptModelError(f"{path.name}: the file is empty")
    try:
        onnx.load_model(str(path), load_external_data=False)
    except Exception as e:
        with path.open("rb") as f:
            start = f.read(512)
        if start[:1] == b"\x08" and any(tag in start for tag in (b"pytorch", b"onnx", b"ai.onnx", b"opset")):
            raise CorruptModelError(
                f"{path.name}: starts like an ONNX model but cannot be parsed: truncated or damaged ({type(e).__name__})"
            ) from e
        raise UnsupportedFormatError(
            f"{path.name}: neither a TorchScript archive (zip) nor an ONNX protobuf ({type(e).__name__})"
        ) from e
    return ModelFormat.ONNX


def load_onnx(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file; refuse external data (it can point anywhere on disk)."""
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:
        raise CorruptModelError(f"{path.name}: not a readable ONNX model: {e}") from e
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            raise CorruptModelError(
                f"{path.name}: initializer {init.name!r} uses external data; upload a single-file model"
            )
    if not model.graph.output:
        raise CorruptModelError(f"{path.name}: the graph has no outputs")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise CorruptModelError(f"{path.name}: ONNX checker: {str(e).splitlines()[0]}") from e
    opset = onnx_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedOpError(
            f"opset {opset} is not supported; supported opsets: {MIN_OPSET} to {MAX_OPSET}"
        )
    return model


def onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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
    path: Path, inputs: dict[str, InputSpec], opset: int = CONVERT_OPSET
) -> onnx.ModelProto:
    """Load a TorchScript archive (inside the sandbox only) and export it to ONNX."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise CorruptModelError(f"{path.name}: TorchScript archive member {bad!r} is corrupt")
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    except CorruptModelError:
        raise
    except Exception as e:
        raise CorruptModelError(f"{path.name}: not a loadable TorchScript archive: {first_line(e)}") from e
    from worker.engine.sampling import example_batch

    args = tuple(example_batch(inputs, batch=2, seed=0).values())
    names = list(inputs)
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            ts(*args)
            torch.onnx.export(
                ts,
                args,
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=["output"],
                dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
            )
    except Exception as e:
        raise UnsupportedOpError(f"TorchScript model could not be traced to ONNX: {first_line(e)}") from e
    return onnx.load_from_string(buf.getvalue())


def to_torch(model: onnx.ModelProto) -> fx.GraphModule:
    """onnxslim -> (opset down-conversion) -> onnx2torch -> our fx passes. Raises UnsupportedOpError
    naming the op when a converter is missing."""
    import onnx2torch
    import onnxslim

    model = resolve_static_sequences(model)
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # slim is an optimisation; an unslimmable graph is still convertible
        log.warning("import.slim_failed error=%s", first_line(e))
        slim = model
    if onnx_opset(slim) > CONVERT_OPSET:
        slim = downgrade_opset(slim)
    try:
        gm = onnx2torch.convert(slim, save_input_names=True)
    except NotImplementedError as e:
        m = re.search(r"operation_type='([^']+)'", str(e))
        op = m.group(1) if m else first_line(e)
        raise UnsupportedOpError(f"unsupported ONNX operator {op!r}: {first_line(e)}") from e
    except Exception as e:
        raise UnsupportedOpError(f"ONNX graph could not be converted to torch: {first_line(e)}") from e
    gm = gm.float().eval()
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
    """Max abs diff between the torch module and ONNX Runtime on the same (batch-2) inputs."""
    from worker.engine.sampling import example_batch

    batch = example_batch(inputs, batch=2, seed=seed)
    with torch.no_grad():
        out = gm(*batch.values())
    outs = out if isinstance(out, list | tuple) else [out]
    from worker.engine.export import ort_run

    ref = ort_run(model, {k: v.numpy() for k, v in batch.items()})
    if len(ref) != len(outs):
        raise UnsupportedOpError(f"converted model has {len(outs)} outputs, the graph has {len(ref)}")
    return float(max(np.abs(o.detach().numpy() - r).max() for o, r in zip(outs, ref, strict=True)))


def import_model(
    path: Path, user_inputs: dict[str, InputSpec] | None, log_fn: Callable[[str], None] | None = None
) -> ImportedModel:
    """Load ``path`` (either format) as a trainable module that matches the original."""
    fmt = sniff_format(path)
    notes: list[str] = []
    if fmt == ModelFormat.TORCHSCRIPT:
        inputs = merge_inputs(None, user_inputs)
        model = torchscript_to_onnx(path, inputs)
        notes.append("TorchScript was exported to ONNX (opset 17, TorchScript exporter) before conversion.")
    else:
        model = load_onnx(path)
        inputs = merge_inputs(graph_inputs(model), user_inputs)  # type: ignore[arg-type]
    model = resolve_static_sequences(model)
    input_names, output_names = onnx_io_names(model)
    if list(inputs) != input_names:
        inputs = {n: inputs[n] for n in input_names if n in inputs} or inputs
    if len(output_names) != 1:
        raise UnsupportedOpError(
            f"generators with one output are supported; this one has {len(output_names)}"
        )
    gm = to_torch(model)
    try:
        diff = parity(gm, model, inputs)
    except (UnsupportedOpError, MissingInputSpecError):
        raise
    except Exception as e:
        raise UnsupportedOpError(f"converted model does not run on the given inputs: {first_line(e)}") from e
    if not diff <= PARITY_TOLERANCE:
        raise UnsupportedOpError(
            f"converted model differs from the original by {diff:.3g} (tolerance {PARITY_TOLERANCE}); "
            "an operator is not converted faithfully"
        )
    log.info("import.done format=%s inputs=%s parity=%.3g", fmt, list(inputs), diff)
    return ImportedModel(gm, model, fmt, inputs, list(inputs), output_names, diff, notes)
