"""What every stage shares: its dependencies, its report, bounded unit scheduling and part writing.

A stage is `async def run(store, cfg.<stage>, deps) -> StageReport`. It computes its units
(`todo = planned - done`), runs them through `run_units`, which keeps at most `max_in_flight` in flight
and starts the next as soon as one finishes (one slow unit never holds up a batch), and writes the rows
of finished units as atomic part files as it goes. A unit either produces all its rows or a failure
row; failures are stored, reported, never scored, and retried on the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from neuron_explainer.config.sections import RunConfig
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.llm.registry import BackendPool
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import write_part

logger = logging.getLogger(__name__)

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
        pool = BackendPool(
            config.llm, RunStore(config.out).root / "cache" / "llm.sqlite", prebuilt=backends, notify=notify
        )
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
        """The neurons `config.neurons` selects in this run (None: no selection, i.e. all that apply)."""
        from neuron_explainer.selection import neurons_for_run

        if not self.config.neurons:
            return None
        return neurons_for_run(self.config.neurons, store.require_harvest())


@dataclass
class UnitResult:
    """What one unit produced: rows per table, or failure rows (then nothing else is kept)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)


class PartWriter:
    """Buffers finished units' rows and writes them as part files, the unit-completing table last."""

    def __init__(self, store: RunStore, done_table: str) -> None:
        self.store, self.done_table = store, done_table
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.units = 0

    def add(self, result: UnitResult) -> None:
        """Queue one unit's rows (or its failures)."""
        tables = {"failures": result.failures} if result.failures else result.rows
        for name, rows in tables.items():
            self.pending.setdefault(name, []).extend(rows)
        self.units += 1

    def flush(self) -> None:
        """Write everything queued, the table that marks units done last.

        So a crash never marks a unit done whose other rows are missing.
        """
        order = sorted(self.pending, key=lambda name: name == self.done_table)
        for name in order:
            write_part(self.store, name, self.pending[name])
        self.pending.clear()
        self.units = 0


async def run_units(
    units: Sequence[U],
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

    Rows are written every `flush_every` finished units or `flush_seconds`, and at the end, also when a
    unit raises (what finished is kept; the error propagates).
    """
    pending_units = iter(units)
    in_flight: set[asyncio.Task[UnitResult]] = set()
    done_count, last_flush = 0, time.monotonic()

    def start_more() -> None:
        while len(in_flight) < max_in_flight:
            unit = next(pending_units, None)
            if unit is None:
                return
            in_flight.add(asyncio.ensure_future(work(unit)))

    try:
        start_more()
        while in_flight:
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                in_flight.discard(task)
                result = task.result()
                writer.add(result)
                _count(report, result)
                done_count += 1
            start_more()
            if writer.units >= flush_every or time.monotonic() - last_flush >= flush_seconds:
                writer.flush()
                last_flush = time.monotonic()
            if progress:
                progress(report.stage, done_count, len(units))
    finally:
        for task in in_flight:
            task.cancel()
        writer.flush()


def _count(report: StageReport, result: UnitResult) -> None:
    if result.failures:
        report.failed += 1
        report.failures += [f"{f['layer']}:{f['neuron']} {f['kind']}: {f['message']}" for f in result.failures]
    elif any(result.rows.values()):
        report.completed += 1
