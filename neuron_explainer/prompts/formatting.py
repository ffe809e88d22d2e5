"""Pure formatting of activation records for prompts: 0-10 levels, token<TAB>level rows, placeholders.

No I/O, no torch, no network. Every prompt template renders through these functions, so the golden
prompt tests pin them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_LEVEL = 10
SPARSE_FRACTION = 0.2
"""Below this fraction of non-zero levels, the explainer prompt repeats the non-zero tokens."""
UNKNOWN = "unknown"
"""Placeholder written where the simulator must predict a level."""

# Characters that would break the one-token-per-line layout are shown as visible stand-ins.
_ESCAPES = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def normalize_activations(activations: Sequence[float], max_activation: float) -> list[int]:
    """Integers 0..10: floor(10 * max(a, 0) / max_activation); all 0 when max_activation <= 0.

    Negative activations count as 0: explanations describe the positive side of a neuron.
    """
    if not max_activation > 0:
        return [0] * len(activations)
    return [min(MAX_LEVEL, max(0, math.floor(MAX_LEVEL * max(a, 0.0) / max_activation))) for a in activations]


def max_activation(records: Sequence[Sequence[float]]) -> float:
    """The largest activation over several records' activation lists (0.0 if there are none)."""
    return max((max(acts) for acts in records if len(acts)), default=0.0)


def display_token(token: str) -> str:
    """A token as it appears on a prompt line: newlines and tabs replaced by visible stand-ins."""
    for raw, shown in _ESCAPES.items():
        token = token.replace(raw, shown)
    return token


def format_rows(tokens: Sequence[str], levels: Sequence[int | str]) -> str:
    """One `token<TAB>level` line per token."""
    if len(tokens) != len(levels):
        raise ValueError(f"{len(tokens)} tokens but {len(levels)} levels")
    return "\n".join(f"{display_token(t)}\t{v}" for t, v in zip(tokens, levels, strict=True))


def is_sparse(levels: Sequence[int]) -> bool:
    """Whether fewer than 20 % of the levels are non-zero (and at least one is)."""
    nonzero = sum(1 for v in levels if v)
    return 0 < nonzero < SPARSE_FRACTION * len(levels)


def format_nonzero_rows(tokens: Sequence[str], levels: Sequence[int]) -> str:
    """Only the `token<TAB>level` lines whose level is non-zero."""
    return "\n".join(f"{display_token(t)}\t{v}" for t, v in zip(tokens, levels, strict=True) if v)
