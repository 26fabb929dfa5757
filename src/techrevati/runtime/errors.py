"""The root of every exception this library raises on its own behalf.

Catch :class:`TechrevatiError` to handle anything the runtime itself refused;
exceptions raised by *your* callables pass through unchanged. Specific errors
live beside the primitive that raises them (``lifecycle.InvalidTransitionError``,
``usage.BudgetExceededError``, ...) and are re-exported from
``techrevati.runtime``. Where a builtin fits, they subclass it too, so
``except ValueError`` or ``except TimeoutError`` keep working.
"""

from __future__ import annotations

__all__ = ["InvalidValueError", "TechrevatiError", "TransientRuntimeError"]


class TechrevatiError(Exception):
    """Base class of every error raised by ``techrevati.runtime`` itself."""


class InvalidValueError(TechrevatiError, ValueError):
    """A value given to the library is out of range or of the wrong shape.

    The message names the field and the bad value, e.g.
    ``"input_tokens must be an int >= 0, got -5"``.
    """


class TransientRuntimeError(TechrevatiError):
    """A failure of the dependency that the runtime noticed on its behalf.

    A turn past its deadline, or an answer that is empty where a model must
    say something. Unlike the runtime's refusals (an open breaker, a spent
    budget, a denied tool), a retry policy treats it like the SDK error it
    stands for: classified as :attr:`scenario` (a ``FailureScenario`` value)
    and retried by that scenario's recipe.
    """

    scenario: str = "llm_error"
