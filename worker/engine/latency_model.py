"""What a pruned student will cost in ONNX Runtime, estimated from a per-node profile of the teacher.

MACs are not time: on a CPU a 9x9 convolution with 3 output channels (padded to the kernels'
16-channel blocks), a PReLU over a full-resolution tensor or a DepthToSpace can take more time per
MAC than a 3x3 convolution in the trunk. So the teacher is profiled once in ONNX Runtime (1
thread, the graph optimizations the measurements use, ``SessionOptions.enable_profiling``): each
node's kernel time. onnx2torch names a module after the ONNX node it converts, so each timed node
is found again in the student; a pruned copy's time is then estimated as

    sum over timed nodes of  t_node * f_node  +  t_unmatched * (time-weighted mean f)

with ``f`` = (input elements / teacher's) x (output elements / teacher's) for a MAC node (Conv,
ConvTranspose, Gemm, MatMul: in- and out-channels both shrink its work) and output elements /
teacher's for every other node (activations, adds, norms, shuffles), read by forward hooks on one
small input. Nodes ONNX Runtime renames (``<tensor>_nchwc`` for its blocked convolutions) are
mapped back through the tensor they produce; nodes it adds (layout reorders) scale with the mean.
The estimate ranks allocations (``allocation: latency``); every latency in a report is measured.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

log = logging.getLogger(__name__)

MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "NchwcConv", "FusedGemm"})
PROFILE_HOW = (
    "ONNX Runtime per-node profile of the teacher (SessionOptions.enable_profiling, 1 thread, all graph "
    "optimizations, kernel times averaged over the profiled runs); a pruned copy's time is the sum of node "
    "times scaled by how much each node's tensors shrink (MAC nodes: input x output elements)."
)


def module_name(node_name: str) -> str:
    """The name onnx2torch gives the module converted from ONNX node ``node_name``."""
    return node_name.lstrip("/").replace(".", "/")


@dataclass
class TeacherProfile:
    """Kernel milliseconds per torch module name of one teacher run at 1 thread."""

    ms: dict[str, float]  # module name -> ms per run
    mac: dict[str, bool]  # module name -> a MAC node
    unmatched_ms: float  # nodes found in no module (layout reorders, fused leftovers)
    total_ms: float
    runs: int
    seconds: float  # what profiling cost
    how: str = PROFILE_HOW


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def profile_teacher(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    modules: set[str],
    runs: int = 5,
    seconds: float = 10.0,
) -> TeacherProfile:
    """Profile ``model`` (the teacher graph the student was converted from) on ``feeds`` at 1
    thread: ``runs`` timed runs after one warm-up, fewer when they would take over ``seconds``.
    ``modules``: the student's module names (a node is matched when its converted name is one)."""
    t0 = time.perf_counter()
    nodes = {n.name: n for n in model.graph.node}
    producers = _producers(model)
    with tempfile.TemporaryDirectory(prefix="gc-profile-") as tmp:
        path = Path(tmp) / "teacher.onnx"
        onnx.save(model, str(path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in plain.get_inputs()]
        feed = {k: feeds[k] for k in names}
        tw = time.perf_counter()
        plain.run(None, feed)  # warm-up, and the time of one run
        one = time.perf_counter() - tw
        del plain
        n = max(1, min(runs, int(seconds / max(one, 1e-6))))
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feed)  # the first profiled run allocates: not counted
        for _ in range(n):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            name = ev["name"][: -len("_kernel_time")]
            per_run[name].append(float(ev.get("dur", 0)) / 1000.0)
            ops[name] = str(ev.get("args", {}).get("op_name", ""))
    ms: dict[str, float] = defaultdict(float)
    mac: dict[str, bool] = {}
    unmatched = 0.0
    for name, durs in per_run.items():
        # the warm-up run is profiled too: average the last n
        t = float(np.mean(durs[-n:]))
        node = nodes.get(name)
        if node is None and name.endswith("_nchwc"):
            node = producers.get(name[: -len("_nchwc")])
        mod = module_name(node.name) if node is not None else None
        if mod is None or mod not in modules:
            unmatched += t
            continue
        ms[mod] += t
        mac[mod] = mac.get(mod, False) or ops[name] in MAC_OPS or node.op_type in MAC_OPS
    total = sum(ms.values()) + unmatched
    log.info(
        "latency_model.profiled nodes=%d matched=%d total_ms=%.3f unmatched_ms=%.3f runs=%d",
        len(per_run),
        len(ms),
        total,
        unmatched,
        n,
    )
    return TeacherProfile(dict(ms), mac, unmatched, total, n, time.perf_counter() - t0)


def _numel(x: object) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, list | tuple) and x and isinstance(x[0], torch.Tensor):
        return x[0].numel()
    return 0


@dataclass
class LatencyModel:
    """Estimated milliseconds (1 thread) of the teacher or any pruned copy of it."""

    profile: TeacherProfile
    example: dict[str, torch.Tensor]  # one small input (sizes scale, ratios do not)
    base: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (in, out) elements

    @classmethod
    def of(
        cls, teacher: nn.Module, profile: TeacherProfile, example: dict[str, torch.Tensor]
    ) -> LatencyModel:
        lm = cls(profile, example)
        lm.base = lm._elements(teacher)
        return lm

    def _elements(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        seen: dict[str, tuple[int, int]] = {}
        handles = []
        mods = dict(model.named_modules())
        for name in self.profile.ms:
            m = mods.get(name)
            if m is None:
                continue

            def hook(_m: nn.Module, inp: tuple[object, ...], out: object, name: str = name) -> None:
                seen[name] = (_numel(inp[0]) if inp else 0, _numel(out))

            handles.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(*self.example.values())
        finally:
            for h in handles:
                h.remove()
        return seen

    def estimate_ms(self, model: nn.Module) -> float:
        now = self._elements(model)
        total = weighted = 0.0
        for name, t in self.profile.ms.items():
            b, c = self.base.get(name), now.get(name)
            if b is None or c is None:
                f = 1.0
            elif self.profile.mac.get(name):
                f = (c[0] / b[0] if b[0] else 1.0) * (c[1] / b[1] if b[1] else 1.0)
            else:
                f = c[1] / b[1] if b[1] else 1.0
            total += t * f
            weighted += t
        mean_f = total / weighted if weighted else 1.0
        return total + self.profile.unmatched_ms * mean_f


def teacher_latency_model(
    teacher: nn.Module,
    teacher_onnx: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    small: dict[str, torch.Tensor],
    seconds: float = 10.0,
) -> LatencyModel:
    """Profile the teacher at the full input size (``feeds``) and return its latency model."""
    modules = {n for n, _ in teacher.named_modules() if n}
    prof = profile_teacher(teacher_onnx, feeds, modules, seconds=seconds)
    return LatencyModel.of(teacher, prof, small)
