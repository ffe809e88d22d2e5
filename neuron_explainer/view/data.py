"""Every read the viewer makes, in one place: a run directory or an exported dataset, as pandas frames.

The rest of `neuron_explainer.view` never opens a file itself: it asks a `ViewSource` for frames and
plain dicts. When the package's readers move, only this module changes.

Two layouts are understood:
- a run directory: `manifest.json`, `excerpts/part-*.parquet`, `records/layer-LLL.parquet`,
  `neuron_stats/layer-LLL.parquet`, and stage tables as `<table>/part-*.parquet`;
- an exported dataset (`neuron_explainer.export.dataset`): `manifest.json` and `data/<table>.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from neuron_explainer.errors import RunDirError
from neuron_explainer.records import tables as stage_tables
from neuron_explainer.records.reader import read_excerpts
from neuron_explainer.records.schema import table_schema
from neuron_explainer.records.splits import RANDOM_SPLITS, TOP_SPLITS
from neuron_explainer.records.store import RunStore, read_parquet

STAGE_TABLES = [name for name in stage_tables.STAGE_TABLES if name != "failures"]
"""Stage tables the viewer reads (a missing table reads as an empty frame)."""

OUTPUT_TOKENS_COLUMNS = ("layer", "neuron", "rank", "sign", "token_id", "token", "value")
"""Columns of the `output_tokens` table: tokens a neuron's output weights promote (sign +1) or
suppress (sign -1), long form (records/tables.yaml). Rendered when the table exists."""

RECORD_COLUMNS = ["neuron", "kind", "bucket", "rank", "excerpt_id", "max_activation", "activations"]


def _read_parquet(path: Path, what: str, **kwargs: Any) -> pa.Table:
    return read_parquet(path, what=f"{what} file", **kwargs)


def _read_parts(path: Path, what: str) -> pd.DataFrame | None:
    """All part files of a directory as one frame, without a fixed schema (None when there are none)."""
    parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else []
    return read_parquet(parts, what=f"a {what} part file").to_pandas() if parts else None


class ViewSource:
    """Read access to one run directory or exported dataset, returning pandas frames and dicts."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        """The directory given."""
        self.exported = (self.root / "data").is_dir() and not (self.root / "records").is_dir()
        """True for an exported dataset (tables under data/), False for a run directory."""
        if self.exported:
            self.manifest = self._exported_manifest()
        else:
            self.manifest = RunStore(self.root).require_harvest()
        harvest = self.manifest.get("harvest", {})
        self.layers: list[int] = [int(x) for x in harvest.get("layers", [])]
        """Harvested layers, ascending."""
        self.n_neurons: int = int(harvest.get("n_neurons", 0))
        """Neurons per layer."""
        self._tables: dict[str, pd.DataFrame | None] = {}

    def _exported_manifest(self) -> dict[str, Any]:
        import json

        path = self.root / "manifest.json"
        if not path.exists():
            raise RunDirError(f"{self.root} has data/ but no manifest.json: not an exported dataset")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path} is unreadable or corrupt: {e}") from e

    def _data_file(self, name: str) -> Path:
        return self.root / "data" / f"{name}.parquet"

    def model_name(self) -> str:
        """The subject model's spec as harvested (e.g. `builtin:gemma3-270m`), and the features if not neurons.

        A run of SAE latents or directions says so: `gpt2 · sae features: latents of a sparse coder at ...`.
        """
        harvest = self.manifest.get("harvest", {})
        model = harvest.get("model", {})
        name = str(model.get("spec") or model.get("id") or "unknown model")
        features = harvest.get("features") or {"kind": "mlp"}
        if features.get("kind", "mlp") == "mlp":
            return name
        where = features.get("hook_in") or features.get("hook") or f"layer {features.get('layer', '?')}"
        source = features.get("source") or features.get("path") or ""
        return f"{name} · {features['kind']} features at {where}" + (f" ({Path(source).name})" if source else "")

    def neuron_stats(self, layer: int) -> pd.DataFrame:
        """One row per neuron of a layer (columns of `neuron_stats`, plus `density` if the table has it).

        Raises:
            RunDirError: the layer was not harvested or its file is unreadable.
        """
        self._check_layer(layer)
        if self.exported:
            table = _read_parquet(self._data_file("neuron_stats"), "neuron_stats", filters=[("layer", "=", layer)])
        else:
            path = RunStore(self.root).stats_path(layer)
            if not path.exists():
                raise RunDirError(f"{path} is missing: layer {layer} has no neuron statistics")
            table = _read_parquet(path, "neuron_stats")
        return table.to_pandas().sort_values("neuron").reset_index(drop=True)

    def layer_records(self, layer: int, neurons: Sequence[int] | None = None) -> pd.DataFrame:
        """The `records` rows of one layer (optionally of some neurons only), `kind` as plain strings.

        Raises:
            RunDirError: the layer was not harvested or its file is unreadable.
        """
        self._check_layer(layer)
        filters: list[tuple[str, str, Any]] = []
        if neurons is not None:
            filters.append(("neuron", "in", [int(n) for n in neurons]))
        if self.exported:
            path = self._data_file("records")
            filters.append(("layer", "=", layer))
        else:
            path = RunStore(self.root).records_path(layer)
            if not path.exists():
                raise RunDirError(f"{path} is missing: layer {layer} has no records")
        table = _read_parquet(path, "records", columns=RECORD_COLUMNS, filters=filters or None)
        table = table.set_column(table.schema.get_field_index("kind"), "kind", pc.cast(table["kind"], pa.string()))
        return table.to_pandas()

    def excerpt_tokens(self, excerpt_ids: Sequence[int]) -> dict[int, list[str]]:
        """Token strings of the given excerpts, by id.

        Raises:
            RunDirError: an excerpt is missing or the excerpt files are unreadable.
        """
        ids = sorted({int(i) for i in excerpt_ids})
        if not self.exported:
            return read_excerpts(RunStore(self.root), ids)
        if not ids:
            return {}
        table = _read_parquet(
            self._data_file("excerpts"),
            "excerpts",
            columns=["excerpt_id", "tokens"],
            filters=[("excerpt_id", "in", ids)],
        )
        found = dict(zip(table["excerpt_id"].to_pylist(), table["tokens"].to_pylist(), strict=True))
        if len(found) != len(ids):
            raise RunDirError(f"{len(ids) - len(found)} referenced excerpt(s) are missing from {self.root}/data")
        return found

    def table(
        self, name: str, layers: Sequence[int] | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """A stage table (explanations, simulations, scores, ...) as one frame; empty when absent.

        With `layers`, only those layers' rows are read, and with `columns` only those columns (both
        reach the Parquet reader, so a whole-model run is never held in memory at once).

        Raises:
            RunDirError: an unknown table, or a part file is corrupt or unreadable.
        """
        if name not in STAGE_TABLES:
            raise RunDirError(f"unknown stage table {name!r}: choose one of {sorted(STAGE_TABLES)}")
        if layers is None and columns is None:
            if name not in self._tables:
                if self.exported:
                    path = self._data_file(name)
                    found = path.exists()
                    self._tables[name] = _read_parquet(path, name).to_pandas() if found else _empty(name)
                else:
                    self._tables[name] = stage_tables.read_table(RunStore(self.root), name)
            return self._tables[name]
        cols = list(columns) if columns is not None else None
        files = self._files(name)
        if not files:
            return _empty(name)[cols] if cols else _empty(name)
        where = None if layers is None else pc.field("layer").isin([int(x) for x in layers])
        found = read_parquet(files, schema=table_schema(name), columns=cols, filter=where, what=f"the {name} table")
        return found.to_pandas()

    def _files(self, name: str) -> list[Path]:
        if self.exported:
            return [self._data_file(name)] if self._data_file(name).exists() else []
        folder = self.root / name
        return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []

    def output_tokens(self) -> pd.DataFrame | None:
        """The `output_tokens` table when the run has one (None otherwise).

        Raises:
            RunDirError: the table exists but lacks a required column or is unreadable.
        """
        if "output_tokens" not in self._tables:
            if self.exported:
                path = self._data_file("output_tokens")
                df = _read_parquet(path, "output_tokens").to_pandas() if path.exists() else None
            else:
                df = _read_parts(self.root / "output_tokens", "output_tokens")
            if df is not None:
                missing = [c for c in OUTPUT_TOKENS_COLUMNS if c not in df.columns]
                if missing:
                    raise RunDirError(f"output_tokens table in {self.root} lacks column(s) {missing}")
            self._tables["output_tokens"] = df
        return self._tables["output_tokens"]

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise RunDirError(f"layer {layer} was not harvested in {self.root} (harvested: {self.layers})")


def _empty(name: str) -> pd.DataFrame:
    return table_schema(name).empty_table().to_pandas()


def split_of(kind: str, rank: int) -> str:
    """The split a record serves (train, calibration, valid, test), from its kind and rank; "" for quantile."""
    if kind == "top":
        return TOP_SPLITS[rank % len(TOP_SPLITS)]
    if kind == "random":
        return RANDOM_SPLITS[rank % len(RANDOM_SPLITS)]
    return ""


def open_source(path: str | Path) -> ViewSource:
    """Open a run directory or exported dataset for viewing.

    Raises:
        RunDirError: not a run or dataset, the harvest is incomplete, or the manifest is unreadable.
    """
    root = Path(path)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a directory: give a run directory or an exported dataset")
    return ViewSource(root)
