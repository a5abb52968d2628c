"""Convolutions whose weight is computed, above all StyleGAN2's fused modulated convolution.

StyleGAN2 ("fused modconv") modulates and demodulates a weight per sample, ``w [N, O, I, k, k]``,
then runs *one* grouped convolution over the whole batch::

    x [N, I, H, W] -> Reshape [1, N*I, H, W] -> Conv(weight = Reshape(w, [N*O, I, k, k]),
    group = N) -> [1, N*O, H', W'] -> Reshape [N, O, H', W']

ONNX keeps ``group`` as a static attribute, so every such export has the batch of its trace baked
in (exporters refuse a symbolic one), and onnx2torch refuses a Conv whose weight is not an
initializer. ``fuse_batched_convs`` replaces the pattern in the ONNX graph by one node
``gancompress::BatchedConv(x, w)`` whose torch module, ``BatchedConv2d``, convolves sample
``n`` with ``w[n]`` for any batch. Other Convs with a computed weight become ``DynamicConv``.
The weights the modulation starts from are onnx2torch constants: ``weights_to_parameters`` makes
them trainable so distillation can adapt them. Channel pruning leaves these layers whole: they
hold no ``nn.Conv2d`` for Torch-Pruning, and the style affines feeding them are kept as layers
that feed a reshape (prune.py).
"""

from __future__ import annotations

import logging

import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import fx, nn

log = logging.getLogger(__name__)

DOMAIN = "gancompress"  # no dots: onnx2torch puts the domain into module names
BATCHED_CONV = "BatchedConv"


class _OnnxConv(torch.autograd.Function):
    """In an ONNX export: one ``Conv`` node with explicit attributes, kernel shape included (the
    exporter's own conv refuses a computed weight, whose shape it does not know)."""

    @staticmethod
    def forward(
        ctx: object, x: torch.Tensor, w: torch.Tensor, attrs: dict[str, list[int] | int]
    ) -> torch.Tensor:
        return _eager_conv(x, w, None, attrs)

    @staticmethod
    def symbolic(
        g: torch._C.Graph, x: torch._C.Value, w: torch._C.Value, attrs: dict[str, list[int] | int]
    ) -> torch._C.Value:
        return g.op("Conv", x, w, **{f"{k}_i": v for k, v in attrs.items()})


def _eager_conv(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, attrs: dict[str, list[int] | int]
) -> torch.Tensor:
    rank = w.dim() - 2
    pads = list(attrs["pads"])  # type: ignore[arg-type]
    begin, end = pads[:rank], pads[rank:]
    if begin != end:  # torch pads symmetrically: pad the rest first (F.pad lists the last axis first)
        x = F.pad(x, [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)])
        begin = [0] * rank
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return conv(x, w, bias, attrs["strides"], begin, attrs["dilations"], attrs["group"])  # type: ignore[arg-type]


def conv_nd(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, attrs: dict[str, list[int] | int]
) -> torch.Tensor:
    """ONNX ``Conv`` semantics (``attrs``: strides, pads, dilations, group) on any weight."""
    if not torch.onnx.is_in_onnx_export():
        return _eager_conv(x, w, bias, attrs)
    full = {**attrs, "kernel_shape": [int(d) for d in w.shape[2:]]}
    y = _OnnxConv.apply(x, w, full)
    return y if bias is None else y + bias.view(1, -1, *([1] * (w.dim() - 2)))


def _conv_attrs(
    stride: tuple[int, ...], pads: tuple[int, ...], dilation: tuple[int, ...], groups: int, rank: int
) -> dict[str, list[int] | int]:
    return {
        "strides": list(stride or (1,) * rank),
        "pads": list(pads or (0,) * 2 * rank),
        "dilations": list(dilation or (1,) * rank),
        "group": groups,
    }


class BatchedConv2d(nn.Module):
    """``y[n] = conv2d(x[n], w[n]) (+ bias)``: a per-sample (modulated) convolution.

    Runs as one grouped convolution (fast). A batch-1 ``x`` (StyleGAN's learned constant input)
    is broadcast over the weights' batch. In an ONNX export with a symbolic batch it is written
    as unfold + matmul (ONNX's Conv needs a static group count); ``export_fixed_batch`` switches
    that off when the export has a fixed batch (the plain grouped Conv, as the original had)."""

    def __init__(
        self, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], groups: int
    ) -> None:
        super().__init__()
        self.attrs = _conv_attrs(stride, padding, dilation, groups, 2)
        self.export_fixed_batch = False

    def forward(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n = w.shape[0]
        if x.shape[0] == 1 and n != 1:
            x = x.expand(n, -1, -1, -1)
        if torch.onnx.is_in_onnx_export() and not self.export_fixed_batch and self.attrs["group"] == 1:
            y = self._unfolded(x, w)
        else:
            attrs = {**self.attrs, "group": int(n) * int(self.attrs["group"])}  # type: ignore[call-overload]
            y = conv_nd(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, *w.shape[2:]), None, attrs)
            y = y.reshape(n, -1, *y.shape[2:])
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    def _unfolded(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The same convolution as im2col + batched matmul (exportable with a symbolic batch)."""
        (sh, sw), (dh, dw) = self.attrs["strides"], self.attrs["dilations"]  # type: ignore[misc]
        top, left, bottom, right = self.attrs["pads"]  # type: ignore[misc]
        x = F.pad(x, (left, right, top, bottom))
        kh, kw = int(w.shape[-2]), int(w.shape[-1])
        h = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
        wd = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, (kh, kw), (dh, dw), 0, (sh, sw))  # [N, I*kh*kw, h*wd]
        y = torch.matmul(w.reshape(w.shape[0], w.shape[1], -1), cols)
        return y.reshape(w.shape[0], w.shape[1], h, wd)


class DynamicConv(nn.Module):
    """An ONNX Conv whose weight (and bias) are computed tensors, not initializers."""

    def __init__(
        self, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], groups: int
    ) -> None:
        super().__init__()
        self.stride, self.pads, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        attrs = _conv_attrs(self.stride, self.pads, self.dilation, self.groups, w.dim() - 2)
        return conv_nd(x, w, bias, attrs)


# --- ONNX: recognise the fused modulated convolution ---------------------------------------------


def _dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    g = inferred.graph
    out: dict[str, list[int | None]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
            ]
    return out


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _match(
    conv: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    dims: dict[str, list[int | None]],
    consts: set[str],
) -> tuple[list[str], str, list[onnx.NodeProto]] | None:
    """(inputs, output, nodes replaced) of a fused modulated conv at ``conv``, or None."""
    attrs = _attrs(conv)
    wp = producer.get(conv.input[1])
    if conv.input[1] in consts or wp is None or wp.op_type != "Reshape":
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    w5 = dims.get(wp.input[0], [])
    if len(w5) != 5 or any(d is None for d in w5):
        return None
    b, cout = int(w5[0]), int(w5[1])  # type: ignore[arg-type]
    group = int(attrs.get("group", 1))  # type: ignore[call-overload]
    x1 = dims.get(conv.input[0], [])
    if group % b or len(x1) != 4 or x1[0] != 1:
        return None
    x, xp = conv.input[0], producer.get(conv.input[0])
    x0 = dims.get(xp.input[0], []) if xp is not None and xp.op_type == "Reshape" else []
    expect = [b, None if x1[1] is None else x1[1] // b, x1[2], x1[3]]
    if len(x0) == 4 and all(None in (d, e) or d == e for d, e in zip(x0, expect, strict=True)):
        x = xp.input[0]  # type: ignore[union-attr]  # x [B, I, H, W] -> [1, B*I, H, W]: use x itself
    elif b > 1:
        return None
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    if has_bias and b > 1:
        return None
    replaced, out = [conv], conv.output[0]
    users = consumers.get(out, [])
    y = dims.get(users[0].output[0], []) if len(users) == 1 else []
    if len(users) == 1 and users[0].op_type == "Reshape" and len(y) == 4 and y[:2] == [b, cout]:
        replaced.append(users[0])
        out = users[0].output[0]
    elif b > 1:
        return None
    return [x, wp.input[0], *([conv.input[2]] if has_bias else [])], out, replaced


def _drop_dead(model: onnx.ModelProto) -> None:
    needed = {o.name for o in model.graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))


def fuse_batched_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace each fused modulated convolution (module docstring) by a ``BatchedConv`` node.
    Returns the new graph and how many were replaced (the graph itself when none)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1]
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    if not any(c.input[1] not in consts for c in convs):
        return model, 0
    dims = _dims(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    replace: dict[int, onnx.NodeProto | None] = {}
    shapes: dict[str, list[int | None]] = {}
    for conv in convs:
        found = _match(conv, producer, consumers, dims, consts)
        if found is None:
            continue
        inputs, out, nodes = found
        b = int(dims[inputs[1]][0])  # type: ignore[arg-type]
        a = _attrs(conv)
        fused = helper.make_node(
            BATCHED_CONV,
            inputs,
            [out],
            name=f"{conv.name or out}_batched",
            domain=DOMAIN,
            strides=list(a.get("strides", [1, 1])),  # type: ignore[call-overload]
            pads=list(a.get("pads", [0, 0, 0, 0])),  # type: ignore[call-overload]
            dilations=list(a.get("dilations", [1, 1])),  # type: ignore[call-overload]
            group=int(a.get("group", 1)) // b,  # type: ignore[call-overload]
        )
        replace[id(nodes[0])] = fused
        replace.update({id(n): None for n in nodes[1:]})
        shapes[out] = dims.get(out) or [b, None, None, None]
    if not replace:
        return model, 0
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # shape inference cannot see through the custom op: state its output shape
    m.graph.value_info.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, d) for name, d in shapes.items()
    )
    new_nodes = []
    for node in model.graph.node:
        if id(node) not in replace:
            new_nodes.append(node)
        elif replace[id(node)] is not None:
            new_nodes.append(replace[id(node)])
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    _drop_dead(m)
    if not any(o.domain == DOMAIN for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    n = sum(v is not None for v in replace.values())
    log.info("import.batched_convs fused=%d", n)
    return m, n


# --- onnx2torch converters --------------------------------------------------------------------

_REGISTERED = False


def register_converters() -> None:
    """Teach onnx2torch ``BatchedConv`` and Convs with a computed weight (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnx2torch.node_converters import registry
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def conv_args(node: object) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
        a = node.attributes  # type: ignore[attr-defined]
        return (
            tuple(a.get("strides", ())),
            tuple(a.get("pads", ())),
            tuple(a.get("dilations", ())),
            int(a.get("group", 1)),
        )

    @registry.add_converter(operation_type=BATCHED_CONV, version=1, domain=DOMAIN)
    def _batched(node: object, graph: object) -> OperationConverterResult:
        return OperationConverterResult(BatchedConv2d(*conv_args(node)), onnx_mapping_from_node(node))  # type: ignore[arg-type]

    for version in (1, 11):
        key = registry.OperationDescription(domain="", operation_type="Conv", version=version)
        original = registry._CONVERTER_REGISTRY[key]

        def conv(node: object, graph: object, original: object = original) -> OperationConverterResult:
            if node.input_values[1] in graph.initializers:  # type: ignore[attr-defined]
                return original(node, graph)  # type: ignore[operator]
            stride, pads, dilation, groups = conv_args(node)
            return OperationConverterResult(
                DynamicConv(stride, pads, dilation, groups),
                onnx_mapping_from_node(node),  # type: ignore[arg-type]
            )

        registry._CONVERTER_REGISTRY[key] = conv
    _REGISTERED = True


# --- fx: the modulated weights become trainable ---------------------------------------------------


def weights_to_parameters(gm: fx.GraphModule) -> int:
    """Float constants (rank >= 2) that a ``BatchedConv2d``/``DynamicConv`` weight is computed
    from become ``nn.Parameter``s, so distillation trains them like any conv weight."""
    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            gm.get_submodule(str(node.target)), BatchedConv2d | DynamicConv
        ):
            continue
        for src in _constant_sources(node.args[1]):
            owner_name, _, attr = str(src.target).rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            value = getattr(owner, attr)
            if isinstance(value, nn.Parameter) or not value.is_floating_point() or value.dim() < 2:
                continue
            delattr(owner, attr)
            owner.register_parameter(attr, nn.Parameter(value.detach().clone()))
            n += 1
    if n:
        log.info("import.modulated_weights trainable=%d", n)
    return n


def _constant_sources(start: object) -> list[fx.Node]:
    out: list[fx.Node] = []
    seen: set[fx.Node] = set()
    todo = [start] if isinstance(start, fx.Node) else []
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "get_attr":
            out.append(node)
        elif node.op != "placeholder":
            todo.extend(node.all_input_nodes)
    return out


def set_export_fixed_batch(model: nn.Module, fixed: bool) -> None:
    """Tell every ``BatchedConv2d`` whether the coming ONNX export has a fixed batch."""
    for m in model.modules():
        if isinstance(m, BatchedConv2d):
            m.export_fixed_batch = fixed
