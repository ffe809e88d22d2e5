"""Revision prompts (docs/method.md, "Revise"): ask for test sentences, parse them, build the revision prompt.

Pure prompt building and parsing; revise/round.py runs one revision round with the models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.explain.explainer import format_evidence
from neuron_explainer.llm.base import Message
from neuron_explainer.prompts.formatting import max_activation, normalize_activations
from neuron_explainer.prompts.templates import DEFAULT_PROMPTS_DIR, ExplainerTemplate, read_prompt

N_SENTENCES = 10
MIN_SENTENCES = 2
"""Fewer parseable sentences than this is a failure: one is needed for revision and one for scoring."""
MAX_SENTENCE_CHARS = 400


class RevisionParseError(NeuronExplainerError):
    """The model's list of test sentences holds too few usable sentences."""


@dataclass(frozen=True)
class RevisionTemplates:
    """The two revision prompts: test-sentence generation and the revision itself."""

    version: str
    sentences_intro: str
    revise_intro: str


@cache
def load_revision_templates(prompts_dir: str | None = None, version: str = "v1") -> RevisionTemplates:
    """`revision/sentences_<version>.md` and `revision/revise_<version>.md`."""
    root = Path(prompts_dir) if prompts_dir else DEFAULT_PROMPTS_DIR
    return RevisionTemplates(
        f"revision/{version}",
        read_prompt(root / "revision" / f"sentences_{version}.md"),
        read_prompt(root / "revision" / f"revise_{version}.md"),
    )


def build_sentence_messages(templates: RevisionTemplates, explanation: str) -> list[Message]:
    """Ask for N_SENTENCES numbered sentences that should activate the neuron if `explanation` is right."""
    return [
        Message("system", templates.sentences_intro),
        Message("user", f"Explanation: the main thing this neuron does is find {explanation}."),
        Message("assistant", "1."),
    ]


_ITEM_NUMBER = re.compile(r"(?:^|(?<=\s))(\d{1,2})\s*[.):-]\s+", re.MULTILINE)


def _numbered_items(text: str, prefilled: bool) -> list[str]:
    """Items of a numbered list, on separate lines or run together on one ("1. a 2. b 3. c").

    A number starts a new item only if it continues the sequence (so "aged 7. Then" inside an item
    does not split it); with `prefilled`, the text starts inside item 1 (the prompt wrote "1.").
    """
    items: list[str] = []
    expected = 2 if prefilled else 1
    current: list[str] = [] if not prefilled else [""]
    pos = 0
    for m in _ITEM_NUMBER.finditer(text):
        if int(m.group(1)) != expected:
            continue
        if current:
            current[-1] += text[pos : m.start()]
            items.append(current.pop())
        current.append("")
        pos = m.end()
        expected += 1
    if current:
        current[-1] += text[pos:]
        items.append(current.pop())
    return items


def parse_sentences(text: str, *, prefilled: bool = True) -> list[str]:
    """The sentences of a numbered list (the first item's "1." may have been prefilled), deduplicated.

    Each item is cut at its first line break (prose after the list is dropped).

    Raises:
        RevisionParseError: fewer than MIN_SENTENCES usable sentences.
    """
    out: list[str] = []
    for item in _numbered_items(text, prefilled):
        lines = [line for line in item.strip().splitlines() if line.strip()]
        sentence = lines[0].strip().strip("\"'*").strip() if lines else ""
        if sum(ch.isalpha() for ch in sentence) >= 3 and len(sentence) <= MAX_SENTENCE_CHARS and sentence not in out:
            out.append(sentence)
    if len(out) < MIN_SENTENCES:
        raise RevisionParseError(f"only {len(out)} usable test sentence(s) in the output {text[:120]!r}")
    return out[:N_SENTENCES]


def split_sentences(sentences: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indices for revision (even) and scoring (odd): 5 and 5 of 10, balanced when fewer."""
    return list(range(0, len(sentences), 2)), list(range(1, len(sentences), 2))


def _new_evidence(records: Sequence[ActivationRecord], top: float) -> str:
    lines = []
    for r in records:
        levels = normalize_activations(r.activations, top)
        peak = max(levels) if levels else 0
        if peak > 0:
            i = max(range(len(levels)), key=lambda j: (levels[j], -j))
            token = r.tokens[i]
            lead = token[: len(token) - len(token.lstrip())]
            text = "".join(r.tokens[:i]) + f"{lead}[[{token.strip()}]]" + "".join(r.tokens[i + 1 :])
        else:
            text = "".join(r.tokens)
        lines.append(f"response {peak}/10: {text.strip()}".replace("\n", " "))
    return "\n".join(lines)


def build_revise_messages(
    templates: RevisionTemplates,
    explainer: ExplainerTemplate,
    evidence: Sequence[ActivationRecord],
    explanation: str,
    new_records: Sequence[ActivationRecord],
) -> list[Message]:
    """The revision prompt: original evidence (in the explainer's layout), explanation, tested sentences.

    Levels of the new sentences are on the evidence's scale (10 = the strongest evidence activation), with
    each sentence's strongest token marked [[like this]] when it responds at all.
    """
    top = max_activation([r.activations for r in evidence])
    shown = format_evidence(explainer, [(r.tokens, normalize_activations(r.activations, top)) for r in evidence])
    user = (
        f"Text that made the neuron respond most:\n{shown}\n\n"
        f"Current explanation: {explanation}\n\n"
        f"New test sentences and the neuron's responses:\n{_new_evidence(new_records, top)}"
    )
    return [Message("system", templates.revise_intro), Message("user", user)]


def is_false_positive(record: ActivationRecord, top: float) -> bool:
    """A test sentence that does not activate the neuron: its strongest token is below level 1 of 10."""
    return max(normalize_activations(record.activations, top), default=0) == 0
