"""The viewer in a real browser: Debian's Chromium driven by Playwright, pages opened from file:// with
every non-file request aborted. Skipped (with the reason) when /usr/bin/chromium or playwright is missing.

Install: `apt-get install -y chromium` and `pip install playwright` (never `playwright install`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.view import build_site, neuron
from tests.integration.view_run import EXPLAINED, build_view_run

CHROMIUM = os.environ.get("NX_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    ),
]


@pytest.fixture(scope="module")
def view_run(tiny_model_dirs, corpus_file, tmp_path_factory) -> Path:
    return build_view_run(tiny_model_dirs, corpus_file, tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watched:
    """A page whose console errors, page errors and attempted non-file requests are recorded."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)

    def _route(self, route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def open(self, path: Path):
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")
        return self.page

    def assert_clean(self) -> None:
        assert self.errors == [] and self.blocked == [], (self.errors, self.blocked)


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    yield w
    w.page.close()


@pytest.fixture(scope="module")
def site(view_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser-site") / "site"
    build_site(view_run, out)
    return out


def expected_spans(run: Path, layer: int, n: int) -> int:
    """Token spans a neuron page must draw, counted from the run with the pipeline's own readers."""
    record = load_neuron_record(run, layer, n)
    recs = record.most_positive_activation_records + record.random_sample
    recs += [r for bucket in record.random_sample_by_quantile for r in bucket]
    count = sum(len(r.tokens) for r in recs)
    sims = read_table(RunStore(run), "simulations")
    valid = sims[(sims.layer == layer) & (sims.neuron == n) & (sims.split == "valid")]
    count += 2 * sum(len(v) for v in valid.expected_values)  # a true and a simulated row per excerpt
    sentences = read_table(RunStore(run), "revision_sentences")
    return count + sum(len(t) for t in sentences[(sentences.layer == layer) & (sentences.neuron == n)].tokens)


def test_neuron_page_draws_every_token_and_chart(site: Path, view_run: Path, watched: Watched) -> None:
    layer, n = EXPLAINED[0]
    page = watched.open(site / "neurons" / str(layer) / f"{n}.html")
    assert page.locator(".nx-tok").count() == expected_spans(view_run, layer, n)
    record = load_neuron_record(view_run, layer, n)
    tops = page.locator('[data-key="groups.top"] .nx-ex')
    assert tops.count() == len(record.most_positive_activation_records)
    # GPT-2's GELU dips below zero: both hues are used, with the colours the legend promises
    assert page.locator(".nx-neg").count() > 0 and page.locator(".nx-pos").count() > 0
    neg = page.locator(".nx-neg").first.evaluate("e => getComputedStyle(e).backgroundColor")
    pos = page.locator(".nx-pos").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert neg.startswith("rgba(33, 102, 172") and pos.startswith("rgba(230, 97, 1"), (neg, pos)
    assert page.locator('[data-nx="histogram"] rect.nx-bar').count() > 0
    assert page.locator('[data-nx="histogram"] line.nx-mark').count() == 4
    first_sim = page.locator('[data-nx="scatter"]').first
    key = first_sim.get_attribute("data-key")
    tokens_in_panel = page.locator(f'[data-nx="excerpts"][data-key="{key}"] .nx-row:nth-child(2) .nx-tok').count()
    assert first_sim.locator("circle.nx-pt").count() == tokens_in_panel > 0
    watched.assert_clean()


def test_hover_tooltip_shows_the_token_and_its_value(site: Path, view_run: Path, watched: Watched) -> None:
    layer, n = EXPLAINED[0]
    page = watched.open(site / "neurons" / str(layer) / f"{n}.html")
    record = load_neuron_record(view_run, layer, n).most_positive_activation_records[0]
    i = int(np.argmax(record.activations))
    span = page.locator('[data-key="groups.top"] .nx-ex').first.locator(".nx-tok").nth(i)
    assert not page.locator("#nx-tip").is_visible()
    span.hover()
    tip = page.locator("#nx-tip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert record.tokens[i].strip() in text
    shown = float(re.search(r"activation: (-?[\d.e+-]+)", text).group(1))
    assert shown == pytest.approx(record.activations[i], rel=2e-3)
    page.locator("h1").hover()
    assert not tip.is_visible()
    watched.assert_clean()


def rows(page) -> list[list[str]]:
    return page.locator("#nx-index tbody tr").evaluate_all(
        "trs => trs.map(tr => Array.from(tr.cells).map(td => td.textContent))"
    )


def test_index_search_filters_and_sorting(site: Path, view_run: Path, watched: Watched) -> None:
    manifest_layers, total = [0, 1], 256
    page = watched.open(site / "index.html")
    page.wait_for_function(f"() => document.getElementById('nx-status').textContent.startsWith('{total} of {total}')")
    assert len(rows(page)) == 100  # one page of rows in the DOM
    assert page.locator(".nx-mini").count() == len(manifest_layers)
    # search: the rows shown are exactly the neurons whose best explanation holds the words
    first_expl = rows(page)[0][2]
    word = first_expl.split()[3]  # "tokens of kind <k> ..." -> "<k>"
    page.fill("#nx-search", f"kind {word} ")
    page.wait_for_function("() => document.querySelectorAll('#nx-index tbody tr').length < 100")
    shown = rows(page)
    assert shown and all(f"kind {word} " in r[2] for r in shown)
    page.fill("#nx-search", "no explanation says this")
    page.wait_for_function("() => document.querySelectorAll('#nx-index tbody tr').length === 0")
    page.fill("#nx-search", "")
    page.wait_for_function("() => document.querySelectorAll('#nx-index tbody tr').length === 100")
    # sorting by max activation, both directions, against the neuron_stats table read directly
    import pandas as pd

    stats = pd.concat(pd.read_parquet(p) for p in sorted((view_run / "neuron_stats").glob("*.parquet")))
    page.click('th[data-col="max"]')
    top = [float(r[6]) for r in rows(page)[:5]]
    assert top == pytest.approx(sorted(stats.max_activation, reverse=True)[:5], rel=1e-3)
    assert page.get_attribute('th[data-col="max"]', "aria-sort") == "descending"
    page.click('th[data-col="max"]')
    assert float(rows(page)[0][6]) == pytest.approx(stats.max_activation.min(), rel=1e-3)
    # layer filter and score range
    page.select_option("#nx-layer", "1")
    page.wait_for_function("() => document.getElementById('nx-status').textContent.startsWith('128 of')")
    assert {r[0] for r in rows(page)} == {"1"}
    page.select_option("#nx-layer", "")
    page.fill("#nx-min", "0.1")
    page.wait_for_function("() => document.getElementById('nx-status').textContent.startsWith('256 of') === false")
    assert all(float(r[3]) >= 0.1 for r in rows(page))
    watched.assert_clean()


def test_index_links_open_neuron_pages(site: Path, watched: Watched) -> None:
    page = watched.open(site / "index.html")
    page.wait_for_function("() => document.querySelectorAll('#nx-index tbody tr').length === 100")
    link = page.locator("#nx-index tbody a").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_load_state("load")
    assert page.url.endswith(href) and page.locator(".nx-tok").count() > 0
    page.click("a[rel=next]")
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().startswith("Layer")
    watched.assert_clean()


def test_notebook_iframes_render_offline(view_run: Path, tmp_path: Path, watched: Watched) -> None:
    views = [neuron(view_run, *EXPLAINED[0]), neuron(view_run, *EXPLAINED[2])]
    notebook = tmp_path / "notebook.html"
    notebook.write_text("<!DOCTYPE html><html><body>" + "".join(v._repr_html_() for v in views) + "</body></html>")
    page = watched.open(notebook)
    for k, view in enumerate(views):
        frame = page.frame_locator("iframe").nth(k)
        frame.locator(".nx-tok").first.wait_for()
        want = expected_spans(view_run, view.layer, view.neuron)
        assert frame.locator(".nx-tok").count() == want
        assert frame.locator("h1").inner_text() == f"Layer {view.layer} · neuron {view.neuron}"
    watched.assert_clean()


def test_the_page_policy_refuses_outside_resources(site: Path, watched: Watched) -> None:
    """Even if a page held an outside URL (here injected on purpose), the browser would not load it."""
    layer, n = EXPLAINED[0]
    original = site / "neurons" / str(layer) / f"{n}.html"
    injected = original.with_name("injected.html")
    injected.write_text(original.read_text().replace("</main>", '</main><img src="https://example.invalid/p.png">'))
    try:
        page = watched.open(injected)
        page.wait_for_timeout(300)
        assert page.locator(".nx-tok").count() > 0
        assert any("Content Security Policy" in e for e in watched.errors), watched.errors
    finally:
        injected.unlink()
