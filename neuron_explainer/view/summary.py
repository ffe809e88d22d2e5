"""Per-neuron summaries for the index: explanations with their scores, the best one, density. Pure pandas."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

SCORE_BINS = np.round(np.linspace(-1.0, 1.0, 21), 10)
"""Edges of the per-layer score histograms (width 0.1 over the range of a correlation)."""

TABLE_COLUMNS = [
    "layer",
    "neuron",
    "explanation_id",
    "explanation",
    "explainer",
    "prompt_version",
    "round",
    "sample_idx",
    "view",
    "simulator",
    "top_and_random",
    "random_only",
    "ablation",
    "ablation_random_only",
    "baseline",
]


def is_baseline(explainer: pd.Series) -> pd.Series:
    """True for explanations written by a baseline (explainer `baseline:...`), not an explainer model."""
    return explainer.astype(str).str.startswith("baseline:")


EXPLANATION_COLUMNS = ["layer", "neuron", "explanation_id", "explanation", "explainer", "prompt_version", "round"]
EXPLANATION_COLUMNS += ["sample_idx", "view"]
SCORE_READ_COLUMNS = ["explanation_id", "simulator", "scorer", "correlation"]
ABLATION_READ_COLUMNS = ["explanation_id", "simulator", "scorer", "score"]
"""The columns explanation_table reads from each table (the rest is never loaded for it)."""


def explanation_table(explanations: pd.DataFrame, scores: pd.DataFrame, ablation: pd.DataFrame) -> pd.DataFrame:
    """One row per (explanation, simulator) with its correlation and ablation scores (TABLE_COLUMNS).

    An explanation nobody scored yet keeps one row with an empty simulator and NaN scores. Scores are
    NaN where undefined (constant simulation or activations) or not computed.
    """
    expl = explanations.drop_duplicates("explanation_id")
    if expl.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in TABLE_COLUMNS})
    keys = ["explanation_id", "simulator"]
    if scores.empty:
        wide = pd.DataFrame(columns=[*keys, "top_and_random", "random_only"])
    else:
        wide = scores.groupby([*keys, "scorer"])["correlation"].first().unstack("scorer").reset_index()
    if not ablation.empty:
        ab = ablation.groupby([*keys, "scorer"])["score"].first().unstack("scorer")
        ab = ab.rename(columns={"top_and_random": "ablation", "random_only": "ablation_random_only"}).reset_index()
        wide = wide.merge(ab, on=keys, how="outer")
    table = expl[EXPLANATION_COLUMNS].merge(wide, on="explanation_id", how="left")
    for col in ("top_and_random", "random_only", "ablation", "ablation_random_only"):
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else np.nan
    table["simulator"] = table["simulator"].fillna("")
    table["baseline"] = is_baseline(table["explainer"])
    return table[TABLE_COLUMNS]


def rank_explanations(table: pd.DataFrame) -> pd.DataFrame:
    """The table ordered best first.

    Explainer-model explanations by top-and-random score (undefined last), then baselines the same way.
    """
    order = table.assign(_score=table["top_and_random"].fillna(-np.inf))
    keys = ["baseline", "_score", "round", "sample_idx", "explanation_id"]
    order = order.sort_values(keys, ascending=[True, False, True, True, True])
    return order.drop(columns="_score").reset_index(drop=True)


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rank_explanations for plain row dicts (one neuron's rows, no pandas overhead)."""

    def key(r: dict[str, Any]) -> tuple:
        score = r["top_and_random"]
        score = -np.inf if score is None or score != score else score
        return (bool(r["baseline"]), -score, r["round"], r["sample_idx"], r["explanation_id"])

    return sorted(rows, key=key)


def best_explanations(table: pd.DataFrame) -> pd.DataFrame:
    """One row per neuron: its best explanation from an explainer model (baselines never count)."""
    ranked = rank_explanations(table[~table["baseline"].astype(bool)])
    return ranked.drop_duplicates(["layer", "neuron"]).set_index(["layer", "neuron"])


def density_from_records(records: pd.DataFrame) -> pd.Series:
    """Per neuron, the fraction of tokens > 0 over its random excerpts (an unbiased sample of its tokens).

    Indexed by neuron; NaN for a neuron without random records.
    """
    rnd = records[records["kind"] == "random"]
    if rnd.empty:
        return pd.Series(dtype=float)
    arrays = [np.asarray(a, dtype=np.float32) for a in rnd["activations"]]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    positive = np.concatenate(arrays) > 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    per_row = np.add.reduceat(positive.astype(np.int64), starts) if len(positive) else np.zeros(len(arrays))
    per_row = np.where(lengths > 0, per_row, 0)
    frame = pd.DataFrame({"neuron": rnd["neuron"].to_numpy(), "pos": per_row, "n": lengths})
    sums = frame.groupby("neuron")[["pos", "n"]].sum()
    return sums["pos"] / sums["n"].where(sums["n"] > 0)


def score_histogram(values: pd.Series | np.ndarray) -> dict[str, Any]:
    """Counts of defined scores in SCORE_BINS (the top bin includes 1.0) and how many were undefined."""
    arr = np.asarray(values, dtype=float)
    defined = arr[~np.isnan(arr)]
    counts, _ = np.histogram(np.clip(defined, -1.0, 1.0), bins=SCORE_BINS)
    return {"counts": counts.tolist(), "undefined": int(np.isnan(arr).sum())}


def rounded(value: Any, digits: int = 4) -> float | None:
    """A float kept to `digits` significant digits for the page data; None for NaN, inf or missing."""
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def index_chunk(
    layer: int,
    stats: pd.DataFrame,
    best: pd.DataFrame,
    density: pd.Series,
    pages: set[int] | None,
) -> dict[str, Any]:
    """The index rows of one layer in columnar form (what a layer's index data file holds).

    `stats` holds the layer's neurons to list; `best` is best_explanations() (any layers); `density`
    is per neuron of this layer; `pages` the neurons that got a page (None: all of them).
    """
    neurons = stats["neuron"].astype(int).tolist()
    try:
        layer_best = best.xs(layer, level="layer")
    except KeyError:
        layer_best = best.iloc[0:0].droplevel("layer")
    layer_best = layer_best.reindex(neurons)

    def col(name: str) -> list[float | None]:
        return [rounded(v, 3) for v in layer_best[name]]

    return {
        "layer": layer,
        "neuron": neurons,
        "expl": [e if isinstance(e, str) else "" for e in layer_best["explanation"]],
        "tr": col("top_and_random"),
        "ro": col("random_only"),
        "ab": col("ablation"),
        "max": [rounded(v, 4) for v in stats["max_activation"]],
        "dens": [rounded(v, 3) for v in density.reindex(neurons)],
        "pages": None if pages is None else sorted(pages & set(neurons)),
    }
