"""Gather each neuron's rows from a ViewSource: stage tables indexed once, harvest tables per layer."""

from __future__ import annotations

from typing import Any

import pandas as pd

from neuron_explainer.errors import ConfigError
from neuron_explainer.view.data import ViewSource
from neuron_explainer.view.neuron_data import NeuronTables
from neuron_explainer.view.summary import (
    ABLATION_READ_COLUMNS,
    EXPLANATION_COLUMNS,
    SCORE_READ_COLUMNS,
    best_explanations,
    explanation_table,
)

Key = tuple[int, int]


def rows_by_neuron(frame: pd.DataFrame) -> dict[Key, list[dict[str, Any]]]:
    """A (layer, neuron)-keyed frame as plain row dicts grouped by neuron (built once per table or layer)."""
    out: dict[Key, list[dict[str, Any]]] = {}
    if frame.empty:
        return out
    for row in frame.to_dict("records"):
        out.setdefault((int(row["layer"]), int(row["neuron"])), []).append(row)
    return out


def read_explanation_table(src: ViewSource, layers: list[int] | None = None) -> pd.DataFrame:
    """summary.explanation_table of a source (or of some layers), reading only the columns it needs."""
    return explanation_table(
        src.table("explanations", layers, EXPLANATION_COLUMNS),
        src.table("scores", layers, SCORE_READ_COLUMNS),
        src.table("ablation_scores", layers, ABLATION_READ_COLUMNS),
    )


class StageTables:
    """The stage tables of some layers of a source, read once and indexed by neuron."""

    def __init__(
        self, src: ViewSource, layers: list[int], table: pd.DataFrame | None = None, neurons: list[Key] | None = None
    ) -> None:
        """Read the layers' stage tables (only the rows of `neurons` when given).

        `table` is a read_explanation_table() result to reuse, if any.
        """
        if table is None:
            table = read_explanation_table(src, layers)
        table = table[table["layer"].isin(layers)]
        if neurons is not None:
            wanted = pd.MultiIndex.from_tuples(neurons, names=["layer", "neuron"])
            table = table[pd.MultiIndex.from_frame(table[["layer", "neuron"]]).isin(wanted)]
        self.table = table
        """summary.explanation_table rows of these layers."""
        self.best = best_explanations(self.table)
        """The best explanation per neuron (explainer models only)."""
        self._explanations = rows_by_neuron(self.table)
        self._simulations = rows_by_neuron(src.table("simulations", layers))
        self._revision_scores = rows_by_neuron(src.table("revision_scores", layers))
        self._revision_sentences = rows_by_neuron(src.table("revision_sentences", layers))
        out = src.output_tokens()
        self._output_tokens = None if out is None else rows_by_neuron(out[out["layer"].isin(layers)])
        self.model = src.model_name()
        """The subject model's name, for page headers."""

    def simulated_excerpts(self, key: Key) -> list[int]:
        """Excerpt ids the neuron's simulations use."""
        return [int(s["excerpt_id"]) for s in self._simulations.get(key, [])]

    def neuron(
        self, key: Key, stats: dict[str, Any], records: list[dict[str, Any]], tokens: dict[int, list[str]]
    ) -> NeuronTables:
        """The NeuronTables of one neuron, given its harvest rows."""
        return NeuronTables(
            layer=key[0],
            neuron=key[1],
            model=self.model,
            stats=stats,
            records=records,
            tokens=tokens,
            explanations=self._explanations.get(key, []),
            simulations=self._simulations.get(key, []),
            revision_scores=self._revision_scores.get(key, []),
            revision_sentences=self._revision_sentences.get(key, []),
            output_tokens=None if self._output_tokens is None else self._output_tokens.get(key, []),
        )


def check_neurons(src: ViewSource, neurons: Any, allow_empty: bool = False) -> list[Key] | None:
    """The requested neurons as sorted (layer, neuron) pairs (None: every harvested neuron).

    Raises:
        ConfigError: a pair is malformed, names a layer that was not harvested or a neuron out of range.
    """
    if neurons is None:
        return None
    out = set()
    for item in neurons:
        try:
            layer, neuron = (int(x) for x in item)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"neurons must be (layer, neuron) pairs, got {item!r}") from e
        if layer not in src.layers:
            raise ConfigError(f"layer {layer} was not harvested (harvested: {src.layers})")
        if not 0 <= neuron < src.n_neurons:
            raise ConfigError(f"neuron {neuron} out of range: layers have neurons 0..{src.n_neurons - 1}")
        out.add((layer, neuron))
    if not out and not allow_empty:
        raise ConfigError("no neurons selected: give at least one (layer, neuron) pair, or None for all")
    return sorted(out)


def single_neuron(src: ViewSource, layer: int, neuron: int, stage: StageTables | None = None) -> NeuronTables:
    """Everything about one neuron, read from the source (used by the notebook view).

    Raises:
        ConfigError: the neuron was not harvested.
    """
    check_neurons(src, [(layer, neuron)])
    stage = stage or StageTables(src, [layer])
    stats = src.neuron_stats(layer)
    row = stats[stats.neuron == neuron]
    if row.empty:
        raise ConfigError(f"neuron_stats has no row for layer {layer} neuron {neuron}")
    records = src.layer_records(layer, [neuron]).to_dict("records")
    ids = {int(r["excerpt_id"]) for r in records} | set(stage.simulated_excerpts((layer, neuron)))
    return stage.neuron((layer, neuron), row.iloc[0].to_dict(), records, src.excerpt_tokens(sorted(ids)))
