"""The root of every exception this library raises on its own behalf.

Catch :class:`TechrevatiError` to handle anything the runtime itself refused;
exceptions raised by *your* callables pass through unchanged. Specific errors
live beside the primitive that raises them (``lifecycle.InvalidTransitionError``,
``usage.BudgetExceededError``, ...) and are re-exported from
``techrevati.runtime``. Where a builtin fits, they subclass it too, so
``except ValueError`` or ``except TimeoutError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "InvalidValueError",
    "MaxIterationsExceededError",
    "SessionStateError",
    "TechrevatiError",
    "TransientRuntimeError",
    "TurnTimeoutError",
]


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


class TurnTimeoutError(TransientRuntimeError, TimeoutError):
    """A turn did not finish within its ``timeout``.

    For sync turns the callable keeps running on its worker thread (a thread
    cannot be killed); its result, when it comes, is dropped. ``started`` is
    False when the call never began because every worker thread was still
    busy with earlier calls that outlived their deadlines. A retry policy
    treats it as ``llm_timeout``; a circuit breaker counts it as a failure.
    """

    scenario = "llm_timeout"

    def __init__(self, timeout: float, model: str, *, started: bool = True) -> None:
        self.timeout = timeout
        self.model = model
        self.started = started
        where = "" if started else " (no worker thread was free: earlier calls still hang)"
        super().__init__(f"turn on model {model!r} did not finish within {timeout} seconds{where}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (self.timeout, self.model, self.started))


def _rebuild_timeout(timeout: float, model: str, started: bool) -> TurnTimeoutError:
    return TurnTimeoutError(timeout, model, started=started)


class MaxIterationsExceededError(TechrevatiError):
    """The session already ran ``max_iterations`` turns; no further turn is started."""

    def __init__(self, max_iterations: int) -> None:
        self.max_iterations = max_iterations
        super().__init__(f"max_iterations={max_iterations} reached; turn refused")


class SessionStateError(TechrevatiError, RuntimeError):
    """The session cannot do that in its current state (closed, waiting for input, ...)."""
