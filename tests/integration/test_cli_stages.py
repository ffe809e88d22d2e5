"""End to end through the CLI: revise, baselines, puzzles, import-openai and export, with the shipped fakes.

Also the bugs a new user hit: `--neurons 12:34` (YAML 1.1 would read it as a base-60 number), an
unquoted `neurons: 5:12` in a config file, and errors that must be one line, not a pydantic dump.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuron_explainer.cli import app
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table

runner = CliRunner()


def flat(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def harvested(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["harvest", "--model", str(tiny_model_dirs["gpt2"]), "--corpus", str(corpus_file), "--out", str(out),
            "--n-excerpts", "60", "--excerpt-len", "16", "--top-k", "20", "--random-k", "20"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_neuron_specs_with_small_neuron_numbers(harvested: Path, tmp_path: Path) -> None:
    # 1:3 and 0:12 are base-60 numbers to YAML 1.1; both must stay neuron specs
    result = runner.invoke(app, ["explain", "--run", str(harvested), "--neurons", "1:3", "--explainer", "fake"])
    assert result.exit_code == 0 and "explain: 1 done" in flat(result), result.output
    result = runner.invoke(app, ["explain", "--run", str(harvested), "--set", "neurons=0:12", "--explainer", "fake"])
    assert result.exit_code == 0 and "explain: 1 done" in flat(result), result.output
    config = tmp_path / "c.yaml"
    config.write_text(f"out: {harvested}\nneurons: 1:5\nexplain:\n  explainer: fake\n")
    result = runner.invoke(app, ["explain", "--config", str(config)])
    assert result.exit_code == 0 and "explain: 1 done" in flat(result), result.output
    expl = read_table(RunStore(harvested), "explanations")
    assert {(1, 3), (0, 12), (1, 5)} <= set(zip(expl.layer, expl.neuron, strict=True))


def test_errors_are_one_line(harvested: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("harvest:\n  n_excerpts: 0\n  top_k: many\n")
    result = runner.invoke(app, ["run", "--config", str(config)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "harvest.n_excerpts" in lines[0] and "harvest.top_k" in lines[0] and "errors.pydantic.dev" not in lines[0]
    result = runner.invoke(app, ["explain", "--run", str(harvested), "--set", "explain.temprature=0"])
    assert result.exit_code == 2 and "did you mean 'temperature'" in flat(result)
    result = runner.invoke(app, ["explain", "--run", str(harvested), "--set", "max_concurrent=2"])
    assert result.exit_code == 2 and "set 'llm.max_in_flight' instead" in flat(result)


def test_simulate_revise_baselines_score_ablate(harvested: Path) -> None:
    run = str(harvested)
    sets = ["--set", "simulate.max_level=10", "--set", "revise.arms=[revised, reexplain]"]
    for command in (["explain", "--neurons", "0:1-2", "--explainer", "fake"],
                    ["simulate", "--neurons", "0:1-2", "--simulator", "fake:oracle"]):  # fmt: skip
        result = runner.invoke(app, [*command, "--run", run, *sets])
        assert result.exit_code == 0, result.output
    revised = runner.invoke(app, ["revise", "--run", run, "--neurons", "0:1-2", "--set", "explain.explainer=fake",
                                  "--set", "simulate.simulator=fake:oracle", *sets])  # fmt: skip
    assert revised.exit_code == 0 and "revise: 2 done" in flat(revised), revised.output
    assert "revision in" in revised.output and "false positives" in revised.output
    sentences = read_table(RunStore(harvested), "revision_sentences")
    assert len(sentences) == 2 * 4 and set(sentences.split) == {"revision", "scoring"}
    baselines = runner.invoke(app, ["baselines", "--run", run, "--neurons", "0:1", "--set",
                                    "baselines.held_out_excerpts=20"])  # fmt: skip
    assert baselines.exit_code == 0 and "baselines: 2 done" in flat(baselines), baselines.output
    scored = runner.invoke(app, ["score", "--run", run])
    assert scored.exit_code == 0 and "0:1" in scored.output, scored.output
    ablated = runner.invoke(app, ["ablate", "--run", run, "--neurons", "0:1"])
    assert ablated.exit_code == 0 and "ablate: 3 done" in flat(ablated), ablated.output  # 1 LLM + 2 baselines
    assert len(read_table(RunStore(harvested), "ablation_scores")) == 3 * 2


def test_puzzles_command_on_an_openai_layout_file(tmp_path: Path) -> None:
    from tests.unit.puzzles.test_openai_json import PUZZLES

    path = tmp_path / "puzzles.json"
    path.write_text(json.dumps(PUZZLES))
    out = tmp_path / "results"
    result = runner.invoke(app, ["puzzles", "--explainer", "top_tokens", "--simulator", "fake:oracle", "--puzzles",
                                 str(path), "--out", str(out), "--set", "simulate.max_level=10"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["puzzles"] == 2 and summary["explainer"] == "top_tokens"
    assert "Scorer: the true explanation ranks first in" in result.output
    missing = runner.invoke(app, ["puzzles", "--puzzles", str(tmp_path / "nope.json"), "--out", str(out)])
    assert missing.exit_code == 2 and "puzzle file not found" in missing.output


def release_neuron(layer: int, neuron: int, bounds: list[float]) -> dict:
    rec = {"dataclass_name": "ActivationRecord", "tokens": [" the", " cat"], "activations": [0.5, 2.0]}
    return {"dataclass_name": "NeuronRecord", "neuron_id": {"layer_index": layer, "neuron_index": neuron},
            "random_sample": [rec] * 3, "random_sample_by_quantile": [[rec]] * 5, "quantile_boundaries": bounds,
            "mean": 0.1, "variance": 0.2, "skewness": 1.0, "kurtosis": 3.0,
            "most_positive_activation_records": [rec] * 8}  # fmt: skip


def test_import_openai_command_and_malformed_release_files(tmp_path: Path) -> None:
    src = tmp_path / "release"
    (src / "collated-activations" / "3").mkdir(parents=True)
    (src / "collated-activations" / "3" / "7.json").write_text(json.dumps(release_neuron(3, 7, [0.1, 0.2, 0.3, 0.4])))
    result = runner.invoke(app, ["import-openai", str(src), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0 and "imported 1 neurons" in flat(result), result.output
    bad = tmp_path / "bad"
    (bad / "collated-activations" / "3").mkdir(parents=True)
    path = bad / "collated-activations" / "3" / "7.json"
    path.write_text(json.dumps(release_neuron(3, 7, [0.1, 0.2, 0.3])))
    result = runner.invoke(app, ["import-openai", str(bad), "--out", str(tmp_path / "run2")])
    assert result.exit_code == 2 and str(path) in flat(result) and "quantile_boundaries has 3 values" in flat(result)


def test_export_openai_with_a_neuron_selection(harvested: Path, tmp_path: Path) -> None:
    out = tmp_path / "openai"
    result = runner.invoke(app, ["export", "--run", str(harvested), "--out", str(out), "--format", "openai",
                                 "--neurons", "1:0-4"])  # fmt: skip
    assert result.exit_code == 0 and "5 neuron records" in flat(result), result.output
    assert sorted(p.name for p in (out / "collated-activations" / "1").glob("*.json")) == [
        f"{n}.json" for n in range(5)
    ]
    assert not (out / "collated-activations" / "0").exists()


def test_nan_records_are_refused_with_the_neuron_named(harvested: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "nan-run"
    shutil.copytree(harvested, run)
    path = RunStore(run).records_path(0)
    table = pq.read_table(path)
    acts = table.column("activations").to_pylist()
    rows = [i for i, n in enumerate(table.column("neuron").to_pylist()) if n == 4]
    acts[rows[0]][3] = float("nan")
    table = table.set_column(table.schema.get_field_index("activations"), "activations",
                             pa.array(acts, type=table.schema.field("activations").type))  # fmt: skip
    pq.write_table(table, path)
    result = runner.invoke(app, ["explain", "--run", str(run), "--neurons", "0:4", "--explainer", "fake"])
    assert result.exit_code == 2 and "layer 0 neuron 4" in flat(result) and "non-finite" in flat(result), result.output


def test_output_tokens_stage_and_the_viewer_command(harvested: Path, tmp_path: Path) -> None:
    run = str(harvested)
    result = runner.invoke(app, ["output-tokens", "--run", run, "--neurons", "1:2-3"])
    assert result.exit_code == 0 and "output_tokens: 2 done" in flat(result), result.output
    again = runner.invoke(app, ["output-tokens", "--run", run, "--neurons", "1:2-3"])
    assert "0 done, 2 already done" in flat(again), again.output
    tokens = read_table(RunStore(harvested), "output_tokens")
    assert set(zip(tokens.layer, tokens.neuron, strict=True)) == {(1, 2), (1, 3)}
    assert set(tokens.sign) == {1, -1} and tokens.groupby(["neuron", "sign"]).size().eq(10).all()
    site = tmp_path / "site"
    viewed = runner.invoke(app, ["view", "--run", run, "--out", str(site), "--pages", "1:2-3"])
    assert viewed.exit_code == 0 and "open" in viewed.output, viewed.output
    page = site / "neurons" / "1" / "2.html"
    assert (site / "index.html").exists() and page.exists()
    promoted = tokens[(tokens.neuron == 2) & (tokens.sign == 1)].sort_values("rank").token.iloc[0]
    assert json.dumps(promoted)[1:-1].replace("/", "\\/") in page.read_text()  # the page shows the top token
    bad = runner.invoke(app, ["view", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2")])
    assert bad.exit_code == 2 and len([x for x in bad.output.splitlines() if x.strip()]) == 1


def test_dry_run_calibrates_on_a_sample(tiny_model_dirs, corpus_file, tmp_path: Path) -> None:
    sets = [f"out={tmp_path / 'never'}", f"harvest.model={tiny_model_dirs['gpt2']}",
            f"harvest.corpus.source={corpus_file}", "harvest.n_excerpts=5000", "harvest.excerpt_len=16",
            "neurons=all", "explain.explainer=fake", "simulate.simulator=fake:oracle",
            "simulate.max_level=10"]  # fmt: skip
    result = runner.invoke(app, ["run", "--dry-run", "--calibrate", *[x for s in sets for x in ("--set", s)]])
    text = flat(result)
    assert result.exit_code == 0, result.output
    assert "measured on a sample (cpu): harvest" in text and "simulate:" in text and "projected wall time" in text
    # 2 layers x 128 neurons, one explanation each, 20 simulated excerpts each
    assert "for 256 neurons" in text and "for 5,120 excerpts" in text
    assert not (tmp_path / "never").exists()  # a dry run writes nothing in the run directory
    alone = runner.invoke(app, ["run", "--calibrate", *[x for s in sets for x in ("--set", s)]])
    assert alone.exit_code == 2 and "--calibrate goes with --dry-run" in flat(alone)
