import pytest

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import ConfigError
from neuron_explainer.records.views import apply_view


def test_next_token_view_pairs_each_activation_with_the_following_token() -> None:
    r = ActivationRecord(tokens=["a", "b", "c"], activations=[1.0, 2.0, 3.0], excerpt_id=7)
    assert apply_view(r, "current_token") == r
    shifted = apply_view(r, "next_token")
    assert shifted.tokens == ["b", "c"] and shifted.activations == [1.0, 2.0] and shifted.excerpt_id == 7
    with pytest.raises(ConfigError, match="unknown view"):
        apply_view(r, "previous_token")
