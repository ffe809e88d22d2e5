import numpy as np
import pytest
from tiny_families import PROMPT

from neuron_explainer.activations.hookpoints import hook_point_for
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.errors import ActivationError, ConfigError
from neuron_explainer.inspect.family import encode
from neuron_explainer.inspect.nmf import activation_factors, factorize


def reference_activations(model, tokenizer, layers) -> np.ndarray:
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    acts = source.activations(encode(model, tokenizer, PROMPT).input_ids, layers)
    return np.stack([acts[layer][0].numpy() for layer in layers], axis=1).astype(np.float64)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
@pytest.mark.parametrize("negative", ["clamp", "split"])
def test_reconstruction_error_is_what_it_says(tiny_lms, family: str, negative: str) -> None:
    model, tokenizer = tiny_lms[family]
    layers = [0, 2]
    got = activation_factors(model, tokenizer, PROMPT, layers=layers, n_components=3, negative=negative)
    a = reference_activations(model, tokenizer, layers)
    n = a.shape[0]
    pos, neg = np.maximum(a, 0).reshape(n, -1), np.maximum(-a, 0).reshape(n, -1)
    x = np.concatenate([pos, neg], axis=1) if negative == "split" else pos
    h = got.loadings.reshape(3, -1)
    if negative == "split":
        h = np.concatenate([h, got.negative_loadings.reshape(3, -1)], axis=1)
    else:
        assert got.negative_loadings is None
        assert got.discarded_fraction == pytest.approx(np.linalg.norm(neg) / np.linalg.norm(a), rel=1e-5)
    error = np.linalg.norm(x - got.factors.T.astype(np.float64) @ h) / np.linalg.norm(x)
    assert got.reconstruction_error == pytest.approx(error, rel=1e-3, abs=1e-6)
    assert 0 < got.reconstruction_error < 1
    assert got.factors.shape == (3, n) and (got.factors >= 0).all() and (got.loadings >= 0).all()
    assert a.min() < 0  # there were negative activations to handle


def test_exact_low_rank_data_is_recovered() -> None:
    rng = np.random.default_rng(0)
    w, h = rng.random((12, 2)), rng.random((2, 2 * 7))
    acts = (w @ h).reshape(12, 2, 7)
    got = factorize(acts, [f"t{i}" for i in range(12)], [3, 5], n_components=2, max_iter=5000)
    assert got.reconstruction_error < 1e-3
    assert got.loadings.shape == (2, 2, 7) and got.layers.tolist() == [3, 5]
    frame = got.loadings_frame(top=4)
    assert len(frame) == 8 and frame.groupby("factor").loading.is_monotonic_decreasing.all()
    assert got.to_frame().shape == (24, 4)


def test_auto_mode_follows_the_mlp(tiny_lms) -> None:
    gelu, tok_g = tiny_lms["gpt_neox"]
    gated, tok_l = tiny_lms["qwen3"]
    assert activation_factors(gelu, tok_g, PROMPT, n_components=2).negative == "clamp"
    split = activation_factors(gated, tok_l, PROMPT, n_components=2)
    assert split.negative == "split" and split.negative_loadings is not None and split.discarded_fraction == 0


def test_bad_inputs() -> None:
    with pytest.raises(ActivationError, match="no positive"):
        factorize(-np.ones((3, 1, 4)), ["a", "b", "c"], [0], n_components=2)
    with pytest.raises(ConfigError, match="negative"):
        factorize(np.ones((3, 1, 4)), ["a", "b", "c"], [0], negative="abs")
    with pytest.raises(ConfigError, match="do not match"):
        factorize(np.ones((3, 1, 4)), ["a", "b"], [0])


def test_repeated_layers_refused(tiny_lms) -> None:
    model, tokenizer = tiny_lms["llama"]
    with pytest.raises(ConfigError, match="repeats"):
        activation_factors(model, tokenizer, PROMPT, layers=[1, 1])
