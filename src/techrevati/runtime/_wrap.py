"""A raw SDK client, wrapped once: every model call it makes is a turn of the session.

Private to :mod:`~techrevati.runtime.orchestrator`; ``session.wrap(client)``
returns a :class:`_Proxy` typed as the client itself. The proxy forwards
every attribute to the client, except the model-call methods it knows:

- openai (``OpenAI``, ``AsyncOpenAI``): ``chat.completions.create`` and
  ``responses.create`` (``stream=True`` included);
- anthropic (``Anthropic``, ``AsyncAnthropic``): ``messages.create``
  (``stream=True`` included);
- google-genai (``genai.Client``): ``models.generate_content`` and
  ``models.generate_content_stream``, and their ``aio`` twins;
- botocore/boto3 ``bedrock-runtime``: ``converse`` and ``converse_stream``.

Each such call runs through :meth:`Session.run_turn` (or ``arun_turn``,
``stream_turn``, ``astream_turn``) with the model taken from the call's own
arguments (``model``, or Bedrock's ``modelId``), so budgets, the breaker, the
rate limiter, retries and fallback models apply and the usage is read from
the response or the stream. A fallback model replaces the call's model
argument. No SDK is imported here: clients are recognised by their module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from techrevati.runtime.errors import InvalidValueError

if TYPE_CHECKING:
    from techrevati.runtime.orchestrator import Session

__all__ = ["wrap_client"]

# Per SDK (the client's top module): the attribute paths of model calls, each with
# the keyword naming the model and whether the call streams (None: when stream=True).
_CALLS: Final[Mapping[str, Mapping[tuple[str, ...], tuple[str, bool | None]]]] = {
    "openai": {
        ("chat", "completions", "create"): ("model", None),
        ("responses", "create"): ("model", None),
    },
    "anthropic": {
        ("messages", "create"): ("model", None),
    },
    "google": {
        ("models", "generate_content"): ("model", False),
        ("models", "generate_content_stream"): ("model", True),
        ("aio", "models", "generate_content"): ("model", False),
        ("aio", "models", "generate_content_stream"): ("model", True),
    },
    "botocore": {
        ("converse",): ("modelId", False),
        ("converse_stream",): ("modelId", True),
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
    session: Session, method: Callable[..., Any], model_key: str, streams: bool | None
) -> Callable[..., Any]:
    """Return ``method`` as a call that runs as one turn (or one streamed turn)."""
    # The SDKs decorate their async methods (openai's required_args): look beneath.
    is_async = inspect.iscoroutinefunction(inspect.unwrap(method))

    def call(*args: Any, **kwargs: Any) -> Any:
        model = kwargs.get(model_key, "")
        if not isinstance(model, str):
            raise InvalidValueError(f"{model_key} must be a str, got {model!r}")
        stream = streams if streams is not None else kwargs.get("stream") is True

        def once(model: str = model) -> Any:
            return method(*args, **{**kwargs, model_key: model})

        if stream:
            if is_async:  # awaited, as the SDK's own call is, then iterated
                return _opened(session.astream_turn(once, model=model))
            return session.stream_turn(once, model=model)
        if is_async:
            return _result_of(session.arun_turn(once, model=model))
        return session.run_turn(once, model=model)[0]

    call.__name__ = getattr(method, "__name__", "call")
    call.__doc__ = getattr(method, "__doc__", None)
    return call


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
