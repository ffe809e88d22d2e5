"""Screenshots of the offline viewer for the docs (docs/img/*.png), taken by headless system Chromium.

    python scripts/screenshots.py                          # runs/demo if complete, else a tiny-model run
    python scripts/screenshots.py --run runs/demo-view     # any run directory or exported dataset
    python scripts/screenshots.py --html view.html --name logit-lens   # any saved page (e.g. a prompt view)
    python scripts/screenshots.py --inspect builtin:gemma3-270m        # an inspect page: saliency, lens, attention
    python scripts/screenshots.py --inspect tiny                       # the same from a tiny random GPT-2

Every page is opened from file:// with every non-file request aborted; a page error or an attempted
request fails the script, so a screenshot is also a check that the page works offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--hide-scrollbars"]  # fmt: skip


@dataclass
class Shot:
    """One screenshot: a page, what to do on it first, and the PNG to write."""

    name: str
    path: Path
    hover: str | None = None
    """CSS selector to hover before the shot (e.g. a token, to show its tooltip)."""
    scroll_to: str | None = None
    """CSS selector to scroll to the top of the viewport first."""
    open_all: bool = False
    """Open every <details> first."""
    size: tuple[int, int] = (1280, 900)
    wait_for: list[str] = field(default_factory=list)
    """JS expressions to wait for (e.g. the index has loaded every layer)."""
    element: str | None = None
    """CSS selector of the one element to capture (default: the viewport)."""
    below: int = 0
    """Pixels below `element` captured too (a tooltip may hang below it)."""
    max_height: int | None = None
    """Capture at most this many pixels of `element` (its top part)."""


def capture(shots: list[Shot], out_dir: Path, chromium: str) -> list[Path]:
    """Take the screenshots; raise SystemExit if a page errors or tries the network."""
    from playwright.sync_api import sync_playwright

    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS)
        for shot in shots:
            page = browser.new_page(viewport={"width": shot.size[0], "height": shot.size[1]}, device_scale_factor=1)
            problems: list[str] = []
            page.on("pageerror", lambda e, p=problems: p.append(f"page error: {e}"))
            page.on("console", lambda m, p=problems: p.append(f"console: {m.text}") if m.type == "error" else None)

            def route(r, p=problems) -> None:
                if r.request.url.startswith("file:"):
                    r.continue_()
                else:
                    p.append(f"request: {r.request.url}")
                    r.abort()

            page.route("**/*", route)
            page.goto(shot.path.resolve().as_uri())
            page.wait_for_load_state("load")
            for expr in shot.wait_for:
                page.wait_for_function(expr, timeout=120_000)
            if shot.open_all:
                page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            if shot.scroll_to:
                page.locator(shot.scroll_to).first.evaluate("e => e.scrollIntoView()")
            if shot.hover == STRONGEST:
                mark_strongest(page)
            if shot.hover:
                page.locator(shot.hover).first.hover()
            if problems:
                raise SystemExit(f"{shot.path}: {problems}")
            out = out_dir / f"{shot.name}.png"
            if shot.element:  # the element, and room below it for a tooltip
                box = page.locator(shot.element).first.bounding_box()
                height = min(box["height"], shot.max_height or box["height"]) + shot.below
                clip = {"x": box["x"], "y": box["y"] + page.evaluate("window.scrollY"), "width": box["width"],
                        "height": height}  # fmt: skip
                page.screenshot(path=str(out), clip=clip, full_page=True)
            else:
                page.screenshot(path=str(out))
            written.append(out)
            page.close()
        browser.close()
    return written


def tiny_run(work: Path) -> Path:
    """A run of every stage on a tiny random GPT-2 with fake back ends (the viewer tests' run)."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import save_tiny, write_corpus
    from tests.integration.test_regression import run_everything

    run_everything(save_tiny(work, "gpt2"), write_corpus(work / "corpus"), work / "run")
    return work / "run"


STRONGEST = '[data-key="groups.top"] .nx-ex:first-child .nx-strongest'


def mark_strongest(page) -> None:
    """Mark the strongest token of the first top excerpt, so the shot shows its tooltip."""
    page.evaluate(
        """() => { const spans = [...document.querySelectorAll('[data-key="groups.top"] .nx-ex:first-child .nx-tok')];
        const v = s => NX.data.groups.top.items[0].rows[0].v[+s.dataset.i] || 0;
        spans.reduce((a, b) => (v(b) > v(a) ? b : a)).classList.add('nx-strongest'); }"""
    )


def site_shots(run: Path, site: Path) -> list[Shot]:
    """Build the site (pages for the explained neurons) and list the documentation shots."""
    from neuron_explainer.view import build_site
    from neuron_explainer.view.data import open_source

    explained = open_source(run).table("explanations")
    llm = explained[~explained.explainer.str.startswith("baseline:")]
    keys = sorted({(int(a), int(b)) for a, b in zip(llm.layer, llm.neuron, strict=True)})
    build_site(run, site, pages=keys)
    scores = open_source(run).table("scores")
    best = scores[scores.scorer == "top_and_random"].sort_values("correlation", ascending=False)
    layer, neuron = (int(best.layer.iloc[0]), int(best.neuron.iloc[0])) if len(best) else keys[0]
    page = site / "neurons" / str(layer) / f"{neuron}.html"
    loaded = (
        "() => (t => t.includes(' of ') && !t.includes('loading'))(document.getElementById('nx-status').textContent)"
    )
    return [
        Shot("viewer-index", site / "index.html", wait_for=[loaded]),
        Shot("viewer-neuron", page, hover=STRONGEST, size=(1280, 1500)),
        Shot("viewer-simulation", page, scroll_to=".nx-sim"),
    ]


INSPECT_TEXT = "The Eiffel Tower is in Paris, and the Colosseum is in the city of"


def inspect_shots(model: str, work: Path) -> list[Shot]:
    """Build an inspect page of INSPECT_TEXT (`tiny`: a tiny random GPT-2) and list its shots."""
    import time

    from neuron_explainer.view import inspect_page

    if model == "tiny":
        sys.path.insert(0, str(ROOT))
        from tests.conftest import save_tiny

        model, text, options = str(save_tiny(work, "gpt2")), "the cat sat on the red house and the dog ran", {}
    else:
        text, options = INSPECT_TEXT, {"target": " Rome", "watch": [" Rome", " Paris", " Italy"]}
    start = time.perf_counter()
    page = inspect_page(model, text, **options, out=work / "inspect.html")
    print(f"inspect page of {model}: {time.perf_counter() - start:.1f} s, {page}")
    path = work / "inspect.html"
    n_layers, n_tokens = page["lens"].data.top_ids.shape[:2]
    cell = f'.nx-lens-cell[data-l="{2 * n_layers // 3}"][data-t="{n_tokens - 1}"]'
    return [
        Shot("inspect-saliency", path, hover='[data-key="saliency"] .nx-marked', element="#nx-saliency", below=50),
        Shot("inspect-lens", path, hover=cell, element="#nx-lens", size=(1680, 1400), below=150),
        Shot("inspect-attention", path, hover='.nx-att-tok[data-side="q"] >> nth=-1', element="#nx-attention",
             size=(1280, 1800), max_height=900),
        Shot("inspect-qk", path, element="#nx-qk", size=(1280, 1400)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="run directory or exported dataset")
    parser.add_argument("--html", type=Path, default=None, help="capture this page instead of a site")
    parser.add_argument("--name", default="page", help="PNG name for --html")
    parser.add_argument("--inspect", default=None, help="model spec (or `tiny`) for shots of an inspect page")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if args.html:
        shots = [Shot(args.name, args.html)]
        print("\n".join(str(p) for p in capture(shots, args.out, args.chromium)))
        return
    work = Path(tempfile.mkdtemp(prefix="nx-shots-"))
    if args.inspect:
        print("\n".join(str(p) for p in capture(inspect_shots(args.inspect, work), args.out, args.chromium)))
        return
    run = args.run
    demo = ROOT / "runs" / "demo"
    if run is None and (demo / "manifest.json").exists():
        status = json.loads((demo / "manifest.json").read_text()).get("status", {})
        run = demo if status.get("harvest") == "complete" and (demo / "scores").is_dir() else None
    run = run or tiny_run(work)
    print(f"run: {run}")
    print("\n".join(str(p) for p in capture(site_shots(run, work / "site"), args.out, args.chromium)))


if __name__ == "__main__":
    main()
