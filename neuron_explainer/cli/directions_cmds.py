"""CLI command of the explainable-direction search: `directions`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from neuron_explainer.cli import common
from neuron_explainer.cli.common import app
from neuron_explainer.cli.progress import out, say
from neuron_explainer.cli.show import fmt_score

Opt = typer.Option


def directions_table(title: str, summary: Any) -> Any:
    """Per direction: explanation, score at round 0 (random start), score after the last round; then the mean."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("direction", "explanation", "round 0", "final", "neurons for 90 %"):
        table.add_column(col, justify="left" if col == "explanation" else "right")
    for row in summary.itertuples():
        needed = "-" if row.neurons_for_90 != row.neurons_for_90 or row.neurons_for_90 is None else row.neurons_for_90
        table.add_row(
            str(row.direction),
            row.explanation if isinstance(row.explanation, str) else "(none scored)",
            fmt_score(float("nan") if row.score_start is None else row.score_start),
            fmt_score(float("nan") if row.score_final is None else row.score_final),
            str(int(needed)) if needed != "-" else needed,
        )
    start = summary.score_start.astype(float).mean()
    final = summary.score_final.astype(float).mean()
    table.add_row("mean", "", fmt_score(start), fmt_score(final), "", end_section=True)
    return table


@app.command("directions")
def directions_cmd(
    run_dir: common.RunOpt = None,
    layer: Annotated[int, Opt(help="Layer whose MLP activations the directions read.")] = 0,
    n: Annotated[int, Opt("--n", help="Directions to find (independent random starts).")] = 1,
    rounds: Annotated[int, Opt(help="Rounds of coordinate ascent per direction.")] = 10,
    pool: Annotated[int, Opt(help="Candidate pool: the run's first P excerpts.")] = 1000,
    seed: Annotated[int, Opt(help="Seed of the random starts.")] = 0,
    steps: Annotated[int, Opt(help="Adam steps per update step.")] = 50,
    raw: Annotated[bool, Opt("--raw", help="Search raw directions (a^T theta) instead of whitened ones.")] = False,
    config: common.ConfigOpt = None,
    overrides: common.SetOpt = None,
) -> None:
    """Search explainable directions of one layer (coordinate ascent; resumable) and print their scores.

    The explainer and simulator are the config's `explain` and `simulate` sections; whitening needs the
    layer's covariance from the harvest (harvest.covariance_layers).
    """
    from neuron_explainer.directions.results import directions_file
    from neuron_explainer.directions.search import SearchSettings, search_directions
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.stages import Deps

    common.setup_logging()
    with common.user_errors():
        cfg = common.build_config(config, overrides, {"out": run_dir})
        settings = SearchSettings(
            layer=layer, n_directions=n, rounds=rounds, pool_size=pool, seed=seed, whiten=not raw, update_steps=steps
        )
        settings.check(pool)
        deps = Deps.from_config(cfg, notify=say)
        store = RunStore(cfg.out)

        async def go() -> Any:
            try:
                return await search_directions(store, deps, settings)
            finally:
                await deps.llm.aclose()

        search_id, summary = asyncio.run(go())
    kind = "raw" if raw else "whitened"
    out.print(directions_table(f"{kind} directions of layer {layer} in {cfg.out} (top-and-random score)", summary))
    say(f"directions file: {directions_file(store, layer, search_id)} (search {search_id})")
