"""CLI command of the offline viewer: `view`, a static site of a run or an exported dataset."""

from __future__ import annotations

from typing import Annotated

import typer

from neuron_explainer.cli import common
from neuron_explainer.cli.common import app
from neuron_explainer.cli.progress import StageView, say

Opt = typer.Option


def page_neurons(source: str, spec: str | None) -> list[tuple[int, int]] | None:
    """The neurons that get a page: `explained` (those with an explanation), `all`, or a selection spec."""
    from neuron_explainer.selection import neurons_for_run
    from neuron_explainer.view.data import open_source

    if spec == "all":
        return None
    src = open_source(source)
    if spec is None or spec == "explained":
        explained = src.table("explanations", columns=["layer", "neuron"])
        return sorted({(int(a), int(b)) for a, b in zip(explained.layer, explained.neuron, strict=True)})
    return neurons_for_run(spec, src.manifest)


@app.command("view")
def view_cmd(
    run_dir: Annotated[str, Opt("--run", help="Run directory or exported dataset directory.")],
    out_dir: Annotated[str, Opt("--out", help="Site folder (new, empty, or a site built before).")],
    neurons: common.NeuronsOpt = None,
    pages: Annotated[
        str | None, Opt(help="Neurons that get a page: explained (default), all, or a spec like 5:0-99.")
    ] = None,
) -> None:
    """Build the offline viewer: an index of every neuron and a page per neuron, opening from file://."""
    from neuron_explainer.selection import neurons_for_run
    from neuron_explainer.view import build_site
    from neuron_explainer.view.data import open_source

    common.setup_logging()
    with common.user_errors():
        included = neurons_for_run(neurons, open_source(run_dir).manifest) if neurons else None
        with StageView() as view:
            report = build_site(run_dir, out_dir, neurons=included, pages=page_neurons(run_dir, pages), progress=view)
        say(
            f"viewer of {report.n_neurons:,} neurons ({report.n_pages:,} pages, {report.total_bytes / 1e6:.1f} MB) "
            f"built in {report.seconds:.1f} s; open {report.index}"
        )
