"""The ablate stage: ablation scores of calibrated simulations, resumable, with the subject model in process.

Units are (explanation, simulator) pairs of round-1 explanations (LLM or baseline; revision rounds are
scored in revision_scores) whose simulation carries a calibration. Units of one layer are grouped so
that the union of their scored excerpts stays under `max_excerpts`; each group costs one clean forward
per distinct excerpt, then two replaced forwards (calibrated simulation, mean) per unit and excerpt.
Each group's scores are written before the next group starts, so a crash loses at most one group.
Explanations that cannot be ablated (never simulated, uncalibrated, next-token view) are named failures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from neuron_explainer.config.sections import AblateConfig
from neuron_explainer.datatypes import Failure
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.reader import load_neuron_stats, read_token_ids
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import (
    ablation_row,
    failure_row,
    read_table,
    without_baselines,
    write_part,
)
from neuron_explainer.scoring.ablation import Ablator, NeuronAblation, ablation_score, score_ablations
from neuron_explainer.scoring.scorers import SCORERS, pick
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_batches


def groups_of(units: list[dict[str, Any]], max_excerpts: int) -> list[list[dict[str, Any]]]:
    """Consecutive units of one layer whose excerpt union stays within max_excerpts (at least one unit)."""
    groups: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    seen: set[int] = set()
    for unit in sorted(units, key=lambda u: (u["layer"], u["neuron"], u["explanation_id"])):
        new = set(unit["excerpt_ids"]) - seen
        if current and (unit["layer"] != current[0]["layer"] or len(seen) + len(new) > max_excerpts):
            groups.append(current)
            current, seen = [], set()
            new = set(unit["excerpt_ids"])
        current.append(unit)
        seen |= new
    if current:
        groups.append(current)
    return groups


def _refuse(report: StageReport, fails: list[dict], layer: int, neuron: int, eid: str, kind: str, msg: str) -> None:
    fails.append(failure_row(layer, neuron, eid, Failure(stage="ablate", kind=kind, message=msg)))
    report.failed += 1
    report.failures.append(f"{layer}:{neuron} {kind}: {msg}")


def plan_units(store: RunStore, deps: Deps, report: StageReport) -> tuple[list, list]:
    """The units to ablate (of this worker's neurons), and failure rows for explanations that cannot be."""
    sims = deps.restrict(store, read_table(store, "simulations"))
    expl = read_table(store, "explanations")
    expl = expl[expl["round"] == 1]  # revision rounds are scored in revision_scores, not ablated
    sims = sims[(sims.split == "valid") & sims.explanation_id.isin(set(expl.explanation_id))]
    views = dict(zip(expl.explanation_id, expl.view, strict=True))
    done = read_table(store, "ablation_scores")
    done_keys = set(zip(done.explanation_id, done.simulator, strict=True))
    units: list[dict[str, Any]] = []
    fails: list[dict[str, Any]] = []
    wanted = deps.restrict(store, without_baselines(expl))
    for row in wanted[~wanted.explanation_id.isin(set(sims.explanation_id))].itertuples():
        report.planned += 1
        message = f"explanation {row.explanation_id} has no simulation to ablate: run `simulate` first"
        _refuse(report, fails, int(row.layer), int(row.neuron), row.explanation_id, "missing", message)
    for (eid, simulator), g in sims.groupby(["explanation_id", "simulator"], sort=True):
        report.planned += 1
        if (eid, simulator) in done_keys:
            report.skipped_done += 1
            continue
        layer, neuron = int(g.layer.iloc[0]), int(g.neuron.iloc[0])
        slope, intercept = g.calibration_slope.iloc[0], g.calibration_intercept.iloc[0]
        reason = None
        if views.get(eid, "current_token") != "current_token":
            reason = "a next-token simulation has no value for an excerpt's last position: not ablated"
        elif pd.isna(slope):
            error = g.calibration_error.iloc[0]
            reason = error if isinstance(error, str) else "simulated without calibration: rerun simulate with it on"
        if reason is not None:
            _refuse(
                report, fails, layer, neuron, eid, "calibration", f"no calibrated simulation to ablate with: {reason}"
            )
            continue
        values = [
            (float(slope) * np.asarray(v, dtype=np.float64) + float(intercept)).tolist() for v in g.expected_values
        ]
        units.append(
            {
                "layer": layer,
                "neuron": neuron,
                "explanation_id": eid,
                "simulator": simulator,
                "kinds": list(g.record_kind),
                "excerpt_ids": [int(e) for e in g.excerpt_id],
                "values": values,
            }
        )
    units.sort(key=lambda u: (u["layer"], u["neuron"], u["explanation_id"]))  # the order groups_of uses
    return units, fails


def unit_key(unit: dict[str, Any]) -> tuple[int, int, str, str]:
    """What identifies an ablation unit (and its claim)."""
    return unit["layer"], unit["neuron"], unit["explanation_id"], unit["simulator"]


def ablate_group(store: RunStore, ablator: Ablator, prefix: list[int], group: list[dict[str, Any]]) -> list[dict]:
    """Ablation rows of one group of units of one layer, sharing one clean forward."""
    order = sorted({e for u in group for e in u["excerpt_ids"]})
    index = {e: i for i, e in enumerate(order)}
    token_ids = read_token_ids(store, order)
    lengths = {len(token_ids[e]) for e in order}
    if len(lengths) != 1:
        raise RunDirError(f"scored excerpts of different lengths {sorted(lengths)}: cannot batch them")
    input_ids = torch.tensor([prefix + token_ids[e] for e in order], dtype=torch.long)
    items = [
        NeuronAblation(
            u["neuron"],
            load_neuron_stats(store.root, u["layer"], u["neuron"]).mean,
            [index[e] for e in u["excerpt_ids"]],
            u["values"],
        )
        for u in group
    ]
    rows = []
    for u, score in zip(group, score_ablations(ablator, input_ids, group[0]["layer"], items), strict=True):
        for scorer in SCORERS:
            sel = pick(u["kinds"], scorer)
            s = ablation_score([score.per_excerpt_simulation[i] for i in sel], [score.per_excerpt_mean[i] for i in sel])
            rows.append(
                ablation_row(
                    u["layer"],
                    u["neuron"],
                    u["explanation_id"],
                    scorer,
                    s,
                    simulator=u["simulator"],
                    n_excerpts=len(sel),
                )
            )
    return rows


async def run(store: RunStore, cfg: AblateConfig, deps: Deps) -> StageReport:
    """Ablation scores (every scorer) of every calibrated simulation not yet scored (of this worker's neurons).

    Units are claimed one by one and grouped as they are claimed, so that workers sharing the run never
    ablate the same explanation; a group's scores are written before the next group starts.
    """
    store.require_harvest()
    report = StageReport("ablate")
    with deps.claims(store, "ablate") as claims:  # registered before reading what is done
        units, fails = plan_units(store, deps, report)
        write_part(store, "failures", fails)
        if not units:
            report.details = {"clean_excerpt_forwards": 0, "replaced_excerpt_forwards": 0, "units": 0}
            return report
        subject = deps.subject(store)
        ablator = Ablator(subject.model, subject.source, batch_rows=cfg.batch_rows)

        def work(group: list[dict[str, Any]]) -> list[UnitResult]:
            rows = ablate_group(store, ablator, subject.prefix, group)
            by_unit: dict[tuple, list[dict]] = {}
            for row in rows:
                by_unit.setdefault(unit_key(row), []).append(row)
            return [UnitResult({"ablation_scores": by_unit[unit_key(u)]}) for u in group]

        def fits(group: list[dict[str, Any]], unit: dict[str, Any]) -> bool:
            return len(groups_of([*group, unit], cfg.max_excerpts)) == 1

        queue = UnitQueue(
            units, lambda u: (u["layer"], u["neuron"], u["explanation_id"], u["simulator"]), claims, report
        )
        writer = PartWriter(store, "ablation_scores")
        await run_batches(queue, work, report=report, writer=writer, size=len(units), fits=fits, progress=deps.progress)
    report.details = {
        "clean_excerpt_forwards": ablator.counts.clean_rows,
        "replaced_excerpt_forwards": ablator.counts.ablated_rows,
        "units": report.completed,
    }
    return report
