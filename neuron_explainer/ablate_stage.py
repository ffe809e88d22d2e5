"""The ablate stage: ablation scores of simulated explanations, resumable, with the subject model in process.

Units are (explanation, simulator) pairs of round-1 explanations (LLM or baseline; revision rounds are
scored in revision_scores) whose simulation carries a calibration. Units of one layer are
grouped so that the union of their scored excerpts stays under `max_excerpts`; each group costs one clean
forward per distinct excerpt, then two replaced forwards (calibrated simulation, mean) per unit and
excerpt. Each group's scores are written as a part file before the next group starts, so a crash loses at
most one group, and a rerun skips finished units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.errors import RunDirError
from neuron_explainer.pipeline import ProgressFn, StageReport, only_neurons, read_table, write_part
from neuron_explainer.records.reader import load_neuron_stats, read_token_ids
from neuron_explainer.records.schema import ABLATION_SCORES, EXPLANATIONS, FAILURES, SIMULATIONS
from neuron_explainer.records.store import RunStore
from neuron_explainer.scoring.ablation import Ablator, NeuronAblation, ablation_score, score_ablations

ABLATION_SCORERS = {"top_and_random": ("top", "random"), "random_only": ("random",)}


def _groups(units: list[dict[str, Any]], max_excerpts: int) -> list[list[dict[str, Any]]]:
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


def run_ablate(
    store: RunStore,
    model: Any,
    source: ActivationSource,
    *,
    bos_token_id: int | None,
    neurons: set[tuple[int, int]] | None = None,
    batch_rows: int = 16,
    max_excerpts: int = 32,
    progress: ProgressFn | None = None,
) -> StageReport:
    """Ablation scores (top-and-random and random-only) of every calibrated simulation not yet scored.

    Args:
        store: the run.
        model: the harvested subject model (same weights, same hook point).
        source: its activation source (hook point access).
        bos_token_id: prepended to each excerpt when the harvest did (the manifest's `prepend_bos`).
        neurons: restrict to these (layer, neuron) pairs.
        batch_rows: excerpt rows per replaced forward.
        max_excerpts: distinct excerpts per clean forward (bounds memory: excerpts x tokens x vocabulary).
        progress: called with (stage, units done, units planned).
    """
    manifest = store.require_harvest()
    sims = read_table(store, "simulations", SIMULATIONS)
    sims = sims[sims.split == "valid"]
    sims = only_neurons(sims, neurons)
    expl = read_table(store, "explanations", EXPLANATIONS)
    # revision rounds are simulated on the valid split only (scored in revision_scores): not ablated
    sims = sims[sims.explanation_id.isin(set(expl.explanation_id[expl["round"] == 1]))]
    expl = expl[expl["round"] == 1]
    views = dict(zip(expl.explanation_id, expl.view, strict=True))
    done = read_table(store, "ablation_scores", ABLATION_SCORES)
    done_keys = set(zip(done.explanation_id, done.simulator, strict=True))
    report = StageReport("ablate")
    units, fails = [], []
    # explanations of the selected neurons that were never simulated: say so, do not skip them silently
    wanted = expl[~expl.explainer.str.startswith("baseline:")]
    wanted = only_neurons(wanted, neurons)
    for row in wanted[~wanted.explanation_id.isin(set(sims.explanation_id))].itertuples():
        report.planned += 1
        report.failed += 1
        message = f"explanation {row.explanation_id} has no simulation to ablate: run `simulate` first"
        report.failures.append(f"{row.layer}:{row.neuron} missing: {message}")
        fails.append(
            {
                "stage": "ablate",
                "layer": int(row.layer),
                "neuron": int(row.neuron),
                "explanation_id": row.explanation_id,
                "kind": "missing",
                "message": message,
                "raw": None,
            }
        )
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
            fails.append(
                {
                    "stage": "ablate",
                    "layer": layer,
                    "neuron": neuron,
                    "explanation_id": eid,
                    "kind": "calibration",
                    "message": f"no calibrated simulation to ablate with: {reason}",
                    "raw": None,
                }
            )
            report.failed += 1
            report.failures.append(f"{layer}:{neuron} calibration: {reason}")
            continue
        units.append(
            {
                "layer": layer,
                "neuron": neuron,
                "explanation_id": eid,
                "simulator": simulator,
                "kinds": list(g.record_kind),
                "excerpt_ids": [int(e) for e in g.excerpt_id],
                "values": [(float(slope) * np.asarray(v, dtype=np.float64)).tolist() for v in g.expected_values],
                "intercept": float(intercept),
            }
        )
    write_part(store, "failures", fails, FAILURES)
    ablator = Ablator(model, source, batch_rows=batch_rows)
    prefix = [bos_token_id] if manifest["harvest"].get("prepend_bos") and bos_token_id is not None else []
    done_units = 0
    for group in _groups(units, max_excerpts):
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
                [[v + u["intercept"] for v in vals] for vals in u["values"]],
            )
            for u in group
        ]
        scores = score_ablations(ablator, input_ids, group[0]["layer"], items)
        rows = []
        for u, score in zip(group, scores, strict=True):
            for scorer, kinds in ABLATION_SCORERS.items():
                pick = [i for i, k in enumerate(u["kinds"]) if k in kinds]
                s = ablation_score(
                    [score.per_excerpt_simulation[i] for i in pick], [score.per_excerpt_mean[i] for i in pick]
                )
                rows.append(
                    {
                        "layer": u["layer"],
                        "neuron": u["neuron"],
                        "explanation_id": u["explanation_id"],
                        "simulator": u["simulator"],
                        "scorer": scorer,
                        "score": s.score,
                        "jsd_simulation": s.jsd_simulation,
                        "jsd_mean": s.jsd_mean,
                        "undefined_reason": s.undefined_reason,
                        "per_excerpt_simulation": list(s.per_excerpt_simulation),
                        "per_excerpt_mean": list(s.per_excerpt_mean),
                        "n_excerpts": len(pick),
                    }
                )
        write_part(store, "ablation_scores", rows, ABLATION_SCORES)
        report.completed += len(group)
        done_units += len(group)
        if progress:
            progress("ablate", done_units, len(units))
    report.details = {
        "clean_excerpt_forwards": ablator.counts.clean_rows,
        "replaced_excerpt_forwards": ablator.counts.ablated_rows,
        "units": report.completed,
    }
    return report
