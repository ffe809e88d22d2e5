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
import pandas as pd
import pytest

from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.view import InspectPage, build_site, inspect_page, neuron
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


INSPECT_TEXT = "the cat sat on the red house and the dog ran"


@pytest.fixture(scope="module")
def inspected(view_run: Path, tmp_path_factory) -> tuple[Path, InspectPage]:
    """An inspect page of the run's tiny GPT-2 (its model by default), with the run's explained neurons."""
    out = tmp_path_factory.mktemp("inspect") / "inspect.html"
    return out, inspect_page(None, INSPECT_TEXT, run=view_run, watch=["dog", "tree"], n_factors=3, out=out)


def drawn_lines(page) -> list[list[float]]:
    """(query, key, probability) of every line of the head view."""
    return page.locator('[data-nx="attention"] line.nx-att-line').evaluate_all(
        "ls => ls.map(l => [+l.dataset.q, +l.dataset.k, +l.dataset.p])"
    )


def expected_lines(built: InspectPage, layer_row: int, head: int) -> list[list[float]]:
    panel = built["attention"].panel_data()
    rows = panel["attn"][layer_row][head]
    return [[q, k, p] for q, row in enumerate(rows) for k, p in enumerate(row) if p >= panel["min"]]


def test_inspect_page_draws_every_panel(inspected, watched: Watched) -> None:
    path, built = inspected
    page = watched.open(path)
    n = len(built["saliency"].tokens)
    n_layers, n_heads = built["attention"].data.probs.shape[:2]
    # heatmap rows: saliency (signed, L2 share), one per NMF factor, and the firing panel's token strip
    assert page.locator(".nx-tok").count() == (2 + 3 + 1) * n
    assert page.locator(".nx-lens-cell").count() == n_layers * n
    lens = built["lens"].data
    page.locator('.nx-lens-cell[data-l="1"][data-t="3"]').hover()
    tip = page.locator("#nx-tip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "layer 1, position 3" in text and f'1. "{lens.top_tokens[1][3][0]}"' in text
    assert f'"dog": rank {lens.watch_ranks[1, 3, 0]}' in text
    page.select_option(".nx-lens-mode", "w0")  # colour by the rank of "dog": the cells show the ranks
    assert page.locator('.nx-lens-cell[data-l="1"][data-t="3"]').inner_text() == str(lens.watch_ranks[1, 3, 0])
    span = page.locator('[data-key="saliency"] .nx-tok').nth(2)
    span.hover()
    signed = built["saliency"].data.signed
    assert f'"{built["saliency"].tokens[2]}"' in tip.inner_text()
    value = float(re.search(r"signed: (-?[\d.e+-]+)", tip.inner_text()).group(1))
    assert value == pytest.approx(signed[2], rel=2e-3, abs=6e-4 * float(np.abs(signed).max()))
    watched.assert_clean()


def test_inspect_attention_views_follow_the_chosen_head(inspected, watched: Watched) -> None:
    path, built = inspected
    page = watched.open(path)
    n_layers, n_heads = built["attention"].data.probs.shape[:2]
    first = drawn_lines(page)
    assert first == expected_lines(built, 1, 0) and first  # opens on the middle layer, head 0
    page.click('.nx-headbtn[data-h="1"]')
    assert drawn_lines(page) == expected_lines(built, 1, 1) != first
    assert page.get_attribute('.nx-headbtn[data-h="1"]', "aria-pressed") == "true"
    page.select_option(".nx-att-layer", "0")
    assert drawn_lines(page) == expected_lines(built, 0, 1)
    assert page.locator(".nx-mini-att").count() == n_layers * n_heads
    page.click('.nx-mini-att[data-l="0"][data-h="0"]')
    assert drawn_lines(page) == expected_lines(built, 0, 0)
    page.hover('.nx-att-tok[data-side="q"][data-i="4"]')  # one query token: only its lines stay
    assert page.locator(".nx-att svg.nx-focus").count() == 1
    on = page.locator(".nx-att-line.nx-on").evaluate_all("ls => ls.map(l => l.dataset.q)")
    assert on and set(on) == {"4"}
    n = len(built["qk"].tokens)
    assert page.locator(".nx-qk-row").count() == n
    page.select_option(".nx-qk-pos", "2")  # keys after the query are masked
    assert page.locator(".nx-qk-row.nx-masked").count() == n - 3
    page.hover('[data-nx="firing"] .nx-tok >> nth=5')
    assert page.locator(".nx-firing-list tbody tr").count() == len(built["firing"].data.at(5))
    watched.assert_clean()


def test_inspect_views_show_token_text_as_text(tmp_path: Path, watched: Watched) -> None:
    from neuron_explainer.inspect import top_explained_neurons
    from neuron_explainer.view import FiringView, LogitLensView, SaliencyView
    from tests.unit.view.test_prompt_views import NASTY, nasty_lens, nasty_saliency

    acts = {0: np.arange(len(NASTY) * 2, dtype=np.float64).reshape(len(NASTY), 2)}
    explained = pd.DataFrame([(0, 1, NASTY[0], 0.5)], columns=["layer", "neuron", "explanation", "score"])
    firing = FiringView(top_explained_neurons(acts, NASTY, explained))
    views = [SaliencyView(nasty_saliency()), LogitLensView(nasty_lens()), firing]
    path = InspectPage(views, "<model>", "".join(NASTY)).save(tmp_path / "nasty.html")
    page = watched.open(path)
    assert page.locator("img").count() == 0  # no token became markup (the page's own <b> is the list heading)
    assert page.evaluate("[...document.querySelectorAll('main b')].every(b => b.closest('.nx-firing-list'))")
    shown = page.locator('[data-key="saliency"] .nx-row').first.locator(".nx-tok").all_inner_texts()
    assert shown == NASTY
    assert page.locator(".nx-lens-in").all_inner_texts() == NASTY
    page.hover('[data-nx="firing"] .nx-tok >> nth=0')
    assert NASTY[0] in page.locator(".nx-firing-list").inner_text()
    watched.assert_clean()
