"""fx rewrites that turn constants of an onnx2torch graph into layers Torch-Pruning can prune.

onnx2torch keeps every initializer that is not a Conv/Linear/norm weight as a constant buffer.
Two patterns matter for generators:

- **per-channel constants** (``x + b``, ``x * s`` with ``b`` shaped ``[1, C, 1, 1]``): biases added
  after a modulation, scales of a norm without affine. Left constant, removing channel ``c``
  upstream breaks the broadcast. They become ``ChannelOp`` layers (a trainable ``[C]`` parameter).
- **StyleGAN2 demodulation** ``rsqrt(s^2 @ W2 + eps)`` where ``W2 = sum_kk(W^2)^T`` is the constant
  folded from the modulated conv's own weight ``W``. It becomes ``Demodulation``, a Linear whose
  weight is recomputed from the conv's (pruned, trained) weight on every call, so the tie
  between the conv and its demodulation survives pruning and distillation.

Both come with Torch-Pruning pruners (``CUSTOM_PRUNERS``) that keep their channels coupled.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import fx, nn

log = logging.getLogger(__name__)

_BINARY_OPS = {torch.add: "add", torch.mul: "mul", torch.sub: "sub", torch.div: "div"}


class ChannelOp(nn.Module):
    """``x (op) p[None, :, None, None]`` (or ``p[None, :]`` for 2-d x) with a trainable ``p [C]``.
    ``constant_first`` keeps the operand order of ``c - x`` / ``c / x``."""

    def __init__(self, value: torch.Tensor, op: str, constant_first: bool = False) -> None:
        super().__init__()
        self.param = nn.Parameter(value.detach().reshape(-1).clone())
        self.op = op
        self.constant_first = constant_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.param.view(1, -1, *([1] * (x.dim() - 2)))
        a, b = (p, x) if self.constant_first else (x, p)
        if self.op == "add":
            return a + b
        if self.op == "mul":
            return a * b
        if self.op == "sub":
            return a - b
        return a / b


class Demodulation(nn.Linear):
    """``s2 [N, Cin] -> s2 @ sum_kk(conv.weight^2)^T  [N, Cout]``. The own ``weight`` only carries
    the shape for Torch-Pruning; the values always come from the modulated conv."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, bias=False)
        object.__setattr__(self, "conv", conv)  # not a submodule: the conv lives in the graph already
        with torch.no_grad():  # real values, so channel importance that reads this weight is sane
            self.weight.copy_(conv.weight.pow(2).sum(dim=(2, 3)))
        self.weight.requires_grad_(False)

    def forward(self, s2: torch.Tensor) -> torch.Tensor:
        w2 = self.conv.weight.pow(2).sum(dim=(2, 3))  # [Cout, Cin]
        return F.linear(s2, w2)


class ChannelOpPruner(tp.pruner.function.BasePruningFunc):
    def prune_out_channels(self, layer: ChannelOp, idxs: list[int]) -> nn.Module:
        keep = sorted(set(range(layer.param.numel())) - set(idxs))
        layer.param = self._prune_parameter_and_grad(layer.param, keep, 0)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: ChannelOp) -> int:
        return layer.param.numel()

    def get_in_channels(self, layer: ChannelOp) -> int:
        return layer.param.numel()


class DemodulationPruner(tp.pruner.function.LinearPruner):
    """Prunes the shape-carrying weight like a Linear's; the values follow the conv anyway."""


CUSTOM_PRUNERS: dict[type, tp.pruner.function.BasePruningFunc] = {
    ChannelOp: ChannelOpPruner(),
    Demodulation: DemodulationPruner(),
}


def _const(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: object = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


def _binary_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if node.op != "call_module":
        return None
    fn = getattr(gm.get_submodule(str(node.target)), "math_op_function", None)
    return _BINARY_OPS.get(fn)


def channel_constants_to_layers(gm: fx.GraphModule) -> int:
    """Replace ``x (op) const`` with a per-channel constant by a ``ChannelOp`` layer."""
    n = 0
    for node in list(gm.graph.nodes):
        kind = _binary_kind(gm, node)
        if kind is None or len(node.args) != 2:
            continue
        a, b = node.args
        for const_pos, (x, c) in enumerate(((a, b), (b, a))):
            value = _const(gm, c)
            if value is None or not isinstance(x, fx.Node) or value.numel() < 2:
                continue
            shape = list(value.shape)
            per_channel = (len(shape) == 4 and shape[0] == 1 and shape[2] == shape[3] == 1) or (
                len(shape) == 3 and shape[1] == shape[2] == 1
            )
            if not per_channel:
                continue
            layer = ChannelOp(value, kind, constant_first=const_pos == 1)
            name = f"{node.target}_channel"
            gm.add_submodule(name, layer)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, (x,))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            n += 1
            break
    if n:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return n


def drop_identity_slices(gm: fx.GraphModule) -> int:
    """Remove ``Slice`` nodes that keep everything (start 0, end past any size, step 1), as the
    TorchScript exporter writes for ``s[:, :, None, None]``; they hide a plain channel coupling."""
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not type(gm.get_submodule(str(node.target))).__name__.startswith(
            "OnnxSlice"
        ):
            continue
        consts = [_const(gm, a) for a in node.args[1:]]
        if len(consts) < 2 or any(c is None for c in consts):
            continue
        starts, ends = consts[0], consts[1]
        steps = consts[3] if len(consts) > 3 else None
        full = bool((starts == 0).all()) and bool((ends >= 2**31 - 1).all())
        if full and (steps is None or bool((steps == 1).all())):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            n += 1
    if n:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return n


def reshape_infers_channels(gm: fx.GraphModule) -> int:
    """``Linear -> Reshape(const [-1, C, H, W])`` becomes ``Reshape([0, -1, H, W])``: batch copied,
    channels inferred, so the projection can lose whole blocks of H*W features (and the graph
    still reshapes what is left)."""
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(str(node.target))).__name__ != "OnnxReshape":
            continue
        if len(node.args) != 2 or not isinstance(node.args[0], fx.Node) or node.args[0].op != "call_module":
            continue
        if not isinstance(gm.get_submodule(str(node.args[0].target)), nn.Linear):
            continue
        shape = _const(gm, node.args[1])
        if shape is None or shape.dim() != 1 or shape.numel() != 4 or int(shape[1]) <= 0:
            continue
        if int(shape[0]) not in (-1, 0):
            continue
        attr = f"{node.name}_shape"
        gm.register_buffer(attr, torch.tensor([0, -1, int(shape[2]), int(shape[3])], dtype=shape.dtype))
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(attr)
        node.args = (node.args[0], const)
        n += 1
    if n:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return n


def demodulation_to_layers(gm: fx.GraphModule) -> int:
    """Replace ``MatMul(s2, W2)`` where ``W2`` equals ``sum_kk(conv.weight^2)^T`` of a conv in
    the graph by a ``Demodulation`` tied to that conv."""
    convs = {name: m for name, m in gm.named_modules() if isinstance(m, nn.Conv2d)}
    squares = {name: m.weight.detach().pow(2).sum(dim=(2, 3)).t() for name, m in convs.items()}
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(str(node.target))).__name__ != "OnnxMatMul":
            continue
        if len(node.args) != 2:
            continue
        value = _const(gm, node.args[1])
        if value is None or value.dim() != 2:
            continue
        match = next(
            (
                name
                for name, sq in squares.items()
                if sq.shape == value.shape and torch.allclose(sq, value.float(), rtol=1e-4, atol=1e-6)
            ),
            None,
        )
        if match is None:
            continue
        layer = Demodulation(convs[match])
        name = f"{node.target}_demod"
        gm.add_submodule(name, layer)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        n += 1
        log.info("import.demodulation conv=%s", match)
    if n:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return n
