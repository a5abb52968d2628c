"""The distillation stage: rounds of ``distill`` against the frozen teacher (between pruning
rounds, then the main run), on random crops where that buys more steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from worker.engine.distill import DistillResult, distill
from worker.engine.stages.setup import Workbench, forward
from worker.errors import first_line
from worker.spec import DistillSpec, Distribution

MIN_PATCH = 32  # automatic patches: half the input side, never below this
# Automatic patches only where full-size training would get few steps in the budget: at equal
# wall time, half-size patches won on the 2.3-2.5 GMAC models (59-74 full-size steps: +0.25 and
# +0.65 dB) and lost on the 17 MMAC U-Net (3335 full-size steps: -4.0 dB, its deep layers need the
# whole image's context). benchmarks/runs/big/patch-study.
AUTO_PATCH_MAX_STEPS = 500


@dataclass
class Distiller:
    """Distillation of the workbench's student in rounds that continue one step count."""

    bench: Workbench
    spec: DistillSpec
    masks: dict[str, torch.Tensor] | None = None  # unstructured pruning: zeros that must stay
    rounds: list[DistillResult] = field(default_factory=list)
    # a search candidate's short runs: a timed learning curve on fewer held-out samples
    eval_seconds: float | None = None
    heldout_n: int = 16

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.rounds)

    def run(self, steps: int, seconds: float) -> DistillResult:
        b = self.bench
        r = distill(
            b.teacher,
            b.student,
            b.sampler,
            self.spec,
            data_range=b.data_range,
            steps=steps,
            budget_seconds=seconds,
            masks=self.masks,
            progress=b.emit,
            should_stop=b.stop,
            step_offset=self.steps,
            eval_seconds=self.eval_seconds,
            heldout_n=self.heldout_n,
        )
        self.rounds.append(r)
        return r


def image_side(bench: Workbench) -> int | None:
    """The smallest side of the image inputs, when every input is an image (else None)."""
    images = [s for s in bench.imported.inputs.values() if s.distribution == Distribution.CALIBRATION]
    if not images or len(images) != len(bench.imported.inputs):
        return None
    return min(min(s.shape[2], s.shape[3]) for s in images)


def patch_problem(bench: Workbench, patch: int) -> str | None:
    """Why the model cannot be trained or refitted on ``patch`` x ``patch`` crops of its image
    inputs (None when it can): every input must be an image and the output must follow the input
    size, checked by running the teacher at the patch size."""
    side = image_side(bench)
    if side is None:
        return "the model has inputs that are not images"
    sampler = bench.sampler
    full = forward(bench.teacher, {k: v[:1] for k, v in sampler.train_batch(1).items()})
    try:
        with sampler.crops(patch):
            small = forward(bench.teacher, sampler.train_batch(1))
    except Exception as e:  # a fixed-size layer (reshape, global op)
        return f"the model does not run on {patch}x{patch} crops ({first_line(e)})"
    expect = [round(d * patch / side) for d in full.shape[2:]]
    if full.dim() != 4 or list(small.shape[2:]) != expect:
        return f"the output does not follow the input size on {patch}x{patch} crops"
    return None


def choose_patch(
    bench: Workbench, asked: int | None, full_size_steps: float = 0.0
) -> tuple[int | None, str | None]:
    """The training crop side for distillation, and a note for the report. ``asked`` None is
    automatic: patches of half the input side when full-size training would get fewer than
    ``AUTO_PATCH_MAX_STEPS`` steps (``full_size_steps``, estimated). Patches need image inputs and
    a model whose output follows the input size (fully convolutional): checked by running the
    teacher at the patch size."""
    if asked is None and full_size_steps >= AUTO_PATCH_MAX_STEPS:
        return None, None
    side = image_side(bench)
    if asked == 0 or side is None:
        return None, None
    patch = asked if asked is not None else side // 2
    if (asked is None and patch < MIN_PATCH) or patch >= side:
        return None, None
    problem = patch_problem(bench, patch)
    if problem:
        return None, f"trained at the full input size: {problem}"
    why = f"about {full_size_steps:.0f} full-size steps fit the budget, " if asked is None else ""
    return patch, (
        f"trained on random {patch}x{patch} crops ({why}the model is fully convolutional: more steps per "
        "second); held-out inputs are scored at the full size"
    )


def train(distiller: Distiller, seconds: float | None = None) -> list[str]:
    """The main distillation run: what is left of the step limit, in what is left of the budget
    (or in ``seconds``: a search candidate's share). Returns notes for the report."""
    bench, spec = distiller.bench, distiller.spec
    budget = bench.budget
    seconds = budget.distill_seconds() if seconds is None else min(seconds, budget.distill_seconds())
    # a step: the teacher's forward and the student's forward and backward, about 3 teacher forwards
    step_seconds = 3 * spec.batch_size * budget.per_sample_seconds()
    full_size_steps = seconds / step_seconds if step_seconds > 0 else math.inf
    patch, note = choose_patch(bench, spec.patch, full_size_steps)
    with bench.sampler.crops(patch):
        distiller.run(max(0, spec.steps - distiller.steps), seconds)
    return [note] if note else []
