"""Explanation revision: test sentences, the neuron's responses, revised explanations (docs/method.md)."""

from neuron_explainer.revise.prompts import (
    RevisionParseError,
    RevisionTemplates,
    build_revise_messages,
    build_sentence_messages,
    is_false_positive,
    load_revision_templates,
    parse_sentences,
    split_sentences,
)
from neuron_explainer.revise.round import (
    Evidence,
    Respond,
    TestSentenceError,
    gather_evidence,
    generation_params,
    revise_explanation,
    write_test_sentences,
)

__all__ = [
    "Evidence",
    "Respond",
    "RevisionParseError",
    "RevisionTemplates",
    "TestSentenceError",
    "build_revise_messages",
    "build_sentence_messages",
    "gather_evidence",
    "generation_params",
    "is_false_positive",
    "load_revision_templates",
    "parse_sentences",
    "revise_explanation",
    "split_sentences",
    "write_test_sentences",
]
