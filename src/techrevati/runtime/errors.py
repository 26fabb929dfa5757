"""Every exception the library raises on its own behalf, and the tree they form.

Catch :class:`TechrevatiError` to handle anything the runtime itself refused;
exceptions raised by *your* callables pass through unchanged. Where a builtin
fits, an error subclasses it too, so ``except ValueError`` or ``except
TimeoutError`` keep working. Each is also importable from the module that
raises it (``techrevati.runtime.budget.BudgetExceededError``, ...) and from
``techrevati.runtime``::

    TechrevatiError
    ├── InvalidValueError (ValueError)          a bad argument, named with its value
    ├── TransientRuntimeError                   the dependency failed; retried by a policy
    │   ├── TurnTimeoutError (TimeoutError)     a turn passed its deadline
    │   ├── EmptyResponseError                  an answer with no answer
    │   └── StreamFailedError                   a stream that reported a failure in-band
    ├── MaxIterationsExceededError              a session's turn limit
    ├── SessionStateError (RuntimeError)        a session not in the state for that
    ├── StreamResultError (TypeError)           a turn returned a stream
    ├── BudgetExceededError                     a budget refused a call
    ├── ReservationError (RuntimeError)         a hold settled twice
    ├── RateLimitedError (TimeoutError)         no rate-limit capacity within max_wait
    ├── RetriesExhaustedError                   the attempts ran out (from the last error)
    ├── RetryAfterTooLongError                  a server hint longer than accepted
    ├── GuardrailViolatedError                  a hook vetoed a call
    ├── PermissionDeniedError (PermissionError) a role may not use a tool
    ├── UsageParseError (ValueError)            no usage in a response
    ├── PricingFileError (ValueError)           a malformed pricing file
    ├── UnknownWorkerError (KeyError)           no such worker in a registry
    ├── SinkClosedError (RuntimeError)          a write to a closed sink
    ├── SinkWriteError (OSError)                a sink could not store records
    ├── SchemaError (ValueError)                a SQLite log of another schema
    ├── CorruptRecordError (ValueError)         a JSONL line that cannot be read
    ├── ReportInputError (ValueError)           the report command's bad input
    └── MissingDependencyError (ImportError)    an optional extra not installed

More live beside the state they describe: ``CircuitOpenError``
(:mod:`~techrevati.runtime.circuit_breaker`), ``InvalidTransitionError``
(ValueError, :mod:`~techrevati.runtime.lifecycle`), ``DuplicateRuleError``
(ValueError) and ``PolicyEvaluationError``
(:mod:`~techrevati.runtime.policy_engine`), ``GovernanceBreachedError``
(:mod:`~techrevati.runtime.governance`), ``OutputValidationError``
(ValueError) and ``OutputEscalationError`` (:mod:`~techrevati.runtime.outputs`),
``NoHealthyProviderError`` (:mod:`~techrevati.runtime.routing`), and
``CheckpointConflictError`` (ValueError) and ``SaverClosedError``
(RuntimeError, :mod:`~techrevati.runtime.checkpoints`), ``AuditChainError``
(ValueError: a chain broken, or not continued as asked) and ``AuditKeyError``
(ValueError: a key that does not fit the file; :mod:`~techrevati.runtime.audit`),
the review errors of :mod:`~techrevati.runtime.oversight`, and
``McpToolError``, ``McpTimeoutError`` and ``McpServerRefusedError``
(:mod:`~techrevati.runtime.mcp`).

The runtime's *refusals* (``BudgetExceededError``,
``MaxIterationsExceededError``, ``PermissionDeniedError``,
``GovernanceBreachedError``) say so (:func:`is_refusal`): a circuit breaker
never counts one as its dependency's failure, and a retry policy never
retries a failure with one in its chain (:func:`refusal_in_chain`).

One warning, outside the tree: :class:`PricingFileWarning` (``UserWarning``),
what a pricing-file load rounded, skipped or ignored.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

if TYPE_CHECKING:
    from techrevati.runtime._classify import FailureInfo
    from techrevati.runtime.permissions import PermissionOutcome

LimitKind = Literal["usd", "tokens", "requests"]
"""Which limit of a :class:`~techrevati.runtime.budget.Budget` refused a call."""

__all__ = [
    "BudgetExceededError",
    "is_refusal",
    "refusal_in_chain",
    "CorruptRecordError",
    "EmptyResponseError",
    "GuardrailViolatedError",
    "InvalidValueError",
    "LimitKind",
    "MaxIterationsExceededError",
    "MissingDependencyError",
    "PermissionDeniedError",
    "PricingFileError",
    "PricingFileNote",
    "PricingFileWarning",
    "RateLimitedError",
    "ReportInputError",
    "ReservationError",
    "RetriesExhaustedError",
    "RetryAfterTooLongError",
    "SchemaError",
    "SessionStateError",
    "SinkClosedError",
    "SinkWriteError",
    "StreamFailedError",
    "StoreUnavailableError",
    "StreamResultError",
    "TechrevatiError",
    "TransientRuntimeError",
    "TurnTimeoutError",
    "UnknownWorkerError",
    "UsageParseError",
]


class TechrevatiError(Exception):
    """Base class of every error raised by ``techrevati.runtime`` itself.

    ``_techrevati_refusal`` is True on the runtime's *refusals* (a spent budget,
    a denied tool, the iteration limit, a governance limit): not a failure of
    any dependency, so a breaker never counts one, and a retry policy never
    retries a call whose failure has one anywhere in its chain (a framework
    that wraps the refusal in its own error included).
    """

    _techrevati_refusal: ClassVar[bool] = False


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the runtime's refusals (see :class:`TechrevatiError`)."""
    return getattr(type(exc), "_techrevati_refusal", False) is True


def refusal_in_chain(exc: BaseException, depth: int = 8) -> BaseException | None:
    """Return the first refusal among ``exc`` and its causes and contexts (``depth`` links)."""
    node: BaseException | None = exc
    seen: set[int] = set()
    while node is not None and depth > 0 and id(node) not in seen:
        if is_refusal(node):
            return node
        seen.add(id(node))
        depth -= 1
        node = node.__cause__ or (None if node.__suppress_context__ else node.__context__)
    return None


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

    _techrevati_refusal: ClassVar[bool] = True

    def __init__(self, max_iterations: int) -> None:
        self.max_iterations = max_iterations
        super().__init__(f"max_iterations={max_iterations} reached; turn refused")


class SessionStateError(TechrevatiError, RuntimeError):
    """The session cannot do that in its current state (closed, waiting for input, ...)."""


class StreamResultError(TechrevatiError, TypeError):
    """``fn`` returned a stream, whose usage the session cannot read.

    Consume the stream inside ``fn`` and return the final response (openai:
    ``client.chat.completions.stream(...)`` then ``get_final_completion()``;
    anthropic: ``client.messages.stream(...)`` then ``get_final_message()``),
    or pass ``usage=`` to ``run_turn``, or stream it with ``session.stream_turn``.
    """

    def __init__(self, kind: str, stream: object = None) -> None:
        self.kind = kind
        self.stream = stream
        super().__init__(
            f"fn returned a stream ({kind}): its usage is only known once it is consumed. "
            "Consume it inside fn and return the final response (e.g. openai "
            "get_final_completion(), anthropic get_final_message()), or pass usage= to run_turn, "
            "or stream it with session.stream_turn / astream_turn"
        )


class EmptyResponseError(TransientRuntimeError):
    """The provider answered without an answer: no stop reason and no output tokens.

    A silent provider failure (an aborted generation, an empty Bedrock body):
    a retry policy classifies it as ``provider_failure`` and retries it.
    ``response`` is what ``fn`` returned.
    """

    scenario = "provider_failure"

    def __init__(self, reason: str, response: object) -> None:
        self.reason = reason
        self.response = response
        super().__init__(f"empty model response: {reason}")


class StreamFailedError(TransientRuntimeError):
    """A streamed turn's provider reported a failure in an event instead of raising.

    OpenAI's Responses API sends an ``error`` or ``response.failed`` event and
    ends the stream; the event reaches the caller unchanged, then this is
    raised where the stream ends, its partial usage charged. A breaker counts
    it as a failure; it is classified ``provider_failure``, but a stream is
    never retried once a chunk reached the caller. ``reason`` says what the
    event said.
    """

    scenario = "provider_failure"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the stream failed: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason,))


class SinkClosedError(TechrevatiError, RuntimeError):
    """A record was written to a sink after :meth:`close`."""


class SinkWriteError(TechrevatiError, OSError):
    """A durable sink could not write a batch; the records stay buffered for a retry.

    The original error (``OSError``, ``sqlite3.Error``) is the ``__cause__``.
    """


class SchemaError(TechrevatiError, ValueError):
    """A SQLite file is not one of ours, or its schema version is unknown."""


class BudgetExceededError(TechrevatiError):
    """A :class:`Budget` refused a call, or its spending went past a limit.

    ``limit_kind`` says which limit (``"usd"``, ``"tokens"`` or ``"requests"``);
    ``limit`` and ``spent`` are in that unit (``Decimal`` dollars for ``"usd"``,
    ``int`` otherwise), ``reserved`` is what open reservations hold and
    ``requested`` what the refused call asked for (zero from ``check_after``).
    ``limit_usd`` (``None`` without a dollar cap) and ``spent_usd`` are always
    the budget's dollar figures; ``model`` is the model asked for, if any.
    """

    _techrevati_refusal: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        limit_kind: LimitKind = "usd",
        limit: Decimal | int = 0,
        spent: Decimal | int = 0,
        reserved: Decimal | int = 0,
        requested: Decimal | int = 0,
        limit_usd: Decimal | None = None,
        spent_usd: Decimal = Decimal(0),
        model: str = "",
    ) -> None:
        self.limit_kind: LimitKind = limit_kind
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.model = model
        super().__init__(message)

    def __reduce__(self) -> tuple[type[BudgetExceededError], tuple[str], dict[str, object]]:
        return type(self), (str(self.args[0]),), dict(self.__dict__)


class ReservationError(TechrevatiError, RuntimeError):
    """A hold was settled twice, or after its release.

    :meth:`BudgetReservation.settle` and :meth:`RateLease.settle` raise it,
    so nothing is counted twice.
    """


class RateLimitedError(TechrevatiError, TimeoutError):
    """A :class:`~techrevati.runtime.rate_limit.RateLimiter` had no capacity within ``max_wait``.

    ``limit_kind`` names the limit that refused (``"requests"``, ``"tokens"``,
    ``"input_tokens"``, ``"output_tokens"``, ``"concurrent"``, or ``"server"``
    when the provider's own headers said nothing is left); ``retry_after`` is
    how many seconds until that limit has room (``None`` for ``"concurrent"``:
    a slot frees when a call ends); ``max_wait`` what the caller accepted.
    """

    def __init__(
        self, limit_kind: str, retry_after: float | None, max_wait: float, *, name: str = ""
    ) -> None:
        self.limit_kind = limit_kind
        self.retry_after = retry_after
        self.max_wait = max_wait
        self.name = name
        who = f"rate limiter {name!r}" if name else "rate limiter"
        when = (
            "no concurrency slot freed"
            if retry_after is None
            else f"capacity in {retry_after:.3f}s"
        )
        super().__init__(
            f"{who}: {limit_kind} limit reached; {when}, more than max_wait={max_wait:g}s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_rate_limited,
            (self.limit_kind, self.retry_after, self.max_wait, self.name),
        )


def _rebuild_rate_limited(
    limit_kind: str, retry_after: float | None, max_wait: float, name: str
) -> RateLimitedError:
    return RateLimitedError(limit_kind, retry_after, max_wait, name=name)


class StoreUnavailableError(TechrevatiError, ConnectionError):
    """A shared store (Redis) could not decide, and its policy for the primitive is fail-closed.

    ``store`` names the store, ``primitive`` what asked (``"budget"``,
    ``"breaker"`` or ``"limiter"`` and its name) and ``reason`` what went
    wrong (the redis-py error's type and text, or the store being in its
    back-off after an earlier failure). The redis-py error, if any, is the
    ``__cause__``; it never escapes on its own.
    """

    def __init__(self, store: str, primitive: str, reason: str) -> None:
        self.store = store
        self.primitive = primitive
        self.reason = reason
        super().__init__(
            f"store {store!r} is unavailable for {primitive} (fail-closed, so refused): {reason}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_store_unavailable, (self.store, self.primitive, self.reason))


def _rebuild_store_unavailable(store: str, primitive: str, reason: str) -> StoreUnavailableError:
    return StoreUnavailableError(store, primitive, reason)


class GuardrailViolatedError(TechrevatiError):
    """A hook vetoed a model or tool call.

    ``reason`` says why, ``hook`` names the hook's class and ``point`` says
    where it ran (``"before_model"``, ``"after_tool"``, ...).
    """

    def __init__(self, reason: str, *, hook: str = "", point: str = "") -> None:
        self.reason = reason
        self.hook = hook
        self.point = point
        where = f" ({hook} at {point})" if hook else ""
        super().__init__(f"guardrail violated{where}: {reason}")


class CorruptRecordError(TechrevatiError, ValueError):
    """A JSONL file or line is not what :class:`JsonlSink` wrote; the message names it and why.

    Raised by ``read_jsonl`` for a line that is not a record, and by
    ``JsonlSink`` for a file it will not append to or repair (not its own).
    """


class UnknownWorkerError(TechrevatiError, KeyError):
    """No worker with this id is in the registry; ``worker_id`` is the id asked for."""

    def __init__(self, worker_id: object) -> None:
        self.worker_id = worker_id
        super().__init__(f"no worker with id {worker_id!r} in this registry")

    def __str__(self) -> str:
        # KeyError would show the message quoted like a key.
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[UnknownWorkerError], tuple[object]]:
        return (type(self), (self.worker_id,))


class MissingDependencyError(TechrevatiError, ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; "
            f"install it with: pip install 'techrevati-runtime[{extra}]'",
            name=package,
        )


class PermissionDeniedError(TechrevatiError, PermissionError):
    """A role asked for a tool it may not use; ``outcome`` says why.

    Raised by :meth:`PermissionEnforcer.require` and by the orchestrator
    before a denied tool call; the message is ``outcome.reason``.
    """

    _techrevati_refusal: ClassVar[bool] = True

    def __init__(self, outcome: PermissionOutcome) -> None:
        self.outcome = outcome
        super().__init__(outcome.reason)

    def __str__(self) -> str:
        return self.outcome.reason

    def __reduce__(self) -> tuple[type[PermissionDeniedError], tuple[PermissionOutcome]]:
        return (type(self), (self.outcome,))


class PricingFileError(TechrevatiError, ValueError):
    """A pricing file is malformed; nothing from it was registered.

    ``path`` is the file as given; ``entry`` the model entry at fault, or
    ``None`` when the file as a whole is wrong (bad JSON/TOML, unknown schema)
    or several entries are. ``problems`` lists every bad entry as ``(entry,
    reason)`` pairs, in file order (empty for a file-level error); the message
    shows them all.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        entry: str | None = None,
        problems: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.path = path
        self.entry = entry
        self.reason = message
        self.problems = problems or (() if entry is None else ((entry, message),))
        where = path if entry is None else f"{path}: entry {entry!r}"
        super().__init__(f"{where}: {message}" if where else message)

    @classmethod
    def listing(cls, path: str, problems: tuple[tuple[str, str], ...]) -> PricingFileError:
        """Return the error for ``problems`` (at least one): one line per bad entry."""
        if len(problems) == 1:
            entry, reason = problems[0]
            return cls(reason, path, entry)
        lines = "".join(f"\n  {entry!r}: {reason}" for entry, reason in problems)
        head = _counted(len({entry for entry, _ in problems}), "bad entry", "bad entries")
        if len(problems) > len({entry for entry, _ in problems}):
            head += f" ({len(problems)} problems)"
        return cls(f"{head}:{lines}", path, None, problems)

    def __reduce__(
        self,
    ) -> tuple[type[PricingFileError], tuple[str, str, str | None, tuple[tuple[str, str], ...]]]:
        return type(self), (self.reason, self.path, self.entry, self.problems)


class PricingFileNote(NamedTuple):
    """One thing a pricing-file load changed or left out, in the file's own words.

    ``entry`` is the model entry, ``key`` the file's key (``input_cost_per_token``,
    ``tiered_pricing[1].output_cost_per_token``, ``provider_specific_entry.us``),
    ``text`` the value as the file spells it (``""`` when there is none), and
    ``detail`` what was done: the rounded value, or why it was skipped or ignored.
    """

    entry: str
    key: str
    text: str
    detail: str


class PricingFileWarning(UserWarning):
    """What a pricing-file load rounded, skipped or ignored: one warning per load.

    Not an error (and not a :class:`TechrevatiError`): every entry it does not
    list was registered as written. ``rounded`` lists rates finer than the
    money grid (1e-15 USD per token) and the value each was rounded to
    (half-even); ``skipped`` the entries whose pricing cannot be represented
    (they stay unpriced); ``ignored`` the prices that apply only to some
    requests (``provider_specific_entry`` multipliers, ``off_peak_pricing``
    hours), which the registered standard rates leave out. All
    three are tuples of :class:`PricingFileNote`, and the message lists every
    one of them.
    """

    def __init__(
        self,
        path: str,
        rounded: tuple[PricingFileNote, ...] = (),
        skipped: tuple[PricingFileNote, ...] = (),
        ignored: tuple[PricingFileNote, ...] = (),
    ) -> None:
        self.path = path
        self.rounded = rounded
        self.skipped = skipped
        self.ignored = ignored
        parts = []
        if rounded:
            parts.append(
                _counted(len(rounded), "rate", "rates")
                + " rounded half-even to 1e-15 USD per token (strict=True refuses instead):"
                + "".join(f"\n  {n.entry!r} {n.key}: {n.text} -> {n.detail}" for n in rounded)
            )
        if skipped:
            parts.append(
                _counted(len(skipped), "entry", "entries")
                + " skipped (left unpriced):"
                + "".join(f"\n  {n.entry!r} {n.key}: {n.detail}" for n in skipped)
            )
        if ignored:
            parts.append(
                _counted(len(ignored), "conditional price", "conditional prices")
                + " ignored (the standard rates are registered):"
                + "".join(f"\n  {n.entry!r} {n.key}: {n.text} ({n.detail})" for n in ignored)
            )
        super().__init__(f"{path}: " + "\n".join(parts))

    def __reduce__(
        self,
    ) -> tuple[
        type[PricingFileWarning],
        tuple[
            str,
            tuple[PricingFileNote, ...],
            tuple[PricingFileNote, ...],
            tuple[PricingFileNote, ...],
        ],
    ]:
        return type(self), (self.path, self.rounded, self.skipped, self.ignored)


def _counted(count: int, one: str, many: str) -> str:
    """``"1 rate"``, ``"2 rates"``: a count and its noun, in the right number."""
    return f"{count} {one if count == 1 else many}"


class ReportInputError(TechrevatiError, ValueError):
    """The file is neither a techrevati SQLite database nor a techrevati JSONL file."""


class RetriesExhaustedError(TechrevatiError):
    """A retryable failure kept happening until the attempts ran out.

    Raised ``from`` the last exception (see ``__cause__``). ``attempts`` is
    how many calls were made, ``scenario`` and ``failure`` describe the last one.
    """

    def __init__(self, attempts: int, failure: FailureInfo, reason: str = "") -> None:
        detail = failure.exception_type or "error"
        if failure.status_code is not None:
            detail += f", status {failure.status_code}"
        message = f"gave up after {attempts} attempt(s): {failure.scenario.value} ({detail})"
        super().__init__(f"{message}; {reason}" if reason else message)
        self.attempts = attempts
        self.scenario = failure.scenario
        self.failure = failure


class RetryAfterTooLongError(TechrevatiError):
    """The server asked to wait longer than the caller accepts (``max_retry_after``)."""

    def __init__(self, retry_after: float, max_retry_after: float) -> None:
        super().__init__(
            f"the server asks to wait {retry_after:g}s, "
            f"more than max_retry_after={max_retry_after:g}s"
        )
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after


class UsageParseError(TechrevatiError, ValueError):
    """:meth:`UsageSnapshot.from_response` could not read token usage from an object.

    The message names the object's type and, where one is known, the field.
    """
