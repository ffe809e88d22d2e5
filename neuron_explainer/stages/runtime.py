"""What every stage shares: its dependencies, its report and the failure budget.

A stage is `async def run(store, cfg.<stage>, deps) -> StageReport`. It computes its units
(`todo = planned - done`) and runs them through `stages.units` (`run_units`, `run_batches`), which
write the rows of finished units as they go. A unit either produces all its rows or a failure row;
failures are stored, reported, never scored, and retried on the next run.

Several workers may share a run. `workers.shard` gives each its share of the neurons (`Deps.selected`,
`Deps.restrict`); with `workers.claim`, a `UnitQueue` (stages/units.py) hands a worker only units it has claimed
(stages/claims.py), so workers sharing one directory never do the same unit, and it waits at the end for
the units other workers hold, taking over those of dead workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from neuron_explainer.config.sections import RunConfig
from neuron_explainer.errors import ConfigError, NeuronExplainerError
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.llm.registry import BackendPool
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import only_neurons
from neuron_explainer.stages.claims import UnitClaims

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""(stage, units done, units planned)."""


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
