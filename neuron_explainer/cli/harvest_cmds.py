"""CLI commands of the harvest: `harvest`, `show`, `merge`."""

from __future__ import annotations

from typing import Annotated

import typer

from neuron_explainer.cli import common
from neuron_explainer.cli.common import app
from neuron_explainer.cli.progress import out, say
from neuron_explainer.config.sections import RunConfig
from neuron_explainer.errors import ConfigError

Opt = typer.Option


@app.command()
def harvest(
    config: common.ConfigOpt = None,
    model: Annotated[str | None, Opt(help="builtin:<name>, hub id, local dir or .gguf file.")] = None,
    corpus: Annotated[str | None, Opt(help="builtin:<name>, hub dataset id, or local files.")] = None,
    out_dir: Annotated[str | None, Opt("--out", help="Run directory.")] = None,
    layers: Annotated[str | None, Opt(help="e.g. 0,5,11 or 0-3 (default: all).")] = None,
    n_excerpts: Annotated[int | None, Opt(help="Excerpts to harvest.")] = None,
    excerpt_len: Annotated[int | None, Opt(help="Tokens per excerpt.")] = None,
    top_k: Annotated[int | None, Opt(help="Top-activating excerpts kept per neuron.")] = None,
    random_k: Annotated[int | None, Opt(help="Random excerpts kept per neuron.")] = None,
    quantile_k: Annotated[int | None, Opt(help="Random excerpts per quantile bucket.")] = None,
    seed: Annotated[int | None, Opt(help="Sampling seed.")] = None,
    device: Annotated[str | None, Opt(help="cpu, cuda, cuda:1, ...")] = None,
    dtype: Annotated[str | None, Opt(help="float32, bfloat16 or float16.")] = None,
    batch_size: Annotated[int | None, Opt(help="Excerpts per forward pass.")] = None,
    corpus_split: Annotated[str | None, Opt(help="Dataset split (hub datasets).")] = None,
    text_column: Annotated[str | None, Opt(help="Text column (hub, jsonl, parquet).")] = None,
    excerpts_per_doc: Annotated[int | None, Opt(help="Max excerpts per document.")] = None,
    excerpt_range: Annotated[str | None, Opt(help="START:STOP shard of the excerpt stream.")] = None,
    features: Annotated[str | None, Opt(help="mlp (default), sae:PATH or directions:FILE.")] = None,
    hook: Annotated[str | None, Opt(help="For sae: the hook, MODULE[:input|output], a TL name, or IN->OUT.")] = None,
    shard: Annotated[
        str | None, Opt(help="Harvest excerpt-range shard i/N into <out>/shards/i-of-N; `merge` joins them.")
    ] = None,
    overrides: common.SetOpt = None,
    force: Annotated[bool, Opt("--force", help="Delete an existing harvest with another config.")] = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Harvest MLP neuron activations: top, random and quantile excerpts plus statistics, to Parquet.

    Under `torchrun --nproc-per-node N`, each rank harvests its share of the excerpts on its own device
    and rank 0 merges them into --out.
    """
    common.setup_logging(verbose)
    with common.user_errors():
        flags = {
            "model": model,
            "layers": common.parse_layers(layers),
            "n_excerpts": n_excerpts,
            "excerpt_len": excerpt_len,
            "top_k": top_k,
            "random_k": random_k,
            "quantile_k": quantile_k,
            "seed": seed,
            "device": device,
            "dtype": dtype,
            "batch_size": batch_size,
            "excerpt_range": common.parse_range(excerpt_range, "--excerpt-range"),
            "features": features,
            "hook": hook,
            "corpus.source": corpus,
            "corpus.split": corpus_split,
            "corpus.text_column": text_column,
            "corpus.excerpts_per_doc": excerpts_per_doc,
        }
        cfg = common.build_config(config, overrides, {f"harvest.{k}": v for k, v in flags.items()} | {"out": out_dir})
        harvest_in_shards(cfg.model_copy(update={"neurons": None}), shard, force)


def harvest_in_shards(cfg: RunConfig, shard: str | None, force: bool) -> None:
    """The harvest of `cfg`: whole, one shard of it (`--shard`), or every rank's shard under torchrun."""
    from neuron_explainer.stages.harvest_shards import harvest_distributed, shard_config, torchrun_rank

    rank = torchrun_rank()
    if rank is not None:
        if shard is not None:
            raise ConfigError("--shard and torchrun both split the harvest: use one of them")
        manifest = harvest_distributed(cfg, rank, lambda c: common.run_stage(c, "harvest", force=force), say)
        if manifest is not None:
            say(f"merged {rank.world_size} ranks' shards: {manifest['harvest']['result']['n_excerpts']:,} excerpts")
        return
    if shard is None:
        common.run_stage(cfg, "harvest", force=force)
        return
    part = common.parse_shard(shard)
    common.run_stage(shard_config(cfg, part), "harvest", force=force)
    say(f"when all {part.count} shards are done: neuron-explainer merge --out {cfg.out} {cfg.out}/shards/*")


@app.command()
def show(
    run_dir: Annotated[str, Opt("--run", help="Run directory.")],
    neuron: Annotated[list[str], Opt(help="LAYER:NEURON, repeatable.")],
    n_top: Annotated[int, Opt(help="Top excerpts to print per neuron.")] = 5,
) -> None:
    """Print neurons' statistics and top-activating excerpts (activations as 0-10 levels)."""
    from neuron_explainer.cli.show import render_neuron
    from neuron_explainer.records.reader import load_neuron_record

    common.setup_logging()
    with common.user_errors():
        pairs = []
        for item in neuron:
            head, _, tail = item.partition(":")
            if not (head.isdigit() and tail.isdigit()):
                raise ConfigError(f"--neuron must look like LAYER:NEURON, e.g. 5:123; got {item!r}")
            pairs.append((int(head), int(tail)))
        for layer, index in pairs:
            record = load_neuron_record(run_dir, layer, index)
            out.print(render_neuron(record, n_top=n_top), highlight=False, markup=False)
            out.print()


@app.command()
def merge(
    shards: Annotated[list[str], typer.Argument(help="Run directories: harvest shards, or runs of one harvest.")],
    out_dir: Annotated[str, Opt("--out", help="New run directory for the merged result.")],
) -> None:
    """Merge runs into one, exactly: harvest shards (disjoint layers or excerpt ranges), or runs of one harvest.

    Runs of one harvest (workers that wrote separate directories) keep it and join their stage tables:
    rows repeated under one key collapse, different rows under one key are refused.
    """
    from neuron_explainer.records.merge import merge_runs

    common.setup_logging()
    with common.user_errors():
        manifest = merge_runs(shards, out_dir)
        h = manifest["harvest"]
        rows = manifest.get("merged_rows")
        if rows is not None:
            joined = ", ".join(f"{name} {n:,}" for name, n in rows.items()) or "no stage rows"
            say(f"merged the stage tables of {len(shards)} run(s) of one harvest ({joined}) -> {out_dir}")
            return
        say(
            f"merged {len(shards)} shard(s): layers {h['layers']}, excerpts {h['result']['excerpt_range']} -> {out_dir}"
        )
