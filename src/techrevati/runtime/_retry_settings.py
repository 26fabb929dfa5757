"""The process-wide retry settings: the global recipes and testing mode.

Private to :mod:`~techrevati.runtime.retry_policy`, which re-exports the
public names. Both settings live on one object, :data:`SETTINGS`, that every
reader looks up at the time it decides, so there is one state however this
module is reached.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from techrevati.runtime._classify import FailureScenario
from techrevati.runtime._recipes import DEFAULT_RECIPES, RecoveryRecipe, _scenario
from techrevati.runtime._validate import int_at_least
from techrevati.runtime.errors import InvalidValueError

if TYPE_CHECKING:
    from techrevati.runtime._recovery_context import RecoveryContext

__all__ = [
    "SETTINGS",
    "is_testing",
    "recipe_for",
    "reset_recipes",
    "set_recipe",
    "set_testing",
    "testing",
]


@dataclass(frozen=True, slots=True)
class _Testing:
    enabled: bool = False
    attempts: int = 1


class _Settings:
    """The global recipes and the testing switch, each replaced whole under ``lock``."""

    __slots__ = ("lock", "recipes", "testing")

    def __init__(self) -> None:
        self.lock: Final = threading.Lock()
        self.recipes: Mapping[FailureScenario, RecoveryRecipe] = DEFAULT_RECIPES
        self.testing = _Testing()


SETTINGS: Final = _Settings()
"""The one settings object: read ``SETTINGS.recipes`` and ``SETTINGS.testing`` when deciding."""


def recipe_for(
    scenario: FailureScenario | str, ctx: RecoveryContext | None = None
) -> RecoveryRecipe:
    """Return the recipe for ``scenario``: ``ctx``'s override, else the global one."""
    if ctx is not None:
        return ctx.recipe_for(scenario)
    return SETTINGS.recipes[_scenario(scenario)]


def set_recipe(recipe: RecoveryRecipe) -> None:
    """Replace the global recipe of ``recipe.scenario`` (thread-safe; all contexts see it)."""
    if not isinstance(recipe, RecoveryRecipe):
        raise InvalidValueError(f"recipe must be a RecoveryRecipe, got {recipe!r}")
    with SETTINGS.lock:
        updated = dict(SETTINGS.recipes)
        updated[recipe.scenario] = recipe
        SETTINGS.recipes = MappingProxyType(updated)


def reset_recipes() -> None:
    """Restore :data:`DEFAULT_RECIPES` as the global recipes (thread-safe)."""
    with SETTINGS.lock:
        SETTINGS.recipes = DEFAULT_RECIPES


def set_testing(enabled: bool, *, attempts: int = 1) -> None:
    """Turn testing mode on or off for the whole process (thread-safe).

    While on, waits are zero (nothing sleeps) and every run makes at most
    ``attempts`` calls. Prefer the :func:`testing` context manager.
    """
    if not isinstance(enabled, bool):
        raise InvalidValueError(f"enabled must be a bool, got {enabled!r}")
    int_at_least("attempts", attempts, 1)
    with SETTINGS.lock:
        SETTINGS.testing = _Testing(enabled, attempts)


@contextmanager
def testing(*, attempts: int = 1) -> Iterator[None]:  # noqa: PT028 (not a test)
    """Testing mode inside a ``with`` block, restoring the previous state after it."""
    previous = SETTINGS.testing
    set_testing(True, attempts=attempts)
    try:
        yield
    finally:
        with SETTINGS.lock:
            SETTINGS.testing = previous


testing.__test__ = False  # type: ignore[attr-defined]  # pytest must not collect it


def is_testing() -> bool:
    """Whether testing mode is on."""
    return SETTINGS.testing.enabled
