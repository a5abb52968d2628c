"""The latency model (engine/latency_model.py): an ONNX Runtime per-node profile of the teacher
mapped onto the converted modules, and estimates for pruned copies that fall with the ratio."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from worker.engine import latency_model as L
from worker.engine.importers import import_model
from worker.engine.prune import plan_channel_pruning, uniform_copy
from worker.engine.sampling import example_batch
from worker.spec import PruneSpec


def test_onnx_node_names_map_to_the_converted_modules() -> None:
    assert L.module_name("/body/body.0/conv1/Conv") == "body/body/0/conv1/Conv"
    assert L.module_name("Conv_3") == "Conv_3"


@pytest.mark.parametrize("family", ["resnet", "sr"])
def test_profile_and_estimates(family: str, tiny_onnx: dict[str, Path]) -> None:
    im = import_model(tiny_onnx[family], None)
    teacher = im.module
    ex = example_batch(im.inputs, batch=2, seed=0)
    one = {k: v[:1] for k, v in ex.items()}
    modules = {n for n, _ in teacher.named_modules() if n}
    prof = L.profile_teacher(im.onnx_model, {k: v.numpy() for k, v in one.items()}, modules, runs=3)
    # most of the time lands on modules, every convolution among them, and marked as a MAC node
    assert prof.runs >= 1 and prof.total_ms > 0
    assert sum(prof.ms.values()) >= 0.5 * prof.total_ms
    convs = [n for n, m in teacher.named_modules() if type(m).__name__ == "Conv2d"]
    # (ONNX Runtime may fuse a convolution into its neighbour's node: most, not all, are found)
    found = [c for c in convs if c in prof.ms]
    assert len(found) >= 0.8 * len(convs) and all(prof.mac[c] for c in found)

    lm = L.LatencyModel.of(teacher, prof, one)
    assert lm.estimate_ms(copy.deepcopy(teacher)) == pytest.approx(prof.total_ms, rel=1e-6)
    spec = PruneSpec(ratio=0.5, allocation="uniform")
    plan = plan_channel_pruning(copy.deepcopy(teacher), ex, spec)
    est = [lm.estimate_ms(uniform_copy(teacher, ex, spec, plan, r)) for r in (0.25, 0.5, 0.75)]
    assert prof.total_ms > est[0] > est[1] > est[2] > 0, est
