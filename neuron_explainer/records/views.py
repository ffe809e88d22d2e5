"""How activations are paired with tokens when explaining and simulating (docs/method.md, "Explain"). Pure.

- `current_token`: activation i beside token i (the default);
- `next_token`: activation i beside token i + 1, for neurons that anticipate the next token. The view
  drops the first token and the last activation, so an excerpt of T tokens shows T - 1 pairs.
"""

from __future__ import annotations

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import ConfigError

VIEWS = ("current_token", "next_token")


def apply_view(record: ActivationRecord, view: str) -> ActivationRecord:
    """The record as the explainer and simulator see it under `view`.

    Raises:
        ConfigError: an unknown view.
    """
    if view == "current_token":
        return record
    if view == "next_token":
        return ActivationRecord(
            tokens=record.tokens[1:], activations=record.activations[:-1], excerpt_id=record.excerpt_id
        )
    raise ConfigError(f"unknown view {view!r}: choose one of {VIEWS}")
