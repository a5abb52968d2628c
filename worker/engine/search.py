"""Target search, the decisions: which compression levels to try, whether a candidate meets the
targets, the latency-quality front, and which candidate to ship (torch-free; the stage that prunes,
trains and measures the candidates is ``worker.engine.stages.search``).

The level of a candidate is the channel ratio it stands for (with ``sensitivity`` or ``latency``
allocation: the budget that uniform pruning at that ratio leaves). Latency and size fall as the
level rises and quality falls, so both are searched by bisection over ``GRID``: cost targets on
untrained ("structural") candidates, whose latency and size do not depend on their weights; quality
targets on candidates refitted and briefly distilled, all for the same seconds so that they rank
fairly. Then one finer level between the best level that met and the first that missed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from worker.report_schema import SearchCandidate
from worker.spec import MAX_CHANNEL_RATIO, TargetSpec

GRID: tuple[float, ...] = tuple(r for r in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75) if r <= MAX_CHANNEL_RATIO)
SWEEP_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75)  # a sweep without a target: these and the asked ratio

TIE = 0.01  # relative shortfalls this close rank as equal (then the faster candidate wins)
# Projection of a short-trained candidate's SSIM to the pick's training time: the fitted power law's
# exponent is capped, and only this share of the projected gain is counted (a safety margin). On
# animevideov3 x4 the level-0.5 candidate measured 0.9498 after 19 s; the whole projected gain was
# +0.0087 for 67 s more, the shipped model gained +0.012: half the gain was too timid (level 0.625
# fell 0.0002 short and 0.75, which a 60 s single run brings to 0.950, was never tried). On srresnet
# level 0.4375 measured 0.877 after 9 s and 80% of its projection reached only 0.947, while a 60 s
# single run brings even 0.75 past 0.95: the fitted law already errs short, so all of it counts.
MAX_EXPONENT, GAIN_COUNTED, MIN_CURVE_POINTS = 0.7, 1.0, 3

_COST_FIELDS = {
    "max_latency_ms": ("latency_ms", "<=", "ms"),
    "max_size_mb": ("size_mb", "<=", "MB"),
    "min_speedup": ("speedup", ">=", "x"),
}
_QUALITY_FIELDS = {"min_ssim": ("ssim", ">=", ""), "min_psnr": ("psnr", ">=", " dB")}


def _value(c: SearchCandidate, metric: str) -> float | None:
    if metric == "size_mb":
        return c.size_bytes / 1e6
    v = getattr(c, metric)
    return None if v is None else float(v)


def _check(
    c: SearchCandidate, fields: dict[str, tuple[str, str, str]], target: TargetSpec
) -> list[str] | None:
    """Targets of ``fields`` that ``c`` misses, as text; None when one of them was not measured."""
    return _misses({m: _value(c, m) for m, _, _ in fields.values()}, fields, target)


def _misses(
    values: dict[str, float | None], fields: dict[str, tuple[str, str, str]], target: TargetSpec
) -> list[str] | None:
    misses = []
    for name, (metric, op, unit) in fields.items():
        want = getattr(target, name)
        if want is None:
            continue
        got = values.get(metric)
        if got is None:
            return None
        ok = got >= want if op == ">=" else got <= want
        if not ok:
            misses.append(f"{metric} {got:.4g}{unit} {'<' if op == '>=' else '>'} {want:g}{unit}")
    return misses


def final_misses(
    values: dict[str, float | None], target: TargetSpec, quality_only: bool = False
) -> list[str]:
    """Targets the shipped model misses, from the report's own measurements (``values``: ssim, psnr,
    latency_ms, size_mb, speedup); a target whose metric was not measured counts as missed."""
    out: list[str] = []
    for fields in (_QUALITY_FIELDS,) if quality_only else (_COST_FIELDS, _QUALITY_FIELDS):
        for name, (metric, _, _) in fields.items():
            if getattr(target, name) is None:
                continue
            got = _misses({metric: values.get(metric)}, {name: fields[name]}, target)
            out += [f"{metric} not measured"] if got is None else got
    return out


def meets_cost(c: SearchCandidate, target: TargetSpec) -> bool:
    return _check(c, _COST_FIELDS, target) == []


def judge(c: SearchCandidate, target: TargetSpec | None) -> None:
    """Fill ``c.meets`` and ``c.misses``. ``meets`` is None while a quality target is unmeasured
    (a structural candidate), unless a cost target already fails."""
    if target is None:
        c.meets, c.misses = (None if c.ssim is None and c.psnr is None else True), []
        return
    cost = _check(c, _COST_FIELDS, target) or []
    quality = _check(c, _QUALITY_FIELDS, target)
    c.misses = cost + (quality or [])
    if quality is None:
        c.meets = False if cost else None
    else:
        c.meets = not c.misses


def project_ssim(
    ssim: float, curve: Sequence[tuple[float, float]], train_seconds: float, final_seconds: float
) -> float | None:
    """The SSIM a candidate measured at ``ssim`` after ``train_seconds`` would reach after
    ``final_seconds`` of training, from its learning curve ``curve`` ((seconds, held-out SSIM)
    pairs): the error 1 - SSIM fitted as ``a * t^-k`` on the curve's last two thirds (least squares in
    log-log; the cosine schedule's flat end makes ``k`` low, so the projection errs short), ``k``
    capped at ``MAX_EXPONENT``, and ``GAIN_COUNTED`` of the projected gain counted. None when the
    curve is too short or does not fall."""
    pts = [(t, 1.0 - q) for t, q in curve if t > 0 and q < 1.0]
    pts = pts[len(pts) // 3 :]
    if len(pts) < MIN_CURVE_POINTS or final_seconds <= train_seconds or ssim >= 1.0:
        return None
    xs = [math.log(t) for t, _ in pts]
    ys = [math.log(e) for _, e in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return None
    k = -sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    if k <= 0:
        return None
    k = min(k, MAX_EXPONENT)
    err = (1.0 - ssim) * (final_seconds / max(train_seconds, 1e-6)) ** -k
    return ssim + GAIN_COUNTED * ((1.0 - err) - ssim)


def judge_projected(c: SearchCandidate, target: TargetSpec | None) -> None:
    """``meets_projected``: every target met with ``ssim_projected`` for ``ssim`` (None without a
    projection, or when a PSNR target has none)."""
    if target is None or c.ssim_projected is None or target.min_psnr is not None:
        c.meets_projected = None
        return
    c.meets_projected = not _check(
        c.model_copy(update={"ssim": c.ssim_projected}), _COST_FIELDS | _QUALITY_FIELDS, target
    )


def passes(c: SearchCandidate) -> bool:
    """Met every target when measured, or will by its projection."""
    return bool(c.meets or c.meets_projected)


def quality_of(c: SearchCandidate) -> float | None:
    """What ranks candidates by quality: SSIM, or PSNR where there is no SSIM."""
    return c.ssim if c.ssim is not None else c.psnr


def mark_front(cands: Sequence[SearchCandidate]) -> None:
    """``pareto``: measured candidates no other candidate beats on both latency and quality."""
    measured = [c for c in cands if quality_of(c) is not None]
    for c in cands:
        q = quality_of(c)
        c.pareto = q is not None and not any(
            o is not c
            and o.latency_ms <= c.latency_ms
            and (quality_of(o) or 0.0) >= q
            and (o.latency_ms < c.latency_ms or (quality_of(o) or 0.0) > q)
            for o in measured
        )


def shortfall(c: SearchCandidate, target: TargetSpec) -> float:
    """How far ``c`` is from meeting every target: the sum of relative misses (0 when it meets)."""
    total = 0.0
    for fields in (_COST_FIELDS, _QUALITY_FIELDS):
        for name, (metric, op, _) in fields.items():
            want = getattr(target, name)
            got = _value(c, metric)
            if want is None:
                continue
            if got is None:
                total += 1.0
                continue
            miss = (want - got) if op == ">=" else (got - want)
            total += max(0.0, miss) / max(abs(want), 1e-9)
    return total


def choose(
    cands: Sequence[SearchCandidate], target: TargetSpec | None, default_level: float | None = None
) -> tuple[SearchCandidate, bool, str]:
    """(pick, met, why). With quality targets: the fastest candidate that meets every target; with
    cost targets only: the best quality among those that meet them; none meets: the closest (least
    ``shortfall``). No target (a sweep): the candidate at ``default_level``."""
    measured = [c for c in cands if quality_of(c) is not None]
    if not measured:
        raise ValueError("no candidate was measured")
    if target is None:
        level = default_level if default_level is not None else 0.5
        pick = min(measured, key=lambda c: (abs(c.level - level), c.quantize != "none"))
        return (
            pick,
            True,
            f"no target: the candidate at the asked ratio {level:g} (a sweep returns every candidate)",
        )
    ok = [c for c in measured if c.meets]
    if target.quality_targets() and any(passes(c) for c in measured):
        ok = [c for c in measured if passes(c)]
        pick = min(ok, key=lambda c: (c.latency_ms, -(quality_of(c) or 0.0)))
        how = (
            "meets every target"
            if pick.meets
            else f"is projected to meet them with the rest of the budget (SSIM {pick.ssim_projected:.4f})"
        )
        return (
            pick,
            bool(pick.meets),
            (
                f"the fastest of {len(ok)} candidates that meet every target or are projected to: "
                f"{pick.latency_ms:.3g} ms at 1 thread ({pick.speedup:.2f}x), {_quality_text(pick)}; it {how}"
            ),
        )
    if ok:
        pick = max(ok, key=lambda c: (quality_of(c) or 0.0, -c.latency_ms))
        return (
            pick,
            True,
            (
                f"the best quality of {len(ok)} candidates that meet every target: {_quality_text(pick)} at "
                f"{pick.latency_ms:.3g} ms"
            ),
        )
    # shortfalls within TIE of each other are measurement noise: the faster one is closer
    pick = min(measured, key=lambda c: (round(shortfall(c, target) / TIE), c.latency_ms))
    return (
        pick,
        False,
        (
            f"no candidate met every target; the closest is shipped ({'; '.join(pick.misses) or 'unmeasured'}). "
            "What would help: a longer budget_seconds (more distillation for the pick and its rivals), a looser "
            "target, a GPU worker, or more calibration images."
        ),
    )


def _quality_text(c: SearchCandidate) -> str:
    parts = []
    if c.ssim is not None:
        parts.append(f"SSIM {c.ssim:.4f}")
    if c.psnr is not None:
        parts.append(f"PSNR {c.psnr:.2f} dB")
    return ", ".join(parts)


def bisect_index(lo: int, hi: int) -> int:
    """The index to try next between ``lo`` and ``hi`` (inclusive)."""
    return (lo + hi) // 2


def between(levels: Iterable[float], met: float | None, missed: float | None) -> float | None:
    """A finer level halfway between the best level that met and the first that missed, or None
    when they are not neighbours on the grid or the level was already tried."""
    if met is None or missed is None or missed <= met:
        return None
    mid = round((met + missed) / 2, 4)
    tried = set(levels)
    return None if mid in tried or mid - met < 0.03 else mid


def fallback(
    cands: Sequence[SearchCandidate],
    pick: SearchCandidate,
    values: dict[str, float | None],
    target: TargetSpec | None,
) -> tuple[SearchCandidate, str] | None:
    """When ``pick`` was shipped on its projection and, distilled for the rest of the budget,
    measures ``values`` (held-out ssim / psnr) that miss a quality target: the fastest candidate
    that met every target as measured in the search, and why it replaces the pick; else None (the
    pick met as measured, still meets, or no candidate met)."""
    if target is None or not target.quality_targets() or pick.meets:
        return None
    misses = final_misses(values, target, quality_only=True)
    if not misses:
        return None
    met = [c for c in cands if c.meets and c is not pick]
    if not met:
        return None
    best = min(met, key=lambda c: (c.latency_ms, -(quality_of(c) or 0.0)))
    projected = "" if pick.ssim_projected is None else f" (SSIM {pick.ssim_projected:.4f})"
    return best, (
        f"{pick.id} was projected to meet the targets{projected} but, distilled for the rest of the budget, "
        f"missed them on the held-out inputs ({'; '.join(misses)}); shipped instead: {best.id}, "
        f"the fastest candidate that met every target as measured in the search: {best.latency_ms:.3g} ms at "
        f"1 thread ({best.speedup:.2f}x), {_quality_text(best)}"
    )
