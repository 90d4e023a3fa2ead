"""Deadlines for reads: the caller's deadline (time.monotonic()) bounds the whole operation, as the
batcher bounds a write's wait in its queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from facade.domain.errors import ErrorKind, LedgerError

__all__ = ["within"]

T = TypeVar("T")


async def within(deadline: float | None, work: Awaitable[T]) -> T:
    """`work`'s result, or DEADLINE_EXCEEDED (the work cancelled) when `deadline` passes first."""
    if deadline is None:
        return await work
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + (deadline - time.monotonic())):
            return await work
    except TimeoutError as error:
        raise LedgerError(ErrorKind.DEADLINE, "DEADLINE_EXCEEDED", "the deadline passed before the answer") from error
