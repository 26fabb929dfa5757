"""A raw SDK client, wrapped once: every model call it makes is a turn of the session.

Private to :mod:`~techrevati.runtime.orchestrator`; ``session.wrap(client)``
returns a :class:`_Proxy` typed as the client itself. The proxy forwards
every attribute to the client, except the model-call methods it knows:

- openai (``OpenAI``, ``AsyncOpenAI``): ``chat.completions.create`` and
  ``responses.create`` (``stream=True`` included), and the streaming helpers
  ``chat.completions.stream`` and ``responses.stream``;
- anthropic (``Anthropic``, ``AsyncAnthropic``): ``messages.create``
  (``stream=True`` included) and the streaming helper ``messages.stream``;
- google-genai (``genai.Client``): ``models.generate_content`` and
  ``models.generate_content_stream``, and their ``aio`` twins;
- botocore/boto3 ``bedrock-runtime``: ``converse`` and ``converse_stream``.

Each such call runs through :meth:`Session.run_turn` (or ``arun_turn``,
``stream_turn``, ``astream_turn``) with the model taken from the call's own
arguments (``model``, or Bedrock's ``modelId``), so budgets, the breaker, the
rate limiter, retries and fallback models apply and the usage is read from
the response or the stream. A fallback model replaces the call's model
argument. No SDK is imported here: clients are recognised by their module.

A streaming helper (``with client.messages.stream(...) as stream:``) returns
a :class:`_StreamManager`: entering it starts a streamed turn, and the
stream it gives iterates that turn's events; ``text_stream``,
``until_done()`` and every ``get_final_*()`` (``get_final_message``,
``get_final_text``, ``get_final_response``, ``get_final_completion``) read
the turn to its end first, so it is charged, then ask the SDK's own stream.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from techrevati.runtime.errors import InvalidValueError, SessionStateError

if TYPE_CHECKING:
    from techrevati.runtime.orchestrator import Session

__all__ = ["wrap_client"]

# How a model call answers: at once, a stream, a stream when ``stream=True`` is passed,
# or a stream manager (an SDK streaming helper, entered with ``with``).
_Answer = Literal["result", "stream", "stream_if_asked", "manager"]

# Per SDK (the client's top module): the attribute paths of model calls, each with
# the keyword naming the model and how the call answers.
_CALLS: Final[Mapping[str, Mapping[tuple[str, ...], tuple[str, _Answer]]]] = {
    "openai": {
        ("chat", "completions", "create"): ("model", "stream_if_asked"),
        ("chat", "completions", "stream"): ("model", "manager"),
        ("responses", "create"): ("model", "stream_if_asked"),
        ("responses", "stream"): ("model", "manager"),
    },
    "anthropic": {
        ("messages", "create"): ("model", "stream_if_asked"),
        ("messages", "stream"): ("model", "manager"),
    },
    "google": {
        ("models", "generate_content"): ("model", "result"),
        ("models", "generate_content_stream"): ("model", "stream"),
        ("aio", "models", "generate_content"): ("model", "result"),
        ("aio", "models", "generate_content_stream"): ("model", "stream"),
    },
    "botocore": {
        ("converse",): ("modelId", "result"),
        ("converse_stream",): ("modelId", "stream"),
    },
}


def wrap_client(session: Session, client: object) -> Any:
    """Return ``client`` behind a proxy whose model calls are the session's turns."""
    family = _family(client)
    if family is None:
        raise InvalidValueError(
            f"client must be an openai, anthropic, google-genai or bedrock-runtime client, "
            f"got {type(client).__qualname__} from {type(client).__module__!r}"
        )
    if session._orch.retry is not None:
        client = _without_sdk_retries(client)
    return _Proxy(session, client, family, ())


class _Proxy:
    """Forwards attributes; the model-call paths of its SDK become session turns."""

    __slots__ = ("_family", "_path", "_session", "_target")

    def __init__(
        self, session: Session, target: object, family: str, path: tuple[str, ...]
    ) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_family", family)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        path = (*self._path, name)
        calls = _CALLS[self._family]
        call = calls.get(path)
        if call is not None and callable(value):
            return _turn_call(self._session, value, call[0], call[1])
        if any(known[: len(path)] == path for known in calls):
            return _Proxy(self._session, value, self._family, path)
        return value

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return f"<wrapped by a session: {self._target!r}>"

    def __dir__(self) -> list[str]:
        return dir(self._target)


def _turn_call(
    session: Session, method: Callable[..., Any], model_key: str, answer: _Answer
) -> Callable[..., Any]:
    """Return ``method`` as a call that runs as one turn (or one streamed turn)."""
    # The SDKs decorate their async methods (openai's required_args): look beneath.
    is_async = inspect.iscoroutinefunction(inspect.unwrap(method))
    if answer == "manager":  # a sync method on the async client's resource returns one
        is_async = type(getattr(method, "__self__", None)).__name__.startswith("Async")

    def call(*args: Any, **kwargs: Any) -> Any:
        model = kwargs.get(model_key, "")
        if not isinstance(model, str):
            raise InvalidValueError(f"{model_key} must be a str, got {model!r}")

        def once(model: str = model) -> Any:
            return method(*args, **{**kwargs, model_key: model})

        if answer == "manager":
            return (_AsyncStreamManager if is_async else _StreamManager)(session, once, model)
        if answer == "stream" or (answer == "stream_if_asked" and kwargs.get("stream") is True):
            if is_async:  # awaited, as the SDK's own call is, then iterated
                return _opened(session.astream_turn(once, model=model))
            return session.stream_turn(once, model=model)
        if is_async:
            return _result_of(session.arun_turn(once, model=model))
        return session.run_turn(once, model=model)[0]

    call.__name__ = getattr(method, "__name__", "call")
    call.__doc__ = getattr(method, "__doc__", None)
    return call


class _Opened:
    """The SDK stream the last attempt of a streamed turn opened (None before it)."""

    __slots__ = ("stream",)

    def __init__(self) -> None:
        self.stream: Any = None

    def sdk_stream(self, name: str) -> Any:
        if self.stream is None:
            raise SessionStateError(
                f"{name}: the stream opens at its first iteration (or at get_final_*())"
            )
        return self.stream


class _StreamManager:
    """A wrapped SDK streaming helper: ``with`` it to run one streamed turn of the session."""

    __slots__ = ("_model", "_open", "_session", "_stream")

    def __init__(self, session: Session, open_manager: Callable[[str], Any], model: str) -> None:
        self._session = session
        self._open = open_manager
        self._model = model
        self._stream: _Stream | None = None

    def __enter__(self) -> _Stream:
        opened = _Opened()

        def once(model: str = self._model) -> Any:
            # The turn's attempt: the SDK's manager is entered here, so a retry opens a new one.
            opened.stream = self._open(model).__enter__()
            return opened.stream

        self._stream = _Stream(self._session.stream_turn(once, model=self._model), opened)
        return self._stream

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._stream is not None:
            self._stream.close()


class _Stream:
    """The stream a wrapped helper gives: the turn's events, and the SDK stream's own reads."""

    __slots__ = ("_opened", "turn")

    def __init__(self, turn: Any, opened: _Opened) -> None:
        self.turn = turn
        """The session's :class:`~techrevati.runtime.TurnStream` (usage and cost at its end)."""
        self._opened = opened

    def __iter__(self) -> Any:
        return iter(self.turn)

    def __next__(self) -> Any:
        return next(self.turn)

    @property
    def text_stream(self) -> Any:
        """The text deltas (anthropic's ``text_stream``), read through the turn."""
        return (
            event.delta.text
            for event in self.turn
            if event.type == "content_block_delta" and event.delta.type == "text_delta"
        )

    def until_done(self) -> None:
        """Read the turn to its end (charged), leaving the SDK stream's final state."""
        for _event in self.turn:
            pass

    def close(self) -> None:
        self.turn.close()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("get_final_"):

            def final(*args: Any, **kwargs: Any) -> Any:
                self.until_done()
                return getattr(self._opened.sdk_stream(name), name)(*args, **kwargs)

            return final
        return getattr(self._opened.sdk_stream(name), name)


class _AsyncStreamManager:
    """Async twin of :class:`_StreamManager` (``async with client.messages.stream(...)``)."""

    __slots__ = ("_model", "_open", "_session", "_stream")

    def __init__(self, session: Session, open_manager: Callable[[str], Any], model: str) -> None:
        self._session = session
        self._open = open_manager
        self._model = model
        self._stream: _AsyncStream | None = None

    async def __aenter__(self) -> _AsyncStream:
        opened = _Opened()

        async def once(model: str = self._model) -> Any:
            opened.stream = await self._open(model).__aenter__()
            return opened.stream

        self._stream = _AsyncStream(self._session.astream_turn(once, model=self._model), opened)
        return self._stream

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._stream is not None:
            await self._stream.close()


class _AsyncStream:
    """Async twin of :class:`_Stream`."""

    __slots__ = ("_opened", "turn")

    def __init__(self, turn: Any, opened: _Opened) -> None:
        self.turn = turn
        """The session's :class:`~techrevati.runtime.AsyncTurnStream`."""
        self._opened = opened

    def __aiter__(self) -> Any:
        return self.turn.__aiter__()

    async def __anext__(self) -> Any:
        return await self.turn.__anext__()

    @property
    def text_stream(self) -> Any:
        """The text deltas (anthropic's ``text_stream``), read through the turn."""
        return (
            event.delta.text
            async for event in self.turn
            if event.type == "content_block_delta" and event.delta.type == "text_delta"
        )

    async def until_done(self) -> None:
        """Read the turn to its end (charged), leaving the SDK stream's final state."""
        async for _event in self.turn:
            pass

    async def close(self) -> None:
        await self.turn.aclose()

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("get_final_"):

            async def final(*args: Any, **kwargs: Any) -> Any:
                await self.until_done()
                return await getattr(self._opened.sdk_stream(name), name)(*args, **kwargs)

            return final
        return getattr(self._opened.sdk_stream(name), name)


async def _opened(stream: Any) -> Any:
    return stream


async def _result_of(turn: Any) -> Any:
    result, _usage = await turn
    return result


def _family(client: object) -> str | None:
    module = type(client).__module__.split(".", 1)[0]
    if module in ("openai", "anthropic", "google", "botocore"):
        return module
    if module == "boto3":
        return "botocore"
    return None


def _without_sdk_retries(client: object) -> object:
    """With the session retrying, turn the SDK's own retries off so they are not doubled."""
    with_options = getattr(client, "with_options", None)
    if callable(with_options) and isinstance(getattr(client, "max_retries", None), int):
        return with_options(max_retries=0)
    return client
