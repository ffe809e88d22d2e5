"""Shards of one harvest (by excerpt range or by layer) merge into exactly the unsharded result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from neuron_explainer.cli import app
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.merge import merge_runs
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import explanation_row, read_table, write_part
from neuron_explainer.stages.harvest import HarvestRun
from tests.integration.test_harvest_reference import harvest_cfg


def frame(run: Path, name: str, key: list[str]):
    return ds.dataset(run / name).to_table().to_pandas().sort_values(key).reset_index(drop=True)


def assert_same_harvest(a: Path, b: Path) -> None:
    for name, key in (("records", ["layer", "neuron", "kind", "bucket", "rank"]), ("excerpts", ["excerpt_id"])):
        x, y = frame(a, name, key), frame(b, name, key)
        assert len(x) == len(y) > 0
        for col in x.columns:
            assert x[col].astype(str).tolist() == y[col].astype(str).tolist(), (name, col)
    x, y = frame(a, "neuron_stats", ["layer", "neuron"]), frame(b, "neuron_stats", ["layer", "neuron"])
    for col in ("layer", "neuron", "count", "min_activation", "max_activation", "positive_count", "density"):
        assert x[col].tolist() == y[col].tolist(), col
    np.testing.assert_array_equal(np.stack(x.quantile_boundaries), np.stack(y.quantile_boundaries))
    for col in ("mean", "variance", "skewness", "kurtosis", "m2", "m3", "m4"):
        np.testing.assert_allclose(x[col], y[col], rtol=1e-5, atol=1e-6)  # batch boundaries differ


@pytest.fixture(scope="module")
def full_run(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    HarvestRun(harvest_cfg(tiny_model_dirs["llama"], corpus_file), out).run()
    return out


def test_excerpt_range_shards_merge_exactly(
    full_run: Path, tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    # cuts inside and after the 30-excerpt pilot: the later shards run the pilot separately
    cuts = [(0, 20), (20, 50), (50, 90)]
    shards = []
    for a, b in cuts:
        shards.append(tmp_path / f"s{a}")
        HarvestRun(harvest_cfg(tiny_model_dirs["llama"], corpus_file, excerpt_range=(a, b)), shards[-1]).run()
    result = CliRunner().invoke(app, ["merge", "--out", str(tmp_path / "merged"), *map(str, shards[::-1])])
    assert result.exit_code == 0, result.output
    assert_same_harvest(full_run, tmp_path / "merged")
    import json

    from neuron_explainer.config import HarvestConfig, harvest_semantic_hash

    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())["harvest"]
    full = json.loads((full_run / "manifest.json").read_text())["harvest"]
    assert merged["semantic_hash"] == full["semantic_hash"]
    assert merged["semantic_hash"] == harvest_semantic_hash(HarvestConfig.model_validate(merged["config"]))
    # an explanation of one shard's records says nothing about the merged records: refused
    write_part(RunStore(shards[1]), "explanations", [explanation_row(0, 3, "x", explainer="e", prompt_version="v1")])
    with pytest.raises(RunDirError, match="hold stage tables"):
        merge_runs(shards, tmp_path / "refused")


def test_layer_shards_merge_exactly(
    full_run: Path, tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    for layer in (0, 1):
        HarvestRun(harvest_cfg(tiny_model_dirs["llama"], corpus_file, layers=[layer]), tmp_path / f"l{layer}").run()
        row = explanation_row(layer, 3, f"layer {layer}", explainer="e", prompt_version="v1")
        write_part(RunStore(tmp_path / f"l{layer}"), "explanations", [row])
    merge_runs([tmp_path / "l1", tmp_path / "l0"], tmp_path / "merged")
    assert_same_harvest(full_run, tmp_path / "merged")
    # the layer shards' stage tables cover disjoint neurons: joined
    assert sorted(read_table(RunStore(tmp_path / "merged"), "explanations").explanation) == ["layer 0", "layer 1"]


def test_incompatible_shards_are_refused(
    full_run: Path, tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    HarvestRun(harvest_cfg(tiny_model_dirs["llama"], corpus_file, seed=9, excerpt_range=(0, 20)), other).run()
    with pytest.raises(RunDirError, match="another config"):
        merge_runs([full_run, other], tmp_path / "m1")
    gap = tmp_path / "gap"
    HarvestRun(harvest_cfg(tiny_model_dirs["llama"], corpus_file, excerpt_range=(60, 90)), gap).run()
    first = tmp_path / "first"
    HarvestRun(harvest_cfg(tiny_model_dirs["llama"], corpus_file, excerpt_range=(0, 20)), first).run()
    with pytest.raises(RunDirError, match="contiguous"):
        merge_runs([first, gap], tmp_path / "m2")
