"""Whole-block pruning: remove residual blocks ``y = x + f(x)`` by rewiring ``y := x``.

A block qualifies when it is an identity skip (the add's other operand is an ancestor of ``f``),
``f`` holds at least one weight layer, nothing inside ``f`` is used outside it, and it contains
no other qualifying block (only innermost blocks: removing a long skip would remove everything).
Importance of a block is the relative size of its residual on sample inputs,
``mean|f(x)| / mean|x|``; the least important go first.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass

import torch
from torch import fx

from worker.engine.prunable import PRUNABLE
from worker.errors import PruningError

log = logging.getLogger(__name__)


@dataclass
class Block:
    add: str  # name of the add node
    skip: str  # node carrying x
    residual: str  # node carrying f(x)
    nodes: list[str]  # nodes of f
    layers: list[str]  # weight layers inside f
    importance: float = math.nan


def _is_add(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in (operator.add, torch.add):
        return True
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        fn = getattr(mod, "math_op_function", None)
        return fn in (torch.add, operator.add)
    return False


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    cands: list[Block] = []
    for node in gm.graph.nodes:
        if not _is_add(gm, node) or len(node.all_input_nodes) != 2:
            continue
        a, b = node.args[0], node.args[1]
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            continue
        for x, f in ((a, b), (b, a)):
            anc_f = _ancestors(f)
            if x not in anc_f:
                continue
            inner = {n for n in anc_f | {f} if x in _ancestors(n) or n is f} - {x}
            inner = {n for n in inner if n.op not in ("get_attr", "placeholder")}
            if any(u not in inner and u is not node for n in inner for u in n.users):
                continue
            layers = [
                str(n.target)
                for n in inner
                if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), PRUNABLE)
            ]
            if layers:
                order = {n: i for i, n in enumerate(gm.graph.nodes)}
                nodes = sorted(inner, key=order.__getitem__)
                cands.append(Block(node.name, x.name, f.name, [n.name for n in nodes], sorted(layers)))
            break
    # innermost only: drop blocks that contain another candidate's add node
    adds = {c.add for c in cands}
    return [c for c in cands if not (set(c.nodes) & adds)]


def score_blocks(gm: fx.GraphModule, blocks: list[Block], example: dict[str, torch.Tensor]) -> None:
    """Fill ``importance`` = mean|f(x)| / mean|x| over the example batch."""
    wanted = {b.skip for b in blocks} | {b.residual for b in blocks}
    values: dict[str, torch.Tensor] = {}

    class Tap(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            if n.name in wanted and isinstance(out, torch.Tensor):
                values[n.name] = out.detach()
            return out

    with torch.no_grad():
        Tap(gm).run(*example.values())
    for b in blocks:
        x, f = values.get(b.skip), values.get(b.residual)
        b.importance = (
            float(f.abs().mean() / (x.abs().mean() + 1e-12)) if x is not None and f is not None else math.inf
        )


def remove_blocks(gm: fx.GraphModule, names: list[str]) -> None:
    """Rewire each named add to its skip input, then drop the dead layers."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for b in find_blocks(gm):
        if b.add not in names:
            continue
        add, skip = by_name[b.add], by_name[b.skip]
        add.replace_all_uses_with(skip)
        gm.graph.erase_node(add)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def choose_blocks(blocks: list[Block], ratio: float | None, count: int | None) -> list[Block]:
    if not blocks:
        raise PruningError(
            "no removable residual block found (a block needs an identity skip y = x + f(x) around "
            "weight layers); use method 'channel' or 'unstructured'"
        )
    n = count if count is not None else round((ratio or 0.0) * len(blocks))
    if n < 1:
        raise PruningError(
            f"ratio {ratio} of {len(blocks)} removable blocks removes none; raise it or give blocks"
        )
    if n > len(blocks):
        raise PruningError(f"asked to remove {n} blocks, the model has {len(blocks)} removable blocks")
    return sorted(blocks, key=lambda b: b.importance)[:n]
