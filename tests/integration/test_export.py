"""Dataset export (Parquet + card + JSON Schemas) and OpenAI-format conversion, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuron_explainer.errors import RunDirError
from neuron_explainer.export.dataset import export_dataset
from neuron_explainer.export.openai_export import export_openai
from neuron_explainer.export.openai_import import IMPORTED_EXPLAINER, import_openai
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.stages.harvest import HarvestRun
from tests.conftest import run_stage
from tests.integration.test_harvest_reference import harvest_cfg
from tests.integration.test_pipeline_stages import cfg_for, explain_, simulate_, truth_oracle


@pytest.fixture
def scored_run(tiny_model_dirs, corpus_file, tmp_path) -> RunStore:
    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=20, random_k=20, quantile_k=2, layers=[1])
    HarvestRun(cfg, tmp_path / "run").run()
    run = RunStore(tmp_path / "run")
    explainer = FakeBackend(completions=(" tokens of A.", " tokens of B."))
    explain_(run, [(1, 0), (1, 3)], explainer, llm={"max_in_flight": 1})
    simulate_(run, FakeBackend(oracle=truth_oracle(run)))
    run_stage("score", cfg_for(run))
    return run


def test_dataset_loads_with_pandas_datasets_and_duckdb(scored_run: RunStore, tmp_path: Path) -> None:
    import duckdb
    from datasets import load_dataset

    out = tmp_path / "dataset"
    counts = export_dataset(scored_run.root, out)
    assert {"excerpts", "records", "neuron_stats", "explanations", "simulations", "scores"} <= set(counts)
    card = (out / "README.md").read_text()
    assert "## Provenance" in card and "| 1 | 2 |" in card  # layer 1, two scored explanations
    scores = pd.read_parquet(out / "data" / "scores.parquet")
    assert len(scores) == counts["scores"] == 4
    ds = load_dataset("parquet", data_files=str(out / "data" / "explanations.parquet"), split="train")
    assert sorted(ds["explanation"]) == ["tokens of A", "tokens of B"]
    joined = duckdb.sql(
        f"SELECT e.neuron, s.correlation FROM '{out}/data/explanations.parquet' e "
        f"JOIN '{out}/data/scores.parquet' s USING (explanation_id) WHERE s.scorer = 'top_and_random'"
    ).fetchall()
    assert len(joined) == 2 and all(r[1] > 0.9 for r in joined)
    for name in counts:  # every column is described by its JSON Schema, and the file says what it is
        schema = json.loads((out / "schemas" / f"{name}.schema.json").read_text())
        columns = pd.read_parquet(out / "data" / f"{name}.parquet").columns
        assert set(schema["required"]) == set(columns)
        import pyarrow.parquet as pq

        assert pq.read_schema(out / "data" / f"{name}.parquet").metadata[b"table"] == name.encode()
    with pytest.raises(RunDirError, match="not empty"):
        export_dataset(scored_run.root, out)


def test_openai_round_trip_keeps_records_and_scores(scored_run: RunStore, tmp_path: Path) -> None:
    n_records, n_files = export_openai(scored_run.root, tmp_path / "openai")
    assert n_files == 2 and n_records == len(list((tmp_path / "openai" / "collated-activations" / "1").glob("*.json")))
    counts = import_openai(tmp_path / "openai", tmp_path / "imported")
    assert counts["explanations"] == 2
    for neuron in (0, 3, 7):
        a = load_neuron_record(scored_run.root, 1, neuron)
        b = load_neuron_record(tmp_path / "imported", 1, neuron)
        for field in ("most_positive_activation_records", "random_sample"):
            ra, rb = getattr(a, field), getattr(b, field)
            assert [r.tokens for r in ra] == [r.tokens for r in rb]
            for x, y in zip(ra, rb, strict=True):
                np.testing.assert_allclose(x.activations, y.activations, rtol=1e-6)
        assert [len(q) for q in a.random_sample_by_quantile] == [len(q) for q in b.random_sample_by_quantile]
        assert b.mean == pytest.approx(a.mean) and b.quantile_boundaries == pytest.approx(a.quantile_boundaries)
    ours = read_table(scored_run, "scores")
    theirs = read_table(RunStore(tmp_path / "imported"), "scores")
    assert set(theirs.simulator) == {IMPORTED_EXPLAINER}
    np.testing.assert_allclose(
        sorted(ours[ours.scorer == "top_and_random"].correlation), sorted(theirs.correlation), rtol=1e-9
    )


def test_import_of_files_written_by_hand_in_the_release_format(tmp_path: Path) -> None:
    """Files built here from the format description, independent of our exporter."""

    def rec(tokens, acts):
        return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": acts}

    top = [rec([" the", " cat", " sat"], [0.0, 3.5 - i * 0.1, 0.2]) for i in range(8)]
    rnd = [rec([" a", " dog"], [0.1, -0.05])] * 3
    neuron = {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": 4, "neuron_index": 2},
        "random_sample": rnd,
        "random_sample_by_quantile": [[], [], [rnd[0]], [], [top[0]]],
        "quantile_boundaries": [0.0, 0.1, 0.5, 2.0],
        "mean": 0.01,
        "variance": 0.2,
        "skewness": float("nan"),
        "kurtosis": 12.5,
        "most_positive_activation_records": top,
    }
    d = tmp_path / "release"
    (d / "collated-activations" / "4").mkdir(parents=True)
    (d / "collated-activations" / "4" / "2.json").write_text(json.dumps(neuron))
    (d / "explanations" / "4").mkdir(parents=True)
    results = {
        "dataclass_name": "NeuronSimulationResults",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": 4, "neuron_index": 2},
        "scored_explanations": [
            {"dataclass_name": "ScoredExplanation", "explanation": "cats", "scored_simulation": {
                "dataclass_name": "ScoredSimulation", "scored_sequence_simulations": [],
                "ev_correlation_score": 0.42, "rsquared_score": None, "absolute_dev_explained_score": None}}
        ],
    }  # fmt: skip
    (d / "explanations" / "4" / "2.jsonl").write_text(json.dumps(results) + "\n")
    import_openai(d, tmp_path / "run")
    r = load_neuron_record(tmp_path / "run", 4, 2)
    assert r.most_positive_activation_records[1].activations[1] == pytest.approx(3.4)
    assert r.skewness != r.skewness and r.kurtosis == 12.5  # NaN kept as missing
    scores = read_table(RunStore(tmp_path / "run"), "scores")
    assert scores.correlation.tolist() == [0.42]
    bad = tmp_path / "bad"
    (bad / "collated-activations" / "0").mkdir(parents=True)
    (bad / "collated-activations" / "0" / "1.json").write_text('{"neuron_id": {"layer_index": 0}}')
    with pytest.raises(RunDirError, match="not a NeuronRecord"):
        import_openai(bad, tmp_path / "run2")
