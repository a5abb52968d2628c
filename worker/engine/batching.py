"""The batch axis of an uploaded ONNX graph: fixed-batch exports -> a symbolic batch axis.

Most ONNX files are exported without ``dynamic_axes``: every input and output has batch 1
baked in, and so do the shape constants of their Reshape nodes (``x.view(x.size(0), -1)``
becomes ``Reshape(x, [1, -1])``). The engine runs batches of 2 and more, so
``make_batch_symbolic`` rewrites such a graph: inputs and outputs get a ``batch`` dim_param and
Reshape constants whose first entry is the baked batch on a tensor whose first axis *is* the
batch (known from shape inference) copy it instead (``0``). Whether that made the graph
batch-general is not assumed: ``batched_matches_per_sample`` checks it with ONNX Runtime, and
the importer checks the converted module at batch 2 against the original run sample by sample.
Where no rewrite works, ``per_sample_module`` runs the converted module one sample at a time.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from worker.errors import first_line

log = logging.getLogger(__name__)

BATCH_PARAM = "batch"
MAX_PASSES = 8  # each pass fixes the Reshapes whose input batch axis is known after the last one


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size baked into the first axis of every graph input, or None when any input's
    first axis is symbolic (or the inputs disagree)."""
    inits = {i.name for i in model.graph.initializer}
    sizes: set[int] = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
            return None
        sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def _set_batch_dim(vi: onnx.ValueInfoProto, batch: int) -> bool:
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return False
    d0 = dims[0]
    if d0.HasField("dim_value") and d0.dim_value != batch:
        return False
    d0.Clear()
    d0.dim_param = BATCH_PARAM
    return True


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _first_dims(model: onnx.ModelProto) -> dict[str, str | int | None]:
    """Inferred first-axis size of every value: an int, a dim_param, or None when unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        log.info("batching.shape_inference_failed error=%s", first_line(e))
        return {}
    out: dict[str, str | int | None] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        d0 = dims[0]
        out[vi.name] = d0.dim_value if d0.HasField("dim_value") else (d0.dim_param or None)
    return out


def _reshape_fix(node: onnx.NodeProto, value: np.ndarray, batch: int) -> np.ndarray | None:
    """The shape constant with the baked batch replaced by ``0`` (copy the input's first axis),
    or by ``-1`` under ``allowzero=1``; None when this Reshape does not bake the batch."""
    if value.ndim != 1 or value.size == 0 or int(value[0]) != batch:
        return None
    allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
    new = value.copy()
    if not allowzero:
        new[0] = 0
    elif -1 not in value.tolist():
        new[0] = -1
    else:
        return None
    return new


def _fix_reshapes(model: onnx.ModelProto, batch: int) -> int:
    """One pass: rewrite the Reshapes whose data input is known to carry the batch axis."""
    consts = _constants(model)
    first = _first_dims(model)
    n = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if first.get(node.input[0]) != BATCH_PARAM:
            continue
        new = _reshape_fix(node, consts[node.input[1]], batch)
        if new is None:
            continue
        name = f"{node.input[1]}__batch_{n}_{node.name or node.output[0]}"
        model.graph.initializer.append(numpy_helper.from_array(new.astype(np.int64), name))
        node.input[1] = name
        n += 1
    return n


def make_batch_symbolic(model: onnx.ModelProto, batch: int) -> onnx.ModelProto | None:
    """A copy of a fixed-batch graph with a symbolic batch axis (see the module docstring), or
    None when an input or output does not lead with the batch axis."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in [*(i for i in m.graph.input if i.name not in inits), *m.graph.output]:
        if not _set_batch_dim(vi, batch):
            log.info("batching.not_batch_first value=%s", vi.name)
            return None
    # inferred with the baked batch: dropped and re-inferred, except for outputs of custom ops
    # (modconv.py), which shape inference cannot see through
    custom = {o for n in m.graph.node if n.domain not in ("", "ai.onnx") for o in n.output}
    kept = [vi for vi in m.graph.value_info if vi.name in custom and _set_batch_dim(vi, batch)]
    del m.graph.value_info[:]
    m.graph.value_info.extend(kept)
    total = 0
    for _ in range(MAX_PASSES):
        n = _fix_reshapes(m, batch)
        total += n
        if not n:
            break
    log.info("batching.symbolic reshapes_fixed=%d", total)
    return m


def batched_matches_per_sample(
    candidate: onnx.ModelProto,
    original: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    tolerance: float,
) -> float | None:
    """Max abs diff between ``candidate`` run on the whole batch and ``original`` run one sample
    at a time; None when the candidate does not run at this batch."""
    from worker.engine.export import ort_run

    try:
        got = ort_run(candidate, feeds)
    except Exception as e:
        log.info("batching.candidate_failed error=%s", first_line(e))
        return None
    ref = ort_run(original, feeds)  # a fixed-batch graph runs sample by sample
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref, strict=True)):
        return None
    diff = float(max(np.abs(g - r).max() for g, r in zip(got, ref, strict=True)))
    scale = max(1.0, *(float(np.abs(r).max()) for r in ref))
    return diff if diff <= tolerance * scale else None


class PerSample(nn.Module):
    """Runs a module that only takes a batch of 1 on each sample and concatenates the outputs:
    the last resort for graphs whose batch of 1 cannot be made symbolic."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n = args[0].shape[0]
        if n == 1:
            return self.inner(*args)
        return torch.cat([self.inner(*(a[i : i + 1] for a in args)) for i in range(n)], dim=0)


def per_sample_module(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` wrapped as the single layer ``body`` (a ``PerSample``) of a new GraphModule with the
    same inputs, so later stages still get an fx module whose layers Torch-Pruning can reach."""
    graph = fx.Graph()
    args = [graph.placeholder(str(n.target)) for n in gm.graph.nodes if n.op == "placeholder"]
    graph.output(graph.call_module("body", tuple(args)))
    root = nn.Module()
    root.body = PerSample(gm)
    return fx.GraphModule(root, graph)
