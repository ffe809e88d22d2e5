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


def test_golden_highlights_prompt(golden) -> None:
    template = load_explainer_template(version="highlights_v1")
    assert template.style == "highlights" and not template.examples
    records = [
        *RECORDS,
        ActivationRecord(tokens=["x"] * 10 + [" water", " and", " rain"], activations=[0] * 10 + [3.0, 0.0, 2.6]),
        ActivationRecord(tokens=["a", "b"], activations=[0.0, 0.0]),  # never fires: no line
    ]
    golden("explainer_highlights_v1", render(build_explainer_messages(template, records)))


def test_highlights_answer_is_completed_prefixed_and_cut_at_the_sentence() -> None:
    template = load_explainer_template(version="highlights_v1")
    fake = FakeBackend(completions=(" related to rain and water. They also [[mention]] clouds",), supports_prefill=True)
    (out,) = asyncio.run(explain(RECORDS, fake, template, n=1, seed=0))
    assert out == "words related to rain and water"
    ((_, (messages, _)),) = fake.calls
    assert messages[-1].role == "assistant" and messages[-1].content == "These words are all"
    # a chat model that repeats the sentence start instead of continuing it
    assert (
        parse_explanation(
            "These words are all [[weather]] terms.", answer_prefix="These words are all", explanation_prefix="words"
        )
        == "words weather terms"
    )


def test_template_front_matter_is_checked(tmp_path) -> None:
    from neuron_explainer.errors import ConfigError

    (tmp_path / "explainer").mkdir()
    (tmp_path / "explainer" / "x.md").write_text("---\nstyle: poems\n---\nhi")
    with pytest.raises(ConfigError, match="style must be one of"):
        load_explainer_template(str(tmp_path), "x")
    (tmp_path / "explainer" / "y.md").write_text("---\ncolour: red\n---\nhi")
    with pytest.raises(ConfigError, match="unknown front-matter"):
        load_explainer_template(str(tmp_path), "y")


def test_golden_next_token_prompts(golden) -> None:
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.parse import build_all_at_once_prompt

    template = load_explainer_template(version="next_token_v1")
    golden("explainer_next_token_v1", render(build_explainer_messages(template, RECORDS)))
    sim = load_simulator_template(version="next_token_v1")
    assert sim.view == "next_token"
    golden("simulator_all_at_once_next_token_v1", build_all_at_once_prompt(sim, "a noun next", [" The", " cat"]).text)


def test_golden_top_tokens_prompt(golden) -> None:
    template = load_explainer_template(version="tokens_v1")
    records = [
        *RECORDS,
        ActivationRecord(tokens=[" cat", " and", " cat", " dog"], activations=[2.0, 0.0, 1.9, 1.2]),
    ]
    text = render(build_explainer_messages(template, records))
    golden("explainer_tokens_v1", text)
    assert "cat (3 times)" in text  # counted over excerpts, most frequent first


def test_quotes_inside_an_explanation_survive() -> None:
    assert parse_explanation(' verbs negated by "not" or "never".') == 'verbs negated by "not" or "never"'
    assert parse_explanation(' "small pets"') == "small pets"
    assert parse_explanation(' **the word "rain"**') == 'the word "rain"'
