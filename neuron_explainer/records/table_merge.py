"""Join the stage tables of runs that share one harvest (workers that wrote separate directories) exactly.

Each stage table of the inputs is concatenated and deduplicated by its key (`key:` in tables.yaml): rows
with the same key must be identical in every column (NaN equal to NaN), and are then kept once. Two
different rows under one key mean two workers did the same unit differently; the join refuses to pick
one and names the key and the inputs. `failures` is a log: it is keyed by every column, so only exact
repeats collapse.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from neuron_explainer.errors import RunDirError
from neuron_explainer.records.schema import table_key, table_schema
from neuron_explainer.records.store import RunStore, read_parquet
from neuron_explainer.records.tables import STAGE_TABLES, table_parts, write_part_table

SOURCE = "__source"
"""Column added while joining: which input a row came from."""


def read_stage_table(store: RunStore, name: str) -> pa.Table:
    """Every part file of a stage table as one Arrow table (empty, with the schema, if none)."""
    schema = table_schema(name)
    parts = table_parts(store, name)
    if not parts:
        return schema.empty_table()
    return read_parquet(parts, schema=schema, what=f"a part file of {name}")


def _canonical(value: Any) -> Any:
    """A value that compares equal to another exactly when they hold the same data (NaN equal to NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list | tuple):
        return tuple(_canonical(v) for v in value)
    return value


def join_table(tables: Sequence[pa.Table], key: list[str], name: str, sources: Sequence[str]) -> pa.Table:
    """The rows of `tables` once each, sorted by `key`.

    Raises:
        RunDirError: two rows share a key but differ in another column.
    """
    tagged = [t.append_column(SOURCE, pa.array([i] * t.num_rows, pa.int32())) for i, t in enumerate(tables)]
    table = pa.concat_tables(tagged)
    if table.num_rows == 0:
        return table.drop_columns([SOURCE])
    keys = table.select(key).to_pandas()
    repeated = keys.duplicated(keep=False).to_numpy()
    if repeated.any():
        seen: dict[tuple, tuple[dict, int]] = {}
        for row in table.filter(pa.array(repeated)).to_pylist():
            source = row.pop(SOURCE)
            canon = {column: _canonical(v) for column, v in row.items()}
            ident = tuple(canon[c] for c in key)
            if ident not in seen:
                seen[ident] = (canon, source)
                continue
            first, first_source = seen[ident]
            differ = sorted(c for c in canon if canon[c] != first[c])
            if differ:
                where = ", ".join(f"{c}={row[c]!r}" for c in key)
                raise RunDirError(
                    f"{name}: two different rows for {where} (columns {', '.join(differ)} differ) in "
                    f"{sources[first_source]} and {sources[source]}: the same unit was done twice with different "
                    "results; merge keeps one row per unit, so remove one run's rows (or use one of the runs)"
                )
    unique = ~keys.duplicated(keep="first").to_numpy()
    table = table.filter(pa.array(unique)).drop_columns([SOURCE])
    return table.sort_by([(c, "ascending") for c in key])


def merge_stage_tables(stores: Sequence[RunStore], out: RunStore) -> dict[str, int]:
    """Join every stage table of `stores` into `out` (one part file per table); returns rows per table.

    Raises:
        RunDirError: a table holds conflicting rows, or a part file is unreadable.
    """
    names = [str(s.root) for s in stores]
    joined = {}
    for name in STAGE_TABLES:  # everything is checked before anything is written
        tables = [read_stage_table(s, name) for s in stores]
        if any(t.num_rows for t in tables):
            joined[name] = join_table(tables, table_key(name), name, names)
    for name, table in joined.items():
        write_part_table(out, name, table)
    return {name: table.num_rows for name, table in joined.items()}


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst` (harvest files are never modified in place), or copy where links fail."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
