"""`neuron-explainer inspect` on a tiny model directory and on a small run: the page it writes, what the run
contributes (checked against the run's tables read directly), offline-ness, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from neuron_explainer.cli import app
from neuron_explainer.view import inspect_page
from tests.conftest import make_tokenizer
from tests.integration.test_view_site import external_urls, page_data
from tests.integration.view_run import EXPLAINED, build_view_run

runner = CliRunner()
TEXT = "the cat sat on the red house and the dog ran"


@pytest.fixture(scope="module")
def view_run(tiny_model_dirs, corpus_file, tmp_path_factory) -> Path:
    return build_view_run(tiny_model_dirs, corpus_file, tmp_path_factory)


def test_inspect_writes_an_offline_page_equal_to_the_python_api(tiny_model_dirs, tmp_path: Path) -> None:
    model = str(tiny_model_dirs["llama"])
    out = tmp_path / "page.html"
    args = ["inspect", "--model", model, "--text", TEXT, "--watch", "dog,tree", "--layers", "1", "--head", "1:1"]
    args += ["--target", "and", "--method", "grad_x_input", "--factors", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "logit lens" in result.output
    data = page_data(out)
    assert list(data) == ["ex", "saliency", "lens", "rankings", "attention", "qk", "factors"]  # no run: no firing
    assert data["ex"]["prompt"][0] == "[BOS]" and len(data["ex"]["prompt"]) == 12
    assert data["saliency"]["target"] == "and" and data["saliency"]["method"] == "grad_x_input"
    assert data["lens"]["layers"] == [1] and data["lens"]["watch"] == ["dog", "tree"]
    assert (data["qk"]["layer"], data["qk"]["head"]) == (1, 1) and data["attention"]["sel"] == [1, 1]
    assert len(data["factors"]["items"][0]["rows"]) == 2
    last = data["rankings"]["ranks"][-1]
    assert f"watched 'dog': rank {last[0]} after the last layer" in result.output
    assert f"watched 'tree': rank {last[1]} after the last layer" in result.output
    assert "target 'and' after 'ran': prob " in result.output and "most salient (grad_x_input): " in result.output
    assert not external_urls(out)
    api = tmp_path / "api.html"
    inspect_page(
        model, TEXT, watch=["dog", "tree"], layers=[1], head=(1, 1), target="and", method="grad_x_input", n_factors=2,
        out=api,
    )  # fmt: skip
    assert page_data(out) == page_data(api)


def best_explanations(run: Path) -> dict[tuple[int, int], tuple[str, float]]:
    """(layer, neuron) -> (explanation, score): the run's tables read directly, max over simulators."""
    expl = pd.concat(pd.read_parquet(p) for p in sorted((run / "explanations").glob("*.parquet")))
    scores = pd.concat(pd.read_parquet(p) for p in sorted((run / "scores").glob("*.parquet")))
    expl = expl[~expl.explainer.str.startswith("baseline:")]
    tr = scores[scores.scorer == "top_and_random"].groupby("explanation_id").correlation.max()
    expl = expl.assign(score=expl.explanation_id.map(tr)).sort_values("score", ascending=False, na_position="last")
    best = expl.drop_duplicates(["layer", "neuron"])
    return {
        (int(a), int(b)): (e, s)
        for a, b, e, s in zip(best.layer, best.neuron, best.explanation, best.score, strict=True)
    }


def test_inspect_with_a_run_lists_its_explained_neurons(view_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run-page.html"
    result = runner.invoke(app, ["inspect", "--run", str(view_run), "--text", TEXT, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    data = page_data(out)
    firing = data["firing"]
    assert firing["normalized"] is True and "explained neurons that fire here" in result.output
    assert f"explained neurons listed: {len(firing['neurons'])}" in result.output
    want = best_explanations(view_run)
    assert want and set(want) <= set(EXPLAINED)  # (the fake explainer fails on some neurons)
    listed = {(n[0], n[1]): (n[2], n[3]) for n in firing["neurons"]}
    assert set(listed) == set(want)  # every explained neuron has a positive max: each ranks at every token
    for key, (explanation, score) in listed.items():
        assert explanation == want[key][0] and score == pytest.approx(want[key][1], abs=1e-4)
    assert all(len(entries) <= 5 for entries in firing["at"]) and len(firing["at"]) == len(data["ex"]["prompt"])
    spec = json.loads((view_run / "manifest.json").read_text())["harvest"]["config"]["model"]
    assert f"<h1>{spec}</h1>" in text.replace("&#47;", "/").replace("&#58;", ":")  # the run's model, loaded by default
    assert not external_urls(out)


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory) -> Path:
    import transformers as tf

    tokenizer, vocab = make_tokenizer(with_bos=False)
    cfg = tf.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=vocab,
                       word_embed_proj_dim=16, max_position_embeddings=32)  # fmt: skip
    path = tmp_path_factory.mktemp("opt") / "tiny-opt"
    tf.OPTForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_inspect_errors_are_one_line(tiny_model_dirs, unsupported_model: Path, tmp_path: Path) -> None:
    model = str(tiny_model_dirs["gpt2"])
    cases = [
        ([], "give --model, or --run"),
        (["--model", model, "--head", "1"], "--head must look like LAYER:HEAD"),
        (["--model", model, "--layers", "0-9"], "layer 2 out of range"),
        (["--model", model, "--watch", ","], "--watch must list tokens"),
        (["--model", model, "--target", "cat sat"], "is 2 tokens, not one"),
        (["--model", str(unsupported_model)], "unsupported model type 'opt'"),
        (["--run", str(tmp_path / "nowhere")], "not a run directory"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["inspect", "--text", TEXT, "--out", str(tmp_path / "p.html"), *extra])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (extra, result.output)
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (extra, result.output)
    assert not (tmp_path / "p.html").exists()
