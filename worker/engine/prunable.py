"""What can be channel-pruned, and why a layer is left whole (see ``worker.engine.prune``).

- layers that produce the model output keep their output channels (the image has C channels);
- layers feeding a reshape/flatten/PixelShuffle (DepthToSpace) keep theirs: the channel index is
  mixed with space or features there, so per-channel removal would scramble the output;
- every remaining layer is *probed*: one channel is removed in a copy and the copy must still run
  with the same output shape; a layer whose pruning breaks the graph (e.g. a weight shared with a
  modulation/demodulation path) is left whole with the error as the reason.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import fx, nn

from worker.engine.rewrite import CUSTOM_PRUNERS

log = logging.getLogger(__name__)

PRUNABLE = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
SHUFFLE_REASON = "feeds a PixelShuffle/DepthToSpace (channels become space)"
RESHAPE_REASON = "feeds a reshape (channels become features or space)"
BLOCK_REASONS = (SHUFFLE_REASON, RESHAPE_REASON)
# onnx2torch modules where the channel axis is mixed with space or features.
CHANNEL_MIXERS = {
    "OnnxReshape": RESHAPE_REASON,
    "OnnxFlatten": "feeds a flatten",
    "OnnxDepthToSpace": SHUFFLE_REASON,
    "OnnxSpaceToDepth": "feeds a SpaceToDepth",
    "OnnxTranspose": "feeds a transpose",
    "OnnxGather": "feeds a gather",
    "OnnxSlice": "feeds a slice",
    "OnnxSplit": "feeds a split",
    "OnnxSplit13": "feeds a split",
    "OnnxEinsum": "feeds an einsum",
    "OnnxMatMul": "feeds a matmul",
}


def channels_out(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    return int(m.out_channels)  # type: ignore[arg-type]


def channels_in(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features
    return int(m.in_channels)  # type: ignore[arg-type]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def _module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _producers(gm: fx.GraphModule, start: Iterable[fx.Node]) -> set[str]:
    """Prunable layers whose output channels reach ``start`` without passing another prunable
    layer (walks back through activations, norms, adds, pads...)."""
    found: set[str] = set()
    seen: set[fx.Node] = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        mod = _module_of(gm, node)
        if isinstance(mod, PRUNABLE):
            found.add(str(node.target))
            continue
        if node.op in ("placeholder", "get_attr"):
            continue
        todo.extend(a for a in node.all_input_nodes)
    return found


def static_exclusions(gm: fx.GraphModule, ignore: list[str]) -> dict[str, str]:
    """Layer name -> why its output channels are kept whole."""
    reasons: dict[str, str] = {}
    layers = prunable_layers(gm)
    for name in layers:  # first: a user's pattern wins over a structural reason (block sites too)
        if any(fnmatch.fnmatch(name, pat) for pat in ignore):
            reasons[name] = "matches an ignore pattern of the spec"
    # second: output producers, before any block-site reason (a PixelShuffle whose result is the
    # output, e.g. SR models that add an upsampled copy of the input, must keep its channels)
    for node in gm.graph.nodes:
        if node.op == "output":
            for name in _producers(gm, node.all_input_nodes):
                reasons.setdefault(name, "produces the model output (its channels are the output's)")
    for node in gm.graph.nodes:
        mod = _module_of(gm, node)
        if mod is not None and type(mod).__name__ in CHANNEL_MIXERS:
            why = CHANNEL_MIXERS[type(mod).__name__]
            for name in _producers(gm, node.all_input_nodes[:1]):
                reasons.setdefault(name, why)
        elif node.op == "call_function" and getattr(node.target, "__name__", "") in (
            "reshape",
            "view",
            "flatten",
            "pixel_shuffle",
            "permute",
            "transpose",
        ):
            for name in _producers(gm, node.all_input_nodes[:1]):
                reasons.setdefault(name, f"feeds {node.target.__name__}")  # type: ignore[union-attr]
    return reasons


def _out_pruning_fn(m: nn.Module) -> Callable[..., object]:
    if isinstance(m, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return tp.prune_conv_out_channels
    return tp.prune_conv_out_channels


def _run(model: nn.Module, example: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*example.values())
    return out[0] if isinstance(out, list | tuple) else out


def copy_with_graph(model: nn.Module, dg: tp.DependencyGraph) -> tuple[nn.Module, tp.DependencyGraph]:
    """A deep copy of ``model`` with its dependency graph, the graph pointing at the copy's layers.
    Building a graph traces the model (seconds on a large one); copying it is cheap. The pruning
    functions, autograd nodes and the ops module are shared, not copied."""
    memo: dict[int, object] = {id(dg.ops): dg.ops}
    for node in dg.module2node.values():
        memo[id(node.grad_fn)] = node.grad_fn
        for dep in node.dependencies:
            for fn in (dep.handler, dep.trigger):
                owner = getattr(fn, "__self__", None)
                if owner is not None:
                    memo[id(owner)] = owner
    return copy.deepcopy((model, dg), memo)  # type: ignore[arg-type]


def probe_exclusions(model: nn.Module, example: dict[str, torch.Tensor], skip: set[str]) -> dict[str, str]:
    """Remove one output channel of each candidate layer in a copy; keep the layers whose removal
    breaks the graph (error or changed output shape). One dependency graph is built; layers of
    one dependency group share one verdict; the groups are tested together first (one trial copy
    when nothing breaks, the common case) and halved only where something does, so a model of
    a hundred groups costs a few trials instead of a hundred."""
    ref_shape = _run(model, example).shape
    reasons: dict[str, str] = {}
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=tuple(example.values()), customized_pruners=CUSTOM_PRUNERS
    )
    names = {m: n for n, m in prunable_layers(model).items()}
    members: dict[frozenset[str], list[str]] = {}  # dependency group -> candidate layers in it
    for name, layer in prunable_layers(model).items():
        if name in skip or channels_out(layer) < 2:
            if name not in skip:
                reasons[name] = "has a single output channel"
            continue
        try:
            group = dg.get_pruning_group(layer, _out_pruning_fn(layer), idxs=[0])
            key = frozenset(names[d.target.module] for d, _ in group if d.target.module in names)
        except Exception as e:
            reasons[name] = f"removing a channel breaks the graph: {str(e).splitlines()[0][:160]}"
            continue
        members.setdefault(key, []).append(name)
    firsts = [layers[0] for layers in members.values()]
    for first, why in _breaking(model, dg, firsts, example, ref_shape).items():
        for name in next(v for v in members.values() if v[0] == first):
            reasons[name] = why
    return reasons


def _breaking(
    model: nn.Module,
    dg: tp.DependencyGraph,
    names: list[str],
    example: dict[str, torch.Tensor],
    ref_shape: torch.Size,
) -> dict[str, str]:
    """Which of ``names`` (one layer per dependency group) break the model when channel 0 of its
    group is removed: all together in one trial, then each half of a failing set."""
    if not names:
        return {}
    why = _probe(model, dg, names, example, ref_shape)
    if why is None:
        return {}
    if len(names) == 1:
        return {names[0]: why}
    mid = len(names) // 2
    return _breaking(model, dg, names[:mid], example, ref_shape) | _breaking(
        model, dg, names[mid:], example, ref_shape
    )


def _probe(
    model: nn.Module,
    dg: tp.DependencyGraph,
    names: list[str],
    example: dict[str, torch.Tensor],
    ref_shape: torch.Size,
) -> str | None:
    """Why removing channel 0 of each of ``names`` (with its group) breaks the model, or None."""
    trial, tdg = copy_with_graph(model, dg)
    try:
        for name in names:
            target = trial.get_submodule(name)
            group = tdg.get_pruning_group(target, _out_pruning_fn(target), idxs=[0])
            if not tdg.check_pruning_group(group):
                return "Torch-Pruning refuses to prune this group"
            group.prune()
        shape = _run(trial, example).shape
    except Exception as e:
        return f"removing a channel breaks the graph: {str(e).splitlines()[0][:160]}"
    if shape != ref_shape:
        return f"removing a channel changes the output shape to {list(shape)}"
    return None
