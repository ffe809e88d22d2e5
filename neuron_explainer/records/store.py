"""RunStore: the run directory's paths, its manifest, and atomic Parquet writes.

Layout:
    manifest.json                      provenance + per-stage status (written atomically)
    excerpts/part-<first id>.parquet   every harvested excerpt: token ids and strings, stored once
    records/layer-<LLL>.parquet        kept excerpts per neuron (top, random, quantile buckets)
    neuron_stats/layer-<LLL>.parquet   per-neuron moments, extremes and quantile boundaries
    covariance/layer-<LLL>.npz         with harvest.covariance_layers: the MLP activations' covariance
    harvest_state.pt                   resumable reducer state while a harvest is in progress
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from neuron_explainer.errors import RunDirError
from neuron_explainer.records.schema import SCHEMA_VERSION

HARVEST_OUTPUTS = ("excerpts", "records", "neuron_stats", "covariance", "harvest_state.pt", "harvest_state.pt.tmp")


def write_table_atomic(table: pa.Table, path: Path, **kwargs: Any) -> None:
    """Write Parquet to `path.tmp` then rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", **kwargs)
    os.replace(tmp, path)


def read_parquet(
    paths: Path | list[Path], *, schema: pa.Schema | None = None, what: str = "table", **kwargs: Any
) -> pa.Table:
    """Read one Parquet file or several part files as one table; a corrupt file is a RunDirError.

    Keyword arguments go to the reader (`columns`, `filter` for several files, `filters` for one).
    """
    try:
        if isinstance(paths, Path):
            return pq.read_table(paths, schema=schema, **kwargs)
        return ds.dataset([str(p) for p in paths], schema=schema, format="parquet").to_table(**kwargs)
    except (pa.ArrowInvalid, OSError) as e:
        where = paths if isinstance(paths, Path) else (paths[0].parent if paths else "?")
        raise RunDirError(f"{what} under {where} is corrupt or unreadable: {e}") from e


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON via a temporary file and rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RunStore:
    """Paths and manifest of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        """manifest.json."""
        return self.root / "manifest.json"

    @property
    def excerpts_dir(self) -> Path:
        """Directory of excerpt part files."""
        return self.root / "excerpts"

    @property
    def state_path(self) -> Path:
        """Resumable harvest state."""
        return self.root / "harvest_state.pt"

    def records_path(self, layer: int) -> Path:
        """Kept-records table of one layer."""
        return self.root / "records" / f"layer-{layer:03d}.parquet"

    def stats_path(self, layer: int) -> Path:
        """Neuron statistics table of one layer."""
        return self.root / "neuron_stats" / f"layer-{layer:03d}.parquet"

    def excerpt_part_path(self, first_id: int) -> Path:
        """Excerpt part file whose first excerpt id is `first_id`."""
        return self.excerpts_dir / f"part-{first_id:09d}.parquet"

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None if the directory has none."""
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.manifest_path} is unreadable or corrupt: {e}") from e
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise RunDirError(
                f"{self.root} has schema version {manifest.get('schema_version')}, this neuron-explainer "
                f"reads version {SCHEMA_VERSION}"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, self.manifest_path)

    def require_harvest(self) -> dict[str, Any]:
        """The manifest of a completed harvest.

        Raises:
            RunDirError: no run here, or its harvest has not completed.
        """
        manifest = self.read_manifest()
        if manifest is None:
            raise RunDirError(f"{self.root} is not a run directory (no manifest.json)")
        status = manifest.get("status", {}).get("harvest")
        if status != "complete":
            raise RunDirError(
                f"the harvest in {self.root} is {status or 'missing'}, not complete: rerun the same "
                "`neuron-explainer harvest` command to resume it"
            )
        return manifest

    def clear_harvest(self) -> None:
        """Delete every harvest output (used by --force)."""
        for name in HARVEST_OUTPUTS:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if self.manifest_path.exists():
            self.manifest_path.unlink()
