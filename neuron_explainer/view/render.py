"""Templates and assets: jinja2 pages that carry their data as JSON and draw it with the one view.js.

Page conventions (every view follows them; see docs/viewer.md):
- a template extends `base.html.j2` and fills the blocks `title` and `content`;
- the context key `data` is embedded once as `<script type="application/json" id="nx-data">`;
- an element `<div data-nx="RENDERER" data-key="KEY">` is drawn by `NX.renderers[RENDERER](el, value, data)`
  in view.js, where value is `data` looked up along KEY's dot-separated path;
- the assets are either inlined (notebooks, single files) or linked relatively (`asset_prefix`), so a
  page names no URL outside itself or its site.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

ASSET_NAMES = ("view.css", "view.js")
"""The stylesheet and the one script every page uses, shipped as package data."""

_JSON_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/"),
                 ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))  # fmt: skip


def asset_text(name: str) -> str:
    """The text of a packaged asset (view.css or view.js)."""
    return resources.files("neuron_explainer.view").joinpath("assets", name).read_text(encoding="utf-8")


def embed_json(value: Any) -> str:
    """JSON safe inside a <script> element: no `<`, `>`, `&` or `/` survives literally.

    Escaping `/` also means that no text from a corpus (a URL in an excerpt) appears as `http://` in a
    page, so the site's no-external-URL check stays exact.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _JSON_ESCAPES:  # str.replace runs in C; str.translate is ten times slower here
        if char in text:
            text = text.replace(char, escape)
    return text


@lru_cache(maxsize=1)
def environment() -> Any:
    """The jinja2 environment over the packaged templates (autoescaping on)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("neuron_explainer.view", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["score"] = format_score
    env.filters["num"] = format_number
    return env


def format_score(value: float | None) -> str:
    """A correlation-like score as +0.123, or an en dash when missing or undefined."""
    return "–" if value is None or value != value else f"{value:+.3f}"


def format_number(value: float | None, digits: int = 4) -> str:
    """A number with `digits` significant digits, or an en dash when missing."""
    return "–" if value is None or value != value else f"{value:.{digits}g}"


def render_page(template: str, context: dict[str, Any], *, asset_prefix: str | None = None) -> str:
    """Render a page template to a full HTML document.

    Args:
        template: template file name under the package's templates/ (e.g. "neuron.html.j2").
        context: the template's variables; `data` (any JSON value) is embedded for view.js.
        asset_prefix: relative path to the site's assets/ folder (e.g. "../../assets/"); None inlines
            the CSS and JS into the page, which then stands alone (notebooks, a single saved file).
    """
    assets: dict[str, Any]
    if asset_prefix is None:
        assets = {"inline": True, "css": asset_text("view.css"), "js": asset_text("view.js")}
    else:
        assets = {"inline": False, "css_href": asset_prefix + "view.css", "js_src": asset_prefix + "view.js"}
    data_json = embed_json(context.get("data", {}))
    return environment().get_template(template).render(**context, assets=assets, data_json=data_json)
