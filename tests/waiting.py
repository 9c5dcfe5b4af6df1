"""Waiting for a condition in async tests: poll with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float, what: str,
                     step: float = ...) -> T: ...
@overload
async def eventually(check: Callable[[], T | None], timeout: float, what: str,
                     step: float = ...) -> T: ...
async def eventually(check: Callable[[], object], timeout: float, what: str,
                     step: float = 0.05) -> object:
    """Poll ``check`` (plain or async) until it returns something truthy; fail naming
    ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {result!r}")
        await asyncio.sleep(step)
