"""The score stage: pooled correlation of every simulation with the true activations (no model, no LLM).

The unit is an (explanation, simulator) pair of the valid split, scored and written in batches (claimed
first when workers share the run). Each registered scorer (scoring/scorers.py) pools its record kinds; a
constant simulation is stored as undefined, with the reason, never as zero. `summary` joins the scores into
one row per explanation for tables and the viewer.
"""

from __future__ import annotations

import pandas as pd

from neuron_explainer.config.sections import ScoreConfig
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.splits import scoring_records
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import correlation_row, read_table
from neuron_explainer.records.views import apply_view
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.scoring.scorers import SCORERS, pick
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_batches

BATCH = 256
"""Units scored and written per part file (and claimed at once)."""


async def run(store: RunStore, cfg: ScoreConfig, deps: Deps) -> StageReport:
    """Score every valid-split simulation (of this worker's shard) not yet scored, with each of `cfg.scorers`."""
    store.require_harvest()
    with deps.claims(store, "score") as claims:  # registered before reading what is done
        sims = read_table(store, "simulations")
        sims = deps.restrict(store, sims[sims.split == "valid"], by_selection=False)
        done = read_table(store, "scores")
        done_keys = set(zip(done.layer, done.neuron, done.explanation_id, done.simulator, strict=True))
        groups = dict(iter(sims.groupby(["layer", "neuron", "explanation_id", "simulator"])))
        todo = [key for key in groups if key not in done_keys]
        report = StageReport("score", planned=len(groups), skipped_done=len(groups) - len(todo))
        expl = read_table(store, "explanations")
        views = dict(zip(expl.explanation_id, expl.view, strict=True))

        def work(batch: list[tuple]) -> list[UnitResult]:
            return [UnitResult({"scores": score_rows(store, cfg, key, groups[key], views)}) for key in batch]

        queue = UnitQueue(todo, lambda key: key, claims, report)
        await run_batches(queue, work, report=report, writer=PartWriter(store, "scores"), size=BATCH,
                          progress=deps.progress)  # fmt: skip
    return report


def score_rows(store: RunStore, cfg: ScoreConfig, key: tuple, g: pd.DataFrame, views: dict) -> list[dict]:
    """The `scores` rows of one (explanation, simulator): one per scorer."""
    layer, neuron, eid, simulator = int(key[0]), int(key[1]), key[2], key[3]
    view = views.get(eid, "current_token")
    truth = {
        (k, r.excerpt_id): apply_view(r, view).activations
        for k, r in scoring_records(load_neuron_record(store.root, layer, neuron))
    }
    kinds, excerpts = list(g.record_kind), [int(e) for e in g.excerpt_id]
    values = [list(v) for v in g.expected_values]
    rows = []
    for scorer in cfg.scorers:
        sel = pick(kinds, scorer)
        score = score_correlation([truth[(kinds[i], excerpts[i])] for i in sel], [values[i] for i in sel])
        rows.append(correlation_row(layer, neuron, eid, scorer, score, simulator=simulator))
    return rows


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
