"""The token-activation explainer: prompt building, sampling and output parsing."""

from __future__ import annotations

import re
from collections.abc import Sequence

from neuron_explainer.datatypes import ActivationRecord, Failure
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.llm.base import Capability, GenerateParams, LLMBackend, Message, require
from neuron_explainer.prompts.formatting import (
    format_nonzero_rows,
    format_rows,
    is_sparse,
    max_activation,
    normalize_activations,
)
from neuron_explainer.prompts.templates import ExplainerTemplate

ANSWER_PREFIX = "The main thing this neuron does is find"
MAX_EXPLANATION_CHARS = 300


class ExplanationParseError(NeuronExplainerError):
    """The explainer's output holds no usable explanation."""


def _excerpt_block(excerpts: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    parts = [f"Excerpt {i}:\n<start>\n{format_rows(t, v)}\n<end>" for i, (t, v) in enumerate(excerpts, 1)]
    all_levels = [v for _, levels in excerpts for v in levels]
    if is_sparse(all_levels):
        # Few non-zero tokens get lost among 64-token listings; repeating them focuses the model.
        nonzero = "\n".join(format_nonzero_rows(t, v) for t, v in excerpts if any(v))
        parts.append(f"The same activations, non-zero tokens only:\n<start>\n{nonzero}\n<end>")
    return "\n\n".join(parts)


HIGHLIGHT_MIN_LEVEL = 6
"""`highlights` style: tokens at this 0-10 level or above are marked (each excerpt's strongest always is)."""
HIGHLIGHTS_PER_EXCERPT = 3
HIGHLIGHT_CONTEXT_TOKENS = 6
HIGHLIGHT_CONTEXT_CHARS = 40


def _highlight_block(excerpts: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """One line per marked token: the few tokens before it, then the token in [[ ]]."""
    lines = []
    for tokens, levels in excerpts:
        if not any(levels):
            continue
        strongest = max(range(len(levels)), key=lambda i: (levels[i], -i))
        marked = sorted(i for i, v in enumerate(levels) if v >= HIGHLIGHT_MIN_LEVEL and i != strongest)
        picks = sorted([strongest, *marked[: HIGHLIGHTS_PER_EXCERPT - 1]])
        for i in picks:
            context = "".join(tokens[max(0, i - HIGHLIGHT_CONTEXT_TOKENS) : i]).replace("\n", " ").strip()
            context = context[-HIGHLIGHT_CONTEXT_CHARS:]
            lines.append(f"...{context} [[{tokens[i].strip() or repr(tokens[i])}]]")
    return "\n".join(f"{n}. {line}" for n, line in enumerate(lines, 1))


TOP_TOKENS_LISTED = 12


def _top_tokens_block(excerpts: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """The tokens at level HIGHLIGHT_MIN_LEVEL or above (and each excerpt's strongest), most frequent first."""
    counts: dict[str, list[int]] = {}
    for tokens, levels in excerpts:
        if not any(levels):
            continue
        strongest = max(range(len(levels)), key=lambda i: (levels[i], -i))
        for i, (token, level) in enumerate(zip(tokens, levels, strict=True)):
            if level >= HIGHLIGHT_MIN_LEVEL or i == strongest:
                key = token.strip() or repr(token)
                counts.setdefault(key, []).append(level)
    ranked = sorted(counts.items(), key=lambda kv: (-len(kv[1]), -max(kv[1]), kv[0]))[:TOP_TOKENS_LISTED]
    return "\n".join(f"{tok} ({len(lv)} time{'s' if len(lv) > 1 else ''})" for tok, lv in ranked)


def format_evidence(template: ExplainerTemplate, excerpts: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """Excerpts with 0-10 levels laid out in the template's style (token rows, highlights or top tokens)."""
    if template.style == "highlights":
        return _highlight_block(excerpts)
    if template.style == "top_tokens":
        return _top_tokens_block(excerpts)
    return _excerpt_block(excerpts)


def build_explainer_messages(template: ExplainerTemplate, records: Sequence[ActivationRecord]) -> list[Message]:
    """System instructions, few-shot neurons as user/assistant turns, then the target neuron's evidence.

    The evidence is laid out in the template's style: every token with its 0-10 level
    (`token_activations`), or the strongest tokens marked in short contexts (`highlights`).
    """
    messages = [Message("system", template.intro)]
    numbered = template.style == "token_activations"
    for i, ex in enumerate(template.examples, start=1):
        evidence = format_evidence(template, [(e.tokens, e.levels) for e in ex.excerpts])
        messages.append(Message("user", f"Neuron {i}\n\n{evidence}" if numbered else evidence))
        messages.append(Message("assistant", f"{template.answer_prefix} {ex.explanation}."))
    top = max_activation([r.activations for r in records])
    evidence = format_evidence(template, [(r.tokens, normalize_activations(r.activations, top)) for r in records])
    messages.append(Message("user", f"Neuron {len(template.examples) + 1}\n\n{evidence}" if numbered else evidence))
    return messages


_PREFIX = re.compile(
    r"^\s*(?:the main thing this neuron does is find(?:ing)?|this neuron (?:finds|detects))\s*[:,-]?\s*", re.IGNORECASE
)


_SCAFFOLD = ("<start>", "<end>", "non-zero tokens", "excerpt 1", "activations")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\])\"'])\.(?:\s|$)")


def _unwrap(phrase: str) -> str:
    """Remove markdown emphasis and quotes that wrap the whole phrase, never a quote that closes a word in it."""
    phrase = phrase.strip().strip("*`").strip()
    while len(phrase) >= 2 and phrase[0] == phrase[-1] and phrase[0] in "\"'":
        phrase = phrase[1:-1].strip()
    if phrase.count('"') % 2 and phrase.startswith('"'):  # an opening quote left without its closing one
        phrase = phrase[1:].strip()
    return phrase


def parse_explanation(
    text: str, few_shot: Sequence[str] = (), *, answer_prefix: str = ANSWER_PREFIX, explanation_prefix: str = ""
) -> str:
    """Clean the explainer's answer down to the explanation phrase: its first line, up to the first full stop.

    `answer_prefix` is removed if the model repeated it; `explanation_prefix` is put in front of the result.

    Raises:
        ExplanationParseError: nothing usable is left, the answer runs on far past one phrase, echoes the
            prompt's scaffolding, or repeats a few-shot example's explanation (small models do).
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ExplanationParseError("the explainer returned no text")
    first = lines[0]
    if first.lower().startswith(answer_prefix.lower()):
        first = first[len(answer_prefix) :]
    first = _SENTENCE_END.split(first, maxsplit=1)[0]
    phrase = _unwrap(_PREFIX.sub("", first).replace("[[", "").replace("]]", "").strip())
    phrase = phrase.rstrip(".").strip()
    if not phrase or not any(ch.isalpha() for ch in phrase):
        raise ExplanationParseError(f"no explanation in the explainer's output {text[:80]!r}")
    if len(phrase) > MAX_EXPLANATION_CHARS:
        raise ExplanationParseError(f"explanation longer than {MAX_EXPLANATION_CHARS} characters: {phrase[:80]!r}...")
    low = phrase.lower()
    if any(marker in low for marker in _SCAFFOLD):
        raise ExplanationParseError(f"the output echoes the prompt instead of explaining: {phrase[:80]!r}")
    if any(low == ex.lower().rstrip(".") for ex in few_shot):
        raise ExplanationParseError(f"the output repeats a few-shot example's explanation: {phrase!r}")
    return f"{explanation_prefix} {phrase}" if explanation_prefix else phrase


def explanation_messages(
    records: Sequence[ActivationRecord], backend: LLMBackend, template: ExplainerTemplate
) -> list[Message]:
    """The chat that asks `backend` to explain the records (prefilled where the back end continues it)."""
    require(backend, Capability.GENERATE, "explanation")
    messages = build_explainer_messages(template, records)
    if getattr(backend, "supports_prefill", False):
        messages.append(Message("assistant", template.answer_prefix))  # the model completes the sentence
    return messages


def parse_explanations(outputs: Sequence[str], template: ExplainerTemplate) -> list[str | Failure]:
    """Each raw answer as a cleaned phrase, or a typed parse Failure (never an empty string)."""
    few_shot = [ex.explanation for ex in template.examples]
    results: list[str | Failure] = []
    for raw in outputs:
        try:
            results.append(
                parse_explanation(
                    raw, few_shot, answer_prefix=template.answer_prefix, explanation_prefix=template.explanation_prefix
                )
            )
        except ExplanationParseError as e:
            results.append(Failure(stage="explain", kind="parse", message=str(e), raw=raw))
    return results


async def explain(
    records: Sequence[ActivationRecord],
    backend: LLMBackend,
    template: ExplainerTemplate,
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 60,
    seed: int | None = None,
) -> list[str | Failure]:
    """Sample `n` explanations; each is a cleaned phrase or a typed parse Failure (never an empty string)."""
    messages = explanation_messages(records, backend, template)
    params = GenerateParams(max_tokens=max_tokens, temperature=temperature, n=n, seed=seed, stop=("\n\n",))
    return parse_explanations(await backend.generate(messages, params), template)
