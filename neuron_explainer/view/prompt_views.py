"""Ecco- and BertViz-style views of one prompt: an `HtmlView` per inspect computation.

Each view wraps the result of one function of `neuron_explainer.inspect` (kept as `.data`, with `.to_frame()`),
turns it into page data with `prompt_data` and draws it with the one view.js, so it works from file:// and in a
notebook iframe alike. Build one from a result, or let it compute:

    LogitLensView(logit_lens(model, tokenizer, text, k=5, watch=[" Paris"]))
    LogitLensView.compute(model, tokenizer, text, k=5, watch=[" Paris"])

Every view renders the template `prompt.html.j2` with one panel; `InspectPage` puts all panels on one page.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from markupsafe import Markup, escape

from neuron_explainer.errors import ConfigError
from neuron_explainer.view import prompt_data
from neuron_explainer.view.notebook import HtmlView

if TYPE_CHECKING:  # the inspect package imports torch: only `compute` needs it, and imports it then
    from neuron_explainer import inspect as nxi

METHOD_NAMES = {"integrated_gradients": "Integrated gradients", "grad_x_input": "Gradient × input"}
"""How the page names each saliency method."""


@dataclass(frozen=True)
class Panel:
    """What a kind of panel is: its title, how it is drawn, what computes it and what turns that into page data."""

    heading: str
    """The panel's title."""
    renderers: tuple[str, ...]
    """view.js renderers that draw it, in order (each reads the page data under the panel's kind)."""
    function: str
    """Name of the `neuron_explainer.inspect` function whose result it shows."""
    build: Callable[..., dict[str, Any]]
    """prompt_data function: result (and view options) -> page data."""


PANELS = {
    "saliency": Panel("Input saliency", ("excerpts",), "input_saliency", prompt_data.saliency_data),
    "lens": Panel("Logit lens", ("lens",), "logit_lens", prompt_data.lens_data),
    "rankings": Panel("Rankings of watched tokens", ("rankings",), "rankings", prompt_data.rankings_data),
    "attention": Panel("Attention", ("attention", "attnmodel"), "attention_maps", prompt_data.attention_data),
    "qk": Panel("Queries and keys", ("qk",), "neuron_view", prompt_data.qk_data),
    "factors": Panel(
        "Activation factors (NMF)", ("excerpts", "loadings"), "activation_factors", prompt_data.factors_data
    ),
    "firing": Panel("Explained neurons that fire here", ("firing",), "firing_neurons", prompt_data.firing_data),
}
"""Every kind of prompt panel, in page order."""


class PromptView(HtmlView):
    """One panel over one prompt: subclasses name the panel, its renderers and its note."""

    template = "prompt.html.j2"
    kind: ClassVar[str] = ""
    """Panel kind (a key of PANELS), and the key of its data in the page data; a subclass passes it as
    `class LensView(PromptView, kind="lens")`."""
    spec: ClassVar[Panel]
    """PANELS[kind]."""

    data: Any
    """The computation's result (numpy / pandas); each subclass names its type."""

    def __init_subclass__(cls, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind, cls.spec = kind, PANELS[kind]

    def __init__(self, data: Any) -> None:
        self.data = data

    @classmethod
    def compute(cls, model: Any, tokenizer: Any, prompt: str | Sequence[int], **kwargs: Any) -> Any:
        """Run the view's computation on a prompt (keyword arguments go to it) and wrap the result."""
        function = getattr(importlib.import_module("neuron_explainer.inspect"), cls.spec.function)
        return cls(function(model, tokenizer, prompt, **kwargs))

    @property
    def heading(self) -> str:
        """The panel's title."""
        return self.spec.heading

    @property
    def renderers(self) -> tuple[str, ...]:
        """The view.js renderers that draw the panel."""
        return self.spec.renderers

    @property
    def tokens(self) -> list[str]:
        """The prompt's tokens."""
        return list(self.data.tokens)

    def to_frame(self) -> pd.DataFrame:
        """The computation's long-form frame."""
        return self.data.to_frame()

    def panel_data(self) -> dict[str, Any]:
        """The JSON the panel's renderers draw."""
        return self.spec.build(self.data)

    def note(self) -> str:
        """What the panel shows, in a sentence or two (plain text, escaped by the template)."""
        raise NotImplementedError

    def panel(self) -> dict[str, Any]:
        """The panel's template entry: kind, heading, note, renderers."""
        note = page_text(self.note())
        return {"kind": self.kind, "heading": self.heading, "note": note, "renderers": list(self.renderers)}

    def context(self) -> dict[str, Any]:
        """A page with this panel alone."""
        return prompt_context(self.heading, "".join(self.tokens), [self])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.tokens)} tokens)"


def shown_layers(layers: Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """The layers a view shows: `layers` (all of `available` when None), each one of `available`.

    Raises:
        ConfigError: an empty list, or a layer the result does not have.
    """
    chosen = [int(x) for x in available] if layers is None else [int(x) for x in layers]
    bad = [x for x in chosen if x not in set(available)]
    if bad or not chosen:
        raise ConfigError(f"cannot show layer(s) {bad or '[]'}: the result has layers {list(available)}")
    return chosen


def page_text(text: str) -> Any:
    """Text for the page's markup, escaped, `/` and `:` included.

    A prompt naming a URL shows it as text, and the page's source names no URL (the tests look for `http:` and
    `//` anywhere).
    """
    return Markup(str(escape(text)).replace("/", "&#47;").replace(":", "&#58;"))


def prompt_context(heading: str, subtitle: str, views: Sequence[PromptView]) -> dict[str, Any]:
    """The template context of a page of prompt panels (they share the first view's tokens)."""
    data: dict[str, Any] = {"ex": {prompt_data.PROMPT_KEY: views[0].tokens if views else []}}
    for view in views:
        data[view.kind] = view.panel_data()
    return {
        "title": page_text(f"{heading} · {subtitle[:60]}"),
        "heading": page_text(heading),
        "subtitle": page_text(subtitle),
        "panels": [view.panel() for view in views],
        "data": data,
    }


class SaliencyView(PromptView, kind="saliency"):
    """Input saliency: each prompt token's attribution to one output token (signed, and L2 share)."""

    data: nxi.Saliency

    def note(self) -> str:
        """Method, target, position and value attributed."""
        s = self.data
        text = (
            f"{METHOD_NAMES.get(s.method, s.method)} of the {s.output} of {s.target_token!r} predicted at position "
            f"{s.position} (after {s.tokens[s.position]!r}), {s.target_value:.4g} here. Signed: attribution summed "
            "over the embedding dimensions (orange raises the target, blue lowers it); L2 share: each token's "
            "attribution norm over their total."
        )
        if s.method == "integrated_gradients":
            base = "zero embeddings" if s.baseline_token_id is None else f"token {s.baseline_token_id} everywhere"
            text += f" {s.n_steps} steps from {base}; convergence delta {s.convergence_delta:.2g}."
        return text


class LogitLensView(PromptView, kind="lens"):
    """Logit lens: the top next token after every block at every position, and the ranks of watched tokens."""

    data: nxi.LogitLens

    def __init__(self, data: nxi.LogitLens, layers: Sequence[int] | None = None) -> None:
        super().__init__(data)
        self.layers = shown_layers(layers, data.layers.tolist())
        """The block indices shown."""

    def panel_data(self) -> dict[str, Any]:
        """Top-k grid, watched ranks and next-token ranks of the shown layers."""
        return prompt_data.lens_data(self.data, self.layers)

    def note(self) -> str:
        """How to read the grid."""
        k = self.data.top_ids.shape[-1]
        return (
            "The residual stream after each block read through the final norm and the unembedding: each cell is "
            f"the most likely next token, coloured by its probability; hover a cell for its top {k}. "
            "The last row is the prompt's actual next token. 'Colour by' switches to the rank of a watched token "
            "or of the next token (1 = top prediction, log scale)."
        )


class RankingsView(PromptView, kind="rankings"):
    """Ranks of watched tokens after every block at one position, as a line chart (log rank)."""

    data: nxi.Rankings

    def note(self) -> str:
        """Which position the ranks are read at."""
        r = self.data
        return (
            f"Rank of each watched token in the prediction at position {r.position} (after "
            f"{r.tokens[r.position]!r}) after every block; 1 = the top prediction. Log scale."
        )


class FactorsView(PromptView, kind="factors"):
    """NMF factors of the prompt's MLP activations: a heatmap row per factor and its top (layer, neuron) loadings."""

    data: nxi.ActivationFactors

    def note(self) -> str:
        """Layers, reconstruction error and how negative activations were treated."""
        layers = ", ".join(str(x) for x in self.data.layers.tolist())
        f = self.data
        negative = (
            f"negative activations dropped ({f.discarded_fraction:.1%} of the norm)"
            if f.negative == "clamp"
            else "negative parts factorised as columns of their own (loadings marked −)"
        )
        return (
            f"Non-negative matrix factorisation of the MLP activations of layer(s) "
            f"{layers} into {len(f.factors)} factors; relative reconstruction "
            f"error {f.reconstruction_error:.3f}; {negative}. Each row is one factor's strength over the prompt "
            f"(its own colour scale); its {prompt_data.TOP_LOADINGS} largest loadings are listed below."
        )


class FiringView(PromptView, kind="firing"):
    """Which explained neurons fire at each token, with their explanations and scores."""

    data: nxi.NeuronsHere

    def note(self) -> str:
        """How neurons are ranked."""
        how = "activation"
        if self.data.normalized:
            how = "activation divided by the neuron's largest harvested activation"
        return (
            f"For each token, the {self.data.top_n} explained neurons with the highest {how}, with their best "
            "explanation and its score. Hover or click a token to list them; the colour is the top neuron's value."
        )


class AttentionView(PromptView, kind="attention"):
    """BertViz-style head view (lines from each token to the tokens it attends) and model view (layers × heads)."""

    data: nxi.AttentionMaps

    def __init__(
        self, data: nxi.AttentionMaps, layers: Sequence[int] | None = None, head: tuple[int, int] | None = None
    ) -> None:
        super().__init__(data)
        self.layers = shown_layers(layers, range(data.probs.shape[0]))
        """The layers shown."""
        self.head = head if head is not None else (self.layers[0], 0)
        """The (layer, head) the head view opens on."""

    def panel_data(self) -> dict[str, Any]:
        """Every head's pattern of the shown layers, and the head selected first."""
        return {**prompt_data.attention_data(self.data, self.layers), "sel": list(self.head)}

    def note(self) -> str:
        """How to read the lines."""
        return (
            "Head view: a line from each token (left) to each token it attends (right), opacity = attention "
            f"probability (below {prompt_data.ATTENTION_MIN} not drawn). Pick a layer and a head; hover a token to "
            "see its lines alone. Model view: every layer × head; click one to open it in the head view."
        )


class QueryKeyView(PromptView, kind="qk"):
    """BertViz's neuron view: query and key vectors of one head, their product, scores and probabilities."""

    data: nxi.NeuronView

    def note(self) -> str:
        """The head, and how scores are made."""
        n = self.data
        cap = f", softcapped at {n.softcap:g}" if n.softcap is not None else ""
        window = f"; sliding window of {n.sliding_window}" if n.sliding_window is not None else ""
        return (
            f"Layer {n.layer}, head {n.head} (key/value head {n.kv_head}), as the attention kernel receives them "
            "(after any q/k norm and rotary embedding). For the chosen query position: the query vector, each key "
            "vector and their element-wise product as colour strips (colour ∝ √|value|); "
            f"score = {n.scaling:.4g} × q·k{cap}; probability = softmax over the visible keys{window}."
        )
