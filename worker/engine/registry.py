"""One shape for every extension point of the engine: an enum of the spec names the choices, a
``Registry`` maps each member to its implementation.

    LOSSES: Registry[LossName, LossFn] = Registry("loss", LossName, BadSpecError)

    @LOSSES.register(LossName.L1)
    def _l1(...): ...

A registry refuses a second implementation for a name, answers an unknown name with the error
type it was given and the valid names, and ``missing()`` lists the enum members nothing was
registered for (``tests/worker/engine/test_registry.py`` asserts that is empty for every registry
in ``ALL``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=StrEnum)
V = TypeVar("V")

ALL: list[Registry[Any, Any]] = []  # every registry made, for the completeness test


class Registry(Generic[K, V]):
    """Enum member -> implementation (see the module docstring)."""

    def __init__(self, kind: str, keys: type[K], error: Callable[[str], Exception] = KeyError) -> None:
        self.kind = kind
        self.keys = keys
        self.error = error
        self._items: dict[K, V] = {}
        ALL.append(self)

    def add(self, key: K | str, value: V) -> V:
        k = self._key(key)
        if k in self._items:
            raise ValueError(f"{self.kind} {k.value!r} is already registered")
        self._items[k] = value
        return value

    def register(self, key: K | str) -> Callable[[V], V]:
        """Decorator form of ``add``."""

        def deco(value: V) -> V:
            return self.add(key, value)

        return deco

    def get(self, key: K | str) -> V:
        try:
            return self._items[self._key(key)]
        except (KeyError, ValueError):
            raise self.error(f"unknown {self.kind} {str(key)!r}; valid: {', '.join(self.names())}") from None

    __getitem__ = get

    def _key(self, key: K | str) -> K:
        return key if isinstance(key, self.keys) else self.keys(key)

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._items  # type: ignore[arg-type]
        except ValueError:
            return False

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[K, V]]:
        return list(self._items.items())

    def names(self) -> list[str]:
        return [k.value for k in self._items]

    def missing(self) -> list[K]:
        """Members of the enum with no implementation."""
        return [k for k in self.keys if k not in self._items]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
