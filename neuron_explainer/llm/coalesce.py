"""Coalesce the requests of concurrent units into shared batched calls. Pure asyncio: no model, no I/O.

A stage keeps several units in flight (stages/units.run_units); each submits its requests and awaits
its results. Submissions that arrive before the event loop next turns are flushed together as one
batched call, so one forward pass serves several units (explanations of several neurons, excerpts of
several explanations).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Gathers concurrent `submit` calls into single calls of `flush` (one result per item, in order)."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]]) -> None:
        self.flush = flush
        self.queue: list[tuple[list[T], asyncio.Future]] = []
        self.calls = 0
        """Batched calls made."""

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of `items`, computed together with whatever other units submit meanwhile."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self.queue.append((list(items), future))
        if len(self.queue) == 1:
            loop.call_soon(lambda: asyncio.ensure_future(self._run()))
        return await future

    async def _run(self) -> None:
        pending, self.queue = self.queue, []
        flat = [item for items, _ in pending for item in items]
        self.calls += 1
        try:
            results = list(await self.flush(flat))
        except Exception as e:  # noqa: BLE001 - handed to every waiting unit, which decides what it means
            for _, future in pending:
                future.set_exception(e)
            return
        start = 0
        for items, future in pending:
            future.set_result(results[start : start + len(items)])
            start += len(items)
