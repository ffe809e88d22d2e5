"""Puzzles in the layout of OpenAI's published puzzles.json: tokens kept as given, a split where both halves fire."""

import asyncio
import json
from pathlib import Path

import pytest

from neuron_explainer.errors import ConfigError
from neuron_explainer.puzzles.puzzle import load_puzzles

PUZZLES = {
    "colours": {
        "name": "colours",
        "explanation": "colour words",
        "false_explanations": ["nouns", 'the tokens "blue", "red" and "green"'],
        "sentences": [
            ["The", [" red", 10], " car", "."],
            ["A", [" blue", 8], " sky", " and", [" green", 7], " grass"],
            ["Nothing", " here"],
            ["Two", " colours", ":", [" red", 9], " and", [" blue", 6]],
            ["Another", " plain", " line"],
        ],
    },
    "graded": {  # fires in every sentence, at graded levels: valid for the scorer benchmark
        "name": "graded",
        "explanation": "the word 'very', more strongly when repeated",
        "false_explanations": ["adverbs"],
        "sentences": [
            [["very", 3], " good"],
            [["very", 6], [" very", 9], " good"],
            [" so", ["very", 2]],
        ],
    },
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "puzzles.json"
    path.write_text(json.dumps(data))
    return path


def test_openai_layout_is_read_with_tokens_as_given(tmp_path: Path) -> None:
    colours, graded = load_puzzles(write(tmp_path, PUZZLES))
    assert colours.id == "colours" and colours.theme == "openai"
    assert colours.records[1].tokens == ["A", " blue", " sky", " and", " green", " grass"]
    assert colours.records[1].activations == [0.0, 8.0, 0.0, 0.0, 7.0, 0.0]
    # the given top-tokens false explanation is not added twice; a missing one is generated
    assert colours.false_explanations == ("nouns", 'the tokens "blue", "red" and "green"')
    assert graded.false_explanations[-1] == 'the tokens "very"'
    # both halves fire: firing sentences dealt alternately (evidence first), then silent ones
    assert [r.tokens[0] for r in colours.evidence] == ["The", "Nothing", "Two"]
    assert [r.tokens[0] for r in colours.held_out] == ["A", "Another"]
    for p in (colours, graded):
        assert any(max(r.activations) > 0 for r in p.evidence) and any(max(r.activations) > 0 for r in p.held_out)
        assert len(p.evidence) + len(p.held_out) == len(p.records)


@pytest.mark.parametrize(
    ("broken", "match"),
    [
        ({"p": {"explanation": "x", "false_explanations": ["y"]}}, "lacks"),
        ({"p": {**PUZZLES["graded"], "sentences": [[["very", -1]], [["very", 2]]]}}, "not a finite number"),
        ({"p": {**PUZZLES["graded"], "sentences": [[["very", 3], 7]]}}, "neither a token"),
        ({"p": {**PUZZLES["graded"], "sentences": [[["very", 3]], ["plain"]]}}, "at least 2 sentences"),
        ({"p": {**PUZZLES["graded"], "false_explanations": []}}, "false_explanations"),
        ([1, 2], "must map puzzle names"),
    ],
)
def test_malformed_openai_puzzles_are_clear_errors(tmp_path: Path, broken: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_puzzles(write(tmp_path, broken))


def test_scorer_benchmark_runs_on_the_openai_layout(tmp_path: Path) -> None:
    from neuron_explainer.llm.fake import FakeBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.puzzles.bench import scorer_benchmark
    from neuron_explainer.simulate.methods import RecordSimulator
    from neuron_explainer.simulate.simulator import SimulatorSetup
    from tests.conftest import read_target_slot

    puzzles = load_puzzles(write(tmp_path, PUZZLES))
    truth = {p.explanation: p for p in puzzles}

    def oracle(prompt, tokens, i):  # the true explanation simulates perfectly, the others see nothing
        found = read_target_slot(prompt, tokens, i)
        if found is None:
            return (("x", 0.0),)
        explanation, text, slot = found
        puzzle = truth.get(explanation)
        record = next((r for r in puzzle.records if "".join(r.tokens) == text), None) if puzzle else None
        level = int(record.activations[slot]) if record else slot % 2
        return ((str(level), 0.0),)

    rows = asyncio.run(
        scorer_benchmark(
            puzzles,
            RecordSimulator(SimulatorSetup(FakeBackend(oracle=oracle), load_simulator_template(), max_level=10)),
        )
    )
    assert {r["puzzle"] for r in rows if r["is_true"] and r["rank"] == 1} == {"colours", "graded"}
