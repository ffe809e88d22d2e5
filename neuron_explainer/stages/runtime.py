"""What every stage shares: its dependencies, its report, bounded unit scheduling and part writing.

A stage is `async def run(store, cfg.<stage>, deps) -> StageReport`. It computes its units
(`todo = planned - done`), runs them through `run_units`, which keeps at most `max_in_flight` in flight
and starts the next as soon as one finishes (one slow unit never holds up a batch), and writes the rows
of finished units as atomic part files as it goes. A unit either produces all its rows or a failure
row; failures are stored, reported, never scored, and retried on the next run.

Several workers may share a run. `workers.shard` gives each its share of the neurons (`Deps.selected`,
`Deps.restrict`); with `workers.claim`, a `UnitQueue` hands a worker only units it has claimed
(stages/claims.py), so workers sharing one directory never do the same unit, and it waits at the end for
the units other workers hold, taking over those of dead workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pandas as pd

from neuron_explainer.config.sections import RunConfig
from neuron_explainer.errors import ConfigError, NeuronExplainerError
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.llm.registry import BackendPool
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import only_neurons, write_part
from neuron_explainer.stages.claims import ClaimState, UnitClaims

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.05
"""First wait before looking again at units other workers hold (it doubles up to the claims' poll interval)."""
ProgressFn = Callable[[str, int, int], None]
"""(stage, units done, units planned)."""
U = TypeVar("U")


@dataclass
class StageReport:
    """What one stage run did."""

    stage: str
    planned: int = 0
    skipped_done: int = 0
    completed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    """`layer:neuron kind: message` of each failed unit."""
    details: dict[str, Any] = field(default_factory=dict)
    """Stage-specific counts (e.g. forward passes of the ablate stage)."""
    other_workers: int = 0
    """Units that other workers sharing the run finished (or failed) while this one ran."""
    taken_over: int = 0
    """Units whose claim this worker took over from a worker that stopped heartbeating."""


class FailureBudgetExceeded(NeuronExplainerError):
    """A stage failed on more units than `failure_budget` allows; later stages do not run."""


def check_failure_budget(report: StageReport, budget: float) -> None:
    """Raise if `report` has more failures than `budget` allows.

    `budget` is a fraction of the attempted units below 1 (one failure is always tolerated, so small
    pilot runs are not stopped by chance) or a count from 1.

    Raises:
        FailureBudgetExceeded: too many failures. What succeeded is stored; failures are retried next run.
    """
    attempted = report.completed + report.failed
    allowed = budget if budget >= 1 else max(1.0, budget * attempted)
    if report.failed > allowed:
        raise FailureBudgetExceeded(
            f"{report.stage}: {report.failed} of {attempted} units failed, over the failure budget ({budget}); "
            "the failures are stored in <run>/failures and retried on the next run"
        )


@dataclass
class Deps:
    """What stages need beyond their own config section, built once per run and shared."""

    config: RunConfig
    """The whole run config (stages read other sections where the method needs them)."""
    llm: BackendPool
    """Explainer, simulator and judge back ends, wrapped per the `llm:` section."""
    progress: ProgressFn | None = None
    notify: Callable[[str], None] = logger.info
    """Receives one-line status messages (`loading ...`); the CLI prints them."""
    force: bool = False
    """Harvest: delete an existing harvest made with another config."""
    subjects: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        *,
        backends: dict[str, LLMBackend] | None = None,
        progress: ProgressFn | None = None,
        notify: Callable[[str], None] | None = None,
        force: bool = False,
    ) -> Deps:
        """Dependencies for `config`; `backends` maps specs to ready back ends (tests inject fakes)."""
        notify = notify or logger.info
        shard = config.workers.shard
        # one SQLite file per shard: a Slurm array's tasks do not contend for one database's lock
        name = "llm.sqlite" if shard is None else f"llm-shard-{shard.index}-of-{shard.count}.sqlite"
        pool = BackendPool(config.llm, RunStore(config.out).root / "cache" / name, prebuilt=backends, notify=notify)
        return cls(config, pool, progress, notify, force)

    def report_progress(self, stage: str, done: int, total: int) -> None:
        """Forward a progress report, if anyone listens."""
        if self.progress is not None:
            self.progress(stage, done, total)

    def subject(self, store: RunStore) -> Any:
        """The run's subject model, loaded on first use (activations.subject.HarvestedSubject)."""
        from neuron_explainer.activations.subject import HarvestedSubject

        key = str(store.root.resolve())
        if key not in self.subjects:
            manifest = store.require_harvest()
            self.notify(f"loading subject model {manifest['harvest']['config']['model']} ...")
            self.subjects[key] = HarvestedSubject.for_run(manifest, device=self.config.subject_device)
        return self.subjects[key]

    def selected(self, store: RunStore) -> list[tuple[int, int]] | None:
        """The neurons `config.neurons` selects in this run, of this worker's shard (None: no selection)."""
        from neuron_explainer.selection import in_shard, neurons_for_run

        if not self.config.neurons:
            return None
        neurons = neurons_for_run(self.config.neurons, store.require_harvest())
        shard = self.config.workers.shard
        if shard is None:
            return neurons
        return [n for n, mine in zip(neurons, in_shard(neurons, shard.index, shard.count), strict=True) if mine]

    def require_selected(self, store: RunStore) -> list[tuple[int, int]]:
        """`selected`, for stages that only run on selected neurons.

        Raises:
            ConfigError: no neurons are selected.
        """
        from neuron_explainer.selection import SPEC_HELP

        neurons = self.selected(store)
        if neurons is None:
            raise ConfigError(f"no neurons selected: pass --neurons ({SPEC_HELP}) or set `neurons` in the config")
        return neurons

    def restrict(self, store: RunStore, table: pd.DataFrame, *, by_selection: bool = True) -> pd.DataFrame:
        """The rows of a (layer, neuron)-keyed table this worker works on: selected neurons of its shard."""
        from neuron_explainer.selection import in_shard

        selected = self.selected(store) if by_selection else None
        if selected is not None:
            return only_neurons(table, set(selected))
        shard = self.config.workers.shard
        if shard is None or table.empty:
            return table
        return table[in_shard(zip(table.layer, table.neuron, strict=True), shard.index, shard.count)]

    @contextmanager
    def claims(self, store: RunStore, stage: str) -> Iterator[UnitClaims | None]:
        """This worker's claims on `stage`'s units (None when `workers.claim` is off); enter before reading `done`."""
        settings = self.config.workers
        if not settings.claim:
            yield None
            return
        with UnitClaims(store.root, stage, expiry_seconds=settings.claim_expiry_seconds) as claims:
            yield claims


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
