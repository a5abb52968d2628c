"""Closed-form recovery after pruning: refit each layer by least squares, input to output.

Channel pruning removes inputs of the layers downstream; a few gradient steps cannot repair that
on a CPU budget, but a linear solve can (He et al. 2017, "Channel Pruning for Accelerating Very
Deep Neural Networks"; ThiNet). For every Conv / ConvTranspose / Linear layer, in the order the
student runs them, we take

- ``X``: the layer's input in the *student* (whose upstream layers are already refitted, so errors
  do not accumulate), as im2col rows at sampled output positions;
- ``Y``: the *teacher's* output of the same layer (pre-activation, pre-normalisation) at the same
  positions, restricted to the output channels the student kept;

and solve the ridge-regularised least squares ``min ||X W + b - Y||^2 + lam ||W||^2`` per group of
a grouped convolution. A ConvTranspose is refitted as the ordinary convolution it equals over its
zero-spaced, padded input. One teacher pass caches the targets; one student pass refits every
layer from a forward pre-hook, just before that layer runs, so the whole recovery costs two
forward passes over the calibration batch plus one small solve per layer.

Normalisation layers keep their statistics: each refitted conv reproduces the teacher's
pre-normalisation output on its kept channels, which is what those statistics describe.
A layer is only changed when the fit lowers its own error on the sampled rows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from worker.engine.im2col import (
    conv_form_weight,
    layer_rows,
    output_rows,
    sample_positions,
    set_conv_form_weight,
)
from worker.engine.rewrite import Demodulation

log = logging.getLogger(__name__)

RIDGE = 1e-3  # lam = RIDGE * mean diagonal of X^T X (scale-free), when a fixed ridge is asked for
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # the automatic ridge is chosen from these per layer
VALIDATE_EVERY = 4  # every 4th calibration sample's rows choose the ridge
# Sampled output positions per layer. Fewer make a noisier Gram matrix, and a deep network's refit
# compounds that noise: on the pretrained 96-layer RRDB (32 crops of 40 px, ratio 0.5) held-out
# output MSE went from 0.24 (pruned) to 4.6e11 with 8192 rows (the refit was undone), 3.4e6 with
# 13,824 for the widest layers only, and 0.060 with 32768 for every layer (SSIM 0.11 -> 0.75).
# srresnet -10% and CycleGAN 128 -8% MSE as well; the Gram matrices cost 4x, a few seconds there.
# A wider layer (D weights per output channel, past GRAM_FULL_D) gets fewer, down to MIN_ROWS, so
# that its Gram matrix (rows x D^2) costs no more than one of D = GRAM_FULL_D: what 8192 rows cost
# at D = 2048, the rows every layer had before.
MAX_ROWS, MIN_ROWS, GRAM_FULL_D = 32768, 8192, 1024
FLOAT64_GRAM_MAX = 512  # wider Gram matrices are accumulated in float32 (2x faster), solved in float64
REFITTABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class RecoveryResult:
    """What ``recover`` did; ``error_before`` / ``error_after`` are relative squared errors of each
    refitted layer's output against the teacher's on the sampled rows, summed over layers."""

    refitted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    rows: int = 0
    seconds: float = 0.0
    stopped_by: str | None = None  # "deadline" when time ran out before the last layer
    error_before: float = 0.0
    error_after: float = 0.0


# --- which teacher channels each student layer kept -------------------------------------------


@contextlib.contextmanager
def track_kept_channels(model: nn.Module) -> Iterator[dict[str, list[int]]]:
    """While active, record every output-channel removal Torch-Pruning makes on ``model``'s
    Conv / Linear layers; yields layer name -> indices (in the original layer) of the kept
    output channels, updated as pruning goes. Every removal goes through
    ``tp.Dependency.__call__`` (groups, iterative rounds, our aligned-block pruning alike)."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, REFITTABLE)}
    kept: dict[str, list[int]] = {n: list(range(_out_channels(m))) for m, n in names.items()}
    original = tp.dependency.Dependency.__call__

    def call(dep: tp.dependency.Dependency, idxs: list) -> object:
        module = dep.target.module
        if module in names and getattr(dep.handler, "__name__", "") == "prune_out_channels":
            plain = tp._helpers.to_plain_idxs(idxs) if idxs and not isinstance(idxs[0], int) else idxs
            gone = {int(i) for i in plain}
            ids = kept[names[module]]
            kept[names[module]] = [c for pos, c in enumerate(ids) if pos not in gone]
        return original(dep, idxs)

    tp.dependency.Dependency.__call__ = call  # type: ignore[method-assign]
    try:
        yield kept
    finally:
        tp.dependency.Dependency.__call__ = original  # type: ignore[method-assign]


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else int(m.out_channels)  # type: ignore[arg-type]


# --- the solve ----------------------------------------------------------------------------------


def _grams(
    x: torch.Tensor, y: torch.Tensor, groups: int, with_bias: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per group: ``(A, B) = (X^T X, X^T Y)`` in float64, ``X`` with a column of ones when the
    layer has a bias."""
    p, d, cog = x.shape[0], x.shape[1] // groups, y.shape[1] // groups
    gram_dtype = torch.float64 if d <= FLOAT64_GRAM_MAX else torch.float32
    out = []
    for g in range(groups):
        xg = x[:, g * d : (g + 1) * d].to(gram_dtype)
        yg = y[:, g * cog : (g + 1) * cog].to(gram_dtype)
        if with_bias:
            xg = torch.cat([xg, xg.new_ones(p, 1)], dim=1)
        out.append(((xg.T @ xg).double(), (xg.T @ yg).double()))
    return out


def _solve(
    grams: list[tuple[torch.Tensor, torch.Tensor]],
    d: int,
    ridge: float,
    prior: torch.Tensor | None,
    with_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``argmin ||X W^T + b - Y||^2 + lam ||W - prior||^2`` per group from its Gram matrices;
    ``lam = ridge * mean diagonal of X^T X`` (scale-free); the bias is not regularised."""
    ws, bs = [], []
    for g, (a, b) in enumerate(grams):
        cog = b.shape[1]
        lam = ridge * float(a.diagonal()[:d].mean().clamp_min(1e-12))
        a = a.clone()
        a.diagonal()[:d] += lam
        if prior is not None:
            b = b.clone()
            b[:d] += lam * prior[g * cog : (g + 1) * cog].T.double()
        sol = torch.linalg.solve(a, b)  # [D(+1), cog]
        ws.append(sol[:d].T)
        if with_bias:
            bs.append(sol[d])
    return torch.cat(ws).float(), (torch.cat(bs).float() if with_bias else None)


def ridge_fit(
    x: torch.Tensor,
    y: torch.Tensor,
    groups: int,
    with_bias: bool,
    ridge: float = RIDGE,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least squares ``y ~ x W^T + b`` per group, shrunk towards ``prior`` (``[Cout, D]``; zero
    when None): ``x [P, g*D]``, ``y [P, Cout]`` -> (``W [Cout, D]``, ``b [Cout]`` or None)."""
    return _solve(_grams(x, y, groups, with_bias), x.shape[1] // groups, ridge, prior, with_bias)


def _predict(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, groups: int) -> torch.Tensor:
    d, cog = x.shape[1] // groups, w.shape[0] // groups
    parts = [x[:, g * d : (g + 1) * d] @ w[g * cog : (g + 1) * cog].T for g in range(groups)]
    out = torch.cat(parts, dim=1)
    return out + b if b is not None else out


def _error(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, groups: int, scale: float
) -> float:
    return float((_predict(x, w, b, groups) - y).pow(2).mean()) / scale


def refit_layer(
    layer: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ridge: float | None = RIDGE,
    validate: torch.Tensor | None = None,
    to_pruned: bool = True,
) -> tuple[float, float]:
    """Refit ``layer`` so its output rows match ``y`` given input rows ``x``, shrinking towards
    its current (pruned) weights rather than towards zero: where the rows say little, the teacher's
    own weights on the kept channels are the better guess. Returns (relative error before, after);
    the old weights stay when the fit is not better.

    ``validate`` (a boolean mask over the rows, rows of other samples than the rest): the ridge is
    then chosen from ``RIDGE_GRID`` by the error on those rows of a fit on the others, the final
    fit uses all rows, and the errors returned are the validation rows' (what generalises, not
    what was fitted). ``ridge=None`` needs ``validate``. ``to_pruned=False`` shrinks towards zero
    (plain ridge regression, the first version of this step; kept for the benchmark)."""
    groups = int(getattr(layer, "groups", 1))
    bias = layer.bias
    w0 = conv_form_weight(layer)
    prior = w0 if to_pruned else None
    b0 = bias.detach() if bias is not None else None
    d, with_bias = x.shape[1] // groups, bias is not None
    if validate is not None and bool(validate.any()) and bool((~validate).any()):
        xv, yv = x[validate], y[validate]
        scale = float(yv.pow(2).mean().clamp_min(1e-12))
        before = _error(xv, yv, w0, b0, groups, scale)
        grams = _grams(x[~validate], y[~validate], groups, with_bias)
        grid = RIDGE_GRID if ridge is None else (ridge,)
        tried = {r: _error(xv, yv, *_solve(grams, d, r, prior, with_bias), groups, scale) for r in grid}
        ridge = min(tried, key=lambda r: tried[r])
        after = tried[ridge]
        if not (after < before):
            return before, before
        # the final fit on all rows: the validation rows' Gram matrices added to the others'
        held = _grams(xv, yv, groups, with_bias)
        w, b = _solve(
            [(a + av, c + cv) for (a, c), (av, cv) in zip(grams, held, strict=True)],
            d,
            ridge,
            prior,
            with_bias,
        )
    else:
        if ridge is None:
            raise ValueError("an automatic ridge needs validation rows")
        scale = float(y.pow(2).mean().clamp_min(1e-12))
        before = _error(x, y, w0, b0, groups, scale)
        w, b = ridge_fit(x, y, groups, with_bias, ridge, prior)
        after = _error(x, y, w, b, groups, scale)
        if not (after < before):
            return before, before
    if not torch.isfinite(w).all():
        return before, before
    with torch.no_grad():
        set_conv_form_weight(layer, w)
        if bias is not None and b is not None:
            bias.copy_(b)
    return before, after


def validation_rows(pos: torch.Tensor, every: int = VALIDATE_EVERY) -> torch.Tensor:
    """Rows of every ``every``-th sample (4-d positions: the batch index; otherwise the row)."""
    return (pos[:, 0] % every) == 0


# --- the two passes -----------------------------------------------------------------------------


def refittable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers recovery may refit: plain Conv2d / ConvTranspose2d / Linear whose weight nothing
    else reads (a StyleGAN demodulation reads its modulated conv's weight: both are left)."""
    tied = {id(m.conv) for m in model.modules() if isinstance(m, Demodulation)}
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, REFITTABLE) and not isinstance(m, Demodulation) and id(m) not in tied
    }


def rows_for(layer: nn.Module, rows: int = MAX_ROWS) -> int:
    """Sampled output positions for refitting ``layer``: ``rows``, fewer for a layer wider than
    ``GRAM_FULL_D`` (its Gram matrix costs rows x D^2), never fewer than ``MIN_ROWS`` (or ``rows``
    when that is less)."""
    d = conv_form_weight(layer).shape[1]
    if d <= GRAM_FULL_D:
        return rows
    return max(min(rows, MIN_ROWS), int(rows * (GRAM_FULL_D / d) ** 2))


def _teacher_targets(
    teacher: nn.Module,
    names: list[str],
    kept: dict[str, list[int]],
    batch: dict[str, torch.Tensor],
    rows: int,
    seed: int,
    layers: dict[str, nn.Module],
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, str]]:
    """One teacher pass: layer -> (positions, target rows on the kept channels); ``layers``: the
    student's, whose width sets how many rows each gets (``rows_for``)."""
    gen = torch.Generator().manual_seed(seed)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    skipped: dict[str, str] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            if name in targets:
                skipped[name] = "runs more than once per forward pass (shared layer)"
                return
            pos = sample_positions(out, rows_for(layers[name], rows), gen)
            ids = torch.tensor(kept[name]) if name in kept else None
            y = output_rows(out, pos)
            targets[name] = (pos, y[:, ids] if ids is not None else y.clone())

        return fn

    handles = [teacher.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            teacher(*batch.values())
    finally:
        for h in handles:
            h.remove()
    for n in skipped:
        targets.pop(n, None)
    return targets, skipped


def recover(
    teacher: nn.Module,
    student: nn.Module,
    kept: dict[str, list[int]],
    batch: dict[str, torch.Tensor],
    *,
    deadline: float | None = None,
    rows: int = MAX_ROWS,
    ridge: float | None = None,
    seed: int = 0,
    to_pruned: bool = True,
) -> RecoveryResult:
    """Refit the student's layers in place (see the module docstring). ``kept``: layer -> teacher
    indices of its kept output channels (layers not named kept all of them). ``deadline``: a
    ``time.perf_counter()`` value after which no further layer is refitted."""
    t0 = time.perf_counter()
    result = RecoveryResult(samples=len(next(iter(batch.values()))), rows=rows)
    t_layers = refittable_layers(teacher)
    s_layers = refittable_layers(student)
    names = [n for n in s_layers if n in t_layers]
    for n in names:
        if n in kept and len(kept[n]) != _out_channels(s_layers[n]):
            result.skipped[n] = "its kept channels could not be traced through pruning"
        elif isinstance(s_layers[n], nn.Conv2d | nn.ConvTranspose2d) and isinstance(s_layers[n].padding, str):
            result.skipped[n] = f"padding {s_layers[n].padding!r}"
    names = [n for n in names if n not in result.skipped]
    targets, shared = _teacher_targets(teacher, names, kept, batch, rows, seed, s_layers)
    result.skipped.update(shared)
    seen: set[str] = set()

    def pre_hook(name: str) -> Callable[..., None]:
        def fn(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if name in seen or name not in targets:
                return
            seen.add(name)
            if deadline is not None and time.perf_counter() > deadline:
                result.stopped_by = "deadline"
                result.skipped[name] = "the recovery time share ran out"
                return
            pos, y = targets.pop(name)
            try:
                x = layer_rows(layer, args[0], pos)
                before, after = refit_layer(layer, x, y, ridge, validation_rows(pos), to_pruned)
            except (RuntimeError, ValueError) as e:  # singular system, odd geometry: leave it
                result.skipped[name] = f"not refitted: {str(e).splitlines()[0][:120]}"
                return
            result.error_before += before
            result.error_after += after
            result.refitted.append(name)

        return fn

    handles = [s_layers[n].register_forward_pre_hook(pre_hook(n)) for n in names]
    try:
        with torch.no_grad():
            student(*batch.values())
    finally:
        for h in handles:
            h.remove()
    result.seconds = time.perf_counter() - t0
    log.info(
        "recover.done layers=%d skipped=%d samples=%d seconds=%.1f error=%.4f->%.4f",
        len(result.refitted),
        len(result.skipped),
        result.samples,
        result.seconds,
        result.error_before,
        result.error_after,
    )
    return result
