"""All-at-once simulator prompt building and logprob parsing. Pure: no network, no torch.

The prompt is built here, so the character offset of every "unknown" slot is known exactly. Parsing
finds the prompt token that starts at each slot and reads the label distribution from the prediction
made just before it, so a token boundary that does not fall on the slot is an error, never a silently
shifted value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.llm.base import TokenLogprobs
from neuron_explainer.prompts.formatting import UNKNOWN, display_token
from neuron_explainer.prompts.templates import SimulatorTemplate


class SimulationParseError(NeuronExplainerError):
    """The back end's logprobs cannot be turned into a simulation (misaligned slot, no label in top-k)."""


@dataclass(frozen=True)
class AllAtOncePrompt:
    """A rendered all-at-once prompt and the offsets of its target slots."""

    text: str
    slots: tuple[int, ...]
    """Character offset, in `text`, of each target token's 'unknown' label."""
    max_level: int


def rescale_level(level: int, max_level: int) -> int:
    """Map a 0-10 few-shot level onto a 0..max_level scale."""
    return min(max_level, round(level * max_level / 10))


def _block(index: int, explanation: str) -> str:
    return f"Neuron {index}\nExplanation: {explanation}\nActivations:\n<start>\n"


def build_all_at_once_prompt(
    template: SimulatorTemplate, explanation: str, tokens: Sequence[str], max_level: int = 10
) -> AllAtOncePrompt:
    """Few-shot neurons with their activations, then the target excerpt with every level 'unknown'."""
    if not tokens:
        raise ValueError("cannot simulate an empty excerpt")
    parts = [template.intro.replace("{max_level}", str(max_level)), "\n\n"]
    for i, ex in enumerate(template.examples, start=1):
        rows = [
            f"{display_token(t)}\t{UNKNOWN if j < ex.unknown_until else rescale_level(v, max_level)}"
            for j, (t, v) in enumerate(zip(ex.tokens, ex.levels, strict=True))
        ]
        parts.append(_block(i, ex.explanation) + "\n".join(rows) + "\n<end>\n\n")
    parts.append(_block(len(template.examples) + 1, explanation.strip()))
    text = "".join(parts)
    slots = []
    for j, token in enumerate(tokens):
        shown = display_token(token)
        slots.append(len(text) + len(shown) + 1)
        text += f"{shown}\t{UNKNOWN}" + ("\n" if j < len(tokens) - 1 else "")
    text += "\n<end>\n"
    return AllAtOncePrompt(text, tuple(slots), max_level)


@dataclass(frozen=True)
class LabelDistributions:
    """Per slot: the expected level and the renormalised distribution over labels 0..max_level."""

    expected_values: tuple[float, ...]
    values: tuple[tuple[int, ...], ...]
    probabilities: tuple[tuple[float, ...], ...]


def read_label_distributions(prompt: AllAtOncePrompt, logprobs: Sequence[TokenLogprobs]) -> LabelDistributions:
    """Expected level at each slot, from the prediction made by the token just before it.

    Raises:
        SimulationParseError: no prompt token starts at a slot, or no label is among the top-k there.
    """
    by_offset = {t.offset: i for i, t in enumerate(logprobs)}
    expected, values, probs = [], [], []
    for n, slot in enumerate(prompt.slots):
        idx = by_offset.get(slot)
        if idx is None or idx == 0:
            raise SimulationParseError(
                f"no prompt token starts at the label of excerpt token {n} (offset {slot}): the back end's "
                "tokens do not align with the prompt rows"
            )
        if not logprobs[idx].token.startswith(UNKNOWN[:1]):
            raise SimulationParseError(
                f"prompt token at offset {slot} is {logprobs[idx].token!r}, expected the start of {UNKNOWN!r}"
            )
        vs, ps, ev = label_distribution(logprobs[idx - 1].top, prompt.max_level, f"excerpt token {n}")
        values.append(vs)
        probs.append(ps)
        expected.append(ev)
    return LabelDistributions(tuple(expected), tuple(values), tuple(probs))


def label_distribution(
    top: Sequence[tuple[str, float]], max_level: int, where: str
) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """Labels 0..max_level found among top-k (text, logprob), renormalised over labels; and the mean.

    Variants of one label (" 7", "7") add up.

    Raises:
        SimulationParseError: no label among the top-k.
    """
    mass: dict[int, float] = {}
    for tok, lp in top:
        text = tok.strip()
        # isdecimal() alone admits '²' and other digits int() refuses: labels are ASCII 0-9 only
        if text.isascii() and text.isdecimal() and int(text) <= max_level and str(int(text)) == text:
            mass[int(text)] = mass.get(int(text), 0.0) + math.exp(lp)
    total = sum(mass.values())
    if total <= 0:
        raise SimulationParseError(
            f"no activation label 0..{max_level} among the top-{len(top)} predictions at {where}; raise top_k"
        )
    vs = tuple(sorted(mass))
    ps = tuple(mass[v] / total for v in vs)
    return vs, ps, sum(v * p for v, p in zip(vs, ps, strict=True))
