"""Explanation / calibration / scoring splits of a neuron's records. Pure.

As in OpenAI's published data: top records are dealt round-robin into (train, calibration, valid,
test) as indices i::4, random records into (calibration, valid, test) as i::3. Explanations are written
from train top records; scores use valid: so explanation and scoring never share an excerpt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from neuron_explainer.datatypes import ActivationRecord, NeuronRecord

T = TypeVar("T")

TOP_SPLITS = ("train", "calibration", "valid", "test")
RANDOM_SPLITS = ("calibration", "valid", "test")
N_EXPLAIN_RECORDS = 5
"""Train-split top records an explanation is written from."""
N_SCORE_TOP = 5
"""Top records of a split that are simulated (valid: scored; calibration: fitted)."""
N_SCORE_RANDOM = 5
"""Random records of a split that are simulated."""


def top_split(records: Sequence[T], split: str) -> list[T]:
    """The top records of one split."""
    return list(records[TOP_SPLITS.index(split) :: len(TOP_SPLITS)])


def random_split(records: Sequence[T], split: str) -> list[T]:
    """The random records of one split."""
    return list(records[RANDOM_SPLITS.index(split) :: len(RANDOM_SPLITS)])


def scoring_records(record: NeuronRecord, split: str = "valid") -> list[tuple[str, ActivationRecord]]:
    """The (kind, record) pairs of one split that are simulated: 5 top and 5 random."""
    top = top_split(record.most_positive_activation_records, split)[:N_SCORE_TOP]
    rnd = random_split(record.random_sample, split)[:N_SCORE_RANDOM]
    return [("top", r) for r in top] + [("random", r) for r in rnd]
