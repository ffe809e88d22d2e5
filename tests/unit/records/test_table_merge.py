"""Joining stage tables of runs of one harvest: repeats collapse, different rows under one key are refused."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from neuron_explainer.errors import RunDirError
from neuron_explainer.records.schema import table_key, table_schema
from neuron_explainer.records.table_merge import join_table


def scores(*rows: tuple[str, str, float]) -> pa.Table:
    fixed = {"layer": 0, "neuron": 1, "explained_variance": None, "undefined_reason": None}
    fixed |= {"n_tokens": 5, "simulator": "s"}
    return pa.Table.from_pylist(
        [
            {**fixed, "explanation_id": e, "scorer": k, "correlation": r, "per_excerpt": [r, math.nan]}
            for e, k, r in rows
        ],
        schema=table_schema("scores"),
    )


def test_repeats_collapse_and_nan_equals_nan() -> None:
    a = scores(("e1", "top_and_random", 0.5), ("e2", "top_and_random", math.nan))
    b = scores(("e2", "top_and_random", math.nan), ("e3", "random_only", 0.1))
    joined = join_table([a, b], table_key("scores"), "scores", ["runs/a", "runs/b"])
    assert joined.column("explanation_id").to_pylist() == ["e1", "e2", "e3"]
    assert joined.schema.names == table_schema("scores").names


def test_different_rows_under_one_key_are_refused_with_the_key_and_the_runs() -> None:
    a = scores(("e1", "top_and_random", 0.5))
    b = scores(("e1", "top_and_random", 0.25))
    with pytest.raises(RunDirError) as info:
        join_table([a, b], table_key("scores"), "scores", ["runs/a", "runs/b"])
    message = str(info.value)
    assert "explanation_id='e1'" in message and "correlation, per_excerpt" in message
    assert "runs/a" in message and "runs/b" in message
