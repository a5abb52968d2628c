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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import fx

from worker import model_checks
from worker.engine.importers.graph import (
    CONVERT_OPSET,
    GRAPH_IR_VERSION,
    downgrade_opset,
    dynamic_spatial_inputs,
    graph_inputs,
    interface_axes,
    load_onnx,
    merge_inputs,
    onnx_io_names,
    onnx_opset,
    resolve_static_sequences,
)
from worker.engine.importers.torch_module import (
    PARITY_TOLERANCE,
    _checked_parity,
    _convert_checked,
    _describe,
    parity,
    to_torch,
)
from worker.engine.registry import Registry
from worker.errors import (
    ConversionError,
    MissingInputSpecError,
    UnsupportedOpError,
    first_line,
)
from worker.spec import InputSpec, ModelFormat

log = logging.getLogger(__name__)


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


def check_inputs(imported: ImportedModel, inputs: dict[str, InputSpec] | None = None) -> float:
    """Parity of the imported module at ``inputs`` (default: ``imported.inputs``), e.g. once image
    inputs with symbolic height/width took the calibration images' size. Raises
    ``MissingInputSpecError`` when the original does not run at that size (one line, with ONNX
    Runtime's reason), ``ConversionError`` when only the converted module fails or differs."""
    return _checked_parity(imported.module, imported.onnx_model, inputs or imported.inputs)


@dataclass
class ReadGraph:
    """What a format's reader gives the rest of the import: the model as an ONNX graph."""

    model: onnx.ModelProto
    inputs: dict[str, InputSpec]
    notes: list[str] = field(default_factory=list)
    isolation: dict[str, object] | None = None  # TorchScript: how the converter was isolated


ReadFn = Callable[[Path, "dict[str, InputSpec] | None", "float | None"], ReadGraph]
READERS: Registry[ModelFormat, ReadFn] = Registry("importer", ModelFormat, UnsupportedOpError)


@READERS.register(ModelFormat.ONNX)
def _read_onnx(path: Path, user_inputs: dict[str, InputSpec] | None, timeout: float | None) -> ReadGraph:
    model = load_onnx(path)  # decoded and checked once, by the API's rules
    return ReadGraph(model, merge_inputs(graph_inputs(model), user_inputs))


@READERS.register(ModelFormat.TORCHSCRIPT)
def _read_torchscript(
    path: Path, user_inputs: dict[str, InputSpec] | None, timeout: float | None
) -> ReadGraph:
    model_checks.check_torchscript(path)
    inputs = merge_inputs(None, user_inputs)
    model, isolation = torchscript_to_onnx(path, inputs, timeout=timeout)
    notes = [
        "TorchScript was exported to ONNX (opset 17, TorchScript exporter) in the converter sandbox "
        f"({isolation['converter']}) before conversion."
    ]
    if not isolation["isolated"]:
        notes.append(f"Not isolated: {isolation['detail']}.")
    return ReadGraph(model, inputs, notes, isolation)


def import_model(
    path: Path,
    user_inputs: dict[str, InputSpec] | None,
    log_fn: Callable[[str], None] | None = None,
    convert_timeout: float | None = None,
) -> ImportedModel:
    """Load ``path`` (either format) as a trainable module that matches the original.
    ``convert_timeout``: wall clock of the TorchScript converter (a model that never returns)."""
    from worker.engine.batching import fixed_batch

    fmt = ModelFormat.TORCHSCRIPT if model_checks.is_zip(path) else ModelFormat.ONNX
    read = READERS.get(fmt)(path, user_inputs, convert_timeout)
    model, inputs, notes, isolation = read.model, read.inputs, read.notes, read.isolation
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
        isolation=isolation,
    )


__all__ = [
    "CONVERT_OPSET",
    "GRAPH_IR_VERSION",
    "PARITY_TOLERANCE",
    "PROBE_SIDES",
    "READERS",
    "ImportedModel",
    "ReadGraph",
    "check_inputs",
    "downgrade_opset",
    "dynamic_spatial_inputs",
    "graph_inputs",
    "import_model",
    "interface_axes",
    "load_onnx",
    "merge_inputs",
    "onnx_io_names",
    "onnx_opset",
    "parity",
    "probe_spatial_size",
    "resolve_static_sequences",
    "sniff_format",
    "to_torch",
    "torchscript_to_onnx",
]
