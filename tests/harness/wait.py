"""Wait on a condition with a timeout: the only way tests wait.

A fixed ``sleep`` is either too short on a loaded machine (a flaky test) or too long
everywhere else (a slow suite). These helpers poll a predicate until it returns something
truthy, and fail with a message that says what was awaited and what was last seen.

The predicate's truthy result is returned, so a wait can also fetch: ``ip = wait_for(lambda:
pod_ip(node), 5, message="pod IP")``. Exceptions listed in ``ignore`` count as "not yet"
(e.g. ``ConnectionRefusedError`` while a server starts); any other exception propagates at
once, because it usually means the test itself is wrong.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Literal, TypeAlias, TypeVar, overload

T = TypeVar("T")

Message = str | Callable[[], str]

# What a predicate may return: a value (returned once truthy), or None/False for "not yet".
# Spelling the falsy cases out lets a wait on ``dict | None`` return a ``dict`` to mypy.
Polled: TypeAlias = T | Literal[False] | None


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout."""


def _describe(message: Message, timeout: float, last: object, error: BaseException | None) -> str:
    text = message() if callable(message) else message
    seen = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    return f"timed out after {timeout:g} s waiting for {text or 'condition'} ({seen})"


def wait_for(
    predicate: Callable[[], Polled[T]],
    timeout: float,
    interval: float = 0.1,
    *,
    message: Message = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call predicate until it returns a truthy value; return that value.

    Raises WaitTimeout after timeout seconds. The predicate is always called at least once,
    and once more at the deadline, so a condition that holds at the end is never missed.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        expired = time.monotonic() >= deadline
        try:
            value = predicate()
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if expired:
            raise WaitTimeout(_describe(message, timeout, last, error)) from error
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


@overload
async def async_wait_for(
    predicate: Callable[[], Awaitable[Polled[T]]],
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.1,
    *,
    message: Message = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T: ...


@overload
async def async_wait_for(
    predicate: Callable[[], Polled[T]],
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.1,
    *,
    message: Message = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T: ...


async def async_wait_for(
    predicate: Callable[[], Awaitable[Polled[T]]] | Callable[[], Polled[T]],
    timeout: float,  # noqa: ASYNC109 (same signature as wait_for, deliberately)
    interval: float = 0.1,
    *,
    message: Message = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """The asyncio form of wait_for; predicate may be a coroutine function or a plain one.

    A call that hangs past the deadline is cancelled and counts as a timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        expired = loop.time() >= deadline
        try:
            result = predicate()
            if inspect.isawaitable(result):
                scope = asyncio.timeout(max(deadline - loop.time(), interval))
                try:
                    async with scope:
                        value: Polled[T] = await result
                except TimeoutError as exc:
                    if scope.expired():
                        raise WaitTimeout(_describe(message, timeout, last, exc)) from exc
                    raise
            else:
                value = result
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if expired:
            raise WaitTimeout(_describe(message, timeout, last, error)) from error
        await asyncio.sleep(max(0.0, min(interval, deadline - loop.time())))


async def first_items(stream: AsyncIterable[T], count: int, timeout: float = 5.0) -> list[T]:  # noqa: ASYNC109
    """The first ``count`` items of an async stream (a watch, say), read within ``timeout``.

    Fails when fewer arrive, by the deadline or because the stream ended: a check written
    inside ``async for`` would pass unseen on a stream that yields nothing.
    """
    items: list[T] = []
    try:
        async with asyncio.timeout(timeout):
            async for item in stream:
                items.append(item)
                if len(items) == count:
                    return items
    except TimeoutError as exc:
        raise WaitTimeout(f"{len(items)} of {count} items within {timeout:g} s: {items!r}") from exc
    raise WaitTimeout(f"the stream ended after {len(items)} of {count} items: {items!r}")
