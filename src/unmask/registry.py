"""A tiny name -> builder registry, shared by models and feature extractors.

Like timm's ``create_model``: builders register themselves with a decorator, callers
ask for them by the name a user types on the command line.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from unmask.errors import UnmaskError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builder callables; unknown names fail with the list of known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            doc = help or (builder.__doc__ or "").strip().splitlines()[0:1]
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return builder

        return decorator

    def create(self, name: str, **kwargs: Any) -> T:
        return self.builder(name)(**kwargs)

    def builder(self, name: str) -> Callable[..., T]:
        if not isinstance(name, str) or name not in self._builders:
            raise UnmaskError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._builders[name]

    def names(self) -> list[str]:
        return sorted(self._builders)

    def describe(self) -> dict[str, str]:
        return {name: self._help[name] for name in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._builders
