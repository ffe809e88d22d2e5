"""The simulate stage: every explanation -> simulated activations on its neuron's valid (and calibration) records.

The unit is an explanation. It is simulated on the 5 top + 5 random valid records (scored) and, with
`calibrate`, on the 5 + 5 calibration records, where the linear map to activations is fitted and stored
on every row. A unit is all or nothing: one excerpt that cannot be simulated fails it (a partial
simulation set is never scored). Baselines carry their own simulations and are skipped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from neuron_explainer.config.sections import SimulateConfig
from neuron_explainer.datatypes import Failure, Simulation
from neuron_explainer.errors import ConfigError, NeuronExplainerError
from neuron_explainer.llm.base import BackendError, Capability
from neuron_explainer.prompts.templates import SimulatorTemplate, load_simulator_template
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.splits import scoring_records
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import (
    SimulatedExcerpt,
    failure_row,
    read_table,
    simulation_rows,
    without_baselines,
)
from neuron_explainer.records.views import apply_view
from neuron_explainer.scoring.calibration import calibration_columns
from neuron_explainer.simulate.batched import slot_batcher
from neuron_explainer.simulate.methods import METHODS, SimulationMethod, require_method
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import SimulatorSetup
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_units


def templates_for(cfg: SimulateConfig, prompts_dir: str | None, views: set[str], m: SimulationMethod) -> dict:
    """The simulator template of each view the explanations use (the next-token one only if needed).

    Raises:
        ConfigError: a view the method cannot simulate, or a template that does not exist.
    """
    unsupported = views - set(m.views)
    if unsupported:
        raise ConfigError(f"explanations in the {sorted(unsupported)} view cannot be simulated by {cfg.method}")
    template = load_simulator_template(prompts_dir, cfg.prompt_version)
    out: dict[str, SimulatorTemplate] = {template.view: template}
    for view in views - set(out):
        other = load_simulator_template(prompts_dir, cfg.next_token_prompt_version)
        if other.view != view:
            raise ConfigError(
                f"explanations in the {view!r} view need a simulator template in that view "
                f"(simulate.next_token_prompt_version={cfg.next_token_prompt_version!r} is {other.view!r})"
            )
        out[view] = other
    return out


async def run(store: RunStore, cfg: SimulateConfig, deps: Deps) -> StageReport:
    """Simulate every explanation (of the selected neurons, if any) not yet simulated by this simulator.

    Raises:
        ConfigError: unknown method, or a view without a template.
        CapabilityError: the simulator cannot serve the method (before any request).
    """
    store.require_harvest()
    template = load_simulator_template(deps.config.prompts_dir, cfg.prompt_version)
    base = SimulatorSetup(deps.llm.get(cfg.simulator), template, max_level=cfg.max_level, top_k=cfg.top_k)
    m = require_method(cfg.method, base)
    with deps.claims(store, "simulate") as claims:  # registered before reading what is done
        return await simulate_units(store, cfg, deps, base, m, claims)


async def simulate_units(
    store: RunStore, cfg: SimulateConfig, deps: Deps, base: SimulatorSetup, m: SimulationMethod, claims: Any
) -> StageReport:
    """Simulate the explanations of this worker's neurons not yet simulated by `base`'s simulator."""
    explanations = deps.restrict(store, without_baselines(read_table(store, "explanations")))
    simulator = base.name
    done = read_table(store, "simulations")
    done_ids = set(done.explanation_id[done.simulator == simulator])
    units = explanations.to_dict("records")
    todo = [u for u in units if u["explanation_id"] not in done_ids]
    report = StageReport("simulate", planned=len(units), skipped_done=len(units) - len(todo))
    views = {u["view"] for u in todo}
    setups = {
        view: replace(base, template=t) for view, t in templates_for(cfg, deps.config.prompts_dir, views, m).items()
    }
    unit_simulator = _UnitSimulator(store, cfg, m, setups)
    writer = PartWriter(store, "simulations")
    await run_units(
        UnitQueue(todo, lambda u: (u["layer"], u["neuron"], u["explanation_id"], simulator), claims, report),
        unit_simulator.unit,
        report=report,
        writer=writer,
        max_in_flight=deps.config.llm.max_in_flight,
        flush_every=4,
        progress=deps.progress,
    )
    return report


class _UnitSimulator:
    """The work of one simulate unit (an explanation), with what every unit shares.

    With the all-at-once method on a back end that scores slots in batches (the local one), the
    excerpts of every unit in flight go to one SlotBatcher per view: one forward pass then serves
    excerpts of several explanations and neurons. Any other back end gets one request per excerpt.
    """

    def __init__(self, store: RunStore, cfg: SimulateConfig, m: SimulationMethod, setups: dict) -> None:
        self.store, self.cfg, self.m, self.setups = store, cfg, m, setups
        batched = m is METHODS["all_at_once"]
        self.batchers = {
            view: slot_batcher(setup)
            for view, setup in setups.items()
            if batched and Capability.SLOT_LOGPROBS in setup.backend.capabilities
        }
        self.splits = ("valid", "calibration") if cfg.calibrate else ("valid",)

    async def simulations(self, view: str, explanation: str, records: list) -> list[Simulation]:
        """The simulation of every record, or the first failure raised."""
        if view not in self.batchers:
            return [await self.m.run(explanation, rec.tokens, self.setups[view]) for rec in records]
        results = await self.batchers[view].submit([(explanation, rec.tokens) for rec in records])
        failed = next((r for r in results if isinstance(r, Failure)), None)
        if failed is not None:
            raise (SimulationParseError if failed.kind == "parse" else BackendError)(failed.message)
        return [r for r in results if isinstance(r, Simulation)]

    async def unit(self, unit: dict[str, Any]) -> UnitResult:
        """Simulate one explanation on its valid (and calibration) records; all or nothing."""
        layer, neuron, eid = int(unit["layer"]), int(unit["neuron"]), unit["explanation_id"]
        record = load_neuron_record(self.store.root, layer, neuron)
        view = unit["view"]
        todo = [
            (split, kind, apply_view(rec, view))
            for split in self.splits
            for kind, rec in scoring_records(record, split)
        ]
        try:
            sims = await self.simulations(view, unit["explanation"], [rec for _, _, rec in todo])
        except (SimulationParseError, NeuronExplainerError) as e:
            kind = "parse" if isinstance(e, SimulationParseError) else "backend"
            failure = Failure(stage="simulate", kind=kind, message=str(e))
            return UnitResult(failures=[failure_row(layer, neuron, eid, failure)])
        cal = [(rec.activations, s.expected_values) for (split, _, rec), s in zip(todo, sims, strict=True)
               if split == "calibration"]  # fmt: skip
        excerpts = [SimulatedExcerpt(split, kind, rec.stored_id, s.expected_values)
                    for (split, kind, rec), s in zip(todo, sims, strict=True)]  # fmt: skip
        columns = calibration_columns(self.cfg.calibrate, [a for a, _ in cal], [s for _, s in cal])
        rows = simulation_rows(layer, neuron, eid, excerpts, simulator=self.setups[view].name,
                               prompt_version=sims[0].prompt_version, max_level=sims[0].max_level,
                               calibration=columns)  # fmt: skip
        return UnitResult({"simulations": rows})
