"""The static viewer over a real tiny run: what each page and index file holds, checked against the run
read independently (pipeline readers, brute force), the exported-dataset source, errors, offline-ness."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.errors import ConfigError, RunDirError
from neuron_explainer.records.reader import load_neuron_record, load_neuron_stats
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.stages.score import summary as score_summary
from neuron_explainer.view import build_site, inspect_page, neuron
from tests.integration.view_run import EXPLAINED, OUTPUT_TOKEN_NEURONS, build_view_run

EXTERNAL = re.compile(
    r"https?:|//cdn|@import|url\(|fetch\(|XMLHttpRequest|import\(|require\(|<link[^>]+href=\"(?!assets/|\.\./)"
)


@pytest.fixture(scope="module")
def view_run(tiny_model_dirs, corpus_file, tmp_path_factory) -> Path:
    return build_view_run(tiny_model_dirs, corpus_file, tmp_path_factory)


@pytest.fixture(scope="module")
def site(view_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(view_run, out)
    return out


def page_data(path: Path) -> dict:
    text = path.read_text()
    blob = text.split('<script type="application/json" id="nx-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(blob)


def index_chunks(site: Path) -> dict[int, dict]:
    out = {}
    for f in sorted((site / "index").glob("layer-*.js")):
        text = f.read_text()
        assert text.startswith("NX.indexChunk(") and text.rstrip().endswith(");")
        chunk = json.loads(text[len("NX.indexChunk(") : text.rstrip().rindex(")")])
        out[chunk["layer"]] = chunk
    return out


def test_site_layout_and_index_rows(site: Path, view_run: Path) -> None:
    manifest = json.loads((view_run / "manifest.json").read_text())["harvest"]
    n = manifest["n_neurons"]
    pages = sorted(site.glob("neurons/*/*.html"))
    assert len(pages) == len(manifest["layers"]) * n
    assert sorted(p.name for p in (site / "assets").iterdir()) == ["view.css", "view.js"]
    chunks = index_chunks(site)
    assert sorted(chunks) == manifest["layers"]
    assert all(chunk["neuron"] == list(range(n)) and chunk["pages"] is None for chunk in chunks.values())
    report = json.loads((site / "nx-site.json").read_text())
    assert report["n_neurons"] == report["n_pages"] == len(pages) and report["density_estimated"] is False


def test_index_scores_are_the_best_explanation_per_neuron(site: Path, view_run: Path) -> None:
    chunks = index_chunks(site)
    summary = score_summary(RunStore(view_run))
    expl = read_table(RunStore(view_run), "explanations")
    baseline_texts = set(expl[expl.explainer.str.startswith("baseline:")].explanation)
    summary = summary[~summary.explanation.isin(baseline_texts)]
    for (layer, n), g in summary.groupby(["layer", "neuron"]):
        best = g.sort_values("top_and_random", ascending=False).iloc[0]
        i = chunks[layer]["neuron"].index(n)
        assert chunks[layer]["tr"][i] == pytest.approx(best.top_and_random, abs=6e-4)
        assert chunks[layer]["expl"][i] == best.explanation
    unexplained = [(layer, n) for layer, c in chunks.items() for n in c["neuron"] if (layer, n) not in set(EXPLAINED)]
    assert all(chunks[layer]["tr"][chunks[layer]["neuron"].index(n)] is None for layer, n in unexplained)


def test_index_density_is_the_harvests(site: Path, view_run: Path) -> None:
    chunks = index_chunks(site)
    for layer, n in [(0, 0), (0, 1), (1, 5), (1, 127)]:
        expected = load_neuron_stats(view_run, layer, n).density
        assert expected is not None and 0 < expected < 1
        assert chunks[layer]["dens"][chunks[layer]["neuron"].index(n)] == pytest.approx(expected, abs=6e-4)


def test_without_a_density_column_the_index_estimates_it_from_random_records(view_run: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow.parquet as pq

    run = tmp_path / "run"
    shutil.copytree(view_run, run)
    for path in (run / "neuron_stats").glob("*.parquet"):  # as a run harvested before the column existed
        pq.write_table(pq.read_table(path).drop_columns(["positive_count", "density"]), path)
    report = build_site(run, tmp_path / "site", pages=[(1, 5)])
    assert report.density_estimated is True
    chunks = index_chunks(tmp_path / "site")
    for layer, n in [(0, 0), (0, 1), (1, 5), (1, 127)]:
        record = load_neuron_record(view_run, layer, n)
        values = np.concatenate([r.activations for r in record.random_sample])
        expected = float((values > 0).mean())
        assert chunks[layer]["dens"][chunks[layer]["neuron"].index(n)] == pytest.approx(expected, abs=6e-4)


def test_neuron_page_data_matches_the_run(site: Path, view_run: Path) -> None:
    layer, n = EXPLAINED[0]
    data = page_data(site / "neurons" / str(layer) / f"{n}.html")
    record = load_neuron_record(view_run, layer, n)
    top = data["groups"]["top"]["items"]
    assert [item["id"] for item in top] == [r.excerpt_id for r in record.most_positive_activation_records]
    for item, rec in zip(top, record.most_positive_activation_records, strict=True):
        assert data["ex"][str(item["id"])] == rec.tokens
        assert item["rows"][0]["v"] == pytest.approx(rec.activations, abs=2e-3)
    assert [i["id"] for i in data["groups"]["random"]["items"]] == [r.excerpt_id for r in record.random_sample]
    for b, bucket in enumerate(record.random_sample_by_quantile):
        if bucket:
            assert [i["id"] for i in data["groups"][f"q{b}"]["items"]] == [r.excerpt_id for r in bucket]
    # the histogram counts every random-excerpt token once (brute force: numpy over the reader's records)
    hist = data["hist"]
    values = np.concatenate([r.activations for r in record.random_sample])
    want, _ = np.histogram(np.clip(values, hist["edges"][0], hist["edges"][-1]), bins=np.array(hist["edges"]))
    assert sum(hist["series"][0]["counts"]) == len(values)
    assert np.abs(np.array(hist["series"][0]["counts"]) - want).sum() <= 2  # edges rounded to 4 digits
    assert [m["x"] for m in hist["marks"]] == pytest.approx(record.quantile_boundaries, rel=1e-3)


def test_simulation_panels_agree_with_the_stored_scores(site: Path, view_run: Path) -> None:
    store = RunStore(view_run)
    scores = read_table(store, "scores")
    sims = read_table(store, "simulations")
    layer, n = EXPLAINED[0]
    data = page_data(site / "neurons" / str(layer) / f"{n}.html")
    keys = [k for k in data["groups"] if k.startswith("sim")]
    valid = sims[(sims.layer == layer) & (sims.neuron == n) & (sims.split == "valid")]
    assert len(keys) == valid.groupby(["explanation_id", "simulator"]).ngroups
    for key in keys:
        items = data["groups"][key]["items"]
        got = sorted(item["r"] for item in items if item["r"] is not None)
        # the page recomputes r per excerpt; the score stage stored its own: same set of values
        match = [
            sorted(v for v in row.per_excerpt if v == v)
            for row in scores[(scores.layer == layer) & (scores.neuron == n)].itertuples()
            if row.scorer == "top_and_random"
        ]
        assert any(len(m) == len(got) and np.allclose(m, got, atol=2e-4) for m in match), key
        assert all(len(item["rows"][0]["v"]) == len(item["rows"][1]["v"]) for item in items)


def test_revision_baselines_and_output_tokens_are_rendered(site: Path, view_run: Path) -> None:
    layer, n = EXPLAINED[0]
    text = (site / "neurons" / str(layer) / f"{n}.html").read_text()
    assert "Revision" in text and "random_revision" in text and "extended set" in text.lower()
    assert "baseline:weights" in text and "baseline:lookup" in text
    data = page_data(site / "neurons" / str(layer) / f"{n}.html")
    assert any(k.startswith("sent") for k in data["groups"])
    table = read_table(RunStore(view_run), "output_tokens")
    for layer, n in OUTPUT_TOKEN_NEURONS:
        page = (site / "neurons" / str(layer) / f"{n}.html").read_text()
        assert "Output tokens" in page
        for sign, side in ((1, "top"), (-1, "bottom")):
            rows = table[(table.layer == layer) & (table.neuron == n) & (table.sign == sign)].sort_values("rank")
            shown = re.search(f'<table class="nx-table nx-out nx-out-{side}">(.*?)</table>', page, re.S)
            assert shown is not None
            tokens = [html.unescape(t) for t in re.findall(r'<code class="nx-token">(.*?)</code>', shown.group(1))]
            assert tokens == list(rows.token) and len(tokens) == 5  # the stage's tokens, by rank
    assert "has no rows for this neuron" in (site / "neurons" / "0" / "3.html").read_text()  # table present


def external_urls(root: Path) -> list[str]:
    """Every match of EXTERNAL in the files under `root` (or in the file `root`), as `path: match`."""
    offenders = []
    for path in [root] if root.is_file() else sorted(root.rglob("*")):
        if path.is_file():
            for m in EXTERNAL.finditer(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(root.parent)}: {m.group(0)}")
    return offenders


@pytest.fixture(scope="module")
def inspect_file(view_run: Path, tmp_path_factory) -> Path:
    """An inspect page of the run's model with its explained neurons (a prompt naming a URL, on purpose)."""
    out = tmp_path_factory.mktemp("inspect") / "inspect.html"
    inspect_page(None, "the cat sat on http://example.org/red", run=view_run, method="grad_x_input", out=out)
    return out


def test_no_generated_file_names_an_external_url(site: Path, inspect_file: Path) -> None:
    offenders = external_urls(site) + external_urls(inspect_file)
    assert not offenders, offenders[:10]
    assert "http&#58;&#47;&#47;example.org" in inspect_file.read_text()  # the prompt is shown, no URL named


def test_the_external_url_check_can_fail(tmp_path: Path) -> None:
    for bad in ('<script src="https://cdn.example/x.js">', "@import url(x.css);", "//cdn.jsdelivr", 'fetch("a")'):
        assert EXTERNAL.search(bad), bad


def test_exported_dataset_gives_the_same_site(site: Path, view_run: Path, tmp_path: Path) -> None:
    from neuron_explainer.export.dataset import export_dataset

    export_dataset(view_run, tmp_path / "dataset")  # output_tokens included
    layer, n = EXPLAINED[0]
    build_site(tmp_path / "dataset", tmp_path / "site2", neurons=[(layer, n), (1, 5)])
    assert index_chunks(tmp_path / "site2")[layer]["neuron"] == [n]
    assert page_data(tmp_path / "site2" / "neurons" / str(layer) / f"{n}.html") == page_data(
        site / "neurons" / str(layer) / f"{n}.html"
    )


def test_subset_pages_and_prev_next_links(view_run: Path, tmp_path: Path) -> None:
    seen = []
    report = build_site(
        view_run, tmp_path / "s", neurons=[(0, 1), (0, 2), (1, 5)], pages=[(0, 2), (1, 5)],
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )  # fmt: skip
    assert report.n_neurons == 3 and report.n_pages == 2 and seen[-1] == ("view", 2, 2)
    assert index_chunks(tmp_path / "s")[0]["pages"] == [2]
    first = (tmp_path / "s" / "neurons" / "0" / "2.html").read_text()
    assert 'href="../../neurons/1/5.html" rel="next"' in first and 'rel="prev"' not in first
    # rebuilding into the same folder replaces the site
    assert build_site(view_run, tmp_path / "s", neurons=[(0, 1)]).n_pages == 1
    assert sorted(p.name for p in (tmp_path / "s" / "neurons").rglob("*.html")) == ["1.html"]


def test_bad_input_raises_clear_errors(view_run: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a neuron-explainer site"):
        build_site(view_run, tmp_path / "busy")
    with pytest.raises(ConfigError, match="layer 7 was not harvested"):
        build_site(view_run, tmp_path / "x", neurons=[(7, 0)])
    with pytest.raises(ConfigError, match="out of range"):
        build_site(view_run, tmp_path / "x", neurons=[(0, 10**6)])
    with pytest.raises(RunDirError, match="not a run directory"):
        build_site(tmp_path / "busy", tmp_path / "y")
    with pytest.raises(RunDirError, match="not a directory"):
        neuron(tmp_path / "missing", 0, 1)


def test_notebook_view_is_a_self_contained_iframe(view_run: Path) -> None:
    layer, n = EXPLAINED[0]
    view = neuron(view_run, layer, n)
    frame = view._repr_html_()
    assert frame.startswith('<iframe srcdoc="') and "<script" not in frame  # the page is escaped inside srcdoc
    page = html.unescape(frame.split('srcdoc="', 1)[1].split('" sandbox=', 1)[0])
    assert page == view.to_html() and "<style>" in page and "NX.renderers" in page and "assets/" not in page
    assert not EXTERNAL.search(page)
    record = load_neuron_record(view_run, layer, n)
    top = view.activations("top")
    assert top.shape == (len(record.most_positive_activation_records), 16)
    assert np.allclose(top[0], record.most_positive_activation_records[0].activations)
    assert set(view.records.kind) == {"top", "random", "quantile"} and "tokens" in view.records
    assert len(view.scores) == len(view.explanations) > 0 and "top_and_random" in view.scores
    assert view.stats["neuron"] == n and not view.simulations.empty


def test_a_density_column_in_neuron_stats_is_used_as_is(view_run: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    shutil.copytree(view_run, run)
    for path in (run / "neuron_stats").glob("*.parquet"):
        table = pq.read_table(path)
        where = table.schema.get_field_index("density")
        pq.write_table(table.set_column(where, "density", pc.divide(pc.cast(table["neuron"], "float64"), 1000.0)), path)
    report = build_site(run, tmp_path / "site", pages=[(1, 5)])
    assert report.density_estimated is False and report.n_pages == 1
    chunk = index_chunks(tmp_path / "site")[1]
    assert chunk["dens"][:3] == [0.0, 0.001, 0.002] and chunk["pages"] == [5]
    assert "Density (est.)" not in (tmp_path / "site" / "index.html").read_text()
    page = (tmp_path / "site" / "neurons" / "1" / "5.html").read_text()
    assert "<th>density</th><td>0.005</td>" in page
