"""Read harvested neurons back as domain types (NeuronRecord, NeuronStats)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from neuron_explainer.datatypes import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.store import RunStore

N_BUCKETS = 5


def _read(path: Path, neuron: int, what: str) -> pa.Table:
    if not path.exists():
        raise RunDirError(f"{path} is missing: this layer was not harvested in this run")
    try:
        return pq.read_table(path, filters=[("neuron", "=", neuron)])
    except (pa.ArrowInvalid, OSError) as e:
        raise RunDirError(f"{what} file {path} is corrupt or unreadable: {e}") from e


def _check_neuron(manifest: dict, layer: int, neuron: int) -> None:
    harvest = manifest["harvest"]
    if layer not in harvest["layers"]:
        raise RunDirError(f"layer {layer} was not harvested in this run (harvested: {harvest['layers']})")
    if not 0 <= neuron < harvest["n_neurons"]:
        raise RunDirError(f"neuron {neuron} out of range: layers have neurons 0..{harvest['n_neurons'] - 1}")


def _excerpt_column(store: RunStore, excerpt_ids: Sequence[int], column: str) -> dict[int, list]:
    """One column of the excerpts table for the given excerpt ids, by id.

    Raises:
        RunDirError: an excerpt is missing or the excerpt files are unreadable.
    """
    if not excerpt_ids:
        return {}
    try:
        table = ds.dataset(store.excerpts_dir, format="parquet").to_table(
            columns=["excerpt_id", column], filter=pc.field("excerpt_id").isin(list(excerpt_ids))
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise RunDirError(f"excerpt files under {store.excerpts_dir} are corrupt or unreadable: {e}") from e
    found = dict(zip(table["excerpt_id"].to_pylist(), table[column].to_pylist(), strict=True))
    missing = set(excerpt_ids) - set(found)
    if missing:
        raise RunDirError(f"{len(missing)} referenced excerpt(s) are missing from {store.excerpts_dir}")
    return found


def read_excerpts(store: RunStore, excerpt_ids: Sequence[int]) -> dict[int, list[str]]:
    """Token strings of the given excerpts, by id (RunDirError if any is missing or unreadable)."""
    return _excerpt_column(store, excerpt_ids, "tokens")


def read_token_ids(store: RunStore, excerpt_ids: Sequence[int]) -> dict[int, list[int]]:
    """Token ids of the given excerpts, by id (RunDirError if any is missing or unreadable)."""
    return _excerpt_column(store, excerpt_ids, "token_ids")


def load_neuron_stats(run_dir: str | Path, layer: int, neuron: int) -> NeuronStats:
    """Summary statistics of one harvested neuron."""
    store = RunStore(run_dir)
    _check_neuron(store.require_harvest(), layer, neuron)
    rows = _read(store.stats_path(layer), neuron, "neuron_stats").to_pylist()
    if len(rows) != 1:
        raise RunDirError(f"neuron_stats for layer {layer} has {len(rows)} rows for neuron {neuron}, expected 1")
    row = rows[0]
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
    )


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def load_neuron_record(run_dir: str | Path, layer: int, neuron: int) -> NeuronRecord:
    """Everything harvest kept for one neuron, with token strings, as a NeuronRecord.

    Raises:
        RunDirError: the run is missing or incomplete, the neuron was not harvested, or a file is corrupt.
    """
    store = RunStore(run_dir)
    _check_neuron(store.require_harvest(), layer, neuron)
    stats = load_neuron_stats(run_dir, layer, neuron)
    rows = _read(store.records_path(layer), neuron, "records").to_pylist()
    tokens = read_excerpts(store, sorted({r["excerpt_id"] for r in rows}))
    top: list[tuple[int, ActivationRecord]] = []
    random: list[tuple[int, ActivationRecord]] = []
    buckets: list[list[tuple[int, ActivationRecord]]] = [[] for _ in range(N_BUCKETS)]
    for r in rows:
        rec = ActivationRecord(tokens=tokens[r["excerpt_id"]], activations=r["activations"], excerpt_id=r["excerpt_id"])
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
