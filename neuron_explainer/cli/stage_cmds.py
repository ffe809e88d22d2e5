"""CLI commands of the stages after the harvest: explain, simulate, score, revise, baselines, ablate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from neuron_explainer.cli import common
from neuron_explainer.cli.common import app
from neuron_explainer.cli.progress import out, say
from neuron_explainer.cli.show import revision_table, score_table
from neuron_explainer.config import RunConfig
from neuron_explainer.records.store import RunStore
from neuron_explainer.stages import StageReport

Opt = typer.Option


def print_scores(cfg: RunConfig) -> None:
    """The score table of the run: correlation scores, plus ablation scores where any exist."""
    from neuron_explainer.stages.score import summary

    out.print(score_table(f"explanation scores in {cfg.out} (valid split; correlation", summary(RunStore(cfg.out))))


def print_revision(cfg: RunConfig) -> None:
    """Revision scores per original explanation and arm, and the false-positive rate of the test sentences."""
    from neuron_explainer.records.tables import read_table

    store = RunStore(cfg.out)
    scores, sentences = read_table(store, "revision_scores"), read_table(store, "revision_sentences")
    if scores.empty:
        return
    out.print(revision_table(f"revision in {cfg.out} (pooled correlation)", scores))
    fp = sentences.false_positive
    with_one = int(sentences.groupby("explanation_id").false_positive.any().sum())
    out.print(
        f"test sentences: {len(fp)}, false positives: {int(fp.sum())} ({fp.mean():.0%}); explanations with at "
        f"least one: {with_one} of {sentences.explanation_id.nunique()}",
        highlight=False,
    )


def print_ablation_cost(report: StageReport) -> None:
    """Forward passes per ablated explanation."""
    d = report.details
    if d.get("units"):
        say(
            f"ablate: {d['clean_excerpt_forwards'] / d['units']:.1f} clean + "
            f"{d['replaced_excerpt_forwards'] / d['units']:.1f} replaced excerpt forwards per explanation"
        )


def stage_command(
    name: str,
    run_dir: str | None,
    neurons: str | None,
    config: Path | None,
    overrides: list[str] | None,
    flags: dict[str, Any] | None = None,
    after: Callable[[RunConfig], None] | None = None,
    shard: str | None = None,
    report_after: Callable[[StageReport], None] | None = None,
) -> None:
    """What every stage command does: build the config from its flags, run the stage, then `after`."""
    common.setup_logging()
    with common.user_errors():
        flags = {"out": run_dir, "neurons": neurons, "workers.shard": shard, **(flags or {})}
        cfg = common.build_config(config, overrides, flags)
        common.run_stage(cfg, name, after=report_after)
        if after is not None:
            after(cfg)


@app.command("explain")
def explain_cmd(
    run_dir: common.RunOpt = None,
    neurons: common.NeuronsOpt = None,
    explainer: Annotated[str | None, Opt(help="local:<model> | openai:<model>@<url> | vllm:... | fake")] = None,
    n_samples: Annotated[int | None, Opt(help="Explanations per neuron.")] = None,
    shard: common.ShardOpt = None,
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
) -> None:
    """Explain neurons from their top-activating excerpts (resumable: skips neurons already explained)."""
    flags = {"explain.explainer": explainer, "explain.n_samples": n_samples}
    stage_command("explain", run_dir, neurons, config, overrides, flags, shard=shard)


@app.command("simulate")
def simulate_cmd(
    run_dir: common.RunOpt = None,
    simulator: Annotated[str | None, Opt(help="local:<model> | openai:<model>@<url> | vllm:...")] = None,
    method: Annotated[str | None, Opt(help="all_at_once | one_at_a_time | logprob_free")] = None,
    neurons: common.NeuronsOpt = None,
    shard: common.ShardOpt = None,
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
) -> None:
    """Simulate every explanation on its neuron's scoring excerpts (--method: all_at_once by default)."""
    flags = {"simulate.simulator": simulator, "simulate.method": method}
    stage_command("simulate", run_dir, neurons, config, overrides, flags, shard=shard)


@app.command("score")
def score_cmd(
    run_dir: common.RunOpt = None,
    shard: common.ShardOpt = None,
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
) -> None:
    """Score simulations (pooled correlation: top-and-random and random-only) and print the table."""
    stage_command("score", run_dir, None, config, overrides, after=print_scores, shard=shard)


def plain_stage_command(name: str, help_text: str, after: Callable[[RunConfig], None] | None = None) -> None:
    """Register a stage command whose only options are the run, the neurons, a config and --set.

    The command is the stage's name with dashes (`output_tokens` -> `output-tokens`).
    """

    def command(
        run_dir: common.RunOpt = None,
        neurons: common.NeuronsOpt = None,
        shard: common.ShardOpt = None,
        config: common.ConfigOpt = None,
        overrides: common.SetOpt = None,
    ) -> None:
        stage_command(name, run_dir, neurons, config, overrides, after=after, shard=shard)

    app.command(name.replace("_", "-"), help=help_text)(command)


plain_stage_command(
    "revise",
    "Revise simulated explanations: test sentences, real activations, revised explanations (resumable).",
    after=print_revision,
)
plain_stage_command(
    "baselines", "Weight and lookup-table baselines, stored as explanations with their simulations (resumable)."
)
plain_stage_command(
    "output_tokens", "The tokens each neuron's output weights promote and suppress, from weights alone (resumable)."
)


@app.command("ablate")
def ablate_cmd(
    run_dir: common.RunOpt = None,
    neurons: common.NeuronsOpt = None,
    device: Annotated[str | None, Opt(help="Device of the subject model (cpu, cuda).")] = None,
    shard: common.ShardOpt = None,
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
) -> None:
    """Ablation-score calibrated simulations: replace the neuron by its simulation vs by its mean (resumable)."""
    flags = {"subject_device": device}
    stage_command("ablate", run_dir, neurons, config, overrides, flags, print_scores, shard, print_ablation_cost)
