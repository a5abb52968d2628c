"""Every extension point has one registry shape, and every registry is complete against its enum."""

from __future__ import annotations

import importlib
import pkgutil
from enum import StrEnum

import pytest

import worker.engine
from worker.engine import registry as R
from worker.errors import BadSpecError


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def _all_registries() -> list[R.Registry]:
    for mod in pkgutil.walk_packages(worker.engine.__path__, "worker.engine."):
        if not mod.name.endswith(("memory_probe", "__main__")):
            importlib.import_module(mod.name)
    return list(R.ALL)


def test_every_registry_is_complete_against_its_enum() -> None:
    found = {r.kind: r for r in _all_registries() if r.keys is not Colour}
    expected = {
        "criterion", "loss", "metric", "quantize mode", "prune method", "allocation", "importer", "recovery",
    }  # fmt: skip
    assert expected <= set(found)
    for kind, reg in found.items():
        assert not reg.missing(), f"{kind}: no implementation for {reg.missing()}"


def test_a_registry_refuses_duplicates_and_names_the_valid_choices() -> None:
    reg: R.Registry[Colour, int] = R.Registry("colour", Colour, BadSpecError)

    @reg.register(Colour.RED)
    def red() -> int:
        return 1

    reg.add("blue", 2)
    assert reg.get("red") is red and reg[Colour.BLUE] == 2 and "blue" in reg and "green" not in reg
    assert reg.names() == ["red", "blue"] and not reg.missing()
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.add(Colour.RED, 3)
    with pytest.raises(BadSpecError, match="unknown colour 'green'; valid: red, blue"):
        reg.get("green")
    partial: R.Registry[Colour, int] = R.Registry("colour", Colour)
    partial.add(Colour.BLUE, 1)
    assert partial.missing() == [Colour.RED]
    with pytest.raises(KeyError):
        partial.get(Colour.RED)
