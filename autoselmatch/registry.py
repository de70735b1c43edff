"""Named registries: every choice a user makes by name (dataset, model, score,
selection strategy, search strategy, pruner) is looked up in one of these.

    MODELS = Registry("model")

    @MODELS.register("convnet")
    def convnet(*, channels: int, num_classes: int, ...) -> nn.Module: ...

    MODELS.get("convnet")      # the builder
    MODELS.names()             # ["convnet", ...]

An unknown name raises :class:`UnknownNameError` listing the known ones.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import InvalidArgument

T = TypeVar("T")


class UnknownNameError(InvalidArgument):
    """A name that is not in a registry; the message lists the allowed names."""


class Registry(Generic[T]):
    """A mapping from names to builders of one kind.

    Args:
        kind: What the registry holds ("dataset", "model", ...); used in error
            messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (lower case)."""

        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry registered under ``name`` (case-insensitive)."""
        key = name.lower()
        if key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries
