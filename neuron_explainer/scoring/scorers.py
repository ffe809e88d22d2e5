"""The scorers by name (a dict registry): which scored records each pools over, and which way is better.

The same selections serve both measures: correlation (the `scores` table, column `correlation`) and
ablation (the `ablation_scores` table, column `score`). Revision scores use the sets in
`REVISION_SETS` instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scorer:
    """One way of pooling an explanation's scored excerpts into a score."""

    kinds: tuple[str, ...]
    """Record kinds pooled (`top`, `random`) from the valid split."""
    description: str
    higher_is_better: bool = True
    """Whether a larger value means a better explanation (both measures: 1 is perfect)."""


SCORERS: dict[str, Scorer] = {
    "top_and_random": Scorer(("top", "random"), "5 top-activating and 5 random valid excerpts, pooled"),
    "random_only": Scorer(("random",), "the 5 random valid excerpts only"),
}
"""Scorer name -> what it pools. Correlation and ablation scores are reported for each."""

REVISION_SETS: dict[str, str] = {
    "original_set": "the original scoring set (top-and-random valid excerpts)",
    "extended_set": "the original set plus the revision's scoring test sentences",
}
"""Revision scorer name -> what it scores on (all higher-is-better correlations)."""


def pick(kinds: list[str], scorer: str) -> list[int]:
    """Indices of the excerpts (given by record kind) that `scorer` pools over."""
    wanted = SCORERS[scorer].kinds
    return [i for i, k in enumerate(kinds) if k in wanted]
