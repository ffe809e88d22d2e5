"""Bounded unit scheduling and part writing, shared by the stages.

`run_units` keeps at most `max_in_flight` units in flight and starts the next as soon as one finishes
(one slow unit never holds up a batch); `run_batches` works units a batch at a time where they share
work (a forward pass per layer). Both write the rows of finished units as atomic part files as they go,
the table that marks a unit done last. A `UnitQueue` hands a worker only units it has claimed
(stages/claims.py), so workers sharing one directory never do the same unit; it waits at the end for
the units other workers hold, taking over those of dead workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import write_part
from neuron_explainer.stages.claims import ClaimState, UnitClaims
from neuron_explainer.stages.runtime import ProgressFn, StageReport

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.05
"""First wait before looking again at units other workers hold (it doubles up to the claims' poll interval)."""
U = TypeVar("U")


@dataclass
class UnitResult:
    """What one unit produced: rows per table, or failure rows (then nothing else is kept)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)


class UnitQueue(Generic[U]):
    """A stage's units for this worker, each handed out once, claimed first when claims are on.

    A unit another live worker holds is set aside and looked at again once the others are handed out,
    after 50 ms, then twice as long each time nothing could be claimed, up to `poll_seconds`; one another
    worker finished or failed meanwhile is counted and dropped.
    """

    def __init__(
        self,
        units: Sequence[U],
        key: Callable[[U], tuple[Hashable, ...]],
        claims: UnitClaims | None = None,
        report: StageReport | None = None,
    ) -> None:
        self.pending: deque[U] = deque(units)
        self.waiting: list[U] = []
        self.total = len(units)
        self.key, self.claims = key, claims
        self.report = report if report is not None else StageReport("units")
        self.poll_seconds = claims.poll_seconds if claims is not None else 1.0
        self.retry_at, self.delay = 0.0, FIRST_RETRY_SECONDS

    @property
    def empty(self) -> bool:
        """Nothing left to hand out or to wait for."""
        return not self.pending and not self.waiting

    def take(self, n: int, fits: Callable[[list[U], U], bool] | None = None) -> list[U]:
        """Up to `n` claimed units, in order; with `fits`, stop at the first unit that does not fit the batch."""
        now = time.monotonic()
        if not self.pending and self.waiting and now >= self.retry_at:
            self.pending.extend(self.waiting)
            self.waiting.clear()
        got: list[U] = []
        while self.pending and len(got) < n:
            unit = self.pending[0]
            if got and fits is not None and not fits(got, unit):
                break
            self.pending.popleft()
            state = self.claims.acquire(self.key(unit)) if self.claims is not None else ClaimState.ACQUIRED
            if state is ClaimState.ACQUIRED:
                got.append(unit)
            elif state is ClaimState.HELD:
                self.waiting.append(unit)
            else:
                self.report.other_workers += 1
        if not self.pending and self.waiting and now >= self.retry_at:
            self.delay = FIRST_RETRY_SECONDS if got else min(2 * self.delay, self.poll_seconds)
            self.retry_at = now + self.delay
        return got

    async def pause(self) -> None:
        """Wait until units other workers hold are worth looking at again."""
        await asyncio.sleep(max(0.0, self.retry_at - time.monotonic()))

    def owned(self, units: Sequence[U]) -> list[bool]:
        """Whether this worker still holds each unit (always, without claims)."""
        return self.claims.owned([self.key(u) for u in units]) if self.claims is not None else [True] * len(units)

    def settle(self, unit: U, *, failed: bool = False, lost: bool = False) -> None:
        """After its rows are written: mark the unit done (or failed) and release it; `lost`: just forget it."""
        if self.claims is None:
            return
        if lost:
            self.claims.forget(self.key(unit))
        else:
            self.claims.release(self.key(unit), failed=failed)


class PartWriter:
    """Buffers finished units' rows and writes them as part files, the unit-completing table last."""

    def __init__(self, store: RunStore, done_table: str) -> None:
        self.store, self.done_table = store, done_table
        self.results: list[tuple[Any, UnitResult]] = []

    @property
    def units(self) -> int:
        """Units buffered."""
        return len(self.results)

    def add(self, result: UnitResult, unit: Any = None) -> None:
        """Queue one unit's rows (or its failures)."""
        self.results.append((unit, result))

    def flush(self, keep: Sequence[bool] | None = None) -> list[tuple[Any, UnitResult]]:
        """Write everything queued (only the units `keep` marks), the table that marks units done last.

        So a crash never marks a unit done whose other rows are missing. Returns the units written.
        """
        written = [r for r, k in zip(self.results, keep or [True] * self.units, strict=True) if k]
        pending: dict[str, list[dict[str, Any]]] = {}
        for _, result in written:
            tables = {"failures": result.failures} if result.failures else result.rows
            for name, rows in tables.items():
                pending.setdefault(name, []).extend(rows)
        for name in sorted(pending, key=lambda name: name == self.done_table):
            write_part(self.store, name, pending[name])
        self.results = []
        return written


def flush_units(writer: PartWriter, queue: UnitQueue[Any], report: StageReport) -> None:
    """Write the buffered units this worker still holds, then mark them done (or failed) and release them.

    A unit another worker took over (this one stalled past the claim expiry) is dropped, not written twice.
    """
    if queue.claims is not None:
        report.taken_over = queue.claims.taken_over
    buffered = list(writer.results)
    keep = queue.owned([unit for unit, _ in buffered])
    writer.flush(keep)
    for (unit, result), kept in zip(buffered, keep, strict=True):
        queue.settle(unit, failed=bool(result.failures), lost=not kept)
        if not kept:
            logger.warning("%s: another worker took over a unit this one held (stalled?); rows dropped", report.stage)
            _count(report, result, -1)
            report.other_workers += 1


async def run_units(
    units: Sequence[U] | UnitQueue[U],
    work: Callable[[U], Awaitable[UnitResult]],
    *,
    report: StageReport,
    writer: PartWriter,
    max_in_flight: int,
    flush_every: int = 8,
    flush_seconds: float = 30.0,
    progress: ProgressFn | None = None,
) -> None:
    """Run `work` on every unit with at most `max_in_flight` outstanding, in completion order.

    Rows are written every `flush_every` finished units or `flush_seconds`, whenever nothing is in flight
    (so units another worker waits for are released), and at the end, also when a unit raises (what
    finished is kept; the error propagates). A plain sequence of units is worked without claims.
    """
    queue = units if isinstance(units, UnitQueue) else UnitQueue(units, key=lambda u: (u,))
    in_flight: dict[asyncio.Task[UnitResult], U] = {}
    done_count, last_flush = 0, time.monotonic()

    def start_more() -> None:
        for unit in queue.take(max_in_flight - len(in_flight)):
            in_flight[asyncio.ensure_future(work(unit))] = unit

    try:
        start_more()
        while in_flight or not queue.empty:
            if not in_flight:
                flush_units(writer, queue, report)
                await queue.pause()
                start_more()
                continue
            timeout = max(0.0, queue.retry_at - time.monotonic()) if queue.waiting else None
            finished, _ = await asyncio.wait(in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                unit = in_flight.pop(task)
                result = task.result()
                writer.add(result, unit)
                _count(report, result)
                done_count += 1
            start_more()
            if writer.units >= flush_every or time.monotonic() - last_flush >= flush_seconds or not in_flight:
                flush_units(writer, queue, report)
                last_flush = time.monotonic()
            if progress:
                progress(report.stage, done_count + report.other_workers, queue.total)
    finally:
        for task in in_flight:
            task.cancel()
        flush_units(writer, queue, report)


async def run_batches(
    queue: UnitQueue[U],
    work: Callable[[list[U]], list[UnitResult]],
    *,
    report: StageReport,
    writer: PartWriter,
    size: int,
    fits: Callable[[list[U], U], bool] | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Run `work` on batches of claimed units (one result per unit), writing and releasing each batch in turn.

    For stages that share work within a batch (a clean forward per layer group, one pass per layer).
    """
    try:
        while not queue.empty:
            batch = queue.take(size, fits)
            if not batch:
                await queue.pause()
                continue
            for unit, result in zip(batch, work(batch), strict=True):
                writer.add(result, unit)
                _count(report, result)
            flush_units(writer, queue, report)
            if progress:
                progress(report.stage, report.completed + report.failed + report.other_workers, queue.total)
    finally:
        flush_units(writer, queue, report)


def _count(report: StageReport, result: UnitResult, sign: int = 1) -> None:
    if result.failures:
        report.failed += sign
        if sign > 0:
            report.failures += [f"{f['layer']}:{f['neuron']} {f['kind']}: {f['message']}" for f in result.failures]
    elif any(result.rows.values()):
        report.completed += sign
