"""The catalogue metadata (worker/core/catalog.py): one entry per enum member, parameters that are
real spec fields and agree with the spec's validator, and metric units and directions that agree
with the engine's metric registry."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import pytest
from pydantic import ValidationError

from worker.core.catalog import CRITERIA, LOSSES, METRICS, PRUNE_METHODS, QUANTIZE, Info, described
from worker.spec import Criterion, ExportSpec, LossName, MetricName, PruneMethod, PruneSpec, Quantize

TABLES: list[tuple[type[StrEnum], Mapping[Any, Info]]] = [
    (PruneMethod, PRUNE_METHODS),
    (Criterion, CRITERIA),
    (LossName, LOSSES),
    (MetricName, METRICS),
    (Quantize, QUANTIZE),
]


@pytest.mark.parametrize(("enum", "table"), TABLES, ids=[e.__name__ for e, _ in TABLES])
def test_every_member_is_described_once_in_enum_order(enum: type[StrEnum], table: Mapping[Any, Info]) -> None:
    assert list(table) == list(enum)
    for member, info in table.items():
        assert info.description.strip() and info.description.endswith("."), member


def test_a_missing_member_or_a_stranger_is_refused() -> None:
    full: dict[Any, Info] = {c: Info(description="x.") for c in Criterion}
    assert list(described(Criterion, full)) == list(Criterion)
    partial = {c: i for c, i in full.items() if c != Criterion.RANDOM}
    with pytest.raises(TypeError, match=r"no description for \['random'\]"):
        described(Criterion, partial)
    with pytest.raises(TypeError, match=r"not members: \['mse'\]"):
        described(Criterion, {**full, LossName.MSE: Info(description="x.")})
    table: Any = described(Criterion, full)
    with pytest.raises(TypeError):  # read-only
        table[Criterion.L1] = Info(description="y.")


def test_parameters_are_fields_of_the_spec() -> None:
    prune_fields = set(PruneSpec.model_fields) - {"method"}
    for m, info in PRUNE_METHODS.items():
        assert set(info.parameters) <= prune_fields, m
    used = {p for info in PRUNE_METHODS.values() for p in info.parameters}
    assert used == prune_fields, f"applies to no method: {prune_fields - used}"
    for q, info in QUANTIZE.items():
        assert set(info.parameters) <= set(ExportSpec.model_fields) - {"quantize"}, q
    for table in (CRITERIA, LOSSES, METRICS):
        assert all(not info.parameters for info in table.values())


@pytest.mark.parametrize("method", list(PruneMethod))
@pytest.mark.parametrize(("field", "value"), [("target_macs", 1000), ("blocks", 1)])
def test_the_method_only_fields_agree_with_the_validator(method: PruneMethod, field: str, value: int) -> None:
    """The fields the spec refuses for some methods are listed exactly for the methods that take them."""
    applies = field in PRUNE_METHODS[method].parameters
    try:
        PruneSpec.model_validate({"method": method, "ratio": 0.5, field: value})
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == applies


@pytest.mark.parametrize("name", list(MetricName))
def test_metric_units_and_directions_match_the_engine(name: MetricName) -> None:
    from worker.engine.quality import metrics

    engine = metrics.get(name)
    assert (METRICS[name].unit, METRICS[name].higher_is_better) == (engine.unit, engine.higher_is_better)
