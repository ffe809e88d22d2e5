from neuron_explainer.prompts.formatting import (
    display_token,
    format_nonzero_rows,
    format_rows,
    is_sparse,
    max_activation,
    normalize_activations,
)


def test_normalize_floors_clips_negative_and_handles_zero_max() -> None:
    assert normalize_activations([-1.0, 0.0, 0.5, 0.99, 1.0], 1.0) == [0, 0, 5, 9, 10]
    assert normalize_activations([0.3, 2.0], 2.0) == [1, 10]
    assert normalize_activations([-1.0, 0.0], 0.0) == [0, 0]
    assert normalize_activations([1.0], -2.0) == [0]
    assert max_activation([[0.1, 3.0], [], [2.0]]) == 3.0


def test_rows_escape_layout_characters() -> None:
    assert display_token("a\tb\nc") == "a⇥b↵c"
    assert format_rows([" the", "\n", "cat"], [0, 3, "unknown"]) == " the\t0\n↵\t3\ncat\tunknown"
    assert format_nonzero_rows(["a", "b", "c"], [0, 4, 0]) == "b\t4"


def test_sparse_rule() -> None:
    assert is_sparse([0] * 9 + [3])
    assert not is_sparse([0] * 8 + [3, 3])  # exactly 20 % is not sparse
    assert not is_sparse([0] * 10)  # nothing to repeat
