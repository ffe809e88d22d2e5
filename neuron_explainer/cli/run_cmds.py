"""CLI commands over whole runs: `run` (the pipeline, or its plan), `puzzles`, `export`, `import-openai`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from neuron_explainer.cli import common
from neuron_explainer.cli.common import app
from neuron_explainer.cli.progress import StageView, cost, out, print_report, say
from neuron_explainer.cli.show import pick_neurons, render_neuron
from neuron_explainer.cli.stage_cmds import print_ablation_cost, print_revision, print_scores
from neuron_explainer.config import RunConfig
from neuron_explainer.errors import ConfigError
from neuron_explainer.stages import Deps, StageReport

Opt = typer.Option


def _show_picks(cfg: RunConfig) -> None:
    from neuron_explainer.records.reader import load_neuron_record
    from neuron_explainer.records.store import RunStore

    manifest = RunStore(cfg.out).require_harvest()
    out.print(
        f"\nthe highest-kurtosis neuron of {cfg.show_neurons} layer(s), top excerpts (⟨n⟩ = activation on a 0-10 "
        "scale):\n",
        highlight=False,
    )
    for layer, neuron in pick_neurons(cfg.out, manifest, cfg.show_neurons):
        out.print(render_neuron(load_neuron_record(cfg.out, layer, neuron), n_top=3), highlight=False, markup=False)
        out.print()


def _run_pipeline(cfg: RunConfig, force: bool) -> None:
    from neuron_explainer.pipeline import run_stages

    with StageView() as view:
        deps = Deps.from_config(cfg, progress=view, notify=say, force=force)
        view.pool = deps.llm

        def on_report(report: StageReport) -> None:
            print_report(report, view)
            if report.stage == "harvest" and cfg.show_neurons:
                _show_picks(cfg)
            if report.stage == "ablate":
                print_ablation_cost(report)

        result = asyncio.run(run_stages(cfg, deps, on_report=on_report))
    if cfg.neurons:
        if cfg.revise.enabled:
            print_revision(cfg)
        print_scores(cfg)
        price = cost(cfg.prices, deps.llm)
        say(
            f"LLM tokens this run: {result.prompt_tokens:,} prompt + {result.completion_tokens:,} completion"
            + (f"; cost ${price:,.4f} at the configured prices" if price is not None else "")
        )


def dry_run_plan(cfg: RunConfig, calibrate: bool) -> None:
    """Print the plan; with `calibrate`, also the projection from a measured sample."""
    from neuron_explainer.plan import format_plan, make_plan, model_shape

    plan = make_plan(cfg, *model_shape(cfg))
    out.print(format_plan(cfg, plan), highlight=False, markup=False)
    if calibrate:
        from neuron_explainer.plan_measure import calibrate as measure
        from neuron_explainer.plan_measure import format_measured

        out.print(format_measured(cfg, plan, measure(cfg, say)), highlight=False, markup=False)


@app.command()
def run(
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
    force: Annotated[bool, Opt("--force", help="Delete existing outputs made with another config.")] = False,
    dry_run: Annotated[
        bool, Opt("--dry-run", help="Print the plan (calls, tokens, time, storage, cost) and stop.")
    ] = False,
    calibrate: Annotated[
        bool, Opt("--calibrate", help="With --dry-run: time a short sample of each stage and project the run.")
    ] = False,
    shard: common.ShardOpt = None,
    verbose: common.VerboseOpt = False,
) -> None:
    """Run the pipeline from a config: harvest, then explain, simulate and score the selected neurons.

    Revision, baselines and ablation run too when enabled in the config. Every stage resumes per unit.
    With --shard, the harvest must be complete: the workers share it.
    """
    common.setup_logging(verbose)
    with common.user_errors():
        cfg = common.build_config(config, overrides, {"workers.shard": shard})
        if dry_run:
            dry_run_plan(cfg, calibrate)
            return
        if calibrate:
            raise ConfigError("--calibrate goes with --dry-run")
        _run_pipeline(cfg, force)


def _puzzle_setup(cfg: RunConfig, pool: Any, explainer: str, judge: str | None) -> Any:
    from neuron_explainer.prompts.templates import load_explainer_template
    from neuron_explainer.puzzles.bench import BASELINE_EXPLAINERS, ExplainerSetup
    from neuron_explainer.revise import load_revision_templates

    e = cfg.explain
    setup = ExplainerSetup(explainer, temperature=e.temperature, max_tokens=e.max_tokens, seed=e.seed)
    if explainer not in BASELINE_EXPLAINERS:
        setup.backend = pool.get(explainer)
        setup.template = load_explainer_template(cfg.prompts_dir, e.prompt_version)
        setup.revision = load_revision_templates(cfg.prompts_dir, cfg.revise.prompt_version)
    if judge:
        setup.judge = pool.get(judge)
    return setup


async def _puzzle_benchmarks(
    cfg: RunConfig, puzzles: list, pool: Any, setup: Any, revise: bool, baselines: bool, progress: Any
) -> tuple[list[dict], list[dict]]:
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.puzzles.bench import (
        BASELINE_EXPLAINERS,
        ExplainerSetup,
        explainer_benchmark,
        scorer_benchmark,
    )
    from neuron_explainer.simulate.methods import RecordSimulator
    from neuron_explainer.simulate.simulator import SimulatorSetup

    s = cfg.simulate
    template = load_simulator_template(cfg.prompts_dir, s.prompt_version)
    sim = RecordSimulator(SimulatorSetup(pool.get(s.simulator), template, s.max_level, s.top_k), s.method)
    try:
        scorer = await scorer_benchmark(puzzles, sim, progress)
        explained = await explainer_benchmark(
            puzzles, sim, setup, revise=revise and setup.backend is not None, progress=progress
        )
        for name in BASELINE_EXPLAINERS if baselines and setup.explainer not in BASELINE_EXPLAINERS else ():
            explained += await explainer_benchmark(puzzles, sim, ExplainerSetup(name), revise=False, progress=progress)
    finally:
        await pool.aclose()
    return scorer, explained


@app.command("puzzles")
def puzzles_cmd(
    explainer: Annotated[
        str | None, Opt(help="Back-end spec, or a baseline: top_tokens, lookup (default: explain.explainer).")
    ] = None,
    simulator: Annotated[str | None, Opt(help="Back-end spec (default: simulate.simulator).")] = None,
    puzzles: Annotated[str | None, Opt(help="Puzzle file: our YAML, or OpenAI's puzzles.json layout.")] = None,
    revise: Annotated[bool, Opt("--revise", help="Also judge one revision round.")] = False,
    judge: Annotated[str | None, Opt(help="Back-end spec of an LLM judge (optional).")] = None,
    baselines: Annotated[
        bool, Opt("--baselines", help="Also run the top_tokens and lookup baseline explainers.")
    ] = False,
    out_dir: Annotated[str, Opt("--out", help="Results directory.")] = "runs/puzzles",
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
) -> None:
    """Puzzle benchmarks: does the scorer rank the true explanation first; does the explainer find it."""
    from neuron_explainer.llm.registry import BackendPool
    from neuron_explainer.puzzles.bench import summarize, write_results
    from neuron_explainer.puzzles.puzzle import load_puzzles

    common.setup_logging()
    with common.user_errors():
        cfg = common.build_config(config, overrides, {"out": out_dir, "simulate.simulator": simulator})
        found = load_puzzles(puzzles)
        name = explainer or cfg.explain.explainer
        with StageView() as view:
            pool = BackendPool(cfg.llm, Path(out_dir) / "cache" / "llm.sqlite", notify=say)
            view.pool = pool
            setup = _puzzle_setup(cfg, pool, name, judge)
            say(f"{len(found)} puzzles; simulator {cfg.simulate.simulator}; explainer {name}")
            scorer_rows, explainer_rows = asyncio.run(
                _puzzle_benchmarks(cfg, found, pool, setup, revise, baselines, view)
            )
        summary = summarize(scorer_rows, explainer_rows)
        meta = {
            "puzzle_file": str(puzzles or "puzzles/puzzles_v1.yaml"),
            "simulator": cfg.simulate.simulator,
            "explainer": name,
            "explainer_prompt": cfg.explain.prompt_version if setup.backend else "baseline",
            "judge": judge or "none",
        }
        write_results(out_dir, scorer_rows, explainer_rows, summary, meta)
        out.print((Path(out_dir) / "report.md").read_text().split("| puzzle |")[0].strip(), highlight=False)
        out.print(f"results in {out_dir} (scorer/explainer .json and .parquet, summary.json, report.md)")


@app.command("export")
def export_cmd(
    run_dir: Annotated[str, Opt("--run", help="Run directory.")],
    out_dir: Annotated[str, Opt("--out", help="New dataset directory.")],
    fmt: Annotated[str, Opt("--format", help="parquet (the dataset) or openai (OpenAI's JSON layout).")] = "parquet",
    neurons: common.NeuronsOpt = None,
) -> None:
    """Export a run: a self-describing Parquet dataset with a card and JSON Schemas, or OpenAI's JSON layout."""
    common.setup_logging()
    with common.user_errors():
        if fmt == "parquet":
            from neuron_explainer.export.dataset import export_dataset

            if neurons is not None:
                raise ConfigError("--neurons applies to --format openai (the Parquet dataset holds the whole run)")
            counts = export_dataset(run_dir, out_dir)
            say(", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" rows -> {out_dir}")
        elif fmt == "openai":
            from neuron_explainer.export.openai_export import export_openai

            with StageView() as view:
                n_records, n_files = export_openai(run_dir, out_dir, neurons=neurons, progress=view)
            say(f"{n_records} neuron records, {n_files} explanation files -> {out_dir}")
        else:
            raise ConfigError(f"--format must be parquet or openai, got {fmt!r}")


@app.command("import-openai")
def import_openai_cmd(
    src: Annotated[str, typer.Argument(help="Directory holding collated-activations/ (and explanations/).")],
    out_dir: Annotated[str, Opt("--out", help="New run directory.")],
) -> None:
    """Import OpenAI's published neuron records and explanations into a run our stages read."""
    from neuron_explainer.export.openai_import import import_openai

    common.setup_logging()
    with common.user_errors():
        counts = import_openai(src, out_dir)
        say(
            f"imported {counts['neurons']} neurons, {counts['excerpts']} distinct excerpts, "
            f"{counts['explanations']} explanations -> {out_dir}"
        )
