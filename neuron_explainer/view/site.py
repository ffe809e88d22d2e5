"""build_site: a static, offline HTML viewer of a run (or exported dataset) that opens from file://.

    site/
      index.html                 sortable, searchable table of every neuron + score histograms per layer
      index/layer-LLL.js         the index rows of one layer (loaded with <script>, not fetch())
      neurons/<layer>/<n>.html   one page per neuron; its data is JSON inside the page
      assets/view.css, view.js   the one stylesheet and the one script, referenced relatively
      nx-site.json               what was built (marks the folder as a site that may be rebuilt)

Nothing in the site names a URL outside it: no CDN, no web font, no fetch.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from neuron_explainer.errors import ConfigError
from neuron_explainer.view.collect import Key, StageTables, check_neurons, read_explanation_table
from neuron_explainer.view.data import ViewSource, open_source
from neuron_explainer.view.neuron_data import neuron_page
from neuron_explainer.view.render import ASSET_NAMES, asset_text, embed_json, render_page
from neuron_explainer.view.summary import (
    SCORE_BINS,
    best_explanations,
    density_from_records,
    index_chunk,
    score_histogram,
)

MARKER = "nx-site.json"
ProgressFn = Callable[[str, int, int], None]


@dataclass
class SiteReport:
    """What build_site wrote."""

    out_dir: Path
    """The site folder."""
    index: Path
    """Its index.html (open this)."""
    layers: list[int]
    """Layers in the index."""
    n_neurons: int = 0
    """Rows in the index."""
    n_pages: int = 0
    """Neuron pages written."""
    n_files: int = 0
    """Files written in all."""
    total_bytes: int = 0
    """Bytes written in all."""
    seconds: float = 0.0
    """Wall time of the build."""
    density_estimated: bool = False
    """True when density came from the random records (neuron_stats has no `density` column)."""
    output_tokens: bool = False
    """True when the source has an `output_tokens` table (rendered on the neuron pages)."""
    page_bytes: list[int] = field(default_factory=list)
    """Size of each neuron page, in build order."""
    pages_seconds: float = 0.0
    """Wall time spent on neuron pages (reading their excerpts, shaping, rendering, writing)."""


def page_path(key: Key) -> str:
    """A neuron page's path relative to the site root."""
    return f"neurons/{key[0]}/{key[1]}.html"


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"{out} exists, is not empty and is not a neuron-explainer site: choose a new folder")
        for name in ("neurons", "index", "assets"):
            shutil.rmtree(out / name, ignore_errors=True)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    (out / "index").mkdir(exist_ok=True)


def _write(path: Path, text: str, report: SiteReport) -> int:
    data = text.encode("utf-8")
    path.write_bytes(data)
    report.n_files += 1
    report.total_bytes += len(data)
    return len(data)


def _nav(key: Key, order: list[Key], position: dict[Key, int]) -> dict[str, str | None]:
    i = position[key]
    prev_key = order[i - 1] if i > 0 else None
    next_key = order[i + 1] if i + 1 < len(order) else None
    return {
        "index": "../../index.html",
        "prev": "../../" + page_path(prev_key) if prev_key else None,
        "next": "../../" + page_path(next_key) if next_key else None,
    }


class _Builder:
    """One build: the source, the output folder, the plan (which neurons, which pages) and the report."""

    def __init__(self, src: ViewSource, out: Path, chosen: list[Key] | None, pages: list[Key] | None) -> None:
        self.src, self.out = src, out
        self.report = SiteReport(out_dir=out, index=out / "index.html", layers=[])
        self.wanted = set(chosen) if chosen is not None else None
        self.page_set = set(pages) if pages is not None else None
        self.plan: list[tuple[int, pd.DataFrame, list[Key]]] = []
        layers = sorted({k[0] for k in chosen}) if chosen is not None else list(src.layers)
        for layer in layers:
            stats = src.neuron_stats(layer)
            if self.wanted is not None:
                stats = stats[[(layer, int(n)) in self.wanted for n in stats.neuron]]
            keys = [(layer, int(n)) for n in stats.neuron]
            self.plan.append((layer, stats, [k for k in keys if self.page_set is None or k in self.page_set]))
        self.order = [k for _, _, keys in self.plan for k in keys]
        """Every page in site order, for prev/next links."""
        self.position = {k: i for i, k in enumerate(self.order)}
        self.table = read_explanation_table(src, layers)
        """Every explanation of these layers with its scores (only the columns the index needs)."""
        self.best = best_explanations(self.table)
        self.files: list[str] = []
        self.hist: list[dict] = []
        self.explained = 0

    def layer(self, layer: int, stats: pd.DataFrame, keys: list[Key], progress: ProgressFn | None) -> None:
        """Write one layer's index file and its neuron pages."""
        src, report = self.src, self.report
        has_density = "density" in stats.columns and bool(stats["density"].notna().all())
        # the records are needed for pages, and for the index only to estimate a missing density
        every = self.wanted is None and self.page_set is None
        selected = None if self.wanted is None else stats.neuron.astype(int).tolist()
        records = src.layer_records(layer, (None if every else [k[1] for k in keys]) if has_density else selected)
        if has_density:
            density = stats.set_index("neuron")["density"]
        else:
            density = density_from_records(records)
            report.density_estimated = True
        pages = None if self.page_set is None else {k[1] for k in keys}
        chunk = index_chunk(layer, stats, self.best, density, pages)
        name = f"index/layer-{layer:03d}.js"
        _write(self.out / name, f"NX.indexChunk({embed_json(chunk)});\n", report)
        self.files.append(name)
        self.hist.append({"layer": layer, **score_histogram(pd.Series(chunk["tr"], dtype=float))})
        self.explained += sum(1 for e in chunk["expl"] if e)
        report.n_neurons += len(chunk["neuron"])
        report.layers.append(layer)
        if keys:
            started = time.perf_counter()
            stage = StageTables(src, [layer], self.table, None if len(keys) == len(stats) else keys)
            self.pages(stage, layer, stats, records, keys, progress)
            report.pages_seconds += time.perf_counter() - started

    def pages(
        self,
        stage: StageTables,
        layer: int,
        stats: pd.DataFrame,
        records: pd.DataFrame,
        keys: list[Key],
        progress: ProgressFn | None,
    ) -> None:
        """Write the pages of one layer's neurons (the tokens of the whole layer read at once)."""
        by_neuron: dict[int, list[dict]] = {}
        for row in records.to_dict("records"):
            by_neuron.setdefault(int(row["neuron"]), []).append(row)
        ids = set(records["excerpt_id"].astype(int))
        for key in keys:
            ids.update(stage.simulated_excerpts(key))
        tokens = self.src.excerpt_tokens(sorted(ids))
        page_stats = stats if len(keys) == len(stats) else stats[stats.neuron.isin([k[1] for k in keys])]
        stats_rows = {int(r["neuron"]): r for r in page_stats.to_dict("records")}
        (self.out / "neurons" / str(layer)).mkdir(parents=True, exist_ok=True)
        for key in keys:
            context = neuron_page(stage.neuron(key, stats_rows[key[1]], by_neuron.get(key[1], []), tokens))
            nav = _nav(key, self.order, self.position)
            html = render_page("neuron.html.j2", {**context, "nav": nav}, asset_prefix="../../assets/")
            self.report.page_bytes.append(_write(self.out / page_path(key), html, self.report))
            self.report.n_pages += 1
            if progress:
                progress("view", self.report.n_pages, len(self.order))


def build_site(
    source_dir: str | Path,
    out_dir: str | Path,
    *,
    neurons: Iterable[tuple[int, int]] | None = None,
    progress: ProgressFn | None = None,
    pages: Iterable[tuple[int, int]] | None = None,
) -> SiteReport:
    """Build the static viewer of a run directory or exported dataset.

    Args:
        source_dir: a run directory or a dataset written by `export_dataset`.
        out_dir: the site folder: new, empty, or a site built before (rebuilt in place).
        neurons: (layer, neuron) pairs to include (None: every harvested neuron).
        progress: called as progress("view", pages_done, pages_total) after each neuron page.
        pages: the neurons that get a page (None: every included neuron; empty: none); the others are
            index rows only.

    Raises:
        RunDirError: the source is not a complete run or dataset, or a file is unreadable.
        ConfigError: a bad neuron, or out_dir holds something other than a site.
    """
    started = time.perf_counter()
    src = open_source(source_dir)
    chosen = check_neurons(src, neurons)
    page_keys = check_neurons(src, pages, allow_empty=True)
    out = Path(out_dir)
    _prepare(out)
    build = _Builder(src, out, chosen, page_keys)
    report = build.report
    for name in ASSET_NAMES:
        _write(out / "assets" / name, asset_text(name), report)
    report.output_tokens = src.output_tokens() is not None
    for layer, stats, keys in build.plan:
        build.layer(layer, stats, keys, progress)
    _write_index(src, build.explained, report, build.files, build.hist)
    report.seconds = time.perf_counter() - started
    summary = {k: v for k, v in report.__dict__.items() if k not in ("out_dir", "index", "page_bytes")}
    summary["page_bytes_max"] = max(report.page_bytes, default=0)
    (out / MARKER).write_text(json.dumps({"source": str(Path(source_dir).resolve()), **summary}, indent=1) + "\n")
    return report


def _write_index(src: ViewSource, explained: int, report: SiteReport, files: list[str], hist: list[dict]) -> None:
    estimated = report.density_estimated
    context = {
        "model": src.model_name(),
        "layers": report.layers,
        "n_neurons": report.n_neurons,
        "n_explained": explained,
        "n_pages": report.n_pages,
        "source_name": src.root.name,
        "density_label": "Density (est.)" if estimated else "Density",
        "density_title": (
            "Density: fraction of tokens > 0, "
            + ("estimated from each neuron's random excerpts" if estimated else "over every harvested token")
        ),
        "data": {
            "index": {"files": files, "sort": "tr" if explained else "max"},
            "hist": {"edges": SCORE_BINS.tolist(), "layers": hist},
        },
    }
    _write(report.index, render_page("index.html.j2", context, asset_prefix="assets/"), report)
