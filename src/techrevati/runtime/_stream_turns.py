"""Streamed model turns: ``stream_turn`` and ``astream_turn``, on top of the turn engine.

Private: a base of :class:`~techrevati.runtime.orchestrator.Session`. A
streamed turn runs the same steps as ``run_turn`` (the turn's count and
hooks, budget holds, the breaker, retries, charging, events), written once in
:class:`~techrevati.runtime._turns._TurnEngine`; what is new here is that the
attempt does not end when ``fn`` returns. ``fn`` opens the stream, the first
chunk is read (retries happen up to here: nothing reached the caller yet),
and then every chunk passes to the caller unchanged while a
:class:`~techrevati.runtime._streams.StreamReader` notes what the provider
says about usage. The turn settles where the stream ends, however it ends:
read to the end, abandoned by the caller (a ``break``, ``close()``, a
cancelled task), or failed mid-way (an SDK error, a dropped connection, an
in-band error event).
"""

from __future__ import annotations

import inspect
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import replace
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar, overload

from techrevati.runtime._money import _usd
from techrevati.runtime._responses import _close
from techrevati.runtime._retry_run import _failure_info
from techrevati.runtime._session_core import _log_event, failure_class_of
from techrevati.runtime._streams import (
    Source,
    StreamReader,
    aclose_all,
    close_all,
    open_async,
    open_sync,
    reader_for,
)
from techrevati.runtime._turns import _accepts_model, _Turn, _TurnEngine
from techrevati.runtime.circuit_breaker import Permit
from techrevati.runtime.errors import (
    EmptyResponseError,
    InvalidValueError,
    StreamFailedError,
)
from techrevati.runtime.routing import Outcome
from techrevati.runtime.usage import TurnCost, UsageSnapshot

__all__ = ["AsyncTurnStream", "StreamOutcome", "TurnStream"]

_C = TypeVar("_C")

StreamOutcome = Literal["pending", "completed", "abandoned", "failed"]
"""How a streamed turn ended: ``pending`` until it does."""


class _StreamState:
    """What a streamed turn's generator reports to its :class:`TurnStream` (no cycle)."""

    __slots__ = (
        "chunks",
        "cost_femto",
        "duration",
        "first_token",
        "model",
        "outcome",
        "usage",
        "usage_unknown",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.outcome: StreamOutcome = "pending"
        self.chunks = 0
        self.first_token: float | None = None
        self.duration: float | None = None
        self.usage: UsageSnapshot | None = None
        self.usage_unknown = False
        self.cost_femto: int | None = None


class _StreamFigures:
    """The figures of a streamed turn, read by both stream types."""

    __slots__ = ("_state",)

    def __init__(self, state: _StreamState) -> None:
        self._state = state

    @property
    def outcome(self) -> StreamOutcome:
        """``pending``, then ``completed``, ``abandoned`` (closed early) or ``failed``."""
        return self._state.outcome

    @property
    def model(self) -> str:
        """The model of the attempt that streamed (a fallback after a retry)."""
        return self._state.model

    @property
    def usage(self) -> UsageSnapshot | None:
        """The usage charged once the stream ended; ``ZERO`` when :attr:`usage_unknown`."""
        return self._state.usage

    @property
    def usage_unknown(self) -> bool:
        """Whether the stream ended without the provider reporting any usage."""
        return self._state.usage_unknown

    @property
    def cost_usd(self) -> Decimal | None:
        """The exact cost charged once the stream ended (None before, or if nothing was)."""
        femto = self._state.cost_femto
        return None if femto is None else _usd(femto)

    @property
    def chunks(self) -> int:
        """How many chunks reached the caller (counted when the stream ended)."""
        return self._state.chunks

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from the attempt's start (the call of ``fn``) to its first chunk."""
        return self._state.first_token

    @property
    def duration(self) -> float | None:
        """Seconds from the attempt's start to the stream's end (or abandonment)."""
        return self._state.duration


class TurnStream(_StreamFigures, Generic[_C]):
    """The chunks of one streamed turn, unchanged, and what the turn cost once it ended.

    Returned by :meth:`Session.stream_turn`. Iterate it once; ``fn`` is called
    at the first iteration. Leaving the loop early closes the stream when the
    iterator is dropped; ``with session.stream_turn(...) as stream:`` (or
    :meth:`close`) closes it at a point you choose.
    """

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Generator[_C, None, None], state: _StreamState) -> None:
        super().__init__(state)
        self._chunks = chunks

    def __iter__(self) -> Iterator[_C]:
        return self._chunks

    def __next__(self) -> _C:
        return next(self._chunks)

    def close(self) -> None:
        """Stop the stream: its connection is closed and the turn settled (as abandoned)."""
        self._chunks.close()

    def __enter__(self) -> TurnStream[_C]:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._chunks.close()


class AsyncTurnStream(_StreamFigures, Generic[_C]):
    """Async twin of :class:`TurnStream`, returned by :meth:`Session.astream_turn`.

    ``async for chunk in session.astream_turn(fn):``; an abandoned loop is
    closed when the event loop finalizes the iterator, ``async with`` (or
    :meth:`aclose`) closes it at once.
    """

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncGenerator[_C, None], state: _StreamState) -> None:
        super().__init__(state)
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[_C]:
        return self._chunks

    async def __anext__(self) -> _C:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop the stream: its connection is closed and the turn settled (as abandoned)."""
        await self._chunks.aclose()

    async def __aenter__(self) -> AsyncTurnStream[_C]:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self._chunks.aclose()


class _StreamTurnEngine(_TurnEngine):
    """``stream_turn`` and ``astream_turn``: a turn whose answer arrives in chunks."""

    @overload
    def stream_turn(
        self,
        fn: Callable[..., Iterable[_C]],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> TurnStream[_C]: ...

    @overload
    def stream_turn(
        self,
        fn: Callable[..., object],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> TurnStream[Any]: ...

    def stream_turn(
        self,
        fn: Callable[..., object],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> TurnStream[Any]:
        """Return the chunks of the stream ``fn`` opens, charging its usage when it ends.

        The arguments and the session are checked, and the turn counted, at
        once; ``fn`` is called at the first iteration. It returns an SDK
        stream (openai ``Stream``, anthropic ``Stream``/``MessageStream`` or
        a stream manager, the iterator of Gemini's
        ``generate_content_stream``, a Bedrock ``converse_stream`` answer) or
        any iterable of chunks. Failures before the first chunk are retried
        like ``run_turn``'s; after it, a failure is raised to the caller.
        """
        turn = self._begin_turn(fn, model, None, estimate, None, fallback_models=fallback_models)
        state = _StreamState(turn.model)
        return TurnStream(self._stream(fn, turn, state), state)

    @overload
    def astream_turn(
        self,
        fn: Callable[..., Awaitable[AsyncIterable[_C]]],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> AsyncTurnStream[_C]: ...

    @overload
    def astream_turn(
        self,
        fn: Callable[..., AsyncIterable[_C]],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> AsyncTurnStream[_C]: ...

    @overload
    def astream_turn(
        self,
        fn: Callable[..., object],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> AsyncTurnStream[Any]: ...

    def astream_turn(
        self,
        fn: Callable[..., object],
        *,
        model: str = "",
        estimate: UsageSnapshot | None = None,
        fallback_models: Sequence[str] = (),
    ) -> AsyncTurnStream[Any]:
        """Async twin of :meth:`stream_turn`: ``fn`` returns an async stream (or awaits to one).

        Not a coroutine: ``async for chunk in session.astream_turn(fn):``.
        """
        turn = self._begin_turn(fn, model, None, estimate, None, fallback_models=fallback_models)
        state = _StreamState(turn.model)
        return AsyncTurnStream(self._astream(fn, turn, state), state)

    # -- the two shells: the same steps, called or awaited --------------------------------

    def _stream(
        self, fn: Callable[..., object], turn: _Turn, state: _StreamState
    ) -> Generator[Any, None, None]:
        run, first = self._open(fn, turn, state)
        clock = self._orch.clock
        started = run.started
        feed = run.reader.feed
        count = 1
        try:
            feed(first)
            yield first
            for chunk in run.source.iterator:
                feed(chunk)
                count += 1
                yield chunk
        except GeneratorExit:  # the caller left the loop, or closed the stream
            close_all(run.source)
            self._stream_ended(run, count, clock() - started, abandoned=True)
            raise
        except BaseException as exc:  # the SDK raised mid-stream, or a Ctrl-C
            close_all(run.source)
            self._stream_failed(run, exc, count, clock() - started)
            raise
        close_all(run.source)
        error = self._stream_ended(run, count, clock() - started, abandoned=False)
        if error is not None:
            raise error

    async def _astream(
        self, fn: Callable[..., object], turn: _Turn, state: _StreamState
    ) -> AsyncGenerator[Any, None]:
        run, first = await self._aopen(fn, turn, state)
        clock = self._orch.clock
        started = run.started
        feed = run.reader.feed
        count = 1
        try:
            feed(first)
            yield first
            async for chunk in run.source.iterator:
                feed(chunk)
                count += 1
                yield chunk
        except GeneratorExit:  # the caller left the loop, or closed the stream
            await aclose_all(run.source)
            self._stream_ended(run, count, clock() - started, abandoned=True)
            raise
        except BaseException as exc:  # the SDK raised mid-stream, or the task was cancelled
            await aclose_all(run.source)
            self._stream_failed(run, exc, count, clock() - started)
            raise
        await aclose_all(run.source)
        error = self._stream_ended(run, count, clock() - started, abandoned=False)
        if error is not None:
            raise error

    def _open(
        self, fn: Callable[..., object], turn: _Turn, state: _StreamState
    ) -> tuple[_Run, object]:
        """Run attempts until one stream gives its first chunk: the only retryable part."""
        clock = self._orch.clock
        wants_model = _accepts_model(fn)
        while True:
            self._before_attempt(turn)
            breaker, limiter = turn.breaker, turn.limiter  # a route's switch changes them
            if limiter is not None:
                self._throttle(limiter, turn)
            started = clock()
            permit: Permit | None = None
            result: object = None
            source: Source | None = None
            try:
                if breaker is not None:
                    permit = breaker.acquire()
                result = fn(model=turn.model) if wants_model else fn()
                source = open_sync(result)
                try:
                    first = next(source.iterator)
                except StopIteration:
                    raise EmptyResponseError(_EMPTY, result) from None
            except BaseException as exc:
                if source is not None:
                    close_all(source)
                elif result is not None:
                    _close(result)  # not a stream we could open: give it back all the same
                if permit is not None:
                    _settle_failure(permit, exc)
                retry = self._attempt_failed(turn, exc, clock() - started)
                if retry is None:
                    raise
                if retry.delay_seconds > 0:
                    self._orch._sleep(retry.delay_seconds)
                continue
            state.first_token = clock() - started
            return _Run(turn, state, source, permit, reader_for(first), started), first

    async def _aopen(
        self, fn: Callable[..., object], turn: _Turn, state: _StreamState
    ) -> tuple[_Run, object]:
        """Async twin of :meth:`_open`."""
        clock = self._orch.clock
        wants_model = _accepts_model(fn)
        while True:
            self._before_attempt(turn, reserve=False)
            if self._budgets:
                await self._areserve(turn)
            breaker, limiter = turn.breaker, turn.limiter
            if limiter is not None:
                await self._athrottle(limiter, turn)
            started = clock()
            permit: Permit | None = None
            source: Source | None = None
            try:
                if breaker is not None:
                    permit = breaker.acquire()
                result = fn(model=turn.model) if wants_model else fn()
                if inspect.isawaitable(result):
                    result = await result
                source = await open_async(result)
                try:
                    first = await source.iterator.__anext__()
                except StopAsyncIteration:
                    raise EmptyResponseError(_EMPTY, result) from None
            except BaseException as exc:
                if source is not None:
                    await aclose_all(source)
                if permit is not None:
                    _settle_failure(permit, exc)
                retry = self._attempt_failed(turn, exc, clock() - started)
                if retry is None:
                    raise
                if retry.delay_seconds > 0:
                    await self._orch._async_sleep(retry.delay_seconds)
                continue
            state.first_token = clock() - started
            return _Run(turn, state, source, permit, reader_for(first), started), first

    # -- settling: once per stream, however it ended --------------------------------------

    def _stream_ended(
        self, run: _Run, count: int, duration: float, *, abandoned: bool
    ) -> StreamFailedError | None:
        """Settle a stream that ended or was abandoned; return the in-band failure to raise."""
        reader = run.reader
        if reader.failure is not None:
            error = StreamFailedError(reader.failure)
            self._stream_failed(run, error, count, duration)
            return None if abandoned else error
        if run.permit is not None:
            run.permit.record_success()  # the provider answered, even if the caller left early
        turn = run.turn
        usage = reader.usage()
        flagged = usage is None
        if usage is None:
            usage = UsageSnapshot.ZERO
        try:
            cost = self._charge(turn, usage, settle_cap=False)
        except BaseException:
            self._release(turn)
            raise
        extra: dict[str, object] = {
            "time_to_first_token_seconds": run.state.first_token,
            "chunks": count,
            "abandoned": abandoned,
        }
        self._stream_done(turn, usage, cost.cost_femto_usd, flagged, duration, extra)
        if turn.candidate is not None:
            self._routed(turn, Outcome(True, max(duration, 0.0), cost.cost_femto_usd))
        meter = self.governance
        if meter is not None:
            meter._record_turn(turn.billed_femto + cost.cost_femto_usd, False)
        if self._usage_sinks:
            self._write_usage(turn, usage, cost, duration)
        if self._stats is not None:
            self._stats._succeeded()
        run.record("abandoned" if abandoned else "completed", usage, flagged, cost, count, duration)
        if not abandoned:
            for hook in self._after_model:  # told the stream ended; the chunks are already out
                assert turn.call is not None
                self._run_hook(hook, "after_model", hook.after_model, turn.call, run.source.stream)
        return None

    def _stream_failed(self, run: _Run, exc: BaseException, count: int, duration: float) -> None:
        """Settle a stream that failed after its first chunk: charge what was reported."""
        if run.permit is not None:
            _settle_failure(run.permit, exc)
        turn = run.turn
        partial = run.reader.usage()
        cost: TurnCost | None = None
        if partial is None:
            self._release(turn)
            with self._lock:
                self._turns_without_usage += 1
        else:
            cost = self._charge(turn, partial)
            if self._usage_sinks:
                self._write_usage(turn, partial, cost, duration)
        failure = failure_class_of(exc)
        billed = 0 if cost is None else cost.cost_femto_usd
        if turn.candidate is not None and isinstance(exc, Exception):
            self._routed(turn, Outcome(False, max(duration, 0.0), billed, failure))
        meter = self.governance
        if meter is not None:
            meter._record_turn(turn.billed_femto + billed, True)
        self._record_failure(failure)
        stats, policy = self._stats, self._orch.retry
        if stats is not None and policy is not None and isinstance(exc, Exception):
            stats._failed(_failure_info(exc, policy).scenario)  # counted, never retried
            stats._ended(exhausted=False)
        self._emit_failure(
            turn=turn,
            exc=exc,
            failure=failure,
            duration=duration,
            billed=partial,
            cost=cost,
            extra={
                "time_to_first_token_seconds": run.state.first_token,
                "chunks": count,
                "usage_unknown": partial is None,
            },
        )
        run.record("failed", partial, partial is None, cost, count, duration)

    def _stream_done(  # noqa: PLR0917 (the fields of _turn_done, plus the stream's)
        self,
        turn: _Turn,
        usage: UsageSnapshot,
        femto: int,
        flagged: bool,
        duration: float,
        extra: dict[str, object],
    ) -> None:
        """Emit a streamed turn's turn.completed: the usual fields and the stream's own."""
        worker = self.worker
        assert worker is not None
        record = (
            turn.model,
            turn.attempt,
            duration,
            usage,
            femto,
            flagged,
            worker.status,
            self._orch.wall_clock(),
        )
        event = self._built(record)
        event = replace(event, data={**event.data, **extra})
        with self._lock:
            if turn.cap_held is not None:
                self._settle_cap_locked(turn, femto)
            self._turns_completed += 1  # counted as every turn.completed is (see summary)
            self._written += 1
            if flagged:
                self._turns_without_usage += 1
        self._log.append(event)
        _log_event(event)
        if self._eager_events:
            self._orch.sinks.write_event(event)


class _Run:
    """One streaming attempt that reached its first chunk: what settling it needs."""

    __slots__ = ("permit", "reader", "source", "started", "state", "turn")

    def __init__(  # noqa: PLR0917 (filled once, by _open)
        self,
        turn: _Turn,
        state: _StreamState,
        source: Source,
        permit: Permit | None,
        reader: StreamReader,
        started: float,
    ) -> None:
        self.turn = turn
        self.state = state
        self.source = source
        self.permit = permit
        self.reader = reader
        self.started = started

    def record(  # noqa: PLR0917 (the figures the TurnStream shows)
        self,
        outcome: StreamOutcome,
        usage: UsageSnapshot | None,
        flagged: bool,
        cost: TurnCost | None,
        count: int,
        duration: float,
    ) -> None:
        """Tell the TurnStream how the turn ended."""
        state = self.state
        state.outcome = outcome
        state.model = self.turn.model
        state.chunks = count
        state.duration = duration
        state.usage = UsageSnapshot.ZERO if usage is None else usage
        state.usage_unknown = flagged
        state.cost_femto = None if cost is None else cost.cost_femto_usd


_EMPTY = "the stream ended before its first chunk"


def _settle_failure(permit: Permit, exc: BaseException) -> None:
    """Count a failed attempt on the breaker; a stream fn never opened is not the provider's."""
    if isinstance(exc, InvalidValueError):
        permit.record_ignored()
    else:
        permit.record_failure(exc)  # the breaker's own predicate; a cancellation is ignored
