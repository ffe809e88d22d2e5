import importlib

import numpy as np
import pytest
import torch
from tiny_families import PROMPT, WINDOW

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.attention import attention_maps, neuron_view
from neuron_explainer.inspect.family import encode

SLIDING = ("mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")


def eager_reference(model, input_ids: torch.Tensor) -> np.ndarray:
    """(L, H, T, T) from a plain eager forward with output_attentions, the implementation restored after."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    return torch.stack([a[0] for a in out.attentions]).numpy()


def test_attention_equals_eager_output_attentions(family_lm) -> None:
    family, model, tokenizer = family_lm
    previous = model.config._attn_implementation
    maps = attention_maps(model, tokenizer, PROMPT)
    assert model.config._attn_implementation == previous  # restored
    want = eager_reference(model, encode(model, tokenizer, PROMPT).input_ids)
    np.testing.assert_allclose(maps.probs, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.probs.sum(-1), 1.0, rtol=1e-5)
    d = maps.to_dict()
    assert (d["n_layers"], d["n_heads"]) == maps.probs.shape[:2] and len(d["attention"][0][0]) == len(maps.tokens)
    n = len(maps.tokens)
    assert len(maps.to_frame()) == maps.probs.shape[0] * maps.probs.shape[1] * n * (n + 1) // 2


def test_neuron_view_reproduces_every_head(family_lm) -> None:
    family, model, tokenizer = family_lm
    previous = model.config._attn_implementation
    want = eager_reference(model, encode(model, tokenizer, PROMPT).input_ids)
    n_layers, n_heads = want.shape[:2]
    windows = set()
    for layer in range(n_layers):
        for head in range(n_heads):
            view = neuron_view(model, tokenizer, PROMPT, layer, head, query_position=-2)
            np.testing.assert_allclose(view.probs, want[layer, head], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(view.products.sum(-1), view.keys @ view.queries[-2], rtol=1e-4, atol=1e-5)
            assert view.query_position == len(view.tokens) - 2
            windows.add(view.sliding_window)
    assert model.config._attn_implementation == previous
    kv_heads = getattr(model.config, "num_key_value_heads", n_heads)
    assert view.kv_head == (n_heads - 1) // (n_heads // kv_heads)
    if family in SLIDING:  # the window is shorter than the prompt, so the mask matters
        assert WINDOW in windows
        assert len(view.tokens) > WINDOW
    if family == "gemma2":
        assert view.softcap == 2.0 and np.abs(view.scores).max() > 1.0
        assert view.scaling == pytest.approx(12**-0.5)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text"])
def test_queries_are_after_norm_and_rotary(tiny_lms, family: str) -> None:
    # Reference: the projection (or q_norm) output hooked directly, then the family's own rotary function.
    model, tokenizer = tiny_lms[family]
    layer, head = 1, 3
    attn = model.model.layers[layer].self_attn
    source = attn.q_norm if hasattr(attn, "q_norm") else attn.q_proj
    captured = {}
    handle = source.register_forward_hook(lambda _m, _a, out: captured.__setitem__("q", out))
    try:
        view = neuron_view(model, tokenizer, PROMPT, layer, head)
    finally:
        handle.remove()
    n = len(view.tokens)
    q = captured["q"]
    if not (q.dim() == 4 and q.shape[2] == n):  # Gemma 3 norms after the head transpose, Qwen3 before it
        q = q.reshape(1, n, -1, attn.head_dim).transpose(1, 2)
    positions = torch.arange(n)[None]
    args = (attn.layer_type,) if family == "gemma3_text" else ()
    cos, sin = model.model.rotary_emb(q, positions, *args)
    rotated, _ = importlib.import_module(type(model).__module__).apply_rotary_pos_emb(q, q, cos, sin)
    np.testing.assert_allclose(view.queries, rotated[0, head].detach().numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(view.queries[1:], q[0, head, 1:].detach().numpy(), atol=1e-3)  # rotary did something


def test_bad_head_and_layer(tiny_lms) -> None:
    model, tokenizer = tiny_lms["mistral"]
    with pytest.raises(ConfigError, match="head 4 out of range"):
        neuron_view(model, tokenizer, PROMPT, 0, 4)
    with pytest.raises(ConfigError, match="layer 7 out of range"):
        neuron_view(model, tokenizer, PROMPT, 7, 0)
