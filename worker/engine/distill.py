"""Distillation: the pruned student learns to reproduce the frozen original (the teacher).

Losses come from a registry keyed by ``LossName``; each is ``loss(student_out, teacher_out, feats)``
where ``feats`` pairs intermediate feature maps (student through a learned 1x1 adapter, teacher
as is). The loop stops at ``steps`` or ``budget_seconds``, whichever comes first, evaluates on a
held-out set that is never trained on, and keeps the best student.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.prunable import channels_out, prunable_layers
from worker.engine.prune import apply_masks
from worker.engine.registry import Registry
from worker.engine.sampling import InputSampler
from worker.errors import BadSpecError, CanceledError
from worker.spec import DistillSpec, LossName, Progress, Stage

log = logging.getLogger(__name__)

FeaturePairs = list[tuple[torch.Tensor, torch.Tensor]]  # (adapted student feature, teacher feature)
LossFn = Callable[[torch.Tensor, torch.Tensor, FeaturePairs, float], torch.Tensor]

LOSSES: Registry[LossName, LossFn] = Registry("loss", LossName, BadSpecError)
MAX_FEATURE_LAYERS = 4


def get_loss(name: str) -> LossFn:
    return LOSSES.get(name)


@LOSSES.register(LossName.L1)
def _l1(s: torch.Tensor, t: torch.Tensor, feats: FeaturePairs, data_range: float) -> torch.Tensor:
    return F.l1_loss(s, t)


@LOSSES.register(LossName.MSE)
def _mse(s: torch.Tensor, t: torch.Tensor, feats: FeaturePairs, data_range: float) -> torch.Tensor:
    return F.mse_loss(s, t)


@LOSSES.register(LossName.SSIM)
def _ssim(s: torch.Tensor, t: torch.Tensor, feats: FeaturePairs, data_range: float) -> torch.Tensor:
    """1 - SSIM for image outputs [N, C, H, W]; other outputs fall back to L1."""
    if s.dim() != 4:
        return F.l1_loss(s, t)
    from worker.engine.quality import ssim

    return 1.0 - ssim(s, t, data_range=data_range, reduction="mean")


@LOSSES.register(LossName.FEATURE)
def _feature(s: torch.Tensor, t: torch.Tensor, feats: FeaturePairs, data_range: float) -> torch.Tensor:
    """Mean MSE between adapted student features and teacher features, each normalised by the
    teacher feature's mean square (so layers of any scale weigh alike)."""
    if not feats:
        return s.new_zeros(())
    terms = [F.mse_loss(a, b) / (b.pow(2).mean() + 1e-6) for a, b in feats]
    return torch.stack(terms).mean()


class FeatureTaps:
    """Forward hooks on matching layers of teacher and student, with 1x1 adapters that map the
    student's (pruned) channels to the teacher's (GAN Compression, Li et al. 2020)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, max_layers: int = MAX_FEATURE_LAYERS) -> None:
        t_layers, s_layers = prunable_layers(teacher), prunable_layers(student)
        names = [
            n
            for n, m in s_layers.items()
            if n in t_layers and channels_out(m) < channels_out(t_layers[n]) and not isinstance(m, nn.Linear)
        ]
        if len(names) > max_layers:  # spread over depth
            step = len(names) / max_layers
            names = [names[int(i * step)] for i in range(max_layers)]
        self.names = names
        self.adapters = nn.ModuleDict()
        self._t: dict[str, torch.Tensor] = {}
        self._s: dict[str, torch.Tensor] = {}
        self._handles = []
        for n in names:
            sc, tc = channels_out(s_layers[n]), channels_out(t_layers[n])
            self.adapters[n.replace(".", "_").replace("/", "_")] = nn.Conv2d(sc, tc, 1, bias=False)
            self._handles.append(t_layers[n].register_forward_hook(self._hook(self._t, n)))
            self._handles.append(s_layers[n].register_forward_hook(self._hook(self._s, n)))

    @staticmethod
    def _hook(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            store[name] = out

        return fn

    def pairs(self) -> FeaturePairs:
        out: FeaturePairs = []
        for n in self.names:
            s, t = self._s.get(n), self._t.get(n)
            if s is not None and t is not None and s.dim() == 4:
                out.append((self.adapters[n.replace(".", "_").replace("/", "_")](s), t.detach()))
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class DistillResult:
    steps: int = 0
    seconds: float = 0.0
    best_step: int = 0
    best_score: float = float("-inf")
    curve: list[dict[str, float]] = field(default_factory=list)  # {step, loss, heldout_score, seconds}
    stopped_by: str = "steps"
    samples_per_second: float = 0.0


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(*batch.values())
    return out[0] if isinstance(out, list | tuple) else out


def heldout_score(
    student: nn.Module, heldout: dict[str, torch.Tensor], teacher_out: torch.Tensor, data_range: float
) -> float:
    """Fidelity on the held-out set: SSIM for images, negative mean L1 otherwise (higher is better)."""
    with torch.no_grad():
        return score_of(_forward(student, heldout), teacher_out, data_range)


def score_of(s: torch.Tensor, teacher_out: torch.Tensor, data_range: float) -> float:
    """``heldout_score`` of outputs already computed."""
    if s.dim() == 4 and min(s.shape[-2:]) >= 7:
        from worker.engine.quality import ssim

        return float(ssim(s, teacher_out, data_range=data_range, reduction="mean"))
    return -float((s - teacher_out).abs().mean())


def distill(
    teacher: nn.Module,
    student: nn.Module,
    sampler: InputSampler,
    spec: DistillSpec,
    *,
    data_range: float,
    steps: int | None = None,
    budget_seconds: float | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    heldout_n: int = 16,
    eval_every: int | None = None,
    eval_seconds: float | None = None,
    step_offset: int = 0,
) -> DistillResult:
    """Train ``student`` in place to match ``teacher``; on return it holds the best weights seen.

    ``masks`` (unstructured pruning) are re-applied after every optimizer step so pruned weights
    stay zero. Norm layers stay in eval mode (running statistics are the teacher's); their affine
    parameters train. The held-out score is taken every ``eval_every`` steps and, with
    ``eval_seconds``, also whenever that many more seconds have passed (a short run's learning
    curve, for the target search's projections).
    """
    steps = spec.steps if steps is None else steps
    budget = spec.budget_seconds if budget_seconds is None else budget_seconds
    result = DistillResult()
    teacher.eval()
    student.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    weights = {LossName(k): float(w) for k, w in spec.losses.items() if w > 0}
    fns = {k: get_loss(k) for k in weights}
    taps = FeatureTaps(teacher, student) if LossName.FEATURE in weights else None
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    if taps is not None:
        params += list(taps.adapters.parameters())
    heldout = sampler.heldout(heldout_n)
    with torch.no_grad():
        heldout_teacher = _forward(teacher, heldout)
    best_state = copy.deepcopy(student.state_dict())
    result.best_score = heldout_score(student, heldout, heldout_teacher, data_range)
    result.curve.append(
        {"step": step_offset, "loss": float("nan"), "heldout_score": result.best_score, "seconds": 0.0}
    )
    if steps <= 0 or not params:
        return result
    opt = torch.optim.Adam(params, lr=spec.lr, betas=(0.9, 0.99))

    def evaluate(at: int, loss: float, best: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Score the student on the held-out set; returns the best state dict so far."""
        score = heldout_score(student, heldout, heldout_teacher, data_range)
        result.curve.append(
            {
                "step": at + step_offset,
                "loss": loss,
                "heldout_score": score,
                "seconds": time.perf_counter() - start,
            }
        )
        if score > result.best_score:
            result.best_score, result.best_step = score, at + step_offset
            return copy.deepcopy(student.state_dict())
        return best

    eval_every = eval_every or max(1, min(50, steps // 10))
    start = time.perf_counter()
    next_eval = eval_seconds or 0.0
    running = 0.0
    step = 0
    try:
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                raise CanceledError("canceled during distillation")
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                result.stopped_by = "budget_seconds"
                step -= 1
                break
            # cosine decay over whichever limit is closer: steps, or time
            frac = max(step / steps, elapsed / budget)
            for g in opt.param_groups:
                g["lr"] = spec.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
            batch = sampler.train_batch(spec.batch_size)
            with torch.no_grad():
                t_out = _forward(teacher, batch)
            s_out = _forward(student, batch)
            feats = taps.pairs() if taps is not None else []
            loss = sum(w * fns[k](s_out, t_out, feats, data_range) for k, w in weights.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            if masks:
                apply_masks(student, masks)
            lv = float(loss)
            if not math.isfinite(lv):
                log.warning("distill.nonfinite_loss step=%d; keeping the best student so far", step)
                result.stopped_by = "non-finite loss"
                break
            running = lv if step == 1 else 0.9 * running + 0.1 * lv
            timed = eval_seconds is not None and time.perf_counter() - start >= next_eval
            if step % eval_every == 0 or step == steps or timed:
                best_state = evaluate(step, running, best_state)
                if eval_seconds is not None:
                    next_eval = time.perf_counter() - start + eval_seconds
            if progress is not None:
                el = time.perf_counter() - start
                eta = min((steps - step) * el / step, max(0.0, budget - el))
                progress(
                    Progress(
                        stage=Stage.DISTILL,
                        step=step + step_offset,
                        total=steps + step_offset,
                        loss=running,
                        eta_seconds=eta,
                    )
                )
    finally:
        if taps is not None:
            taps.close()
    result.steps = step
    if step > 0 and result.curve[-1]["step"] != step + step_offset:  # stopped between evaluations
        best_state = evaluate(step, running, best_state)
    result.seconds = time.perf_counter() - start
    result.samples_per_second = step * spec.batch_size / result.seconds if result.seconds > 0 else 0.0
    student.load_state_dict(best_state)
    log.info(
        "distill.done steps=%d seconds=%.1f best_step=%d best_score=%.4f stopped_by=%s",
        result.steps,
        result.seconds,
        result.best_step,
        result.best_score,
        result.stopped_by,
    )
    return result
