"""One revision round, shared by the revise stage and the puzzle benchmark (docs/method.md, "Revise").

1. the explainer writes up to 10 test sentences that should activate the neuron if the explanation is
   right (`write_test_sentences`);
2. the neuron's response to each comes from a `Respond` function: the subject model in the revise
   stage, the simulator under the true explanation for a synthetic puzzle neuron;
3. even-numbered sentences go to revision, odd ones to scoring (`split_sentences`);
4. the explainer revises the explanation from the original evidence and the revision sentences with
   their responses (`revise_explanation`), or from other records shown the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from neuron_explainer.datatypes import ActivationRecord, Failure
from neuron_explainer.explain.explainer import ExplanationParseError, parse_explanation
from neuron_explainer.llm.base import GenerateParams, LLMBackend, Message
from neuron_explainer.prompts.templates import ExplainerTemplate
from neuron_explainer.revise.prompts import (
    RevisionParseError,
    RevisionTemplates,
    build_revise_messages,
    build_sentence_messages,
    parse_sentences,
    split_sentences,
)

Respond = Callable[[str], Awaitable[ActivationRecord]]
"""The neuron's real (or, for a puzzle, simulated) activations on a new sentence."""


class TestSentenceError(RevisionParseError):
    """The explainer's list of test sentences is unusable; `raw` holds what it wrote."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class Evidence:
    """Test sentences with the neuron's responses, split into revision and scoring halves."""

    sentences: tuple[str, ...]
    records: tuple[ActivationRecord, ...]
    revision: tuple[int, ...]
    """Indices of the sentences shown to the reviser."""
    scoring: tuple[int, ...]
    """Indices of the sentences that extend the scoring set."""

    def split(self, which: str) -> list[ActivationRecord]:
        """The records of `revision` or `scoring`."""
        return [self.records[i] for i in (self.revision if which == "revision" else self.scoring)]


def generation_params(temperature: float, max_tokens: int, seed: int | None) -> GenerateParams:
    """The sampling settings of an explanation-writing call (one sample, ends at a blank line)."""
    return GenerateParams(max_tokens=max_tokens, temperature=temperature, n=1, seed=seed, stop=("\n\n",))


async def write_test_sentences(
    explainer: LLMBackend, templates: RevisionTemplates, explanation: str, params: GenerateParams, max_tokens: int
) -> list[str]:
    """Up to 10 sentences that should activate the neuron if `explanation` is right.

    Raises:
        TestSentenceError: fewer than two usable sentences (the raw answer is attached).
    """
    prefill = bool(getattr(explainer, "supports_prefill", False))
    messages = build_sentence_messages(templates, explanation)
    if not prefill:
        messages = messages[:-1]  # the "1." the prompt would have started the answer with
    (raw,) = await explainer.generate(messages, replace(params, max_tokens=max_tokens, stop=()))
    try:
        return parse_sentences(raw, prefilled=prefill)
    except RevisionParseError as e:
        raise TestSentenceError(str(e), raw) from None


async def gather_evidence(sentences: Sequence[str], respond: Respond) -> Evidence:
    """The neuron's response to every sentence, split into revision (even) and scoring (odd) halves."""
    records = [await respond(s) for s in sentences]
    rev, score = split_sentences(sentences)
    return Evidence(tuple(sentences), tuple(records), tuple(rev), tuple(score))


async def revise_explanation(
    explainer: LLMBackend,
    templates: RevisionTemplates,
    explainer_template: ExplainerTemplate,
    evidence: Sequence[ActivationRecord],
    explanation: str,
    shown: Sequence[ActivationRecord],
    params: GenerateParams,
) -> str | Failure:
    """A revised explanation from the original evidence, the explanation and new records with responses.

    An answer with no usable explanation is a parse Failure (with the raw answer), never an explanation.
    """
    messages = build_revise_messages(templates, explainer_template, evidence, explanation, shown)
    if getattr(explainer, "supports_prefill", False):
        messages.append(Message("assistant", explainer_template.answer_prefix))
    (raw,) = await explainer.generate(messages, params)
    try:
        return parse_explanation(
            raw,
            answer_prefix=explainer_template.answer_prefix,
            explanation_prefix=explainer_template.explanation_prefix,
        )
    except ExplanationParseError as e:
        return Failure(stage="revise", kind="parse", message=str(e), raw=raw)
