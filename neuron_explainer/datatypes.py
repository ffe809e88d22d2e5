"""Core domain types. Pure data: no I/O, no torch.

Field names follow OpenAI's published neuron-explainer data (`NeuronId`, `ActivationRecord`,
`NeuronRecord`) so that researchers who know that release can read ours without a glossary, and so the
converter to and from that format is a field-by-field copy.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
"""Quantiles of the per-excerpt maximum that split excerpts into the sampling buckets."""
N_BUCKETS = len(QUANTILES) + 1
"""Quantile buckets a neuron's `random_sample_by_quantile` has (lowest first)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NeuronId(_Frozen):
    """Identifies one MLP neuron of the subject model."""

    layer_index: int = Field(ge=0)
    """0-based transformer block index."""
    neuron_index: int = Field(ge=0)
    """0-based index into the MLP's hidden dimension (the input of the output projection)."""


class ActivationRecord(_Frozen):
    """One excerpt and one neuron's activation at each of its tokens."""

    tokens: list[str]
    """Decoded token strings; concatenated they give the excerpt's text."""
    activations: list[float]
    """Raw neuron activations (units of the model's MLP hidden state), one per token."""
    excerpt_id: int | None = None
    """Id of the excerpt in the run's `excerpts` table (None for records from elsewhere)."""

    @property
    def stored_id(self) -> int:
        """The excerpt id of a record read from a run.

        Raises:
            ValueError: the record does not come from a run's excerpts table.
        """
        if self.excerpt_id is None:
            raise ValueError("this record does not come from a run's excerpts table: it has no excerpt id")
        return self.excerpt_id


class NeuronStats(_Frozen):
    """Summary statistics of one neuron over every token of the harvest corpus."""

    neuron_id: NeuronId
    count: int
    """Number of tokens the statistics are computed over."""
    mean: float
    variance: float
    """Population variance (ddof=0)."""
    skewness: float
    """Fisher-Pearson skewness m3 / m2^1.5 (biased, as scipy.stats.skew)."""
    kurtosis: float
    """Excess kurtosis m4 / m2^2 - 3 (Fisher, biased, as scipy.stats.kurtosis)."""
    min_activation: float
    max_activation: float
    quantile_boundaries: list[float]
    """Per-excerpt maximum activation at quantiles 0.5, 0.9, 0.99, 0.999 (see docs/data_format.md)."""
    density: float | None = None
    """Fraction of tokens with an activation above zero (None for imported statistics)."""


class NeuronRecord(_Frozen):
    """Everything harvest keeps for one neuron."""

    neuron_id: NeuronId
    most_positive_activation_records: list[ActivationRecord]
    """Excerpts with the highest maximum activation, highest first (ties: lower excerpt id first)."""
    random_sample: list[ActivationRecord]
    """Uniformly random excerpts, in the order of their sampling keys."""
    random_sample_by_quantile: list[list[ActivationRecord]]
    """Random excerpts per bucket of the excerpt-maximum distribution; 5 buckets, lowest first."""
    quantile_boundaries: list[float]
    """The 4 bucket boundaries: per-excerpt maximum activation at quantiles 0.5, 0.9, 0.99, 0.999."""
    mean: float
    variance: float
    skewness: float
    kurtosis: float
    """Excess kurtosis (Fisher)."""


class Simulation(_Frozen):
    """A simulator's prediction for one excerpt, given only an explanation."""

    tokens: list[str]
    expected_values: list[float]
    """Expected level per token, in [0, max_level] (simulated units, not raw activations)."""
    distribution_values: list[list[int]]
    """Per token, the labels that had probability mass among the back end's top-k."""
    distribution_probabilities: list[list[float]]
    """Per token, their probabilities renormalised over labels only."""
    max_level: int
    """Top of the label scale: 10, or 9 for tokenizers that split "10" into two tokens."""
    simulator: str
    """`backend:model` that produced it."""
    prompt_version: str


class Failure(_Frozen):
    """A unit of work that produced no usable result. Stored, reported and retried; never scored."""

    stage: str
    """`explain`, `simulate`, ..."""
    kind: str
    """`parse` (unusable output), `backend` (request failed after retries) or `capability`."""
    message: str
    raw: str | None = None
    """The back end's raw output, where there was one."""
