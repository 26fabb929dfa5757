"""Calls through the library's wrappers that mypy --strict must check against the wrapped call.

Not run: tests/test_typing.py type-checks this file and expects exactly the
errors marked ``# expect: <code>`` (and none on the other lines).
"""

from __future__ import annotations

from techrevati.runtime import (
    CircuitBreaker,
    Orchestrator,
    RetryPolicy,
    aretry_call,
    retry_call,
    retrying,
)


def add(a: int, b: int) -> int:
    return a + b


async def aadd(a: int, b: int) -> int:
    return a + b


policy = RetryPolicy()
breaker = CircuitBreaker("typing")


@retrying()
def add_retried(a: int, b: int) -> int:
    return a + b


@retrying(policy=policy)
async def aadd_retried(a: int, b: int) -> int:
    return a + b


total: int = retry_call(add, 1, 2)
retry_call(add, 1, "two")  # expect: call-overload
retry_call(add, 1)  # expect: call-overload
total = policy.call(add, 1, 2)
policy.call(add, 1, "two")  # expect: arg-type
text: str = policy.call(add, 1, 2)  # expect: assignment
policy.call(add, 1, b="two")  # expect: arg-type
policy.call(add, 1, 2, 3)  # expect: call-arg
total = add_retried(1, 2)
add_retried(1, "two")  # expect: arg-type
add_retried(1, b="two")  # expect: arg-type
add_retried(1)  # expect: call-arg
text = add_retried(1, 2)  # expect: assignment
total = breaker.call(add, 1, 2)
breaker.call(add, 1, b="two")  # expect: arg-type

with Orchestrator(role="writer", phase="draft").session() as session:
    total = session.run_tool("calc", add, 1, 2)
    session.run_tool("calc", add, 1, "two")  # expect: arg-type
    session.run_tool("calc", add, 1, 2, 3)  # expect: call-arg


async def main() -> None:
    async with Orchestrator(role="writer", phase="draft").asession() as session:
        await session.arun_tool("calc", aadd, 1, 2)
        await session.arun_tool("calc", aadd, "one", 2)  # expect: arg-type
    await policy.acall(aadd, 1, 2)
    await policy.acall(aadd, 1, "two")  # expect: arg-type


async def retried() -> str:
    await aretry_call(aadd, 1, 2)
    await aretry_call(aadd, 1, "two")  # expect: call-overload
    await aadd_retried(1, 2)
    await aadd_retried(1, "two")  # expect: arg-type
    return await aadd_retried(1, 2)  # expect: return-value
