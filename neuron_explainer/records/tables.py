"""The stage tables of a run: one registry entry, one reader, one writer and one row builder per table.

Stage tables are long-form, keyed by (layer, neuron), and written as atomic part files
(`<run>/<table>/part-<time>-<random>.parquet`), so several writers may share a run and a crash loses at
most the rows not yet written. Every stage builds its rows here: a column is named and typed once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from neuron_explainer.datatypes import Failure
from neuron_explainer.records.schema import table_schema
from neuron_explainer.records.store import RunStore, read_parquet, write_table_atomic

BASELINE_PREFIX = "baseline:"
"""Explainer (and simulator) names of the explanation-free baselines start with this."""


STAGE_TABLES = (
    "explanations",
    "simulations",
    "scores",
    "ablation_scores",
    "revision_sentences",
    "revision_scores",
    "output_tokens",
    "failures",
)
"""The tables stages write as part files (columns and meanings: records/tables.yaml)."""


def table_parts(store: RunStore, name: str, *, folder: str | None = None) -> list[Path]:
    """The part files of a table, sorted (none if the table does not exist yet).

    Stage tables live in `<run>/<name>/`; others in `<run>/<folder>/<name>/` (e.g. `directions`).
    """
    path = store.root / (folder or "") / name
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else []


def read_table(store: RunStore, name: str, *, folder: str | None = None) -> pd.DataFrame:
    """All part files of a table as one DataFrame (empty, with the schema's columns, if none).

    Raises:
        RunDirError: a part file is corrupt or unreadable.
    """
    schema = table_schema(name)
    parts = table_parts(store, name, folder=folder)
    if not parts:
        return schema.empty_table().to_pandas()
    return read_parquet(parts, schema=schema, what=f"a part file of {name}").to_pandas()


def write_part_table(store: RunStore, name: str, table: pa.Table, *, folder: str | None = None) -> None:
    """Append an Arrow table to a table as a new atomic part file (a unique name: writers may share a run)."""
    if table.num_rows:
        path = store.root / (folder or "") / name / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        write_table_atomic(table.cast(table_schema(name)), path)


def write_part(store: RunStore, name: str, rows: Sequence[dict[str, Any]], *, folder: str | None = None) -> None:
    """Append rows to a table as a new atomic part file."""
    if rows:
        write_part_table(store, name, pa.Table.from_pylist(list(rows), schema=table_schema(name)), folder=folder)


def only_neurons(table: pd.DataFrame, neurons: set[tuple[int, int]] | None) -> pd.DataFrame:
    """The rows of a (layer, neuron)-keyed table for the given neurons (all rows when neurons is None)."""
    if neurons is None:
        return table
    return table[[(a, b) in neurons for a, b in zip(table.layer, table.neuron, strict=True)]]


def is_baseline(explainer: str) -> bool:
    """Whether an explainer name is an explanation-free baseline (`baseline:<kind>`)."""
    return explainer.startswith(BASELINE_PREFIX)


def without_baselines(explanations: pd.DataFrame) -> pd.DataFrame:
    """The explanations written by an explainer model (baselines carry their own simulations)."""
    return explanations[~explanations.explainer.map(is_baseline).astype(bool)]


def explanation_id(
    layer: int, neuron: int, explainer: str, prompt_version: str, sample_idx: int, round_: int = 1
) -> str:
    """Stable id of one explanation: a hash of what defines it."""
    key = json.dumps([layer, neuron, explainer, prompt_version, sample_idx, round_])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def params_hash(params: dict[str, Any]) -> str:
    """Short hash of the settings that shape a stage's output."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def explanation_row(
    layer: int,
    neuron: int,
    text: str,
    *,
    explainer: str,
    prompt_version: str,
    view: str = "current_token",
    sample_idx: int = 0,
    round_: int = 1,
    params: str = "",
) -> dict[str, Any]:
    """One `explanations` row; its id is derived from what defines it."""
    return {
        "layer": layer,
        "neuron": neuron,
        "explanation_id": explanation_id(layer, neuron, explainer, prompt_version, sample_idx, round_),
        "explanation": text,
        "explainer": explainer,
        "prompt_version": prompt_version,
        "view": view,
        "sample_idx": sample_idx,
        "round": round_,
        "params_hash": params,
    }


NO_CALIBRATION = {"calibration_slope": None, "calibration_intercept": None, "calibration_error": None}


@dataclass(frozen=True)
class SimulatedExcerpt:
    """One simulated excerpt of an explanation: where it comes from and its expected values."""

    split: str
    """`valid` (scored) or `calibration` (fitted)."""
    record_kind: str
    """`top` or `random`."""
    excerpt_id: int
    expected_values: Sequence[float]


def simulation_rows(
    layer: int,
    neuron: int,
    eid: str,
    excerpts: Iterable[SimulatedExcerpt],
    *,
    simulator: str,
    prompt_version: str,
    max_level: int,
    calibration: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The `simulations` rows of one explanation, each carrying the explanation's calibration columns."""
    cal = calibration or NO_CALIBRATION
    return [
        {
            "layer": layer,
            "neuron": neuron,
            "explanation_id": eid,
            "split": x.split,
            "record_kind": x.record_kind,
            "excerpt_id": x.excerpt_id,
            "expected_values": list(x.expected_values),
            "max_level": max_level,
            "simulator": simulator,
            "prompt_version": prompt_version,
            **cal,
        }
        for x in excerpts
    ]


def failure_row(layer: int, neuron: int, eid: str | None, failure: Failure) -> dict[str, Any]:
    """One `failures` row."""
    return {
        "stage": failure.stage,
        "layer": layer,
        "neuron": neuron,
        "explanation_id": eid,
        "kind": failure.kind,
        "message": failure.message,
        "raw": failure.raw,
    }


def _key(layer: int, neuron: int, eid: str, scorer: str, simulator: str) -> dict[str, Any]:
    return {"layer": layer, "neuron": neuron, "explanation_id": eid, "scorer": scorer, "simulator": simulator}


def correlation_row(layer: int, neuron: int, eid: str, scorer: str, score: Any, *, simulator: str) -> dict[str, Any]:
    """One `scores` row from a scoring.correlation.CorrelationScore (its fields are the columns)."""
    fields = dataclasses.asdict(score)
    fields["per_excerpt"] = [float("nan") if v is None else v for v in fields["per_excerpt"]]
    return {**_key(layer, neuron, eid, scorer, simulator), **fields}


def ablation_row(
    layer: int, neuron: int, eid: str, scorer: str, score: Any, *, simulator: str, n_excerpts: int
) -> dict[str, Any]:
    """One `ablation_scores` row from a scoring.ablation.AblationScore (its fields are the columns)."""
    return {**_key(layer, neuron, eid, scorer, simulator), **dataclasses.asdict(score), "n_excerpts": n_excerpts}


def revision_score_row(
    layer: int, neuron: int, original: str, arm: str, eid: str, text: str, scorer: str, score: Any, *, simulator: str
) -> dict[str, Any]:
    """One `revision_scores` row from a CorrelationScore (explained variance and per-excerpt r are not kept)."""
    kept = {k: getattr(score, k) for k in ("correlation", "undefined_reason", "n_tokens")}
    return {**_key(layer, neuron, eid, scorer, simulator), "original_explanation_id": original, "arm": arm,
            "explanation": text, **kept}  # fmt: skip
