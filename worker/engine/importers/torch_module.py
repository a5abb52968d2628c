"""ONNX graph -> trainable torch module (onnxslim, onnx2torch, our fx passes), and the parity check
against ONNX Runtime on the original graph that every import must pass; fixed-batch graphs get a
symbolic batch or run one sample at a time (batching.py)."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import torch
from torch import fx, nn

from worker.engine.importers.graph import (
    CONVERT_OPSET,
    _allowzero_off,
    downgrade_opset,
    onnx_opset,
    resolve_static_sequences,
)
from worker.errors import (
    ConversionError,
    MissingInputSpecError,
    UnsupportedOpError,
    first_line,
)
from worker.spec import InputSpec

log = logging.getLogger(__name__)


PARITY_TOLERANCE = 1e-4


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


def _mismatch(diff: float) -> ConversionError:
    return ConversionError(
        f"converted model differs from the original by {diff:.3g} (tolerance {PARITY_TOLERANCE}); "
        "an operator is not converted faithfully"
    )
