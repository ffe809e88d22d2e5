"""CLI command `inspect`: every prompt view of one prompt (saliency, logit lens, attention, ...) as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neuron_explainer.cli import common
from neuron_explainer.cli.common import app
from neuron_explainer.cli.progress import out, say
from neuron_explainer.errors import ConfigError

Opt = typer.Option


def parse_head(text: str | None) -> tuple[int, int] | None:
    """`LAYER:HEAD` as a pair of ints (the layer may be negative).

    Raises:
        ConfigError: anything else.
    """
    if text is None:
        return None
    layer, sep, head = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(layer), int(head)
    except ValueError:
        raise ConfigError(f"--head must look like LAYER:HEAD, e.g. 3:1; got {text!r}") from None


def parse_tokens(text: str | None) -> list[str]:
    """`--watch` as a list of tokens: split on commas, spaces kept (` Paris, London` is ` Paris` and ` London`)."""
    if text is None:
        return []
    tokens = [t for t in text.split(",") if t != ""]
    if not tokens:
        raise ConfigError(f"--watch must list tokens separated by commas, got {text!r}")
    return tokens


def summary_lines(page: Any) -> list[str]:
    """What the page found, in a few lines for the terminal (the page has the rest)."""
    s = page["saliency"].data
    order = sorted(range(len(s.tokens)), key=lambda i: -abs(float(s.signed[i])))[:3]
    salient = ", ".join(f"{s.tokens[i]!r} {float(s.signed[i]):+.3g}" for i in order)
    lines = [
        f"target {s.target_token!r} after {s.tokens[s.position]!r}: {s.output} {s.target_value:.4g}",
        f"most salient ({s.method}): {salient}",
    ]
    r = page["rankings"].data
    for w, token in enumerate(r.watch_tokens):
        ranks = r.ranks[:, w]
        first = next((int(layer) for layer, rank in zip(r.layers, ranks, strict=True) if rank == 1), None)
        where = f"top-1 from layer {first}" if first is not None else f"best rank {int(ranks.min())}"
        lines.append(f"watched {token!r}: rank {int(ranks[-1])} after the last layer, {where}")
    if "firing" in page.views:
        frame = page["firing"].data.frame
        lines.append(f"explained neurons listed: {frame[['layer', 'neuron']].drop_duplicates().shape[0]}")
    return lines


@app.command("inspect")
def inspect_cmd(
    text: Annotated[str, Opt(help="The prompt.")],
    out_path: Annotated[Path, Opt("--out", help="HTML page to write.")],
    model: Annotated[
        str | None, Opt(help="builtin:<name>, hub id, local dir or .gguf file (default: the run's).")
    ] = None,
    run_dir: Annotated[str | None, Opt("--run", help="Run directory: its explained neurons, and its model.")] = None,
    target: Annotated[str | None, Opt(help="Output token saliency explains (one token; default: the top one).")] = None,
    watch: Annotated[str | None, Opt(help="Tokens to rank, comma-separated (default: the target).")] = None,
    layers: Annotated[str | None, Opt(help="Layers for the lens, attention and NMF, e.g. 0-5 (default: all).")] = None,
    head: Annotated[str | None, Opt(help="LAYER:HEAD of the query/key view (default: middle layer, head 0).")] = None,
    method: Annotated[str, Opt(help="Saliency: integrated_gradients or grad_x_input.")] = "integrated_gradients",
    steps: Annotated[int, Opt(help="Integrated gradients steps.")] = 50,
    factors: Annotated[int, Opt(help="NMF factors.")] = 5,
    top_k: Annotated[int, Opt(help="Tokens per logit-lens cell tooltip.")] = 5,
    device: Annotated[str, Opt(help="cpu, cuda, cuda:1, ...")] = "cpu",
    dtype: Annotated[str | None, Opt(help="float32, bfloat16 or float16 (default: the run's, else float32).")] = None,
    verbose: common.VerboseOpt = False,
) -> None:
    """Views of one prompt on one offline page: saliency, logit lens, rankings, attention, NMF, explained neurons."""
    from neuron_explainer.view.inspect_page import inspect_page

    common.setup_logging(verbose)
    with common.user_errors():
        if model is None and run_dir is None:
            raise ConfigError("give --model, or --run to use the run's model")
        page = inspect_page(
            model, text, run=run_dir, layers=common.parse_layers(layers), target=target, watch=parse_tokens(watch),
            head=parse_head(head), method=method, n_steps=steps, top_k=top_k, n_factors=factors, dtype=dtype,
            device=device, out=out_path,
        )  # fmt: skip
        for line in summary_lines(page):
            out.print(line, highlight=False, markup=False)
        size = out_path.stat().st_size
        say(f"wrote {out_path} ({size / 1024:.0f} KB): {', '.join(v.heading.lower() for v in page.views.values())}")
