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
    """A rich table of a search's summary (directions.results.summary), with the means.

    Per direction: explanation, held-out score at round 0 (random start) and after the last round, the
    last score on the search's own excerpts, and the neurons needed.
    """
    from rich.table import Table

    table = Table(title=title)
    for col in ("direction", "explanation", "round 0", "final", "final (search excerpts)", "neurons for 90 %"):
        table.add_column(col, justify="left" if col == "explanation" else "right")

    def score(value: Any) -> str:
        return fmt_score(float("nan") if value is None else float(value))

    for row in summary.itertuples():
        needed = row.neurons_for_90
        table.add_row(
            str(row.direction),
            row.explanation if isinstance(row.explanation, str) else "(none scored)",
            score(row.score_start),
            score(row.score_final),
            score(row.search_score_final),
            "-" if needed is None or needed != needed else str(int(needed)),
        )
    means = [score(summary[c].astype(float).mean()) for c in ("score_start", "score_final", "search_score_final")]
    table.add_row("mean", "", *means, "", end_section=True)
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
    title = f"{kind} directions of layer {layer} in {cfg.out} (top-and-random score on held-out excerpts)"
    out.print(directions_table(title, summary))
    say(f"directions file: {directions_file(store, layer, search_id)} (search {search_id})")
