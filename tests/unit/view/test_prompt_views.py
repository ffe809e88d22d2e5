"""The prompt views: page data equals the inspect computations' arrays (up to the stated rounding), token text is
escaped, bad arguments raise one-line errors. On tiny random models; the browser side is in test_view_browser."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

from neuron_explainer import inspect as nx
from neuron_explainer.errors import ConfigError, ModelError
from neuron_explainer.view import (
    AttentionView,
    FactorsView,
    FiringView,
    InspectPage,
    LogitLensView,
    QueryKeyView,
    RankingsView,
    SaliencyView,
    inspect_page,
)
from neuron_explainer.view.prompt_data import ATTENTION_MIN, TOP_LOADINGS
from tests.conftest import make_tiny_model, make_tokenizer

TEXT = "the cat sat on the red house and the dog ran under the tree"
NASTY = ["</script><img src=x onerror=alert(1)>", '"q" & <b>', "\u2028", "http://example.org/x"]


def page_data(page: str) -> dict:
    blob = page.split('<script type="application/json" id="nx-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(blob)


def close_rel(page_values, values) -> None:
    """Equal up to 4 significant digits per value."""
    np.testing.assert_allclose(np.array(page_values, dtype=np.float64), values, rtol=5e-4, atol=0)


def close(page_values, values, scale: float | None = None) -> None:
    """Equal up to the page's rounding: 1e-3 of the array's largest magnitude (or of `scale`), half a step."""
    want = np.asarray(values, dtype=np.float64)
    got = np.array(page_values, dtype=np.float64)
    step = (np.abs(want).max() if scale is None else scale) * 5e-4
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=step + 1e-12)


@pytest.fixture(scope="module")
def lm():
    tokenizer, vocab = make_tokenizer(with_bos=False)
    return make_tiny_model("gpt2", vocab), tokenizer


@pytest.fixture(scope="module")
def explained() -> pd.DataFrame:
    rows = [(0, 3, "cats and dogs", 0.41), (0, 3, "worse", 0.1), (1, 7, "colours", np.nan), (1, 20, "trees", -0.2)]
    return pd.DataFrame(rows, columns=["layer", "neuron", "explanation", "score"])


@pytest.fixture(scope="module")
def page(lm, explained) -> InspectPage:
    return inspect_page(lm, TEXT, explained=explained, layers=[1], watch=["dog", "tree"], head=(1, 1), n_factors=3)


def test_each_panel_carries_its_computation_unchanged(page: InspectPage) -> None:
    data = page_data(page.to_html())
    assert list(data) == ["ex", "saliency", "lens", "rankings", "attention", "qk", "factors", "firing"]
    s = page["saliency"].data
    assert data["ex"]["prompt"] == s.tokens
    rows = data["saliency"]["items"][0]["rows"]
    close(rows[0]["v"], s.signed)
    close(rows[1]["v"], s.l2_share)
    assert data["saliency"]["items"][0]["mark"] == s.position == len(s.tokens) - 1

    lens = page["lens"].data
    assert data["lens"]["layers"] == [1] and data["lens"]["top"] == [lens.top_tokens[1]]
    close_rel(data["lens"]["topp"], lens.top_probs[[1]])
    assert (
        data["lens"]["ranks"] == lens.watch_ranks[[1]].tolist()
        and data["lens"]["next"] == lens.next_ranks[[1]].tolist()
    )
    close_rel(data["lens"]["wprobs"], lens.watch_probs[[1]])

    r = page["rankings"].data
    assert data["rankings"]["ranks"] == r.ranks.tolist() and data["rankings"]["watch"] == ["dog", "tree"]
    close_rel(data["rankings"]["probs"], r.probs)


def test_attention_and_query_key_panels(page: InspectPage) -> None:
    data = page_data(page.to_html())
    a = page["attention"].data
    assert data["attention"]["layers"] == [1] and data["attention"]["sel"] == [1, 1]
    assert data["attention"]["min"] == ATTENTION_MIN
    n = len(a.tokens)
    for h in range(a.probs.shape[1]):
        rows = data["attention"]["attn"][0][h]
        assert [len(row) for row in rows] == list(range(1, n + 1))  # row q holds keys 0..q
        for q in range(n):
            close(rows[q], a.probs[1, h, q, : q + 1], scale=0.1)
    assert not np.triu(a.probs, k=1).any()  # what the lower triangle leaves out is 0

    v = page["qk"].data
    d = data["qk"]
    assert (d["layer"], d["head"], d["query"]) == (1, 1, n - 1)
    scale = max(np.abs(v.queries).max(), np.abs(v.keys).max())
    close(d["queries"], v.queries, scale)
    close(d["keys"], v.keys, scale)
    close(d["products"], v.products)
    close(d["dots"][n - 1], v.products.sum(-1), scale=float(np.abs(v.queries @ v.keys.T).max()))
    close(np.array(d["dots"]) * v.scaling, v.scores)  # no softcap in GPT-2: score = scaling * q.k
    close(d["scores"], v.scores)
    close_rel(d["probs"], v.probs)
    assert d["allowed"] == v.allowed.astype(int).tolist() and d["scaling"] == v.scaling


def test_factor_and_firing_panels(page: InspectPage, explained: pd.DataFrame) -> None:
    data = page_data(page.to_html())
    f = page["factors"].data
    assert f.layers.tolist() == [1] and len(f.factors) == 3
    for k, row in enumerate(data["factors"]["items"][0]["rows"]):
        close(row["v"], f.factors[k])
    top = f.loadings_frame(top=TOP_LOADINGS)
    for k, rows in enumerate(data["factors"]["loadings"]):
        want = top[top.factor == k]
        assert [(r[0], r[1], r[2]) for r in rows] == list(zip(want.layer, want.neuron, want.part, strict=True))
        close([r[3] for r in rows], want.loading, scale=np.abs(top.loading).max())

    h = page["firing"].data
    d = data["firing"]
    rebuilt = [
        (pos, rank + 1, *d["neurons"][entry[0]][:3], entry[1])
        for pos, entries in enumerate(d["at"])
        for rank, entry in enumerate(entries)
    ]
    want = h.frame
    assert [r[:5] for r in rebuilt] == list(
        zip(want.position, want["rank"], want.layer, want.neuron, want.explanation, strict=True)
    )
    close([r[5] for r in rebuilt], want.activation)
    assert {tuple(n[:2]): n[3] for n in d["neurons"]}[(0, 3)] == 0.41  # the neuron's best explanation and score
    assert {tuple(n[:2]): n[2] for n in d["neurons"]}[(0, 3)] == "cats and dogs"


def test_each_view_alone_equals_its_panel_on_the_page(page: InspectPage, lm) -> None:
    whole = page_data(page.to_html())
    for kind, view in page.views.items():
        alone = page_data(view.to_html())
        assert alone[kind] == whole[kind] and alone["ex"] == whole["ex"]
        assert view.to_frame().equals(view.data.to_frame())
    model, tokenizer = lm
    computed = LogitLensView.compute(model, tokenizer, TEXT, k=5, watch=["dog", "tree"])
    assert computed.panel_data()["top"] == page["lens"].data.top_tokens
    assert "LogitLensView(14 tokens)" == repr(computed)


def test_views_without_a_run_and_their_notebook_frames(lm) -> None:
    model, tokenizer = lm
    page = inspect_page(lm, "the cat sat", method="grad_x_input", target="on")
    assert list(page.views) == ["saliency", "lens", "rankings", "attention", "qk", "factors"]
    assert page["saliency"].data.method == "grad_x_input" and page["rankings"].data.watch_tokens == ["on"]
    assert len(page["factors"].data.factors) == 3  # at most one factor per token
    frame = page._repr_html_()
    assert frame.startswith('<iframe srcdoc="') and "<script" not in frame
    assert html.unescape(frame.split('srcdoc="', 1)[1].split('" sandbox=', 1)[0]) == page.to_html()
    views = [
        SaliencyView(page["saliency"].data),
        RankingsView(page["rankings"].data),
        AttentionView(page["attention"].data),
        QueryKeyView(page["qk"].data),
        FactorsView(page["factors"].data),
    ]
    assert all(f'data-nx="{r}"' in v.to_html() for v in views for r in v.renderers)


def nasty_lens() -> nx.LogitLens:
    n = len(NASTY)
    return nx.LogitLens(
        tokens=NASTY, input_ids=np.arange(n), layers=np.arange(1), top_ids=np.zeros((1, n, 1), dtype=np.int64),
        top_tokens=[[[t] for t in NASTY]], top_probs=np.full((1, n, 1), 0.5, dtype=np.float32),
        watch_ids=np.array([0]), watch_tokens=[NASTY[0]], watch_ranks=np.ones((1, n, 1), dtype=np.int64),
        watch_probs=np.ones((1, n, 1), dtype=np.float32), next_ranks=np.ones((1, n - 1), dtype=np.int64),
    )  # fmt: skip


def nasty_saliency() -> nx.Saliency:
    n = len(NASTY)
    values = np.linspace(-1, 1, n, dtype=np.float32)
    return nx.Saliency(
        tokens=NASTY, position=n - 1, target_id=0, target_token=NASTY[-1], method="grad_x_input", output="prob",
        target_value=0.5, attributions=np.zeros((n, 2), dtype=np.float32), signed=values, l2=np.abs(values),
        l2_share=np.abs(values) / np.abs(values).sum(), baseline_token_id=None, n_steps=None, convergence_delta=None,
    )  # fmt: skip


def test_token_and_explanation_text_is_escaped() -> None:
    acts = {0: np.arange(len(NASTY) * 2, dtype=np.float64).reshape(len(NASTY), 2)}
    explained = pd.DataFrame([(0, 1, NASTY[0], 0.5)], columns=["layer", "neuron", "explanation", "score"])
    views = [
        SaliencyView(nasty_saliency()),
        LogitLensView(nasty_lens()),
        FiringView(nx.top_explained_neurons(acts, NASTY, explained)),
    ]
    page = InspectPage(views, "<model>", "".join(NASTY)).to_html()
    markup, blob = page.split('<script type="application/json" id="nx-data">', 1)
    blob = blob.split("</script>", 1)[0]  # the rest is the packaged view.js
    assert "<img" not in markup and "<b>" not in markup and "http://" not in page
    assert "&lt;model&gt;" in markup and "&lt;b&gt;" in markup  # heading and prompt through autoescaping
    assert "of &#39;http&#58;&#47;&#47;example.org&#47;x&#39; predicted" in markup  # the saliency note names the target
    assert re.search(r"[<>&]", blob) is None
    data = json.loads(blob)
    assert data["ex"]["prompt"] == NASTY and data["lens"]["top"][0] == [[t] for t in NASTY]
    assert data["firing"]["neurons"] == [[0, 1, NASTY[0], 0.5]]


class NotSupported:
    class config:  # noqa: N801 - mimics a transformers config
        model_type = "opt"


def test_bad_arguments_raise_one_line_errors(lm) -> None:
    def one_line(error: type[Exception], match: str, **kwargs) -> None:
        with pytest.raises(error, match=match) as info:
            inspect_page(kwargs.pop("model", lm), kwargs.pop("text", "the cat sat"), **kwargs)
        assert "\n" not in str(info.value)

    one_line(ConfigError, "layer 9 out of range", layers=[9])
    one_line(ConfigError, "without repeats", layers=[0, 0])
    one_line(ConfigError, "head 5 out of range", head=(0, 5))
    one_line(ConfigError, "layer 4 out of range", head=(4, 0))
    one_line(ConfigError, "target 'cat sat' is 2 tokens", target="cat sat")
    one_line(ConfigError, "watched token 'zebra crossing' is 2 tokens", watch=["zebra crossing"])
    one_line(ConfigError, "unknown saliency method", method="lime")
    one_line(ConfigError, "the prompt is empty", text="")
    one_line(ConfigError, "give a model", model=None)
    one_line(ModelError, "unsupported model type 'opt'", model=(NotSupported(), None))
    one_line(ConfigError, "not both", run="runs/x", explained=pd.DataFrame())
    page = inspect_page(lm, "the cat sat")
    with pytest.raises(ConfigError, match="no 'firing' view"):
        page["firing"]
    with pytest.raises(ConfigError, match=r"cannot show layer\(s\) \[2\]: the result has layers \[0, 1\]"):
        LogitLensView(page["lens"].data, layers=[0, 2])
    with pytest.raises(ConfigError, match="cannot show layer"):
        AttentionView(page["attention"].data, layers=[])
