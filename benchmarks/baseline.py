"""The hand-written baseline a user could write in an afternoon, as issue 5 describes it.

onnx2torch on the ONNX file -> Torch-Pruning ``MagnitudePruner`` with L1 group importance at one
uniform ratio, ignoring only the output layer -> Adam (lr 1e-3) on L1(student, teacher) for the
wall-clock budget, with fresh latents or calibration images -> ``torch.onnx.export``. No slimming,
no special handling of PixelShuffle, reshapes or modulation: where that breaks, the benchmark records
the error as the baseline's result.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx2torch
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from worker.zoo.registry import model_entry, zoo_dir

log = logging.getLogger(__name__)

LR = 1e-3
BATCH = 8
PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class BaselineRun:
    steps: int
    seconds: float
    error: str | None = None


def _sampler(name: str, seed: int) -> callable:  # type: ignore[valid-type]
    """Training batches: N(0, 1) latents, random labels, or random calibration images."""
    entry = model_entry(name)
    gen = torch.Generator().manual_seed(seed)
    images = {
        k: torch.from_numpy(np.load(zoo_dir() / entry["calibration"]))
        for k, s in entry["inputs"].items()
        if s["distribution"] == "calibration"
    }

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        out = []
        for k, s in entry["inputs"].items():
            shape = [n, *s["shape"][1:]]
            if s["distribution"] == "calibration":
                out.append(images[k][torch.randint(0, len(images[k]), (n,), generator=gen)])
            elif s["distribution"] == "randint":
                out.append(torch.randint(int(s["low"]), int(s["high"]), shape, generator=gen))
            else:
                out.append(torch.randn(shape, generator=gen))
        return tuple(out)

    return batch


def _first(out: torch.Tensor | list | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def train_l1(
    model: nn.Module,
    teacher: nn.Module,
    batch: callable,  # type: ignore[valid-type]
    *,
    budget_s: float = float("inf"),
    steps: int | None = None,
) -> int:
    """The baseline's loop: Adam (lr ``LR``) on L1(model(x), teacher(x)), a fresh batch of
    ``BATCH`` each step, until ``budget_s`` seconds or ``steps`` steps. Returns the steps run."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=LR)
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < budget_s and (steps is None or n < steps):
        x = batch(BATCH)
        with torch.no_grad():
            t = _first(teacher(*x))
        loss = F.l1_loss(_first(model(*x)), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += 1
    return n


def run_baseline(
    name: str, onnx_path: Path, ratio: float, budget_s: float, out: Path, seed: int = 0
) -> BaselineRun:
    """Prune, train and export; ``error`` says where it broke (then nothing is written)."""
    torch.manual_seed(seed)
    try:
        model = onnx2torch.convert(onnx.load(str(onnx_path))).eval()
    except Exception as e:
        return BaselineRun(0, 0.0, f"onnx2torch: {_line(e)}")
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    batch = _sampler(name, seed)
    example = batch(2)
    with torch.no_grad():
        ref_shape = _first(teacher(*example)).shape
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            example_inputs=example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=layers[-1:],  # the output layer
        )
        pruner.step()
        with torch.no_grad():
            shape = _first(model(*example)).shape
    except Exception as e:
        return BaselineRun(0, 0.0, f"pruning: {_line(e)}")
    if shape != ref_shape:
        return BaselineRun(0, 0.0, f"pruning changed the output shape {list(ref_shape)} -> {list(shape)}")
    start = time.perf_counter()
    try:
        steps = train_l1(model, teacher, batch, budget_s=budget_s)
    except Exception as e:
        return BaselineRun(0, time.perf_counter() - start, f"training: {_line(e)}")
    seconds = time.perf_counter() - start
    model.eval()
    names = [i.name for i in onnx.load(str(onnx_path)).graph.input]
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                example,
                str(out),
                dynamo=False,
                opset_version=17,
                input_names=names,
                output_names=["image_out"],
                dynamic_axes={n: {0: "batch"} for n in [*names, "image_out"]},
            )
    except Exception as e:
        return BaselineRun(steps, seconds, f"export: {_line(e)}")
    log.info("baseline.done model=%s steps=%d seconds=%.1f", name, steps, seconds)
    return BaselineRun(steps, seconds)


def _line(e: BaseException) -> str:
    t = str(e).strip()
    return f"{type(e).__name__}: {t.splitlines()[0][:200] if t else ''}"
