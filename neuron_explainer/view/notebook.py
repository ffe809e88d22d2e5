"""Notebook views: a data object, rendered through a template, shown in an <iframe srcdoc>.

`HtmlView` is the base every view shares (the neuron view here; prompt-level views such as logit lens,
saliency or attention reuse it). A subclass names its template and returns the template context
(including `data`, the JSON its page script draws); the base class renders a self-contained page
(CSS and JS inlined, no URL outside it) and wraps it in an iframe, so several views can share a
notebook without their scripts or styles meeting, and the output survives nbconvert to HTML.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from neuron_explainer.view.collect import single_neuron
from neuron_explainer.view.data import open_source
from neuron_explainer.view.neuron_data import NeuronTables, neuron_page
from neuron_explainer.view.render import render_page
from neuron_explainer.view.summary import TABLE_COLUMNS, rank_explanations


class HtmlView:
    """Base of every notebook view: subclasses set `template` and implement `context()`."""

    template: ClassVar[str] = ""
    """Template file under neuron_explainer/view/templates/ (it extends base.html.j2)."""
    height: ClassVar[int] = 720
    """Height of the notebook iframe in pixels (the user can resize it)."""

    def context(self) -> dict[str, Any]:
        """The template's variables; `data` is embedded as JSON for view.js."""
        raise NotImplementedError

    def to_html(self) -> str:
        """The view as one standalone HTML document (CSS and JS inlined)."""
        return render_page(self.template, self.context())

    def save(self, path: str | Path) -> Path:
        """Write the standalone page to `path` (opens from file:// without network)."""
        out = Path(path)
        out.write_text(self.to_html(), encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        # srcdoc keeps the page's script and style inside the iframe; sandbox lets the script run but
        # gives it no access to the notebook.
        doc = html.escape(self.to_html(), quote=True)
        return (
            f'<iframe srcdoc="{doc}" sandbox="allow-scripts" '
            f'style="width:100%;height:{self.height}px;border:1px solid #d9dee4;resize:vertical" '
            f'title="{html.escape(type(self).__name__)}"></iframe>'
        )


class NeuronView(HtmlView):
    """One neuron of a run: its page in a notebook, and its data as pandas / numpy."""

    template = "neuron.html.j2"

    def __init__(self, tables: NeuronTables) -> None:
        self.tables = tables
        """Every table's rows for this neuron."""

    @property
    def layer(self) -> int:
        """Transformer block."""
        return self.tables.layer

    @property
    def neuron(self) -> int:
        """Neuron index."""
        return self.tables.neuron

    @property
    def records(self) -> pd.DataFrame:
        """Kept excerpts (kind, bucket, rank, excerpt_id, max_activation, activations) plus `tokens`."""
        recs = pd.DataFrame(self.tables.records)
        recs["tokens"] = [self.tables.tokens.get(int(e)) for e in recs["excerpt_id"]]
        return recs.sort_values(["kind", "bucket", "rank"], na_position="first").reset_index(drop=True)

    @property
    def explanations(self) -> pd.DataFrame:
        """One row per (explanation, simulator) with its scores, best first (baselines last)."""
        return rank_explanations(pd.DataFrame(self.tables.explanations, columns=TABLE_COLUMNS))

    @property
    def scores(self) -> pd.DataFrame:
        """Alias of `explanations`: the score columns are top_and_random, random_only, ablation."""
        return self.explanations

    @property
    def simulations(self) -> pd.DataFrame:
        """The neuron's simulation rows (every split and simulator)."""
        return pd.DataFrame(self.tables.simulations)

    @property
    def stats(self) -> dict[str, Any]:
        """The neuron_stats row as a dict."""
        return dict(self.tables.stats)

    def activations(self, kind: str = "top") -> np.ndarray:
        """Activations of the records of one kind (top, random, quantile) as a [records, tokens] array."""
        rows = sorted(
            (r for r in self.tables.records if r["kind"] == kind),
            key=lambda r: (-1 if pd.isna(r["bucket"]) else int(r["bucket"]), r["rank"]),
        )
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([np.asarray(r["activations"], dtype=np.float32) for r in rows])

    def context(self) -> dict[str, Any]:
        """The neuron page's context, without prev/next links (they lead nowhere in a notebook)."""
        return {**neuron_page(self.tables), "nav": None}

    def __repr__(self) -> str:
        return f"NeuronView(layer={self.layer}, neuron={self.neuron}, {len(self.tables.records)} records)"


def neuron(run: str | Path, layer: int, neuron: int) -> NeuronView:
    """The view of one neuron of a run directory or exported dataset (display it in a notebook cell).

    Raises:
        RunDirError: the run is missing, incomplete or unreadable.
        ConfigError: the neuron was not harvested.
    """
    return NeuronView(single_neuron(open_source(run), layer, neuron))
