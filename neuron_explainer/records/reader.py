"""Read harvested neurons back as domain types (NeuronRecord, NeuronStats), refusing corrupt values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from neuron_explainer.datatypes import N_BUCKETS, ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.store import RunStore, read_parquet


def _read(path: Path, neuron: int, what: str) -> pa.Table:
    if not path.exists():
        raise RunDirError(f"{path} is missing: this layer was not harvested in this run")
    return read_parquet(path, filters=[("neuron", "=", neuron)], what=f"{what} file")


def _check_neuron(manifest: dict, layer: int, neuron: int) -> None:
    harvest = manifest["harvest"]
    if layer not in harvest["layers"]:
        raise RunDirError(f"layer {layer} was not harvested in this run (harvested: {harvest['layers']})")
    if not 0 <= neuron < harvest["n_neurons"]:
        raise RunDirError(f"neuron {neuron} out of range: layers have neurons 0..{harvest['n_neurons'] - 1}")


def excerpt_column(store: RunStore, excerpt_ids: Sequence[int], column: str) -> dict[int, list]:
    """One column of the excerpts table for the given excerpt ids, by id.

    Raises:
        RunDirError: an excerpt is missing or the excerpt files are unreadable.
    """
    if not excerpt_ids:
        return {}
    parts = sorted(store.excerpts_dir.glob("*.parquet"))
    if not parts:
        raise RunDirError(f"{store.excerpts_dir} holds no excerpt files: the run is incomplete")
    table = read_parquet(
        parts, columns=["excerpt_id", column], filter=pc.field("excerpt_id").isin(list(excerpt_ids)), what="excerpts"
    )
    found = dict(zip(table["excerpt_id"].to_pylist(), table[column].to_pylist(), strict=True))
    missing = set(excerpt_ids) - set(found)
    if missing:
        raise RunDirError(f"{len(missing)} referenced excerpt(s) are missing from {store.excerpts_dir}")
    return found


def read_excerpts(store: RunStore, excerpt_ids: Sequence[int]) -> dict[int, list[str]]:
    """Token strings of the given excerpts, by id (RunDirError if any is missing or unreadable)."""
    return excerpt_column(store, excerpt_ids, "tokens")


def read_token_ids(store: RunStore, excerpt_ids: Sequence[int]) -> dict[int, list[int]]:
    """Token ids of the given excerpts, by id (RunDirError if any is missing or unreadable)."""
    return excerpt_column(store, excerpt_ids, "token_ids")


def load_neuron_stats(run_dir: str | Path, layer: int, neuron: int) -> NeuronStats:
    """Summary statistics of one harvested neuron.

    Raises:
        RunDirError: the run is incomplete, the neuron was not harvested, or its statistics are corrupt.
    """
    store = RunStore(run_dir)
    _check_neuron(store.require_harvest(), layer, neuron)
    rows = _read(store.stats_path(layer), neuron, "neuron_stats").to_pylist()
    if len(rows) != 1:
        raise RunDirError(f"neuron_stats for layer {layer} has {len(rows)} rows for neuron {neuron}, expected 1")
    row = rows[0]
    for key in ("mean", "variance"):
        if row[key] is None or not math.isfinite(row[key]):
            raise RunDirError(f"layer {layer} neuron {neuron}: its {key} in {store.stats_path(layer)} is not finite")
    return NeuronStats(
        neuron_id=NeuronId(layer_index=layer, neuron_index=neuron),
        count=row["count"],
        mean=row["mean"],
        variance=row["variance"],
        skewness=_nan(row["skewness"]),
        kurtosis=_nan(row["kurtosis"]),
        min_activation=row["min_activation"],
        max_activation=row["max_activation"],
        quantile_boundaries=row["quantile_boundaries"],
        density=row.get("density"),
    )


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _checked_record(row: dict[str, Any], tokens: list[str], layer: int, neuron: int, path: Path) -> ActivationRecord:
    acts = row["activations"]
    if any(a is None or not math.isfinite(a) for a in acts):
        raise RunDirError(
            f"layer {layer} neuron {neuron}: the record of excerpt {row['excerpt_id']} in {path} holds non-finite "
            "activations (NaN or inf); the file is corrupt or was imported with missing values"
        )
    if len(acts) != len(tokens):
        raise RunDirError(
            f"layer {layer} neuron {neuron}: the record of excerpt {row['excerpt_id']} has {len(acts)} activations "
            f"for {len(tokens)} tokens"
        )
    return ActivationRecord(tokens=tokens, activations=acts, excerpt_id=row["excerpt_id"])


def load_neuron_record(run_dir: str | Path, layer: int, neuron: int) -> NeuronRecord:
    """Everything harvest kept for one neuron, with token strings, as a NeuronRecord.

    Raises:
        RunDirError: the run is missing or incomplete, the neuron was not harvested, a file is corrupt,
            or a record holds non-finite activations.
    """
    store = RunStore(run_dir)
    _check_neuron(store.require_harvest(), layer, neuron)
    stats = load_neuron_stats(run_dir, layer, neuron)
    path = store.records_path(layer)
    rows = _read(path, neuron, "records").to_pylist()
    tokens = read_excerpts(store, sorted({r["excerpt_id"] for r in rows}))
    top: list[tuple[int, ActivationRecord]] = []
    random: list[tuple[int, ActivationRecord]] = []
    buckets: list[list[tuple[int, ActivationRecord]]] = [[] for _ in range(N_BUCKETS)]
    for r in rows:
        rec = _checked_record(r, tokens[r["excerpt_id"]], layer, neuron, path)
        if r["kind"] == "top":
            top.append((r["rank"], rec))
        elif r["kind"] == "random":
            random.append((r["rank"], rec))
        else:
            buckets[r["bucket"]].append((r["rank"], rec))

    def ordered(items: list[tuple[int, ActivationRecord]]) -> list[ActivationRecord]:
        return [rec for _, rec in sorted(items, key=lambda item: item[0])]

    return NeuronRecord(
        neuron_id=NeuronId(layer_index=layer, neuron_index=neuron),
        most_positive_activation_records=ordered(top),
        random_sample=ordered(random),
        random_sample_by_quantile=[ordered(b) for b in buckets],
        quantile_boundaries=stats.quantile_boundaries,
        mean=stats.mean,
        variance=stats.variance,
        skewness=stats.skewness,
        kurtosis=stats.kurtosis,
    )
