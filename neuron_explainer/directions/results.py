"""The tables a direction search writes under `<run>/directions/`, and what is read back from them.

- `direction_rounds`: one row per direction and round (written as the round ends: a killed search
  resumes at the next round of the direction it was in);
- `direction_results`: one row per finished direction;
- `direction_cosines`: the cosine similarity of every pair of directions, once all are found;
- `layer-LLL-<search id>.npz`: the directions found, as a `directions:FILE` feature file (docs/features.md)
  whose whitened directions read the run's own covariance, so they can be harvested, explained and
  ablated like neurons.
Columns: records/tables.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from neuron_explainer.directions.covariance import Whitener
from neuron_explainer.directions.source import write_directions
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table, write_part

FOLDER = "directions"


def read_rows(store: RunStore, table: str, search_id: str) -> list[dict[str, Any]]:
    """The rows of one search in a directions table, as dicts (lists as Python lists)."""
    frame = read_table(store, table, folder=FOLDER)
    frame = frame[frame.search_id == search_id]
    rows = frame.to_dict("records")
    for row in rows:
        for key, value in row.items():
            if isinstance(value, np.ndarray):
                row[key] = value.tolist()
            elif isinstance(value, float) and math.isnan(value):
                row[key] = None
    return rows


def write_rows(store: RunStore, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to a directions table (an atomic part file)."""
    write_part(store, table, rows, folder=FOLDER)


def rounds_by_direction(rows: Sequence[dict[str, Any]], rounds: int) -> dict[int, list[dict[str, Any]]]:
    """Round rows per direction, in round order, cut to the first `rounds` (contiguous from 0)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r["direction"], r["round"])):
        done = out.setdefault(int(row["direction"]), [])
        if int(row["round"]) == len(done) < rounds:
            done.append(row)
    return out


def history(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Every explanation tried so far with its latest score (a round's pick: its score after the update)."""
    latest: dict[str, float | None] = {}
    for row in rows:
        for text, score in zip(row["candidates"], row["candidate_scores"], strict=True):
            latest[text] = None if score is None or math.isnan(score) else float(score)
        if row["explanation"] is not None:
            latest[row["explanation"]] = row["score_after"]
    return latest


def best_earlier(rows: Sequence[dict[str, Any]], n: int) -> list[str]:
    """Up to n earlier explanations to re-score: the previous round's pick first, then the best by score."""
    latest = history(rows)
    ranked = sorted(latest, key=lambda t: (latest[t] is None, -(latest[t] or 0.0)))
    previous = rows[-1]["explanation"] if rows and rows[-1]["explanation"] is not None else None
    ordered = ([previous] if previous is not None else []) + [t for t in ranked if t != previous]
    return ordered[:n]


def cosine_rows(search_id: str, layer: int, thetas: np.ndarray, whitener: Whitener) -> list[dict[str, Any]]:
    """The `direction_cosines` rows of every pair of directions."""
    reads = whitener.read_vectors(thetas)
    unit = thetas / np.linalg.norm(thetas, axis=1, keepdims=True)
    raw = reads / np.linalg.norm(reads, axis=1, keepdims=True)
    return [
        {"search_id": search_id, "layer": layer, "direction_a": a, "direction_b": b,
         "cosine": float(unit[a] @ unit[b]), "raw_cosine": float(raw[a] @ raw[b])}
        for a in range(len(thetas))
        for b in range(a + 1, len(thetas))
    ]  # fmt: skip


def finish_search(
    store: RunStore, search_id: str, layer: int, results: Sequence[dict[str, Any]], whitener: Whitener, whiten: bool
) -> None:
    """Once every direction is found: the cosine table (pairs not yet written) and the directions file."""
    thetas = np.array([r["theta"] for r in sorted(results, key=lambda r: r["direction"])])
    done = {(r["direction_a"], r["direction_b"]) for r in read_rows(store, "direction_cosines", search_id)}
    rows = [
        r for r in cosine_rows(search_id, layer, thetas, whitener) if (r["direction_a"], r["direction_b"]) not in done
    ]
    write_rows(store, "direction_cosines", rows)
    write_directions(directions_file(store, layer, search_id), layer, thetas, covariance_run="..", whitened=whiten)


def directions_file(store: RunStore, layer: int, search_id: str) -> Any:
    """Where a search writes the directions it found (a `directions:FILE` feature file)."""
    return store.root / FOLDER / f"layer-{layer:03d}-{search_id}.npz"


def summary(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per direction: explanation, scores and neurons needed.

    The held-out scores at round 0 (random start) and at the end, the final score on the search's own
    excerpts, and the neurons needed for 90 % of the final held-out score.
    """
    columns = ["direction", "explanation", "score_start", "score_final", "search_score_final", "neurons_for_90"]
    frame = pd.DataFrame([{c: r[c] for c in columns} for r in results], columns=columns)
    return frame.sort_values("direction").reset_index(drop=True)
