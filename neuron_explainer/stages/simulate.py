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
from neuron_explainer.datatypes import Failure
from neuron_explainer.errors import ConfigError, NeuronExplainerError
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
from neuron_explainer.simulate.methods import SimulationMethod, require_method
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import SimulatorSetup
from neuron_explainer.stages.runtime import Deps, PartWriter, StageReport, UnitQueue, UnitResult, run_units


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
    splits = ("valid", "calibration") if cfg.calibrate else ("valid",)

    async def work(unit: dict[str, Any]) -> UnitResult:
        layer, neuron, eid = int(unit["layer"]), int(unit["neuron"]), unit["explanation_id"]
        record = load_neuron_record(store.root, layer, neuron)
        view, setup = unit["view"], setups[unit["view"]]
        todo = [
            (split, kind, apply_view(rec, view)) for split in splits for kind, rec in scoring_records(record, split)
        ]
        try:
            sims = [await m.run(unit["explanation"], rec.tokens, setup) for _, _, rec in todo]
        except (SimulationParseError, NeuronExplainerError) as e:
            kind = "parse" if isinstance(e, SimulationParseError) else "backend"
            return UnitResult(
                failures=[failure_row(layer, neuron, eid, Failure(stage="simulate", kind=kind, message=str(e)))]
            )
        cal = [
            (rec.activations, s.expected_values)
            for (split, _, rec), s in zip(todo, sims, strict=True)
            if split == "calibration"
        ]
        excerpts = [
            SimulatedExcerpt(split, kind, rec.stored_id, s.expected_values)
            for (split, kind, rec), s in zip(todo, sims, strict=True)
        ]
        rows = simulation_rows(
            layer,
            neuron,
            eid,
            excerpts,
            simulator=simulator,
            prompt_version=sims[0].prompt_version,
            max_level=sims[0].max_level,
            calibration=calibration_columns(cfg.calibrate, [a for a, _ in cal], [s for _, s in cal]),
        )
        return UnitResult({"simulations": rows})

    writer = PartWriter(store, "simulations")
    await run_units(
        UnitQueue(todo, lambda u: (u["layer"], u["neuron"], u["explanation_id"], simulator), claims, report),
        work,
        report=report,
        writer=writer,
        max_in_flight=deps.config.llm.max_in_flight,
        flush_every=4,
        progress=deps.progress,
    )
    return report
