"""The score stage: pooled correlation of every simulation with the true activations (no model, no LLM).

The unit is an (explanation, simulator) pair of the valid split. Each registered scorer
(scoring/scorers.py) pools its record kinds; a constant simulation is stored as undefined, with the
reason, never as zero. `summary` joins the scores into one row per explanation for tables and the viewer.
"""

from __future__ import annotations

import pandas as pd

from neuron_explainer.config.sections import ScoreConfig
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.splits import scoring_records
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import correlation_row, read_table, write_part
from neuron_explainer.records.views import apply_view
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.scoring.scorers import SCORERS, pick
from neuron_explainer.stages.runtime import Deps, StageReport


async def run(store: RunStore, cfg: ScoreConfig, deps: Deps) -> StageReport:
    """Score every valid-split simulation not yet scored, with each of `cfg.scorers`."""
    store.require_harvest()
    sims = read_table(store, "simulations")
    sims = sims[sims.split == "valid"]
    done = read_table(store, "scores")
    done_keys = set(zip(done.explanation_id, done.simulator, strict=True))
    groups = [(key, g) for key, g in sims.groupby(["explanation_id", "simulator"]) if key not in done_keys]
    report = StageReport("score", planned=len(groups) + len(done_keys), skipped_done=len(done_keys))
    expl = read_table(store, "explanations")
    views = dict(zip(expl.explanation_id, expl.view, strict=True))
    rows = []
    for (eid, simulator), g in groups:
        layer, neuron = int(g.layer.iloc[0]), int(g.neuron.iloc[0])
        view = views.get(eid, "current_token")
        truth = {
            (k, r.excerpt_id): apply_view(r, view).activations
            for k, r in scoring_records(load_neuron_record(store.root, layer, neuron))
        }
        kinds, excerpts = list(g.record_kind), [int(e) for e in g.excerpt_id]
        values = [list(v) for v in g.expected_values]
        for scorer in cfg.scorers:
            sel = pick(kinds, scorer)
            score = score_correlation([truth[(kinds[i], excerpts[i])] for i in sel], [values[i] for i in sel])
            rows.append(correlation_row(layer, neuron, eid, scorer, score, simulator=simulator))
        report.completed += 1
        deps.report_progress("score", report.completed, len(groups))
    write_part(store, "scores", rows)
    return report


def summary(store: RunStore) -> pd.DataFrame:
    """One row per scored explanation and simulator, with its correlation and ablation scores.

    Columns: layer, neuron, explanation_id, explainer, simulator, explanation, one column per scorer
    (correlation) and `ablation_<scorer>` (NaN where undefined or not ablated). Sorted by layer, neuron.
    """
    names = list(SCORERS)
    columns = ["layer", "neuron", "explanation_id", "explainer", "simulator", "explanation", *names]
    columns += [f"ablation_{k}" for k in names]
    scores = read_table(store, "scores")
    if scores.empty:
        return pd.DataFrame(columns=columns)
    expl = read_table(store, "explanations")[["explanation_id", "explanation", "explainer"]]
    # one row per explanation and simulator; undefined scores stay NaN (pivot keeps them, pivot_table would not)
    wide = scores.pivot(
        index=["layer", "neuron", "explanation_id", "simulator"], columns="scorer", values="correlation"
    ).reset_index()
    table = wide.merge(expl.drop_duplicates("explanation_id"), on="explanation_id", how="left")
    ablation = read_table(store, "ablation_scores")
    if not ablation.empty:
        wide_ab = ablation.pivot(index=["explanation_id", "simulator"], columns="scorer", values="score")
        wide_ab = wide_ab.rename(columns=lambda c: f"ablation_{c}").reset_index()
        table = table.merge(wide_ab, on=["explanation_id", "simulator"], how="left")
    for col in columns:
        if col not in table:
            table[col] = float("nan")
    return table[columns].sort_values(["layer", "neuron"], kind="stable").reset_index(drop=True)
