"""Explanation / calibration / scoring splits of a neuron's records. Pure.

As in OpenAI's published data: top records are dealt round-robin into (train, calibration, valid,
test) as indices i::4, random records into (calibration, valid, test) as i::3. Explanations are written
from train top records; scores use valid: so explanation and scoring never share an excerpt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

TOP_SPLITS = ("train", "calibration", "valid", "test")
RANDOM_SPLITS = ("calibration", "valid", "test")


def top_split(records: Sequence[T], split: str) -> list[T]:
    """The top records of one split."""
    return list(records[TOP_SPLITS.index(split) :: len(TOP_SPLITS)])


def random_split(records: Sequence[T], split: str) -> list[T]:
    """The random records of one split."""
    return list(records[RANDOM_SPLITS.index(split) :: len(RANDOM_SPLITS)])
