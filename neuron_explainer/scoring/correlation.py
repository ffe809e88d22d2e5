"""Correlation scoring: pure numpy, no I/O.

The score of an explanation is the Pearson correlation between true and simulated activations pooled
over every token of every scored excerpt, not a mean of per-excerpt correlations: pooling weighs each
token once and keeps excerpts where the neuron is silent (no variance of their own) informative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CorrelationScore:
    """Pooled correlation of one simulation set, or why it is undefined."""

    correlation: float | None
    """Pearson r over all tokens; None when undefined (see `undefined_reason`)."""
    explained_variance: float | None
    """1 - E[(s' - a)^2] / Var(a), s' the simulation mapped linearly to mean(a) and r * std(a)."""
    per_excerpt: tuple[float | None, ...]
    """Pearson r within each excerpt (None where either side is constant there)."""
    n_tokens: int
    undefined_reason: str | None = None
    """'constant simulation', 'constant activations' or 'no tokens' when correlation is None."""

    @property
    def defined(self) -> bool:
        """Whether the correlation exists."""
        return self.correlation is not None


def _pearson(a: np.ndarray, s: np.ndarray) -> float | None:
    if a.size < 2:
        return None
    da, ds = a - a.mean(), s - s.mean()
    denom = np.sqrt((da * da).sum() * (ds * ds).sum())
    if denom == 0:
        return None
    return float((da * ds).sum() / denom)


def calibrate_to(true: np.ndarray, simulated: np.ndarray, r: float) -> np.ndarray:
    """Map a simulation linearly so its mean is mean(true) and its std is r * std(true)."""
    sd = simulated.std()
    if sd == 0:
        return np.full_like(true, true.mean(), dtype=np.float64)
    return true.mean() + (simulated - simulated.mean()) / sd * (r * true.std())


def score_correlation(true: Sequence[Sequence[float]], simulated: Sequence[Sequence[float]]) -> CorrelationScore:
    """Pooled correlation and explained variance of simulated vs true activations.

    Args:
        true: per excerpt, the true activations (raw units).
        simulated: per excerpt, the simulated values (any scale); same lengths as `true`.

    Raises:
        ValueError: the two sides differ in shape, or a value is not finite.
    """
    if len(true) != len(simulated):
        raise ValueError(f"{len(true)} true excerpts but {len(simulated)} simulated")
    for i, (x, y) in enumerate(zip(true, simulated, strict=True)):
        if len(x) != len(y):
            raise ValueError(f"excerpt {i}: {len(x)} true activations but {len(y)} simulated values")
    per = tuple(
        _pearson(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(true, simulated, strict=True)
    )
    a: np.ndarray = np.concatenate([np.asarray(x, np.float64) for x in true]) if true else np.zeros(0)
    s: np.ndarray = np.concatenate([np.asarray(x, np.float64) for x in simulated]) if simulated else np.zeros(0)
    if not (np.isfinite(a).all() and np.isfinite(s).all()):
        raise ValueError("activations and simulations must be finite")
    if a.size < 2:
        return CorrelationScore(None, None, per, int(a.size), "no tokens")
    if s.std() == 0:
        return CorrelationScore(None, None, per, int(a.size), "constant simulation")
    if a.std() == 0:
        return CorrelationScore(None, None, per, int(a.size), "constant activations")
    r = _pearson(a, s)
    assert r is not None
    calibrated = calibrate_to(a, s, r)
    ev = 1.0 - float(((calibrated - a) ** 2).mean() / a.var())
    return CorrelationScore(r, ev, per, int(a.size))
