"""Background loops that never die silently.

Every long-running loop of a process (heartbeats, sweepers, repair and watch rounds)
runs under ``watch``: when its body raises, the crash is logged with its traceback and
the body is started again after a delay that doubles with each crash in a row
(``Backoff``). A loop the process must not run without is ``fatal``: its crash stops
the process instead, with a non-zero exit, so a supervisor restarts it whole.

``Loops`` owns the loops of one process; leaving its ``async with`` block cancels them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import CamError

log = logging.getLogger(__name__)

Body = Callable[[], Awaitable[None]]


class LoopFailed(CamError):
    """A fatal loop crashed: the process stops."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"background loop {name!r} crashed: {type(cause).__name__}: {cause}")
        self.name = name
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays before restarting a crashed loop: ``first``, doubled each time, capped."""

    first: float = 0.5
    maximum: float = 30.0
    reset_after: float = 60.0
    """A body that ran this long before crashing starts the delays over."""

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.maximum)


async def watch(name: str, body: Body, *, fatal: bool = False, backoff: Backoff = Backoff()) -> None:
    """Run ``body`` until it returns; after a crash, restart it (or raise ``LoopFailed``)."""
    delays = backoff.delays()
    while True:
        started = time.monotonic()
        try:
            await body()
            return
        except Exception as exc:
            if fatal:
                log.critical("%s crashed; stopping the process", name, exc_info=exc)
                raise LoopFailed(name, exc) from exc
            if time.monotonic() - started >= backoff.reset_after:
                delays = backoff.delays()
            delay = next(delays)
            log.error("%s crashed; restarting it in %.1fs", name, delay, exc_info=exc)
        await asyncio.sleep(delay)


def every(interval: float, round_: Body, *, at_once: bool = False) -> Body:
    """A body that runs ``round_`` every ``interval`` seconds (first after one interval,
    or at once); a round that raises ends it, so ``watch`` logs and restarts it."""

    async def body() -> None:
        if not at_once:
            await asyncio.sleep(interval)
        while True:
            await round_()
            await asyncio.sleep(interval)

    return body


class Loops:
    """The watched background loops of one process.

    ``run_until(aw)`` waits for ``aw`` (typically the stop signal) and raises
    ``LoopFailed`` as soon as a fatal loop crashes. Leaving the block cancels every loop.
    """

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], str] = {}
        self._failed: asyncio.Future[LoopFailed] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> Loops:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()

    def start(self, name: str, body: Body, *, fatal: bool = False,
              backoff: Backoff = Backoff()) -> asyncio.Task[None]:
        task = asyncio.create_task(watch(name, body, fatal=fatal, backoff=backoff), name=name)
        self._tasks[task] = name
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, LoopFailed):
            if not self._failed.done():
                self._failed.set_result(exc)
        elif exc is not None:  # BaseException such as SystemExit: not ours to swallow
            log.critical("loop %s ended with %r", task.get_name(), exc)
            if not self._failed.done():
                self._failed.set_result(LoopFailed(task.get_name(), exc))

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks.values())

    async def run_until(self, aw: Awaitable[Any]) -> Any:
        """The result of ``aw``; raises ``LoopFailed`` first if a fatal loop crashes."""
        main = asyncio.ensure_future(aw)
        try:
            await asyncio.wait({main, self._failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not main.done():
                main.cancel()
        if self._failed.done():
            raise self._failed.result()
        return main.result()

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
