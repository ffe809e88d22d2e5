import asyncio
from pathlib import Path

import pytest

from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
from neuron_explainer.puzzles.bench import (
    ExplainerSetup,
    explainer_benchmark,
    lookup_explanation,
    scorer_benchmark,
    summarize,
    write_results,
)
from neuron_explainer.puzzles.puzzle import load_puzzles, tokenize_marked, top_tokens_explanation
from neuron_explainer.simulate.methods import RecordSimulator
from neuron_explainer.simulate.simulator import SimulatorSetup
from tests.conftest import read_target_slot


def test_the_shipped_puzzles_are_valid_and_cover_the_themes() -> None:
    puzzles = load_puzzles()
    assert len(puzzles) >= 25 and len({p.id for p in puzzles}) == len(puzzles)
    themes = {p.theme for p in puzzles}
    for theme in ("negation", "position", "number property", "code vs prose", "next word", "wrong facts",
                  "characters in a story"):  # fmt: skip
        assert theme in themes
    for p in puzzles:
        assert 3 <= len(p.false_explanations) <= 5 and p.false_explanations[-1].startswith("the tokens ")
        assert any(max(r.activations) == 0 for r in p.records)  # negative evidence


def test_tokenize_marked() -> None:
    r = tokenize_marked('if (a {<|10} b) { x++; } "{hi|3}"')
    assert "".join(r.tokens) == 'if (a < b) { x++; } "hi"'
    assert r.activations[r.tokens.index(" <")] == 10 and r.activations[r.tokens.index("hi")] == 3
    assert sum(r.activations) == 13
    with pytest.raises(ConfigError, match="above 10"):
        tokenize_marked("a {b|11}")


def test_top_tokens_and_lookup_explanations() -> None:
    records = [tokenize_marked("the {cat|9} and the {dog|8}"), tokenize_marked("a {cat|7} sat {here|2}")]
    assert top_tokens_explanation(records) == 'the tokens "cat" and "dog"'
    assert lookup_explanation(records) == 'the tokens "cat", "dog" and "here"'


HEAD = "- id: a\n  theme: t\n  explanation: e\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (HEAD + "  sentences: ['{x|3} y', 'z', '{w|2}', 'v']\n", "lacks"),
        (HEAD + "  false_explanations: [f]\n  sentences: ['{x|3}', 'z', '{w|2}', 'v']\n", "at least 2"),
        (HEAD + "  false_explanations: [f, g]\n  sentences: ['x', 'z', '{w|2}', 'v']\n", "must fire"),
        (HEAD + "  false_explanations: [f, g]\n  sentences: ['{x|1}', '{z|1}', '{w|2}', '{v|1}']\n", "does not fire"),
        ("- [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_puzzle_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_puzzles(path)


def truth_simulator(puzzles):
    """Knows every puzzle's true levels; answers a constant for any other explanation."""
    truth = {}
    for p in puzzles:
        for r in p.records:
            truth[(p.explanation, "".join(r.tokens))] = [int(a) for a in r.activations]

    def oracle(prompt, tokens, i):
        found = read_target_slot(prompt, tokens, i)
        if found is None:
            return (("x", 0.0),)
        explanation, text, slot = found
        levels = truth.get((explanation, text))
        return ((str(levels[slot]) if levels else "1", 0.0),)

    return RecordSimulator(SimulatorSetup(FakeBackend(oracle=oracle), load_simulator_template(), max_level=10))


def test_benchmarks_with_a_perfect_scorer_and_a_perfect_explainer(tmp_path: Path) -> None:
    puzzles = load_puzzles()[:4]
    sim = truth_simulator(puzzles)
    scorer_rows = asyncio.run(scorer_benchmark(puzzles, sim))
    assert all(r["rank"] == 1 for r in scorer_rows if r["is_true"])
    # an explainer that names the truth solves every puzzle; the judge agrees
    explainer = FakeBackend(completions=tuple(f" {p.explanation}." for p in puzzles))
    judge = FakeBackend(completions=("yes",))
    setup = ExplainerSetup("fake", backend=explainer, template=load_explainer_template(), judge=judge)
    rows = asyncio.run(explainer_benchmark(puzzles, sim, setup, revise=False))
    assert [r["solved"] for r in rows] == [True] * 4 and all(r["judge"] for r in rows)
    # the top-tokens baseline names tokens, which this simulator scores as a constant: never solved
    base = asyncio.run(explainer_benchmark(puzzles, sim, ExplainerSetup("top_tokens"), revise=False))
    assert not any(r["solved"] for r in base) and all(r["score"] is None for r in base)
    summary = summarize(scorer_rows, rows)
    assert summary == {"puzzles": 4, "scorer_top1": 4, "scorer_top2": 4, "solved[fake, original]": 4,
                       "failed[fake, original]": 0}  # fmt: skip
    write_results(str(tmp_path), scorer_rows, rows, summary, {"simulator": "fake"})
    assert "ranks first in 4 / 4" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "scorer.parquet").exists() and (tmp_path / "explainer.json").exists()
