"""Pure parts of the viewer: JSON embedding, ranking fast path vs pandas, summaries, escaping, adapter errors."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuron_explainer.errors import RunDirError
from neuron_explainer.view.data import ViewSource
from neuron_explainer.view.neuron_data import NeuronTables, compact, density_estimate, neuron_page
from neuron_explainer.view.render import embed_json, render_page
from neuron_explainer.view.summary import (
    TABLE_COLUMNS,
    density_from_records,
    explanation_table,
    rank_explanations,
    rank_rows,
    score_histogram,
)


def test_embedded_json_round_trips_and_cannot_close_the_script() -> None:
    value = {"t": ["</script><script>alert(1)</script>", "http://x.org/a", "a & b", "\u2028", "\\/", "<!--"], "v": 1.5}
    text = embed_json(value)
    assert json.loads(text) == value
    assert not re.search(r"[<>&]|(?<!\\)/", text) and "http://" not in text


def random_table(rng: random.Random, n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        score = rng.choice([None, float("nan"), round(rng.uniform(-1, 1), 2), 0.5])
        rows.append(
            dict(
                layer=0,
                neuron=rng.randint(0, 2),
                explanation_id=f"{i:04x}",
                explanation=f"e{i}",
                explainer=rng.choice(["local:m", "baseline:weights"]),
                prompt_version="v1",
                round=rng.randint(1, 2),
                sample_idx=rng.randint(0, 1),
                view="current_token",
                simulator="s",
                top_and_random=score,
                random_only=None,
                ablation=None,
                ablation_random_only=None,
            )  # fmt: skip
        )
    table = pd.DataFrame(rows)
    table["baseline"] = table.explainer.str.startswith("baseline:")
    return table[TABLE_COLUMNS]


@pytest.mark.parametrize("seed", range(5))
def test_row_ranking_equals_the_pandas_reference(seed: int) -> None:
    table = random_table(random.Random(seed), 40)
    want = list(rank_explanations(table).explanation_id)
    rows = table.to_dict("records")
    for r in rows:  # rows come from Parquet with None, not NaN, for missing scores
        if r["top_and_random"] != r["top_and_random"]:
            r["top_and_random"] = None
    assert [r["explanation_id"] for r in rank_rows(rows)] == want


def test_explanation_table_keeps_undefined_and_unscored_explanations() -> None:
    expl = pd.DataFrame(
        [dict(layer=0, neuron=1, explanation_id=e, explanation=e, explainer=x, prompt_version="v1",
              view="current_token", sample_idx=0, round=1, params_hash="h")
         for e, x in (("a", "m"), ("b", "m"), ("c", "baseline:lookup"))]
    )  # fmt: skip
    scores = pd.DataFrame(
        [dict(explanation_id=e, simulator=s, scorer=k, correlation=c)
         for e, s, k, c in (("a", "s1", "top_and_random", 0.4), ("a", "s1", "random_only", None),
                            ("a", "s2", "top_and_random", 0.1), ("c", "s1", "top_and_random", 0.9))]
    )  # fmt: skip
    ablation = pd.DataFrame([dict(explanation_id="a", simulator="s2", scorer="top_and_random", score=0.25)])
    table = explanation_table(expl, scores, ablation).set_index(["explanation_id", "simulator"])
    assert table.loc[("a", "s1"), "top_and_random"] == 0.4 and math.isnan(table.loc[("a", "s1"), "random_only"])
    assert table.loc[("a", "s2"), "ablation"] == 0.25 and math.isnan(table.loc[("a", "s1"), "ablation"])
    assert math.isnan(table.loc[("b", ""), "top_and_random"])  # never simulated: one row, no simulator
    assert table.loc[("c", "s1"), "baseline"] and not table.loc[("a", "s1"), "baseline"]


def neuron_tables(rng: np.random.Generator, n_random: int = 4) -> NeuronTables:
    records = []
    for kind, count in (("top", 3), ("random", n_random), ("quantile", 2)):
        for rank in range(count):
            acts = rng.normal(0, 1, 8).astype(np.float32)
            records.append(dict(kind=kind, bucket=rank if kind == "quantile" else None, rank=rank,
                                excerpt_id=len(records), max_activation=float(acts.max()),
                                activations=acts))  # fmt: skip
    stats = dict(min_activation=-3.0, max_activation=3.0, mean=0.1, variance=1.0, count=100,
                 quantile_boundaries=np.array([0.5, 1.0, 1.5, 2.0]))  # fmt: skip
    tokens = {r["excerpt_id"]: [f" t{i}" for i in range(8)] for r in records}
    return NeuronTables(3, 7, "m", stats, records, tokens, [], [], [], [], None)


def test_density_per_neuron_equals_the_layer_computation_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    tables = [neuron_tables(rng, n_random=k + 1) for k in range(3)]
    frame = pd.DataFrame([{**r, "neuron": i} for i, t in enumerate(tables) for r in t.records])
    layer = density_from_records(frame)
    for i, t in enumerate(tables):
        values = np.concatenate([r["activations"] for r in t.records if r["kind"] == "random"])
        assert density_estimate(t) == pytest.approx(float((values > 0).mean()))
        assert layer[i] == pytest.approx(density_estimate(t))


def test_compact_values_keep_what_a_tooltip_shows() -> None:
    values = np.array([0.0012345, -2.71828, 123.456, float("nan")])
    out = compact(values, scale=123.456)
    assert out[3] is None
    assert np.allclose(out[:3], values[:3], atol=0.5 * 10 ** -(3 - 2))  # 1e-3 of the scale, as digits
    assert compact([1.23456], 0.0) == [1.2346]  # a zero scale falls back to 4 decimals


def test_score_histogram_counts_the_top_edge_and_undefined() -> None:
    hist = score_histogram([1.0, -1.0, 0.05, float("nan"), 0.999])
    assert sum(hist["counts"]) == 4 and hist["undefined"] == 1
    assert hist["counts"][-1] == 2 and hist["counts"][0] == 1


def test_neuron_page_escapes_text_from_the_run() -> None:
    t = neuron_tables(np.random.default_rng(1))
    t.tokens[0] = ["</script><img src=x onerror=alert(1)>"] + t.tokens[0][1:]
    t.explanations.append(
        dict(layer=3, neuron=7, explanation_id="e", explanation="<b>bold</b> & </script>", explainer="m",
             prompt_version="v1", round=1, sample_idx=0, view="current_token", simulator="",
             top_and_random=None, random_only=None, ablation=None, ablation_random_only=None, baseline=False)
    )  # fmt: skip
    page = render_page("neuron.html.j2", {**neuron_page(t), "nav": None})
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;/script&gt;" in page
    assert page.count("<script") == 2 and "<img" not in page  # the data block and the inlined view.js
    assert "Content-Security-Policy\" content=\"default-src 'none';" in page
    blob = page.split('id="nx-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(blob)["ex"]["0"][0] == "</script><img src=x onerror=alert(1)>"


def test_malformed_output_tokens_table_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "status": {"harvest": "complete"},
                                                        "harvest": {"layers": [0], "n_neurons": 4}}))  # fmt: skip
    (tmp_path / "output_tokens").mkdir()
    pq.write_table(
        pa.table({"layer": [0], "neuron": [1], "token": ["x"]}), tmp_path / "output_tokens" / "part-0.parquet"
    )
    with pytest.raises(RunDirError, match="lacks column"):
        ViewSource(tmp_path).output_tokens()
    with pytest.raises(RunDirError, match="layer 3 was not harvested"):
        ViewSource(tmp_path).neuron_stats(3)
    assert ViewSource(tmp_path).table("scores", layers=[0]).empty


def test_assets_can_be_inlined() -> None:
    from neuron_explainer.view.render import asset_text

    assert "</script" not in asset_text("view.js").lower() and "</style" not in asset_text("view.css").lower()
