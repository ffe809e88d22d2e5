import numpy as np
import pytest
import torch
from tiny_families import PROMPT

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import encode
from neuron_explainer.inspect.saliency import input_saliency


def prob_of(model, position: int, target: int):
    def f(embeds: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=embeds).logits[:, position].float().softmax(-1)[:, target]

    return f


def test_integrated_gradients_equal_captum_run_directly(family_lm) -> None:
    from captum.attr import IntegratedGradients

    family, model, tokenizer = family_lm
    got = input_saliency(model, tokenizer, PROMPT, position=5, target="dog", n_steps=16)
    p = encode(model, tokenizer, PROMPT)
    embeds = model.get_input_embeddings()(p.input_ids).detach()
    target = tokenizer("dog", add_special_tokens=False)["input_ids"][0]
    f = prob_of(model, 5, target)
    want, delta = IntegratedGradients(f).attribute(
        embeds, baselines=torch.zeros_like(embeds), n_steps=16, return_convergence_delta=True
    )
    want = want[0].detach().numpy()
    np.testing.assert_allclose(got.attributions, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.signed, want.sum(-1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.l2, np.linalg.norm(want, axis=-1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.l2_share.sum(), 1.0, rtol=1e-5)
    assert got.convergence_delta == pytest.approx(float(delta.sum()), rel=1e-3, abs=1e-7)
    assert not got.attributions[6:].any()  # causal: later tokens cannot matter
    with torch.no_grad():  # completeness: attributions sum to f(x) - f(baseline), up to the reported delta
        value = float(f(embeds)[0])
        gap = value - float(f(torch.zeros_like(embeds))[0])
    assert got.signed.sum() - gap == pytest.approx(got.convergence_delta, abs=1e-5)
    assert got.target_token == "dog" and got.target_value == pytest.approx(value, rel=1e-5)


def test_grad_x_input_equals_autograd(family_lm) -> None:
    # Reference without Captum: torch.autograd on the embeddings, times the embeddings.
    family, model, tokenizer = family_lm
    got = input_saliency(model, tokenizer, PROMPT, position=-1, target=7, method="grad_x_input", output="logprob")
    p = encode(model, tokenizer, PROMPT)
    embeds = model.get_input_embeddings()(p.input_ids).detach().requires_grad_()
    logprob = model(inputs_embeds=embeds).logits[0, -1].float().log_softmax(-1)[7]
    (grad,) = torch.autograd.grad(logprob, embeds)
    want = (grad * embeds)[0].detach().numpy()
    np.testing.assert_allclose(got.attributions, want, rtol=1e-4, atol=1e-6)
    assert got.n_steps is None and got.convergence_delta is None
    assert got.to_frame().columns.tolist() == ["position", "token", "signed", "l2", "l2_share"]


def test_token_baseline_and_default_target(tiny_lms) -> None:
    from captum.attr import IntegratedGradients

    model, tokenizer = tiny_lms["gemma2"]
    p = encode(model, tokenizer, PROMPT)
    got = input_saliency(model, tokenizer, PROMPT, position=3, output="logit", n_steps=8, baseline_token_id=0)
    assert got.target_id == int(p.input_ids[0, 4])  # default target: the prompt's next token
    embed = model.get_input_embeddings()
    embeds = embed(p.input_ids).detach()
    baseline = embed(torch.zeros_like(p.input_ids)).detach()
    want = IntegratedGradients(lambda e: model(inputs_embeds=e).logits[:, 3, got.target_id]).attribute(
        embeds, baselines=baseline, n_steps=8
    )
    np.testing.assert_allclose(got.attributions, want[0].detach().numpy(), rtol=1e-4, atol=1e-6)


def test_bad_options(tiny_lms) -> None:
    model, tokenizer = tiny_lms["llama"]
    with pytest.raises(ConfigError, match="unknown saliency method"):
        input_saliency(model, tokenizer, PROMPT, method="lime")
    with pytest.raises(ConfigError, match="not one"):
        input_saliency(model, tokenizer, PROMPT, target="cat dog")
    with pytest.raises(ConfigError, match="target 'cat' given as text needs a tokenizer"):
        input_saliency(model, None, [1, 2, 3], target="cat")
    with pytest.raises(ConfigError, match="vocabulary"):
        input_saliency(model, tokenizer, PROMPT, target=10_000)
