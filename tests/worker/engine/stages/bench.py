"""A workbench around an imported model, for the stage functions that need only part of one."""

from __future__ import annotations

from typing import Any


def bench_for(imported: Any, sampler: Any, budget: Any = None) -> Any:
    """A workbench around ``imported`` for the stage functions that need only part of it."""
    from worker.engine.budget import Budget
    from worker.engine.stages.setup import Workbench, forward

    teacher = imported.module.eval()  # type: ignore[attr-defined]
    heldout = sampler.heldout(2)  # type: ignore[attr-defined]
    example = sampler.train_batch(2)  # type: ignore[attr-defined]
    return Workbench(
        imported=imported,  # type: ignore[arg-type]
        teacher=teacher,
        student=teacher,
        sampler=sampler,  # type: ignore[arg-type]
        heldout=heldout,
        teacher_heldout=forward(teacher, heldout),
        data_range=2.0,
        example=example,
        small=example,
        budget=budget or Budget(60.0),  # type: ignore[arg-type]
        emit=lambda p: None,
        stop=lambda: False,
    )
