"""The `run` and `show` commands and the scripts/ helpers on a tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from neuron_explainer.cli import app

runner = CliRunner()


def test_run_from_yaml_prints_neurons_then_is_idempotent(
    tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = {
        "out": str(out),
        "show_neurons": 2,
        "harvest": {
            "model": str(tiny_model_dirs["gpt_neox"]),
            "corpus": {"source": str(corpus_file)},
            "n_excerpts": 40,
            "excerpt_len": 16,
            "batch_size": 8,
            "quantile_pilot_excerpts": 10,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = runner.invoke(app, ["run", "--config", str(path)])
    assert first.exit_code == 0, first.output
    assert first.output.count("top 1 (max") == 2 and "layer 0 neuron" in first.output
    assert "harvested 40 excerpts" in first.output
    again = runner.invoke(app, ["run", "--config", str(path)])
    assert again.exit_code == 0 and "already complete" in again.output

    shown = runner.invoke(app, ["show", "--run", str(out), "--neuron", "1:3", "--n-top", "2"])
    assert shown.exit_code == 0, shown.output
    assert "layer 1 neuron 3" in shown.output and "top 2" in shown.output and "top 3" not in shown.output
    assert runner.invoke(app, ["show", "--run", str(out), "--neuron", "1-3"]).exit_code != 0

    table = subprocess.run(
        [sys.executable, "scripts/neuron_table.py", str(out), "--layer", "1", "--limit", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(table.stdout.strip().splitlines()) == 4  # header + 3 neurons


def test_bad_config_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("harvest:\n  n_excerpt: 5\n")
    result = runner.invoke(app, ["run", "--config", str(path)])
    assert result.exit_code != 0 and "n_excerpt" in result.output
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code != 0 and "config file not found" in result.output


def test_stage_commands_wire_up(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    harvest = runner.invoke(
        app,
        [
            "harvest",
            "--model",
            str(tiny_model_dirs["gpt2"]),
            "--corpus",
            str(corpus_file),
            "--out",
            str(out),
            "--n-excerpts",
            "40",
            "--excerpt-len",
            "16",
        ],
    )
    assert harvest.exit_code == 0, harvest.output
    explained = runner.invoke(app, ["explain", "--run", str(out), "--neurons", "0:0-2", "--explainer", "fake"])
    assert explained.exit_code == 0 and "explain: 3 done" in " ".join(explained.output.split()), explained.output
    assert (out / "cache" / "llm.sqlite").exists()
    again = runner.invoke(app, ["explain", "--run", str(out), "--neurons", "0:0-2", "--explainer", "fake"])
    assert "0 done, 3 already done" in " ".join(again.output.split())
    refused = runner.invoke(app, ["simulate", "--run", str(out), "--simulator", "fake"])
    assert refused.exit_code != 0 and "needs prompt_logprobs" in " ".join(refused.output.split())
    # a chat-only back end can still simulate logprob-free; the fake's prose answer is a typed failure
    free = runner.invoke(app, ["simulate", "--run", str(out), "--simulator", "fake", "--method", "logprob_free"])
    flat = " ".join(free.output.split())
    assert "3 failed" in flat and "no JSON array" in free.output, free.output
    # every unit failed: over the default failure budget (10 %), so the command stops with an error
    assert free.exit_code != 0 and "over the failure budget" in flat
    budget = runner.invoke(
        app,
        ["simulate", "--run", str(out), "--simulator", "fake", "--method", "logprob_free", "--set", "failure_budget=3"],
    )
    assert budget.exit_code == 0, budget.output  # a budget of 3 failed units tolerates them
    bad = runner.invoke(app, ["explain", "--run", str(out), "--neurons", "zero", "--explainer", "fake"])
    assert bad.exit_code != 0 and "neurons must look like" in bad.output
    scored = runner.invoke(app, ["score", "--run", str(out)])
    assert scored.exit_code == 0 and "explanation scores" in scored.output
    far = runner.invoke(app, ["ablate", "--run", str(out), "--neurons", "0:99999"])
    assert far.exit_code != 0 and "neuron 99999 out of range" in " ".join(far.output.split()), far.output
    # every simulation failed above: each explanation is named as having no simulation, and the stage fails
    none = runner.invoke(app, ["ablate", "--run", str(out)])
    flat = " ".join(none.output.split())
    assert none.exit_code != 0 and "has no simulation to ablate: run `simulate` first" in flat, none.output
