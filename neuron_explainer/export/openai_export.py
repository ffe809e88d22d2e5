"""Export a run in OpenAI's published neuron-explainer JSON layout (described in docs/data_format.md).

`export_openai(run, out)` writes `{out}/collated-activations/{layer}/{neuron}.json` (one `NeuronRecord`)
and, for scored neurons, `{out}/explanations/{layer}/{neuron}.jsonl` (first line:
`NeuronSimulationResults`). Splits are positional in both layouts (top i::4, random i::3), so the record
order is kept exactly. export/openai_import.py reads the layout back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from neuron_explainer.datatypes import ActivationRecord, NeuronRecord
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.selection import neurons_for_run


def _record(r: ActivationRecord) -> dict[str, Any]:
    return {
        "dataclass_name": "ActivationRecord",
        "tokens": list(r.tokens),
        "activations": [float(a) for a in r.activations],
    }


def neuron_record_json(rec: NeuronRecord) -> dict[str, Any]:
    """One NeuronRecord in the release's serialisation."""
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {
            "dataclass_name": "NeuronId",
            "layer_index": rec.neuron_id.layer_index,
            "neuron_index": rec.neuron_id.neuron_index,
        },
        "random_sample": [_record(r) for r in rec.random_sample],
        "random_sample_by_quantile": [[_record(r) for r in b] for b in rec.random_sample_by_quantile],
        "quantile_boundaries": list(rec.quantile_boundaries),
        "mean": rec.mean,
        "variance": rec.variance,
        "skewness": rec.skewness,
        "kurtosis": rec.kurtosis,
        "most_positive_activation_records": [_record(r) for r in rec.most_positive_activation_records],
    }


def nan_to_none(v: float | None) -> float | None:
    """None for a missing or NaN value (the release writes null), else the float."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _scored_sequences(sims: pd.DataFrame, truth: dict[int, ActivationRecord], per_excerpt: list) -> list[dict]:
    """One explanation's valid simulations as ScoredSequenceSimulation objects (top excerpts first)."""
    sims = sims.assign(order=sims.record_kind.map({"top": 0, "random": 1})).sort_values(["order"], kind="stable")
    seqs = []
    for k, row in enumerate(sims.itertuples()):
        true = truth[int(row.excerpt_id)]
        seqs.append(
            {
                "dataclass_name": "ScoredSequenceSimulation",
                "simulation": {
                    "dataclass_name": "SequenceSimulation",
                    "tokens": list(true.tokens),
                    "expected_activations": [float(v) for v in row.expected_values],
                    "activation_scale": "simulated_normalized_activations",
                    "distribution_values": [],
                    "distribution_probabilities": [],
                    "uncalibrated_simulation": None,
                },
                "true_activations": [float(a) for a in true.activations],
                "ev_correlation_score": nan_to_none(per_excerpt[k]) if k < len(per_excerpt) else None,
                "rsquared_score": None,
                "absolute_dev_explained_score": None,
            }
        )
    return seqs


def simulation_results_json(store: RunStore, layer: int, neuron: int, tables: dict[str, pd.DataFrame]) -> dict | None:
    """One neuron's NeuronSimulationResults (its scored explanations), or None if none is scored."""
    rec = load_neuron_record(store.root, layer, neuron)
    truth = {r.stored_id: r for r in rec.most_positive_activation_records + rec.random_sample}
    expl, sims, scores = tables["explanations"], tables["simulations"], tables["scores"]
    scored = []
    for row in expl[(expl.layer == layer) & (expl.neuron == neuron)].itertuples():
        sc = scores[(scores.explanation_id == row.explanation_id) & (scores.scorer == "top_and_random")]
        s = sims[sims.explanation_id == row.explanation_id]
        if s.empty or sc.empty:
            continue
        seqs = _scored_sequences(s[s.simulator == sc.simulator.iloc[0]], truth, list(sc.per_excerpt.iloc[0]))
        scored.append(
            {
                "dataclass_name": "ScoredExplanation",
                "explanation": row.explanation,
                "scored_simulation": {
                    "dataclass_name": "ScoredSimulation",
                    "scored_sequence_simulations": seqs,
                    "ev_correlation_score": nan_to_none(sc.correlation.iloc[0]),
                    "rsquared_score": None,
                    "absolute_dev_explained_score": None,
                },
            }
        )
    if not scored:
        return None
    neuron_id = {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": neuron}
    return {"dataclass_name": "NeuronSimulationResults", "neuron_id": neuron_id, "scored_explanations": scored}


def export_openai(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    neurons: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[int, int]:
    """Write the selected neurons' records (all harvested ones by default) and their scored explanations.

    Args:
        run_dir: the run.
        out_dir: where the layout is written.
        neurons: a selection spec (`5:0-99`, `layer:5`, `sample:N`, ...); None: every harvested neuron.
        progress: called with ("export", neurons done, neurons planned).

    Returns:
        (record files, explanation files) written.
    """
    store = RunStore(run_dir)
    manifest = store.require_harvest()
    kind = manifest["harvest"].get("features", {}).get("kind", "mlp")
    if kind != "mlp":
        raise RunDirError(f"OpenAI's layout holds MLP neurons; this run's features are {kind}: use --format parquet")
    selected = neurons_for_run(neurons or "all", manifest)
    out = Path(out_dir)
    valid = read_table(store, "simulations")
    tables = {
        "explanations": read_table(store, "explanations"),
        "simulations": valid[valid.split == "valid"],
        "scores": read_table(store, "scores"),
    }
    n_files = 0
    for i, (layer, neuron) in enumerate(selected, 1):
        path = out / "collated-activations" / str(layer) / f"{neuron}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(neuron_record_json(load_neuron_record(store.root, layer, neuron))))
        results = simulation_results_json(store, layer, neuron, tables)
        if results is not None:
            path = out / "explanations" / str(layer) / f"{neuron}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results) + "\n")
            n_files += 1
        if progress is not None:
            progress("export", i, len(selected))
    return len(selected), n_files
