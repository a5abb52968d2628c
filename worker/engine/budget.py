"""The job's time budget: one clock from import to report, with bounded shares per stage.

``distill.budget_seconds`` bounds the whole job. Stages that scale with the model (sensitivity
trials, recovery, latency runs) get a stated share; distillation gets what is left after a reserve
for export, measurement and the report, estimated from the teacher's measured forward time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Shares of the budget (upper bounds; a stage that needs less leaves the rest to distillation).
PRUNE_SHARE = 0.20  # layer probing + sensitivity allocation
RECOVER_SHARE = 0.30  # the cheapest quality there is on a CPU: worth more than the steps it displaces
LATENCY_SHARE = 0.08  # latency rounds in the measure stage
LATENCY_MIN_SECONDS, LATENCY_MAX_SECONDS = 2.0, 20.0
FINISH_FIXED_SECONDS = 4.0  # export, onnxslim, checker, report files: the part that does not scale
FINISH_FORWARDS = 6  # held-out forward passes the finish stages cost (parity, quality x2, memory, ...)
LATENCY_FORWARDS = 300  # single-input forwards of the latency rounds (2 models x 2 thread counts)


@dataclass
class Budget:
    """``total`` seconds from ``start`` (a ``time.perf_counter()`` value)."""

    total: float
    start: float = field(default_factory=time.perf_counter)
    heldout_forward_seconds: float = 0.0  # teacher, torch, the held-out batch: the unit of cost
    heldout_size: int = 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def end(self) -> float:
        return self.start + self.total

    def left(self) -> float:
        return max(0.0, self.end() - time.perf_counter())

    def share_deadline(self, share: float) -> float:
        """A deadline ``share`` of the total from now, never past the end less the finish reserve."""
        return min(time.perf_counter() + share * self.total, self.end() - self.finish_reserve())

    def per_sample_seconds(self) -> float:
        return self.heldout_forward_seconds / max(1, self.heldout_size)

    def latency_seconds(self) -> float:
        """The cap on the latency rounds."""
        return min(LATENCY_MAX_SECONDS, max(LATENCY_MIN_SECONDS, LATENCY_SHARE * self.total))

    def finish_reserve(self) -> float:
        """Seconds kept for export, measurement, quality and the report."""
        latency = min(self.latency_seconds(), 0.5 + LATENCY_FORWARDS * self.per_sample_seconds())
        return FINISH_FIXED_SECONDS + latency + FINISH_FORWARDS * self.heldout_forward_seconds

    def distill_seconds(self) -> float:
        """What distillation may spend now: everything left but the finish reserve."""
        return max(0.0, self.left() - self.finish_reserve())
