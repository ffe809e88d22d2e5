import copy

import numpy as np
import pytest
import torch

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import final_norm, norm_gain, unembedding
from neuron_explainer.inspect.output_tokens import (
    TABLE_COLUMNS,
    neuron_output_tokens,
    output_logits,
    output_tokens_table,
    output_weights,
)


def test_norm_gain_is_the_norms_linear_action(family_lm) -> None:
    # norm(x) = gain * center?(x) / scale(x) + bias: check the gain against the module itself.
    family, model, tokenizer = family_lm
    gain, centers = norm_gain(model)
    x = torch.randn(5, gain.shape[0])
    with torch.no_grad():
        y = final_norm(model)(x) - final_norm(model)(torch.zeros_like(x))  # remove a LayerNorm bias
    direction = x - x.mean(-1, keepdim=True) if centers else x
    ratio = y / (gain * direction)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=1e-4)
    assert (ratio > 0).all()


def test_planted_neuron_ranks_its_token_first(family_lm) -> None:
    family, model, tokenizer = family_lm
    model = copy.deepcopy(model)
    layer, neuron, token, c = 1, 5, 17, 0.3
    gain, centers = norm_gain(model)
    torch.manual_seed(1)
    z = torch.randn(gain.shape[0])
    z = 10 * (z - z.mean())  # mean-free, so a LayerNorm's centering leaves it alone; large, so it dominates
    with torch.no_grad():
        unembedding(model)[token] = gain * z  # the token's unembedding row, adjusted for the final norm gain
        weights = output_weights(model, layer)  # a view into the projection's weight
        weights[neuron] = c * z
    got = neuron_output_tokens(model, tokenizer, layer, [neuron, 0], k=3)
    assert got.top_ids[0, 0] == token and got.top_tokens[0][0] == tokenizer.decode([token])
    assert got.top_values[0, 0] == pytest.approx(c * float((gain * z) @ (gain * z)), rel=1e-4)
    assert (np.diff(got.top_values, axis=1) <= 0).all() and (np.diff(got.bottom_values, axis=1) >= 0).all()


def test_values_match_the_models_own_norm_and_head(family_lm) -> None:
    # Brute force: send each output vector through the final norm module (bias removed) and the output head;
    # the result is a positive multiple of our values (the norm's 1/scale), per neuron.
    family, model, tokenizer = family_lm
    w = output_weights(model, 0)[:6].float()
    with torch.no_grad():
        normed = final_norm(model)(w) - final_norm(model)(torch.zeros_like(w))
        want = normed @ unembedding(model).T
    got = output_logits(model, 0, range(6))
    scale = (want * got).sum(-1, keepdim=True) / (got * got).sum(-1, keepdim=True)
    assert (scale > 0).all()
    torch.testing.assert_close(want, scale * got, rtol=1e-4, atol=1e-5)


def assert_same_table(a, b) -> None:
    # Matmuls of different batch sizes round differently in the last bit: ids exact, values to float32 precision.
    assert a.drop(columns="value").equals(b.drop(columns="value"))
    np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-6)


def test_table_is_every_neuron_and_chunking_does_not_matter(tiny_lms) -> None:
    model, tokenizer = tiny_lms["gpt2"]
    table = output_tokens_table(model, tokenizer, [0, 2], k=4)
    small = output_tokens_table(model, tokenizer, [0, 2], k=4, chunk_bytes=3 * 4 * unembedding(model).shape[0])
    assert tuple(table.columns) == TABLE_COLUMNS
    n = output_weights(model, 0).shape[0]
    assert len(table) == 2 * n * 2 * 4
    assert_same_table(table, small)
    one = neuron_output_tokens(model, tokenizer, 2, [7], k=4).to_frame()
    part = table[(table.layer == 2) & (table.neuron == 7)].reset_index(drop=True)
    assert_same_table(part, one)
    logits = output_logits(model, 2, [7])[0]
    assert part[part.sign == -1].token_id.tolist() == logits.argsort()[:4].tolist()


def test_bad_neuron(tiny_lms) -> None:
    model, tokenizer = tiny_lms["llama"]
    with pytest.raises(ConfigError, match="neuron"):
        neuron_output_tokens(model, tokenizer, 0, [48])
    with pytest.raises(ConfigError, match="layer"):
        output_tokens_table(model, tokenizer, [3])
