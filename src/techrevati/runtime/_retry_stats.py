"""``RetryStats``: thread-safe counters of the runs made under one policy.

Private to :mod:`~techrevati.runtime.retry_policy`, which re-exports the
public name.
"""

from __future__ import annotations

import threading

from techrevati.runtime._classify import FailureScenario

__all__ = ["RetryStats"]


class RetryStats:
    """Counters of :func:`retry_call` runs under one policy; safe to share between threads.

    ``calls`` runs started, ``successes``, ``failures`` (failed attempts),
    ``retries`` (waits scheduled), ``exhausted`` (:class:`RetriesExhaustedError`
    raised) and ``gave_up`` (an error re-raised unchanged), plus failures per
    scenario.
    """

    __slots__ = (
        "_by_scenario",
        "_calls",
        "_exhausted",
        "_failures",
        "_gave_up",
        "_lock",
        "_retries",
        "_successes",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = 0
        self._successes = 0
        self._failures = 0
        self._retries = 0
        self._exhausted = 0
        self._gave_up = 0
        self._by_scenario: dict[FailureScenario, int] = {}

    @property
    def calls(self) -> int:
        """Runs started."""
        return self._calls

    @property
    def successes(self) -> int:
        """Runs that returned a value."""
        return self._successes

    @property
    def failures(self) -> int:
        """Attempts that raised."""
        return self._failures

    @property
    def retries(self) -> int:
        """Retries scheduled (one per wait)."""
        return self._retries

    @property
    def exhausted(self) -> int:
        """Runs that ended in :class:`RetriesExhaustedError`."""
        return self._exhausted

    @property
    def gave_up(self) -> int:
        """Runs that re-raised an error unchanged (not retryable, or refused)."""
        return self._gave_up

    def by_scenario(self) -> dict[FailureScenario, int]:
        """Failed attempts per scenario."""
        with self._lock:
            return dict(self._by_scenario)

    def snapshot(self) -> dict[str, object]:
        """Return a JSON-serialisable copy of every counter."""
        with self._lock:
            return {
                "calls": self._calls,
                "successes": self._successes,
                "failures": self._failures,
                "retries": self._retries,
                "exhausted": self._exhausted,
                "gave_up": self._gave_up,
                "by_scenario": {s.value: n for s, n in self._by_scenario.items()},
            }

    def _started(self) -> None:
        with self._lock:
            self._calls += 1

    def _succeeded(self) -> None:
        with self._lock:
            self._successes += 1

    def _failed(self, scenario: FailureScenario) -> None:
        with self._lock:
            self._failures += 1
            self._by_scenario[scenario] = self._by_scenario.get(scenario, 0) + 1

    def _retried(self) -> None:
        with self._lock:
            self._retries += 1

    def _ended(self, *, exhausted: bool) -> None:
        with self._lock:
            if exhausted:
                self._exhausted += 1
            else:
                self._gave_up += 1


RetryStats.__module__ = "techrevati.runtime.retry_policy"
