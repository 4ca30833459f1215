"""A tiny name -> object registry with loud, helpful errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from raydefense.errors import UnknownComponentError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lowercase names to components (classes or factory functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def deco(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    @contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """`obj` registered under `name` for the duration of a with-block (a plugin in a test,
        say), then removed."""
        self.register(name)(obj)
        try:
            yield obj
        finally:
            self._items.pop(name.lower(), None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
