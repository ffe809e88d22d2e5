"""The checks of the tiny models, on the real offline models (Gemma-3-270m, SmolLM2-135M): --run-slow."""

import numpy as np
import pytest
import torch

from neuron_explainer.inspect import (
    attention_maps,
    input_saliency,
    load_model,
    logit_lens,
    neuron_view,
    output_tokens_table,
)
from neuron_explainer.inspect.family import encode

TEXT = "The quick brown fox jumps over the lazy dog because it wanted to reach the river before the sun went down."


@pytest.fixture(scope="module", params=["builtin:gemma3-270m", "builtin:smollm2-135m-instruct"])
def real_lm(request: pytest.FixtureRequest):
    return load_model(request.param)


@pytest.mark.slow
def test_real_model_views(real_lm) -> None:
    model, tokenizer = real_lm
    p = encode(model, tokenizer, TEXT)
    with torch.no_grad():
        logits = model(input_ids=p.input_ids).logits[0].float()
    lens = logit_lens(model, tokenizer, TEXT, k=3)
    np.testing.assert_array_equal(lens.top_ids[-1], logits.topk(3, dim=-1).indices.numpy())
    np.testing.assert_allclose(lens.top_probs[-1], logits.softmax(-1).topk(3, dim=-1).values.numpy(), rtol=1e-4)

    maps = attention_maps(model, tokenizer, TEXT)
    layers = sorted({0, 5, maps.probs.shape[0] - 1})
    for layer in layers:
        for head in (0, maps.probs.shape[1] - 1):
            view = neuron_view(model, tokenizer, TEXT, layer, head)
            np.testing.assert_allclose(view.probs, maps.probs[layer, head], rtol=1e-4, atol=1e-5)

    sal = input_saliency(model, tokenizer, TEXT, position=10, n_steps=16, output="logprob")
    assert np.isfinite(sal.attributions).all() and not sal.attributions[11:].any() and sal.l2[:11].all()

    table = output_tokens_table(model, tokenizer, [0], k=5)
    assert len(table) == 2 * 5 * table.neuron.nunique()
