"""Command-line interface (typer). The only module that prints, shows progress or exits."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neuron_explainer.cli_stages import (
    Backends,
    do_ablate,
    do_baselines,
    do_explain,
    do_puzzles,
    do_revise,
    do_score,
    do_simulate,
    print_scores,
)
from neuron_explainer.cli_view import console, out, stage_view
from neuron_explainer.config import RunConfig, load_config
from neuron_explainer.errors import ConfigError, NeuronExplainerError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Harvest, explain, simulate and score the MLP neurons of transformer language models.",
)

logger = logging.getLogger("neuron_explainer")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        handlers=[RichHandler(console=console, show_path=False)],
        format="%(message)s",
        force=True,
    )
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}", highlight=False)
    raise typer.Exit(2)


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-")
                layers += range(int(a), int(b) + 1)
            else:
                layers.append(int(part))
    except ValueError:
        raise ConfigError(f"--layers must look like 0,5,11 or 0-5, got {text!r}") from None
    return layers


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _do_harvest(cfg: RunConfig, force: bool) -> dict[str, Any]:
    from neuron_explainer.activations.driver import HarvestRun

    h = cfg.harvest
    console.print(f"loading subject model {h.model} ({h.dtype}, {h.device}) ...")
    run = HarvestRun(h, cfg.out, force=force)
    if run.already_complete:
        console.print(f"harvest in {cfg.out} is already complete (same config); nothing to do")
        manifest = run.store.read_manifest()
        assert manifest is not None
        return manifest
    plan = run.plan()
    console.print(
        f"harvesting {len(plan.layers)} layer(s) x {plan.n_neurons} neurons over {plan.n_excerpts} excerpts of "
        f"{plan.excerpt_len} tokens from {h.corpus.source}\n"
        f"estimated disk use: {_fmt_bytes(plan.estimated_bytes)} in {cfg.out}"
        + (f"\nresuming at excerpt {plan.resumed_from}" if plan.resumed_from else "")
    )
    columns = [
        TextColumn("harvest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("excerpts"),
        TextColumn("{task.fields[rate]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    import time

    t0 = time.monotonic()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("harvest", total=plan.n_excerpts, completed=0, rate="-")
        start_tokens: list[int] = []

        last_line = [t0]

        def on_progress(excerpts: int, tokens: int) -> None:
            if not start_tokens:
                start_tokens.append(tokens)
            elapsed = max(time.monotonic() - t0, 1e-9)
            rate = (tokens - start_tokens[0]) / elapsed
            progress.update(task, completed=excerpts, rate=f"{rate:,.0f}")
            if not console.is_terminal and time.monotonic() - last_line[0] >= 30:
                # a log file gets no live bar: print a line every 30 s instead
                last_line[0] = time.monotonic()
                left = (plan.n_excerpts - excerpts) * plan.excerpt_len / max(rate, 1e-9)
                console.print(
                    f"harvest: {excerpts}/{plan.n_excerpts} excerpts, {rate:,.0f} tokens/s, "
                    f"elapsed {elapsed:,.0f} s, ETA {left:,.0f} s",
                    highlight=False,
                )

        manifest = run.run(progress=on_progress)
    result = manifest["harvest"]["result"]
    console.print(
        f"harvested {result['n_excerpts']} excerpts ({result['n_tokens']:,} tokens) in "
        f"{time.monotonic() - t0:.1f} s -> {cfg.out}"
    )
    return manifest


def _show(run_dir: str, neurons: list[tuple[int, int]], n_top: int) -> None:
    from neuron_explainer.records.reader import load_neuron_record
    from neuron_explainer.show import render_neuron

    for layer, neuron in neurons:
        out.print(render_neuron(load_neuron_record(run_dir, layer, neuron), n_top=n_top), highlight=False, markup=False)
        out.print()


def _pick_neurons(run_dir: str, manifest: dict[str, Any], count: int) -> list[tuple[int, int]]:
    """A few neurons spread over the harvested layers: the highest-kurtosis neuron of each."""
    import pyarrow.parquet as pq

    from neuron_explainer.records.store import RunStore

    layers = manifest["harvest"]["layers"]
    store = RunStore(run_dir)
    picks = []
    step = max(1, len(layers) // max(count, 1))
    for layer in layers[::step][:count]:
        table = pq.read_table(store.stats_path(layer), columns=["neuron", "kurtosis"]).to_pandas()
        picks.append((layer, int(table.sort_values("kurtosis", ascending=False).iloc[0]["neuron"])))
    return picks


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")]


@app.command()
def harvest(
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="builtin:<name>, hub id, local dir or .gguf file.")] = None,
    corpus: Annotated[str | None, typer.Option(help="builtin:<name>, hub dataset id, or local files.")] = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Run directory.")] = None,
    layers: Annotated[str | None, typer.Option(help="e.g. 0,5,11 or 0-3 (default: all).")] = None,
    n_excerpts: Annotated[int | None, typer.Option(help="Excerpts to harvest.")] = None,
    excerpt_len: Annotated[int | None, typer.Option(help="Tokens per excerpt.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-activating excerpts kept per neuron.")] = None,
    random_k: Annotated[int | None, typer.Option(help="Random excerpts kept per neuron.")] = None,
    quantile_k: Annotated[int | None, typer.Option(help="Random excerpts per quantile bucket.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Excerpts per forward pass.")] = None,
    corpus_split: Annotated[str | None, typer.Option(help="Dataset split (hub datasets).")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (hub, jsonl, parquet).")] = None,
    excerpts_per_doc: Annotated[int | None, typer.Option(help="Max excerpts per document.")] = None,
    excerpt_range: Annotated[str | None, typer.Option(help="START:STOP shard of the excerpt stream.")] = None,
    overrides: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Delete an existing harvest with another config.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Harvest MLP neuron activations: top, random and quantile excerpts plus statistics, to Parquet."""
    _setup_logging(verbose)
    sets = list(overrides or [])
    flags = {
        "model": model,
        "layers": layers,
        "n_excerpts": n_excerpts,
        "excerpt_len": excerpt_len,
        "top_k": top_k,
        "random_k": random_k,
        "quantile_k": quantile_k,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "batch_size": batch_size,
    }
    corpus_flags = {
        "source": corpus,
        "split": corpus_split,
        "text_column": text_column,
        "excerpts_per_doc": excerpts_per_doc,
    }
    try:
        for key, value in flags.items():
            if value is not None:
                sets.append(f"harvest.{key}={_parse_layers(value) if key == 'layers' else value}")
        for key, value in corpus_flags.items():
            if value is not None:
                sets.append(f"harvest.corpus.{key}={value}")
        if excerpt_range is not None:
            a, b = excerpt_range.split(":")
            sets.append(f"harvest.excerpt_range=[{int(a)}, {int(b)}]")
        if out_dir is not None:
            sets.append(f"out={out_dir}")
        cfg = load_config(config, sets)
        _do_harvest(cfg, force)
    except NeuronExplainerError as e:
        _fail(e)
    except ValueError as e:
        _fail(ConfigError(f"bad option value: {e}"))


@app.command()
def show(
    run_dir: Annotated[str, typer.Option("--run", help="Run directory.")],
    neuron: Annotated[list[str], typer.Option(help="LAYER:NEURON, repeatable.")],
    n_top: Annotated[int, typer.Option(help="Top excerpts to print per neuron.")] = 5,
) -> None:
    """Print neurons' statistics and top-activating excerpts (activations as 0-10 levels)."""
    _setup_logging(False)
    try:
        pairs = []
        for item in neuron:
            layer, idx = item.split(":")
            pairs.append((int(layer), int(idx)))
    except ValueError:
        _fail(ConfigError("--neuron must look like LAYER:NEURON, e.g. 5:123"))
    try:
        _show(run_dir, pairs, n_top)
    except NeuronExplainerError as e:
        _fail(e)


RunOpt = Annotated[str | None, typer.Option("--run", "--records", help="Run directory (a completed harvest).")]
NeuronsOpt = Annotated[str | None, typer.Option(help="Neurons: 5:0-99, 5:3,7:10-12, layer:5, all, or sample:N.")]


def _stage_config(
    config: Path | None, overrides: list[str] | None, run_dir: str | None, neurons: str | None, extra: dict[str, Any]
) -> RunConfig:
    sets = list(overrides or [])
    if run_dir is not None:
        sets.append(f"out={run_dir}")
    if neurons is not None:
        sets.append(f"neurons={neurons!s}")
    sets += [f"{k}={v}" for k, v in extra.items() if v is not None]
    return load_config(config, sets)


@app.command("explain")
def explain_cmd(
    run_dir: RunOpt = None,
    neurons: NeuronsOpt = None,
    explainer: Annotated[str | None, typer.Option(help="local:<model> | openai:<model>@<url> | fake")] = None,
    n_samples: Annotated[int | None, typer.Option(help="Explanations per neuron.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Explain neurons from their top-activating excerpts (resumable: skips neurons already explained)."""
    _setup_logging(False)
    try:
        cfg = _stage_config(
            config, overrides, run_dir, neurons, {"explain.explainer": explainer, "explain.n_samples": n_samples}
        )
        with stage_view():
            do_explain(cfg, Backends(cfg))
    except NeuronExplainerError as e:
        _fail(e)


@app.command("simulate")
def simulate_cmd(
    run_dir: RunOpt = None,
    simulator: Annotated[str | None, typer.Option(help="local:<model> | openai:<model>@<url>")] = None,
    method: Annotated[str | None, typer.Option(help="all_at_once | one_at_a_time | logprob_free")] = None,
    neurons: NeuronsOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Simulate every explanation on its neuron's scoring excerpts (--method: all_at_once by default)."""
    _setup_logging(False)
    try:
        cfg = _stage_config(
            config, overrides, run_dir, neurons, {"simulate.simulator": simulator, "simulate.method": method}
        )
        with stage_view():
            do_simulate(cfg, Backends(cfg))
    except NeuronExplainerError as e:
        _fail(e)


@app.command("score")
def score_cmd(run_dir: RunOpt = None, config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Score simulations (pooled correlation: top-and-random and random-only) and print the table."""
    _setup_logging(False)
    try:
        cfg = _stage_config(config, overrides, run_dir, None, {})
        do_score(cfg)
        print_scores(cfg)
    except NeuronExplainerError as e:
        _fail(e)


@app.command("puzzles")
def puzzles_cmd(
    explainer: Annotated[
        str | None, typer.Option(help="Back-end spec, or a baseline: top_tokens, lookup (default: explain.explainer).")
    ] = None,
    simulator: Annotated[str | None, typer.Option(help="Back-end spec (default: simulate.simulator).")] = None,
    puzzles: Annotated[str | None, typer.Option(help="Puzzle file (default: puzzles/puzzles_v1.yaml).")] = None,
    revise: Annotated[bool, typer.Option("--revise", help="Also judge one revision round.")] = False,
    judge: Annotated[str | None, typer.Option(help="Back-end spec of an LLM judge (optional).")] = None,
    baselines: Annotated[
        bool, typer.Option("--baselines", help="Also run the top_tokens and lookup baseline explainers.")
    ] = False,
    out_dir: Annotated[str, typer.Option("--out", help="Results directory.")] = "runs/puzzles",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Puzzle benchmarks: does the scorer rank the true explanation first; does the explainer find it."""
    _setup_logging(False)
    try:
        sets = [f"out={out_dir}"] + list(overrides or [])
        if simulator:
            sets.append(f"simulate.simulator={simulator}")
        cfg = load_config(config, sets)
        with stage_view():
            do_puzzles(
                cfg,
                Backends(cfg),
                puzzles_file=puzzles,
                out_dir=out_dir,
                explainer=explainer or cfg.explain.explainer,
                revise=revise,
                judge=judge,
                baselines=baselines,
            )
    except NeuronExplainerError as e:
        _fail(e)


@app.command("export")
def export_cmd(
    run_dir: Annotated[str, typer.Option("--run", help="Run directory.")],
    out_dir: Annotated[str, typer.Option("--out", help="New dataset directory.")],
    fmt: Annotated[
        str, typer.Option("--format", help="parquet (the dataset) or openai (OpenAI's JSON layout).")
    ] = "parquet",
) -> None:
    """Export a run: a self-describing Parquet dataset with a card and JSON Schemas, or OpenAI's JSON format."""
    _setup_logging(False)
    try:
        if fmt == "parquet":
            from neuron_explainer.export.dataset import export_dataset

            counts = export_dataset(run_dir, out_dir)
            console.print(", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" rows -> {out_dir}", highlight=False)
        elif fmt == "openai":
            from neuron_explainer.export.openai_format import export_openai

            n_records, n_files = export_openai(run_dir, out_dir)
            console.print(f"{n_records} neuron records, {n_files} explanation files -> {out_dir}", highlight=False)
        else:
            raise ConfigError(f"--format must be parquet or openai, got {fmt!r}")
    except NeuronExplainerError as e:
        _fail(e)


@app.command("import-openai")
def import_openai_cmd(
    src: Annotated[str, typer.Argument(help="Directory holding collated-activations/ (and explanations/).")],
    out_dir: Annotated[str, typer.Option("--out", help="New run directory.")],
) -> None:
    """Import OpenAI's published neuron records and explanations into a run our stages read."""
    _setup_logging(False)
    try:
        from neuron_explainer.export.openai_format import import_openai

        counts = import_openai(src, out_dir)
        console.print(
            f"imported {counts['neurons']} neurons, {counts['excerpts']} distinct excerpts, "
            f"{counts['explanations']} explanations -> {out_dir}",
            highlight=False,
        )
    except NeuronExplainerError as e:
        _fail(e)


@app.command("revise")
def revise_cmd(
    run_dir: RunOpt = None,
    neurons: NeuronsOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Revise simulated explanations: test sentences, real activations, revised explanations (resumable)."""
    _setup_logging(False)
    try:
        cfg = _stage_config(config, overrides, run_dir, neurons, {})
        with stage_view():
            do_revise(cfg, Backends(cfg))
    except NeuronExplainerError as e:
        _fail(e)


@app.command("baselines")
def baselines_cmd(
    run_dir: RunOpt = None,
    neurons: NeuronsOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Weight and lookup-table baselines, stored as explanations with their simulations (resumable)."""
    _setup_logging(False)
    try:
        cfg = _stage_config(config, overrides, run_dir, neurons, {})
        do_baselines(cfg)
    except NeuronExplainerError as e:
        _fail(e)


@app.command("ablate")
def ablate_cmd(
    run_dir: RunOpt = None,
    neurons: NeuronsOpt = None,
    device: Annotated[str | None, typer.Option(help="Device of the subject model (cpu, cuda).")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Ablation-score calibrated simulations: replace the neuron by its simulation vs by its mean (resumable)."""
    _setup_logging(False)
    try:
        cfg = _stage_config(config, overrides, run_dir, neurons, {"subject_device": device})
        do_ablate(cfg)
        print_scores(cfg)
    except NeuronExplainerError as e:
        _fail(e)


@app.command()
def run(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Delete existing outputs made with another config.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (calls, tokens, time, storage, cost) and stop.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the pipeline from a config: harvest, then explain, simulate and score the selected neurons.

    Revision, baselines and ablation run too when enabled in the config. Every stage resumes per unit.
    """
    _setup_logging(verbose)
    try:
        cfg = load_config(config, overrides)
        if dry_run:
            from neuron_explainer.plan import format_plan, make_plan, model_shape

            out.print(format_plan(cfg, make_plan(cfg, *model_shape(cfg))), highlight=False, markup=False)
            return
        manifest = _do_harvest(cfg, force)
        if cfg.show_neurons:
            out.print(
                f"\nthe highest-kurtosis neuron of {cfg.show_neurons} layer(s), top excerpts "
                "(⟨n⟩ = activation on a 0-10 scale):\n",
                highlight=False,
            )
            _show(cfg.out, _pick_neurons(cfg.out, manifest, cfg.show_neurons), 3)
        if cfg.neurons:
            with stage_view() as view:
                backends = Backends(cfg)
                do_explain(cfg, backends)
                do_simulate(cfg, backends)
                if cfg.revise.enabled:
                    do_revise(cfg, backends)
                if cfg.baselines.enabled:
                    do_baselines(cfg)
                do_score(cfg)
                if cfg.ablate.enabled:
                    do_ablate(cfg)
            print_scores(cfg)
            prompt, completion = view.tokens()
            cost = view.cost(cfg.prices, backends.built)
            console.print(
                f"LLM tokens this run: {prompt:,} prompt + {completion:,} completion"
                + (f"; cost ${cost:,.4f} at the configured prices" if cost is not None else ""),
                highlight=False,
            )
    except NeuronExplainerError as e:
        _fail(e)


@app.command()
def merge(
    shards: Annotated[list[str], typer.Argument(help="Run directories of completed harvest shards.")],
    out_dir: Annotated[str, typer.Option("--out", help="New run directory for the merged result.")],
) -> None:
    """Merge harvest shards (disjoint layers, or disjoint excerpt ranges) into one run, exactly."""
    _setup_logging(False)
    from neuron_explainer.records.merge import merge_runs

    try:
        manifest = merge_runs(shards, out_dir)
    except NeuronExplainerError as e:
        _fail(e)
    h = manifest["harvest"]
    console.print(
        f"merged {len(shards)} shard(s): layers {h['layers']}, excerpts {h['result']['excerpt_range']} -> {out_dir}"
    )


def main() -> None:
    """Entry point for `python -m neuron_explainer`."""
    app()


if __name__ == "__main__":
    sys.exit(main())
