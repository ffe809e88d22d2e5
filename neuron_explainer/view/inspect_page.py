"""One page of every prompt view for one prompt (`inspect_page`), optionally with a run's explained neurons.

The page computes, on the loaded model: input saliency of the target token at the last position, the logit lens
and the rankings of watched tokens, the attention of every head and the query/key view of one head, NMF factors
of the MLP activations and, given a run (or a frame of explained neurons), which explained neurons fire at each
token. Each panel is a `prompt_views` view; `InspectPage` holds them (`page["lens"].data`, `.to_frame()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neuron_explainer.errors import ConfigError
from neuron_explainer.view import prompt_views as pv
from neuron_explainer.view.notebook import HtmlView

ModelArg = str | tuple[Any, Any]
"""A model spec (`builtin:gemma3-270m`, a directory, a hub id, a .gguf file) or a loaded (model, tokenizer)."""


@dataclass(frozen=True)
class RunNeurons:
    """What a run contributes to a prompt page: its model and its explained neurons."""

    model: str
    """The model spec the run was harvested with."""
    dtype: str
    """The harvest's dtype."""
    explained: pd.DataFrame
    """One row per explanation by an explainer model: layer, neuron, explanation, score (its best
    top-and-random score over the simulators; NaN when not scored)."""
    stats: pd.DataFrame
    """layer, neuron, max_activation of every neuron of the explained layers."""


def run_neurons(run: str | Path) -> RunNeurons:
    """Read a run's model, explanations with their best scores, and the max activations of their layers.

    Raises:
        RunDirError: not a run directory, incomplete harvest, or an unreadable table.
    """
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.records.tables import read_table, without_baselines
    from neuron_explainer.stages.score import summary
    from neuron_explainer.view.data import open_source

    store = RunStore(run)
    config = store.require_harvest()["harvest"]["config"]
    explanations = without_baselines(read_table(store, "explanations"))
    best = summary(store).groupby("explanation_id")["top_and_random"].max()
    explained = explanations.assign(score=explanations["explanation_id"].map(best).astype(float))
    explained = explained[["layer", "neuron", "explanation", "score"]].reset_index(drop=True)
    source = open_source(run)
    layers = sorted(int(x) for x in explained["layer"].unique())
    frames = [source.neuron_stats(layer)[["layer", "neuron", "max_activation"]] for layer in layers]
    empty = pd.DataFrame(columns=["layer", "neuron", "max_activation"])
    stats = pd.concat(frames, ignore_index=True) if frames else empty
    return RunNeurons(str(config["model"]), str(config.get("dtype", "float32")), explained, stats)


class InspectPage(HtmlView):
    """Every prompt view of one prompt on one page; `page[kind]` is one view (`page["lens"].to_frame()`)."""

    template = "prompt.html.j2"
    height = 1400

    def __init__(self, views: Sequence[pv.PromptView], model_name: str, text: str) -> None:
        self.views = {view.kind: view for view in views}
        """kind -> view, in page order: saliency, lens, rankings, attention, qk, factors, firing."""
        self.model_name = model_name
        """The model, as named on the page."""
        self.text = text
        """The prompt."""

    def __getitem__(self, kind: str) -> pv.PromptView:
        try:
            return self.views[kind]
        except KeyError:
            raise ConfigError(f"this page has no {kind!r} view; it has {', '.join(self.views)}") from None

    @property
    def data(self) -> dict[str, Any]:
        """Each view's computation result, by kind."""
        return {kind: view.data for kind, view in self.views.items()}

    def context(self) -> dict[str, Any]:
        """All panels, sharing the prompt's tokens."""
        return pv.prompt_context(self.model_name, self.text, list(self.views.values()))

    def __repr__(self) -> str:
        return f"InspectPage({self.model_name!r}, {len(self.text)} chars, views: {', '.join(self.views)})"


def load(model: ModelArg | None, run: RunNeurons | None, dtype: str | None, device: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, name): the given pair, or the spec (default: the run's model) loaded.

    Raises:
        ConfigError: neither a model nor a run.
        ModelError: the model cannot be loaded or its family is not supported.
    """
    from neuron_explainer.inspect.family import check_model, load_model

    if model is None:
        if run is None:
            raise ConfigError("give a model (spec or (model, tokenizer)) or a run whose model to use")
        model, dtype = run.model, dtype or run.dtype
    if isinstance(model, str):
        lm, tokenizer = load_model(model, dtype=dtype or "float32", device=device)
        return lm, tokenizer, model
    lm, tokenizer = model
    check_model(lm)
    return lm, tokenizer, str(getattr(lm.config, "_name_or_path", "") or lm.config.model_type)


def chosen_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """The layers to show: all by default; each checked, negative ones counted from the end.

    Raises:
        ConfigError: a layer out of range, a repeat, or an empty list.
    """
    from neuron_explainer.inspect.family import check_layer, n_layers

    chosen = [check_layer(model, layer) for layer in (range(n_layers(model)) if layers is None else layers)]
    if not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"layers must be a non-empty list without repeats, got {list(layers or [])}")
    return chosen


def inspect_page(
    model: ModelArg | None,
    text: str,
    *,
    run: str | Path | None = None,
    explained: pd.DataFrame | None = None,
    stats: pd.DataFrame | None = None,
    layers: Sequence[int] | None = None,
    target: int | str | None = None,
    watch: Sequence[int | str] = (),
    head: tuple[int, int] | None = None,
    method: str = "integrated_gradients",
    n_steps: int = 50,
    top_k: int = 5,
    n_factors: int = 5,
    top_n: int = 5,
    dtype: str | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
) -> InspectPage:
    """Compute every prompt view of `text` and put them on one page (saved to `out` when given).

    Args:
        model: A model spec or a loaded (model, tokenizer); None with `run` uses the run's model.
        text: The prompt.
        run: A run directory: its explanations (best score each) and max activations feed the "fire here" panel.
        explained: Instead of a run, a frame of explained neurons (layer, neuron, explanation, score).
        stats: With `explained`, optional max activations (layer, neuron, max_activation) to normalise by.
        layers: Layers shown in the logit lens and attention views and factorised by NMF (default: all).
        target: Output token (single-token text or id) whose prediction at the last position saliency explains;
            default: the model's most likely next token.
        watch: Tokens whose ranks the lens and rankings show; default: the target.
        head: (layer, head) of the query/key view, and the head the attention view opens on; default: head 0 of
            the middle shown layer.
        method: Saliency method, `integrated_gradients` or `grad_x_input`.
        n_steps: Integrated gradients steps.
        top_k: Tokens per logit-lens cell tooltip.
        n_factors: NMF factors (at most one per token).
        top_n: Explained neurons listed per token.
        dtype: Weights dtype when loading a model spec; default: the harvest's for the run's model, else float32.
        device: Device when loading a model spec.
        out: Write the standalone page here.

    Raises:
        ModelError: the model cannot be loaded or its family is not supported.
        ConfigError: bad text, layers, head, target, watched token or option.
        RunDirError: the run cannot be read.
    """
    from neuron_explainer import inspect as nx_inspect
    from neuron_explainer.inspect.family import check_layer, encode

    if run is not None and explained is not None:
        raise ConfigError("give a run or a frame of explained neurons, not both")
    from_run = run_neurons(run) if run is not None else None
    lm, tokenizer, name = load(model, from_run, dtype, device)
    prompt = encode(lm, tokenizer, text)
    shown = chosen_layers(lm, layers)
    qk_layer, qk_head = (shown[len(shown) // 2], 0) if head is None else (check_layer(lm, head[0]), head[1])
    views: list[pv.PromptView] = []
    saliency = nx_inspect.input_saliency(lm, tokenizer, text, target=target, method=method, n_steps=n_steps)  # type: ignore[arg-type]
    views.append(pv.SaliencyView(saliency))
    watched = list(watch) or [saliency.target_id]
    views.append(pv.LogitLensView(nx_inspect.logit_lens(lm, tokenizer, text, k=top_k, watch=watched), shown))
    views.append(pv.RankingsView(nx_inspect.rankings(lm, tokenizer, text, watched)))
    qk = nx_inspect.neuron_view(lm, tokenizer, text, qk_layer, qk_head)
    views.append(pv.AttentionView(nx_inspect.attention_maps(lm, tokenizer, text), shown, (qk_layer, qk_head)))
    views.append(pv.QueryKeyView(qk))
    factors = nx_inspect.activation_factors(
        lm, tokenizer, text, layers=shown, n_components=min(n_factors, prompt.n_tokens)
    )
    views.append(pv.FactorsView(factors))
    if from_run is not None:
        explained, stats = from_run.explained, from_run.stats
    if explained is not None and len(explained):
        views.append(pv.FiringView(nx_inspect.firing_neurons(lm, tokenizer, text, explained, top_n=top_n, stats=stats)))
    page = InspectPage(views, name, text)
    if out is not None:
        page.save(out)
    return page
