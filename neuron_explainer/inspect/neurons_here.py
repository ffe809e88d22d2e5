"""Which explained neurons fire at each token of a prompt.

Given the MLP activations of one prompt and a table of explained neurons (one row per neuron: layer, neuron,
explanation, score), list for every token the `top_n` explained neurons with the highest activation there, with
their explanation and score. Optionally the activations are first divided by each neuron's maximum activation
over the harvest corpus (the `max_activation` column of the neuron stats table), so neurons with very different
scales compare on how close they are to their own strongest firing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import encode, n_layers, prompt_activations

EXPLAINED_COLUMNS = ("layer", "neuron", "explanation", "score")
"""Columns the explained-neurons frame must have (others are ignored)."""

FRAME_COLUMNS = (
    "position",
    "token",
    "rank",
    "layer",
    "neuron",
    "activation",
    "normalized",
    "value",
    "explanation",
    "score",
)
"""Columns of `NeuronsHere.frame`."""


@dataclass(frozen=True)
class NeuronsHere:
    """The top explained neurons at each token of a prompt. T tokens, n = top_n."""

    tokens: list[str]
    """The prompt's tokens (T)."""
    top_n: int
    """How many neurons per token were asked for (fewer when fewer neurons are explained)."""
    normalized: bool
    """Whether neurons were ranked by activation / max_activation rather than by raw activation."""
    frame: pd.DataFrame
    """One row per (position, rank) with FRAME_COLUMNS: rank is 1-based; `activation` is the raw activation,
    `normalized` the activation over the neuron's max_activation (NaN without stats, or when that max is not
    positive), `value` the quantity ranked (one of the two); explanation and score from the explained table."""

    def to_frame(self) -> pd.DataFrame:
        """A copy of `frame`."""
        return self.frame.copy()

    def at(self, position: int) -> pd.DataFrame:
        """The rows of one position, best first."""
        return self.frame[self.frame["position"] == position].reset_index(drop=True)


def best_explanations(explained: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, neuron): the highest-scoring explanation (NaN scores last).

    Raises:
        ConfigError: a required column is missing.
    """
    missing = [c for c in EXPLAINED_COLUMNS if c not in explained.columns]
    if missing:
        raise ConfigError(f"explained neurons frame lacks column(s) {missing}; it needs {list(EXPLAINED_COLUMNS)}")
    frame = explained[list(EXPLAINED_COLUMNS)].sort_values("score", ascending=False, na_position="last")
    return frame.drop_duplicates(["layer", "neuron"]).sort_values(["layer", "neuron"]).reset_index(drop=True)


def _max_activations(stats: pd.DataFrame, neurons: pd.DataFrame) -> np.ndarray:
    if not {"layer", "neuron", "max_activation"} <= set(stats.columns):
        raise ConfigError("stats frame needs columns layer, neuron, max_activation")
    merged = neurons[["layer", "neuron"]].merge(
        stats[["layer", "neuron", "max_activation"]].drop_duplicates(["layer", "neuron"]), how="left"
    )
    values = merged["max_activation"].to_numpy(dtype=np.float64)
    return np.where(values > 0, values, np.nan)


def top_explained_neurons(
    activations: Mapping[int, np.ndarray],
    tokens: Sequence[str],
    explained: pd.DataFrame,
    *,
    top_n: int = 5,
    stats: pd.DataFrame | None = None,
) -> NeuronsHere:
    """Rank the explained neurons at every token by activation (or normalized activation when `stats` is given).

    Args:
        activations: layer -> (T, N) activations of the prompt; must cover every layer of `explained`.
        tokens: The prompt's tokens (T).
        explained: Explained neurons with EXPLAINED_COLUMNS; a neuron listed twice keeps its best-scoring row.
        top_n: Neurons to keep per token.
        stats: Optional neuron stats with layer, neuron, max_activation: rank by activation / max_activation
            (neurons without a positive max are not ranked).

    Raises:
        ConfigError: bad top_n, missing columns, a layer without activations, or a neuron out of range.
    """
    if top_n < 1:
        raise ConfigError(f"top_n must be at least 1, got {top_n}")
    neurons = best_explanations(explained)
    n = len(tokens)
    acts = np.zeros((n, len(neurons)), dtype=np.float64)
    for layer, rows in neurons.groupby("layer").groups.items():
        if int(layer) not in activations:
            raise ConfigError(f"explained neurons include layer {layer} but no activations were given for it")
        layer_acts = np.asarray(activations[int(layer)], dtype=np.float64).reshape(n, -1)
        index = neurons.loc[rows, "neuron"].to_numpy(dtype=np.int64)
        if index.min() < 0 or index.max() >= layer_acts.shape[1]:
            raise ConfigError(f"explained neuron out of range for layer {layer} (0..{layer_acts.shape[1] - 1})")
        acts[:, np.asarray(rows)] = layer_acts[:, index]
    normalized = acts / _max_activations(stats, neurons)[None, :] if stats is not None else np.full_like(acts, np.nan)
    value = normalized if stats is not None else acts
    # Rank descending with NaN last: argsort of -value puts NaN at the end.
    order = np.argsort(np.where(np.isnan(value), np.inf, -value), axis=1, kind="stable")[:, :top_n]
    keep = ~np.isnan(np.take_along_axis(value, order, axis=1))
    position = np.repeat(np.arange(n), order.shape[1])[keep.ravel()]
    column = order.ravel()[keep.ravel()]
    rank = np.tile(np.arange(1, order.shape[1] + 1), n)[keep.ravel()]
    frame = pd.DataFrame(
        {
            "position": position,
            "token": [tokens[p] for p in position],
            "rank": rank,
            "layer": neurons["layer"].to_numpy()[column],
            "neuron": neurons["neuron"].to_numpy()[column],
            "activation": acts[position, column],
            "normalized": normalized[position, column],
            "value": value[position, column],
            "explanation": neurons["explanation"].to_numpy()[column],
            "score": neurons["score"].to_numpy()[column],
        },
        columns=list(FRAME_COLUMNS),
    )
    return NeuronsHere(tokens=list(tokens), top_n=top_n, normalized=stats is not None, frame=frame)


def firing_neurons(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    explained: pd.DataFrame,
    *,
    top_n: int = 5,
    stats: pd.DataFrame | None = None,
) -> NeuronsHere:
    """Run the model on a prompt and list the top explained neurons at every token (see top_explained_neurons).

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt, explained frame, layers or neurons.
    """
    p = encode(model, tokenizer, prompt)
    layers = sorted(int(layer) for layer in best_explanations(explained)["layer"].unique())
    bad = [layer for layer in layers if not 0 <= layer < n_layers(model)]
    if bad:
        raise ConfigError(f"explained neurons include layer(s) {bad}: this model has layers 0..{n_layers(model) - 1}")
    acts = prompt_activations(model, p.input_ids, layers) if layers else np.zeros((p.n_tokens, 0, 0))
    by_layer = {layer: acts[:, i] for i, layer in enumerate(layers)}
    return top_explained_neurons(by_layer, p.tokens, explained, top_n=top_n, stats=stats)
