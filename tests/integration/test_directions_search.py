"""The direction search on a planted explainable direction, with a fake explainer and an oracle simulator.

The pool's activations are synthetic (the search takes its pool as an argument): correlated Gaussian
noise, plus a fixed vector added on every number word (`one` ... `ten`) of the run's real excerpts. The
whitened direction that reads "is a number word" best is then theta* = Sigma^{-1/2} Cov(a, c) (c the
indicator), normalised. The fake explainer is competent but knows nothing of theta*: it names the word
category most over-represented among the tokens the explainer prompt marks. The oracle simulator puts
level 10 on the tokens of the category an explanation names, 0 elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from neuron_explainer.config import load_config
from neuron_explainer.directions.covariance import Whitener
from neuron_explainer.directions.pool import Pool
from neuron_explainer.directions.results import read_rows
from neuron_explainer.directions.search import SearchSettings, search_directions
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.stages import Deps
from neuron_explainer.stages.harvest import HarvestRun
from tests.conftest import write_corpus
from tests.integration.test_harvest_reference import harvest_cfg

CATEGORIES = {
    "number": "one two three four five six seven eight nine ten",
    "colour": "red blue green",
    "animal": "cat dog bird fish",
    "person": "king queen man woman child friend enemy teacher doctor farmer singer painter writer reader",
    "nature": "house tree river stone road city town field sea sky star sun moon rain snow fire wind earth",
    "action": "walks talks sings reads writes paints eats drinks sleeps wakes opens closes finds loses gives takes",
    "function": "the a on under over and or but not never always quickly slowly small big",
}
CATEGORY_OF = {word: name for name, words in CATEGORIES.items() for word in words.split()}
PLANTED = "number"
D, P, T = 24, 240, 32


def fake_explainer() -> FakeBackend:
    """Names the category with the most marked tokens per category word ([[token]] in the prompt)."""

    def respond(messages) -> str:
        marked = [m.strip().lower() for m in re.findall(r"\[\[(.+?)\]\]", messages[-1].content)]
        counts = Counter(CATEGORY_OF[w] for w in marked if w in CATEGORY_OF)
        if not counts:
            return " of no particular kind."
        best = max(sorted(counts), key=lambda c: counts[c] / len(CATEGORIES[c].split()))
        return f" {best} words."

    return FakeBackend(responder=respond)


def oracle(prompt, tokens, i):
    """Level 10 on tokens of the category the target explanation names, else 0."""
    target = prompt.rfind("<start>\n")
    if tokens[i][0] != "\t" or tokens[i][1] < target or i + 1 >= len(tokens) or tokens[i + 1][0] != "unknown":
        return (("x", 0.0),)
    explanation = prompt[:target].rsplit("Explanation: ", 1)[1].split("\n", 1)[0]
    named = [c for c in CATEGORIES if c in explanation]
    word = tokens[i - 1][0].strip().lower()
    return (("10" if named and CATEGORY_OF.get(word) == named[0] else "0", 0.0),)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dirs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    corpus = write_corpus(root / "corpus", n_docs=500, seed=11)
    cfg = harvest_cfg(tiny_model_dirs["llama"], corpus, n_excerpts=P, excerpt_len=T, layers=[1], covariance_layers=[1])
    HarvestRun(cfg, root / "run").run()
    return root / "run"


def planted(run: Path) -> tuple[Pool, Whitener, np.ndarray]:
    """The synthetic pool over the run's excerpts, its exact whitener, and the planted direction theta*."""
    excerpts = ds.dataset(run / "excerpts").to_table().to_pandas().sort_values("excerpt_id")
    tokens = [list(t) for t in excerpts.tokens][:P]
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(D, D)) / np.sqrt(D)
    signal = rng.normal(size=D)
    is_number = np.array([[CATEGORY_OF.get(t.strip().lower()) == PLANTED for t in row] for row in tokens], float)
    acts = rng.normal(size=(P, T, D)) @ mixing.T + 3.0 * is_number[..., None] * signal + 0.5
    acts = acts.astype(np.float16).astype(np.float64)
    flat, c = acts.reshape(-1, D), is_number.reshape(-1)
    whitener = Whitener.from_covariance(np.cov(flat, rowvar=False, bias=True))
    star = whitener.inverse_sqrt @ ((flat - flat.mean(0)).T @ (c - c.mean()))
    pool = Pool(1, excerpts.excerpt_id.tolist()[:P], tokens, torch.tensor(acts, dtype=torch.float16))
    return pool, whitener, star / np.linalg.norm(star)


def deps_for(run: Path, simulator: FakeBackend, explainer: FakeBackend | None = None) -> Deps:
    cfg = load_config(
        None,
        {"out": str(run), "llm.cache": False, "explain.explainer": "fake", "explain.prompt_version": "highlights_v1",
         "simulate.simulator": "fake:oracle"},
    )  # fmt: skip
    backends = {"fake": explainer or fake_explainer(), "fake:oracle": simulator}
    return Deps.from_config(cfg, backends=backends, notify=lambda m: None)


SETTINGS = SearchSettings(layer=1, n_directions=4, rounds=6, pool_size=P, update_steps=50)


def test_search_recovers_a_planted_direction(run_dir: Path) -> None:
    pool, whitener, star = planted(run_dir)
    store = RunStore(run_dir)
    explainer = fake_explainer()
    deps = deps_for(run_dir, FakeBackend(oracle=oracle), explainer)
    search_id, summary = asyncio.run(search_directions(store, deps, SETTINGS, pool=pool, whitener=whitener))
    results = {r["direction"]: r for r in read_rows(store, "direction_results", search_id)}
    assert sorted(results) == list(range(SETTINGS.n_directions))
    cos = {k: abs(float(np.asarray(r["theta"]) @ star)) for k, r in results.items()}
    # coordinate ascent finds theta* from some random starts (not from those where number words start out
    # suppressed, a local optimum), and the score says which: every direction that explains well is theta*
    found = [k for k, r in results.items() if r["score_final"] > 0.8]
    assert found and all(cos[k] >= 0.9 and PLANTED in results[k]["explanation"] for k in found)
    assert all(cos[k] < 0.9 for k in results if k not in found)
    # random starts score lower before optimisation than after, direction by direction
    assert (summary.score_final > summary.score_start).all()
    assert summary.score_final.mean() > summary.score_start.mean() + 0.3
    rounds = read_rows(store, "direction_rounds", search_id)
    assert len(rounds) == SETTINGS.n_directions * SETTINGS.rounds
    picks = {(r["direction"], r["round"]): r["explanation"] for r in rounds}
    for row in rounds:  # no excerpt both shown to the explainer and scored; the last pick is always re-scored
        assert not set(row["explain_excerpts"]) & set(row["scoring_excerpts"])
        assert row["round"] == 0 or picks[row["direction"], row["round"] - 1] in row["candidates"]
    revisions = [c for c in explainer.calls if c[1][0][0].content.startswith("We are improving an explanation")]
    assert len(revisions) == SETTINGS.n_directions * (SETTINGS.rounds - 1)
    cosines = {
        (c["direction_a"], c["direction_b"]): c["cosine"] for c in read_rows(store, "direction_cosines", search_id)
    }
    assert len(cosines) == 6 and all(abs(cosines[min(a, b), max(a, b)]) > 0.8 for a in found for b in found if a != b)
    assert all(1 <= results[k]["neurons_for_90"] <= D for k in found)
    assert (run_dir / "directions" / f"layer-001-{search_id}.npz").exists()


class Killed(Exception):
    """Stands for the process being killed mid-search."""


def test_a_killed_search_resumes_to_the_same_result(run_dir: Path, tmp_path: Path) -> None:
    pool, whitener, _ = planted(run_dir)
    settings = dataclasses.replace(SETTINGS, n_directions=2, rounds=4)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for target in (whole, killed):
        shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("directions"))
    asyncio.run(search_directions(RunStore(whole), deps_for(whole, FakeBackend(oracle=oracle)), settings, pool=pool,
                                  whitener=whitener))  # fmt: skip

    def dies(message: str) -> None:  # status lines come after a round is written
        if message.startswith("direction 1 round 1:"):
            raise Killed

    deps = deps_for(killed, FakeBackend(oracle=oracle))
    deps.notify = dies
    with pytest.raises(Killed):
        asyncio.run(search_directions(RunStore(killed), deps, settings, pool=pool, whitener=whitener))
    partial = read_table(RunStore(killed), "direction_rounds", folder="directions")
    assert len(partial) == settings.rounds + 2  # direction 0 done, direction 1 killed after its round 1
    assert len(read_table(RunStore(killed), "direction_results", folder="directions")) == 1
    explainer = fake_explainer()
    asyncio.run(search_directions(RunStore(killed), deps_for(killed, FakeBackend(oracle=oracle), explainer), settings,
                                  pool=pool, whitener=whitener))  # fmt: skip
    rounds_left = 2 * settings.rounds - len(partial)
    assert len(explainer.calls) <= 2 * rounds_left  # an explanation and a revision per round left, no more
    for table, key in (("direction_rounds", ["direction", "round"]), ("direction_results", ["direction"]),
                       ("direction_cosines", ["direction_a", "direction_b"])):  # fmt: skip
        a = read_table(RunStore(whole), table, folder="directions").sort_values(key).reset_index(drop=True)
        b = read_table(RunStore(killed), table, folder="directions").sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) > 0
        for col in a.columns:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), (table, col)


def test_cli_searches_with_the_real_subject_model_and_resumes(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from neuron_explainer.cli import app

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("directions"))
    args = ["directions", "--run", str(run), "--layer", "1", "--n", "2", "--rounds", "2", "--pool", "60",
            "--steps", "5", "--set", "explain.explainer=fake", "--set", "simulate.simulator=fake:oracle"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "mean" in first.output and "round 0" in first.output
    rounds = read_table(RunStore(run), "direction_rounds", folder="directions")
    assert len(rounds) == 4 and rounds.layer.eq(1).all()
    again = CliRunner().invoke(app, args)  # everything done: nothing new, the same table
    assert again.exit_code == 0 and len(read_table(RunStore(run), "direction_rounds", folder="directions")) == 4
    table = [
        o.split("whitened directions of layer")[1].split("directions file")[0] for o in (first.output, again.output)
    ]
    assert table[0] == table[1] and "round 1" not in again.output  # no round ran again
    missing = CliRunner().invoke(app, [*args[:4], "0", *args[5:]])
    assert missing.exit_code == 2 and "no covariance of layer 0" in missing.output
    raw = CliRunner().invoke(app, [*args[:4], "0", *args[5:], "--raw"])
    assert raw.exit_code == 0, raw.output
