"""A tiny name -> builder registry, shared by models and feature extractors.

Like timm's ``create_model``: builders register themselves with a decorator, callers
ask for them by the name a user types on the command line.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any, Generic, TypeVar

from unmask.errors import UnmaskError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builder callables; unknown names fail with the list of known ones.

    ``modules``: modules that register builders when imported, imported at the first look-up,
    so that importing the registry costs nothing of theirs (torch, scikit-learn).
    """

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}
        self._modules = modules

    def _load(self) -> None:
        while self._modules:  # one that fails to import stays, and fails again at the next look-up
            import_module(self._modules[0])
            self._modules = self._modules[1:]

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
        self._load()
        if not isinstance(name, str) or name not in self._builders:
            raise UnmaskError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._builders[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._builders)

    def describe(self) -> dict[str, str]:
        return {name: self._help[name] for name in self.names()}

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._builders
