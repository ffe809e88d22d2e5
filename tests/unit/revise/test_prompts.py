import pytest

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.prompts.templates import load_explainer_template
from neuron_explainer.revise.prompts import (
    RevisionParseError,
    build_revise_messages,
    build_sentence_messages,
    is_false_positive,
    load_revision_templates,
    parse_sentences,
    split_sentences,
)

EVIDENCE = [
    ActivationRecord(tokens=[" The", " river", " rose"], activations=[0.0, 2.0, 0.1]),
    ActivationRecord(tokens=[" Rain", " fell"], activations=[1.5, 0.0]),
]
NEW = [
    ActivationRecord(tokens=[" Water", " is", " wet"], activations=[1.0, 0.0, -0.1]),
    ActivationRecord(tokens=[" Dry", " sand"], activations=[0.0, 0.1]),
]


def render(messages) -> str:
    return "".join(f"=== {m.role}\n{m.content}\n" for m in messages)


def test_golden_revision_prompts(golden) -> None:
    t = load_revision_templates()
    golden("revision_sentences_v1", render(build_sentence_messages(t, "water and rain")))
    for version in ("v1", "highlights_v1"):
        messages = build_revise_messages(t, load_explainer_template(version=version), EVIDENCE, "water", NEW)
        golden(f"revision_revise_v1_{version}", render(messages))


def test_parse_sentences_from_a_prefilled_numbered_list() -> None:
    raw = ' The flood reached the town.\n2. "Rain fell all night."\n3) Rivers carry water.\nThat is all!\n'
    raw += "3. Rivers carry water."
    assert parse_sentences(raw) == ["The flood reached the town.", "Rain fell all night.", "Rivers carry water."]
    assert parse_sentences("1. One sentence here.\n2. Another one here.", prefilled=False) == [
        "One sentence here.",
        "Another one here.",
    ]


@pytest.mark.parametrize("raw", ["", " only one sentence", "1. ok ok\n2. ..\n3. ?"])
def test_too_few_sentences_is_a_parse_error(raw: str) -> None:
    with pytest.raises(RevisionParseError):
        parse_sentences(raw)


def test_split_and_false_positives() -> None:
    assert split_sentences(["a"] * 10) == ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9])
    assert split_sentences(["a"] * 3) == ([0, 2], [1])
    assert not is_false_positive(NEW[0], top=2.0)  # 1.0 / 2.0 -> level 5
    assert is_false_positive(NEW[1], top=2.0)  # 0.1 / 2.0 -> level 0


def test_parse_sentences_run_together_on_one_line() -> None:
    raw = " The dog barked. 2. The cat aged 7. It purred. 3. Owls hooted at night."
    assert parse_sentences(raw) == ["The dog barked.", "The cat aged 7. It purred.", "Owls hooted at night."]
