"""An awaited model call with a deadline, even one that ignores cancellation.

Private: the async twin of :mod:`~techrevati.runtime._runner`'s deadline for
blocking calls, used by ``arun_turn``. :mod:`asyncio` is imported on first
use (only async turns need it, and they have it loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from techrevati.runtime._log import get_logger
from techrevati.runtime.errors import TurnTimeoutError

if TYPE_CHECKING:
    import asyncio

__all__ = ["within_deadline"]

_T = TypeVar("_T")
_log = get_logger("techrevati.runtime.orchestrator")


async def within_deadline(awaitable: Awaitable[_T], timeout: float, model: str) -> _T:
    """Await ``awaitable`` for at most ``timeout`` seconds, even if it ignores cancellation.

    At the deadline the task is cancelled and the caller moves on at once. A
    coroutine that swallows the cancellation keeps running in the background:
    that is logged (when it ends, or if it is still running another
    ``timeout`` later) and its result is dropped.
    """
    import asyncio  # noqa: PLC0415 (only async turns need it; they have it loaded)

    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except BaseException:  # the caller was cancelled meanwhile
        task.cancel()
        task.add_done_callback(_forget_late)
        raise
    if done:
        return task.result()
    task.cancel()
    _watch_late(task, timeout, model)
    raise TurnTimeoutError(timeout, model)


def _watch_late(task: asyncio.Future[Any], timeout: float, model: str) -> None:
    """Report a cancelled turn that does not stop; retrieve its outcome when it ends."""

    def still_running() -> None:
        if not task.done():
            _log.warning(
                "turn on model %r passed its %ss deadline and did not stop when cancelled; "
                "it runs on in the background and its result will be dropped",
                model,
                timeout,
            )

    timer = sys.modules["asyncio"].get_running_loop().call_later(timeout, still_running)

    def ended(task: asyncio.Future[Any]) -> None:
        timer.cancel()
        if not task.cancelled():
            _log.warning(
                "turn on model %r passed its %ss deadline and ignored the cancellation; "
                "it finished later and its result was dropped",
                model,
                timeout,
            )
        _forget_late(task)

    task.add_done_callback(ended)


def _forget_late(task: asyncio.Future[Any]) -> None:
    """Retrieve a late task's outcome so asyncio does not report it as lost."""
    if not task.cancelled() and task.exception() is not None:
        _log.debug("a turn's late call failed after its deadline", exc_info=task.exception())
