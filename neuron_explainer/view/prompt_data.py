"""Page data of the prompt views: each inspect computation's arrays as the JSON view.js draws.

One function per panel, each a pure function of one result object from `neuron_explainer.inspect`; nothing is
computed again here, values are only rounded for a short page (probabilities to 1e-4; other arrays to 4
significant digits of their largest magnitude, through `neuron_data.compact`; the probabilities of tokens and
keys to 4 significant digits each). The prompt's tokens travel once,
as `data.ex.prompt`, and the panels that show them as heatmaps use the `excerpts` renderer unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuron_explainer.view.neuron_data import compact
from neuron_explainer.view.summary import rounded as summary_rounded

if TYPE_CHECKING:  # the inspect package imports torch; a page is built without it
    from neuron_explainer.inspect import (
        ActivationFactors,
        AttentionMaps,
        LogitLens,
        NeuronsHere,
        NeuronView,
        Rankings,
        Saliency,
    )

PROMPT_KEY = "prompt"
"""Key of the prompt's tokens in the page's `ex` table (the heatmap renderer reads tokens from there)."""

ATTENTION_MIN = 0.01
"""Attention below this probability draws no line in the head and model views (it stays in the data)."""

TOP_LOADINGS = 5
"""Loadings listed per NMF factor."""


def scale_of(values: Any) -> float:
    """The largest finite magnitude of an array (0 when there is none)."""
    arr = np.abs(np.asarray(values, dtype=np.float64))
    arr = arr[np.isfinite(arr)]
    return float(arr.max()) if arr.size else 0.0


def rounded(values: Any, scale: float | None = None) -> Any:
    """An array of any shape as nested lists, rounded to 1e-3 of `scale` (default: its own largest magnitude)."""
    arr = np.asarray(values, dtype=np.float64)
    flat = compact(arr.ravel(), scale_of(arr) if scale is None else scale)
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


def probabilities(values: Any) -> Any:
    """Probabilities as nested lists rounded to 1e-4 (attention: what is drawn as a line's opacity)."""
    return rounded(values, 0.1)


def significant(values: Any) -> Any:
    """Values as nested lists with 4 significant digits each: small probabilities of watched tokens stay readable."""
    arr = np.asarray(values, dtype=np.float64)
    return np.array([summary_rounded(v, 4) for v in arr.ravel().tolist()], dtype=object).reshape(arr.shape).tolist()


def lower_triangle(square: np.ndarray) -> list[list[float | None]]:
    """Row q of a (T, T) causal matrix keeps keys 0..q: half the page size, nothing lost (later keys are 0)."""
    return [probabilities(square[q, : q + 1]) for q in range(square.shape[0])]


def heatmap(rows: list[tuple[str, np.ndarray, float]], label: str, mark: int | None = None) -> dict[str, Any]:
    """A token-heatmap group of the prompt for the `excerpts` renderer: rows of (name, values, colour scale)."""
    item: dict[str, Any] = {"id": PROMPT_KEY, "label": label, "rows": []}
    for name, values, scale in rows:
        item["rows"].append({"n": name, "v": rounded(values, scale), "s": scale or 1.0})
    if mark is not None:
        item["mark"] = mark
    return {"items": [item]}


def saliency_data(s: Saliency) -> dict[str, Any]:
    """Signed attribution and L2 share per prompt token, the explained position marked."""
    scale = scale_of(s.signed)
    label = f"attribution to {s.target_token!r} predicted at position {s.position}"
    group = heatmap(
        [("signed", s.signed, scale), ("L2 share", s.l2_share, scale_of(s.l2_share))], label, mark=s.position
    )
    return {**group, "position": s.position, "target": s.target_token, "method": s.method}


def lens_data(lens: LogitLens, layers: list[int] | None = None) -> dict[str, Any]:
    """Top-k tokens and probabilities per (layer, position), watched tokens' ranks, the next token's rank.

    `layers` keeps only those rows (block indices); None keeps all.
    """
    position = {int(layer): row for row, layer in enumerate(lens.layers)}
    rows = list(position.values()) if layers is None else [position[int(layer)] for layer in layers]
    return {
        "layers": [int(lens.layers[r]) for r in rows],
        "top": [lens.top_tokens[r] for r in rows],
        "topp": significant(lens.top_probs[rows]),
        "watch": list(lens.watch_tokens),
        "ranks": lens.watch_ranks[rows].tolist(),
        "wprobs": significant(lens.watch_probs[rows]),
        "next": lens.next_ranks[rows].tolist(),
    }


def rankings_data(r: Rankings) -> dict[str, Any]:
    """Ranks (and probabilities) of the watched tokens after every block, at one position."""
    return {
        "position": r.position,
        "layers": r.layers.tolist(),
        "watch": list(r.watch_tokens),
        "ranks": r.ranks.tolist(),
        "probs": significant(r.probs),
    }


def factors_data(f: ActivationFactors, top: int = TOP_LOADINGS) -> dict[str, Any]:
    """One heatmap row per NMF factor (each on its own scale) and each factor's largest loadings."""
    rows = [(f"factor {k}", f.factors[k], scale_of(f.factors[k])) for k in range(len(f.factors))]
    group = heatmap(rows, f"{len(rows)} factors of layers {', '.join(str(x) for x in f.layers.tolist())}")
    loadings = f.loadings_frame(top=top)
    scale = scale_of(loadings["loading"])
    tables = []
    for k in range(len(f.factors)):
        part = loadings[loadings["factor"] == k]
        tables.append(
            [
                [int(layer), int(neuron), int(sign), value]
                for layer, neuron, sign, value in zip(
                    part["layer"], part["neuron"], part["part"], rounded(part["loading"], scale), strict=True
                )
            ]
        )
    return {**group, "loadings": tables, "negative": f.negative}


def firing_data(h: NeuronsHere) -> dict[str, Any]:
    """Per position, the top explained neurons as [neuron index, activation, normalized]; the neurons once.

    `neurons` lists [layer, neuron, explanation, score] of every neuron that appears; `best` is the ranked
    value of each position's first neuron (None where no neuron ranks), for the token colours.
    """
    frame = h.frame
    keys = frame[["layer", "neuron"]].drop_duplicates().sort_values(["layer", "neuron"])
    index = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(keys["layer"], keys["neuron"], strict=True))}
    first = frame.drop_duplicates(["layer", "neuron"]).set_index(["layer", "neuron"])
    neurons = [
        [layer, neuron, str(first.loc[(layer, neuron), "explanation"]), _score(first.loc[(layer, neuron), "score"])]
        for layer, neuron in index
    ]
    act_scale = scale_of(frame["activation"])
    at: list[list[list[Any]]] = [[] for _ in h.tokens]
    best: list[float | None] = [None] * len(h.tokens)
    values = rounded(frame["value"])
    for row, act, norm, value in zip(
        frame.itertuples(index=False), rounded(frame["activation"], act_scale), rounded(frame["normalized"], 1.0),
        values, strict=True,
    ):  # fmt: skip
        at[row.position].append([index[(int(row.layer), int(row.neuron))], act, norm])
        if row.rank == 1:
            best[row.position] = value
    return {"neurons": neurons, "at": at, "best": best, "scale": scale_of(frame["value"]), "normalized": h.normalized}


def _score(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 4)


def attention_data(a: AttentionMaps, layers: list[int] | None = None) -> dict[str, Any]:
    """Every head's pattern of the chosen layers, each row q holding keys 0..q."""
    chosen = list(range(a.probs.shape[0])) if layers is None else list(layers)
    return {
        "layers": chosen,
        "n_heads": int(a.probs.shape[1]),
        "min": ATTENTION_MIN,
        "attn": [[lower_triangle(a.probs[layer, head]) for head in range(a.probs.shape[1])] for layer in chosen],
    }


def qk_data(n: NeuronView) -> dict[str, Any]:
    """Queries, keys and products of one head (products at the view's query position), scores and probs.

    `dots` is every q·k (T, T), the one sum the page shows that the result holds only for the view's query
    position (as `products.sum(-1)`): summing the rounded products in the page would drift.
    """
    vectors = max(scale_of(n.queries), scale_of(n.keys))
    return {
        "layer": n.layer,
        "head": n.head,
        "kv_head": n.kv_head,
        "query": n.query_position,
        "queries": rounded(n.queries, vectors),
        "keys": rounded(n.keys, vectors),
        "products": rounded(n.products),
        "dots": rounded(n.queries.astype(np.float64) @ n.keys.T.astype(np.float64)),
        "scores": rounded(n.scores),
        "allowed": n.allowed.astype(int).tolist(),
        "probs": significant(n.probs),
        "scaling": n.scaling,
        "softcap": n.softcap,
        "window": n.sliding_window,
    }
