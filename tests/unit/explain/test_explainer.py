import asyncio

import pytest

from neuron_explainer.datatypes import ActivationRecord, Failure
from neuron_explainer.explain.explainer import (
    ExplanationParseError,
    build_explainer_messages,
    explain,
    parse_explanation,
)
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.prompts.templates import load_explainer_template

RECORDS = [
    ActivationRecord(
        tokens=[" The", " cat", " sat", " on", " the", " mat", "."], activations=[0, 2.0, 0, 0, 0, 0.1, -0.2]
    ),
    ActivationRecord(tokens=[" A", " dog", "\n", " ran"], activations=[0, 0.5, 0, 0]),
]


def render(messages) -> str:
    return "".join(f"=== {m.role}\n{m.content}\n" for m in messages)


def test_golden_explainer_prompt(golden) -> None:
    template = load_explainer_template()
    golden("explainer_v1", render(build_explainer_messages(template, RECORDS)))
    dense = [ActivationRecord(tokens=["a", "b", "c"], activations=[1.0, 2.0, 3.0])]
    text = render(build_explainer_messages(template, dense))
    assert "non-zero tokens only" not in text.split("Neuron 3")[1]  # dense neuron: no repeat


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (" animals, especially cats.", "animals, especially cats"),
        ("The main thing this neuron does is find mentions of cats.\nMore text", "mentions of cats"),
        ('"small pets"', "small pets"),
        ("this neuron detects: the word cat", "the word cat"),
    ],
)
def test_parse_explanation(raw: str, want: str) -> None:
    assert parse_explanation(raw) == want


@pytest.mark.parametrize("raw", ["", "   \n ", "...", "x" * 400])
def test_unusable_output_is_a_parse_error(raw: str) -> None:
    with pytest.raises(ExplanationParseError):
        parse_explanation(raw)


def test_explain_returns_phrases_and_typed_failures() -> None:
    fake = FakeBackend(completions=(" cats and dogs.", "", "The main thing this neuron does is find pets."))
    out = asyncio.run(explain(RECORDS, fake, load_explainer_template(), n=3, seed=0))
    assert out[0] == "cats and dogs" and out[2] == "pets"
    assert isinstance(out[1], Failure) and out[1].kind == "parse" and out[1].stage == "explain"
    ((_, (messages, params)),) = fake.calls
    assert params.n == 3 and params.temperature == 1.0 and messages[-1].role == "user"


def test_copies_and_prompt_echoes_are_rejected() -> None:
    with pytest.raises(ExplanationParseError, match="repeats a few-shot"):
        parse_explanation(" numbers that give a person's age.", ["numbers that give a person's age"])
    with pytest.raises(ExplanationParseError, match="echoes the prompt"):
        parse_explanation("The same activations, non-zero tokens only:")
