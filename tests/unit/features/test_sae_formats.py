"""Every format, written by the test, loads to a SparseCoder whose encode equals a brute-force numpy encode, on
the tiny random GPT-2 and Llama models, reading the tensor the hook names (block 0's output = hidden_states[1])."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from neuron_explainer.features import HookSpec, load_sparse_coder
from neuron_explainer.features.hooks import capture_activations, resolve_hook
from tests.unit.features.sae_files import (
    brute_encode,
    coder_arrays,
    rand,
    saelens_v6_cfg,
    write_gemma_npz,
    write_gemma_scope_2,
    write_saelens,
    write_sparsify,
)

IDS = torch.tensor([[1, 5, 9, 12, 3, 7, 20]])
N, D = 64, 32
BLOCK0 = {"gpt2": "transformer.h.0", "llama": "model.layers.0"}
D_MLP = {"gpt2": 128, "llama": 48}


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return {f: AutoModelForCausalLM.from_pretrained(tiny_model_dirs[f]).eval() for f in ("gpt2", "llama")}


def block0_output(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, output_hidden_states=True).hidden_states[1]


def assert_encode(coder, x: torch.Tensor, arch: str, arrays: dict, **opts) -> None:
    expected = brute_encode(arch, x.numpy().reshape(-1, x.shape[-1]), arrays, **opts)
    got = coder.encode(x).reshape(-1, coder.n_latents).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (np.abs(expected) > 0).any(), "test inputs leave every latent off: the comparison proves nothing"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_v6_on_block_output(tmp_path, tiny, family, arch) -> None:
    arrays = coder_arrays(arch, D, N, D, seed=1)
    extra = {"k": 5} if arch == "topk" else {}
    write_saelens(tmp_path / "sae", saelens_v6_cfg(arch, D, N, "blocks.0.hook_resid_post", **extra), arrays)
    coder = load_sparse_coder(tmp_path / "sae", model_type=family)
    assert coder.hook_in == coder.hook_out == HookSpec(BLOCK0[family], "output") and not coder.is_transcoder
    coder.check_against(tiny[family])
    opts = {"subtract_b_dec": True, "k": 5}
    x = block0_output(tiny[family])
    assert_encode(coder, x, arch, arrays, **opts)
    latents = coder.latent_activations(tiny[family], IDS)
    np.testing.assert_allclose(latents[0].numpy(), brute_encode(arch, x[0].numpy(), arrays, **opts), atol=1e-4)
    x_random = torch.randn(2, 3, D)
    assert_encode(coder, x_random, arch, arrays, **opts)
    assert coder.decoder_rows().shape == (N, D) and coder.n_latents == N
    decoded = coder.decode(coder.encode(x_random)).numpy()
    by_hand = brute_encode(arch, x_random.numpy().reshape(-1, D), arrays, **opts) @ arrays["W_dec"] + arrays["b_dec"]
    np.testing.assert_allclose(decoded.reshape(-1, D), by_hand, rtol=1e-4, atol=1e-4)


def test_saelens_topk_rescaled_by_decoder_norm(tmp_path) -> None:
    arrays = coder_arrays("topk", D, N, D, seed=2)
    arrays["W_dec"] *= np.random.default_rng(0).uniform(0.2, 3.0, (N, 1)).astype(np.float32)
    cfg = saelens_v6_cfg("topk", D, N, "model.layers.0", k=6, rescale_acts_by_decoder_norm=True)
    coder = load_sparse_coder(write_saelens(tmp_path / "s", cfg, arrays))
    norms = np.linalg.norm(arrays["W_dec"].astype(np.float64), axis=1)
    assert_encode(coder, torch.randn(10, D), "topk", arrays, subtract_b_dec=True, k=6, latent_scale=norms)
    np.testing.assert_allclose(coder.decoder_rows().numpy(), arrays["W_dec"] / norms[:, None], rtol=1e-5)


def test_saelens_pre6_configs(tmp_path) -> None:
    arrays = coder_arrays("topk", D, N, D, seed=3)
    old = {"hook_point": "blocks.0.hook_resid_pre", "d_in": D, "d_sae": N, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 4}, "dtype": "torch.float32"}  # fmt: skip
    coder = load_sparse_coder(write_saelens(tmp_path / "topk", old, arrays), model_type="llama")
    assert coder.architecture == "topk" and coder.hook_in == HookSpec("model.layers.0", "input")
    assert_encode(coder, torch.randn(9, D), "topk", arrays, subtract_b_dec=True, k=4)
    jump = coder_arrays("jumprelu", D, N, D, seed=4)
    threshold = np.abs(jump.pop("threshold")) + 0.05
    jump["log_threshold"] = np.log(threshold).astype(np.float32)
    cfg = {"architecture": "jumprelu", "hook_name": "blocks.1.hook_resid_post", "d_in": D, "d_sae": N,
           "apply_b_dec_to_input": False, "normalize_activations": False}  # fmt: skip
    coder = load_sparse_coder(write_saelens(tmp_path / "jump", cfg, jump), model_type="gpt2")
    assert coder.hook_in == HookSpec("transformer.h.1", "output")
    assert_encode(coder, torch.randn(9, D), "jumprelu", {**jump, "threshold": threshold})


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("arch", ["transcoder", "jumprelu_skip_transcoder"])
def test_saelens_transcoder_changes_width(tmp_path, tiny, family, arch) -> None:
    base = "jumprelu" if arch.startswith("jumprelu") else "standard"
    arrays = coder_arrays(base, D, N, D_MLP[family], seed=5)
    if "skip" in arch:
        arrays["W_skip"] = rand(np.random.default_rng(1), D_MLP[family], D, scale=0.1)
    meta = {"hook_name_out": "blocks.0.mlp.hook_post"}
    cfg = saelens_v6_cfg(arch, D, N, "blocks.0.ln2.hook_normalized", d_out=D_MLP[family], metadata=meta)
    cfg["apply_b_dec_to_input"] = False
    coder = load_sparse_coder(write_saelens(tmp_path / "tc", cfg, arrays), model_type=family)
    assert coder.is_transcoder and coder.d_out == D_MLP[family] != coder.d_in
    assert coder.hook_in == resolve_hook(family, "blocks.0.ln2.hook_normalized")
    assert coder.hook_out == resolve_hook(family, "blocks.0.mlp.hook_post")
    coder.check_against(tiny[family])
    x = capture_activations(tiny[family], [coder.hook_in], IDS)[coder.hook_in]
    assert_encode(coder, x, base, arrays)
    latents = brute_encode(base, x[0].numpy(), arrays)
    expected = latents @ arrays["W_dec"] + arrays["b_dec"] + x[0].numpy() @ arrays.get("W_skip", np.zeros((1, D))).T
    np.testing.assert_allclose(coder.reconstruct(x)[0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_hook_precedence_hf_name_then_argument(tmp_path) -> None:
    arrays = coder_arrays("standard", D, N, D)
    cfg = saelens_v6_cfg("standard", D, N, "blocks.1.hook_resid_post", metadata={"hf_hook_name": "model.layers.0"})
    folder = write_saelens(tmp_path / "s", cfg, arrays)
    assert load_sparse_coder(folder).hook_in == HookSpec("model.layers.0", "output")
    coder = load_sparse_coder(folder, model_type="llama", hook="blocks.1.hook_resid_pre")
    assert coder.hook_in == HookSpec("model.layers.1", "input")
    assert load_sparse_coder(folder, hook="model.layers.1.mlp:input").hook_in == HookSpec("model.layers.1.mlp", "input")


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_saelens_self_contained_normalisations(tmp_path, norm) -> None:
    arrays = coder_arrays("standard", D, N, D, seed=6)
    cfg = saelens_v6_cfg("standard", D, N, "model.layers.0", normalize_activations=norm)
    coder = load_sparse_coder(write_saelens(tmp_path / "s", cfg, arrays))
    x = torch.randn(7, D) * 4 + 1
    assert_encode(coder, x, "standard", arrays, subtract_b_dec=True, norm=norm)
    xs = x.double().numpy()
    if norm == "layer_norm":
        shift, scale = xs.mean(1, keepdims=True), xs.std(1, ddof=1, keepdims=True) + 1e-5
    else:
        shift, scale = 0.0, np.linalg.norm(xs, axis=1, keepdims=True) / np.sqrt(D)
    latents = brute_encode("standard", xs, arrays, subtract_b_dec=True, norm=norm)
    expected = (latents @ arrays["W_dec"] + arrays["b_dec"]) * scale + shift
    np.testing.assert_allclose(coder.reconstruct(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_finetuning_scaling_factor_is_folded_into_the_decoder(tmp_path) -> None:
    arrays = coder_arrays("standard", D, N, D)
    arrays["scaling_factor"] = np.linspace(0.5, 2.0, N).astype(np.float32)
    cfg = saelens_v6_cfg("standard", D, N, "model.layers.0", finetuning_scaling_factor=True)
    coder = load_sparse_coder(write_saelens(tmp_path / "s", cfg, arrays))
    np.testing.assert_allclose(coder.decoder_rows().numpy(), arrays["W_dec"] * arrays["scaling_factor"][:, None])
    cfg["finetuning_scaling_factor"] = False
    with pytest.raises(Exception, match="scaling_factor is present but finetuning_scaling_factor is not set"):
        load_sparse_coder(write_saelens(tmp_path / "t", cfg, arrays))


def test_transformerlens_centering(tmp_path) -> None:
    arrays = coder_arrays("standard", D, N, D, seed=7)
    kwargs = {"model_from_pretrained_kwargs": {"center_writing_weights": True}}
    folder = write_saelens(
        tmp_path / "s", saelens_v6_cfg("standard", D, N, "blocks.0.hook_resid_pre", **kwargs), arrays
    )
    x = torch.randn(6, D) + 3
    gpt2 = load_sparse_coder(folder, model_type="gpt2")
    assert gpt2.config.center_input
    assert_encode(gpt2, x, "standard", arrays, subtract_b_dec=True, center=True)
    assert not load_sparse_coder(folder, model_type="llama").config.center_input  # RMSNorm: TL does not centre
    assert not load_sparse_coder(folder, model_type="gpt2", center_input=False).config.center_input
    plain = write_saelens(tmp_path / "p", saelens_v6_cfg("standard", D, N, "blocks.0.hook_resid_pre"), arrays)
    assert load_sparse_coder(plain, model_type="gpt2", center_input=True).config.center_input


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sparsify_autoencoder_and_skip_transcoder(tmp_path, tiny, family) -> None:
    layers = "h" if family == "gpt2" else "layers"
    arrays = coder_arrays("topk", D, N, D, seed=8)
    cfg = {"d_in": D, "k": 5, "num_latents": N, "expansion_factor": 32, "normalize_decoder": True}
    coder = load_sparse_coder(write_sparsify(tmp_path / f"{layers}.0", cfg, arrays), model_type=family)
    assert coder.hook_in == coder.hook_out == HookSpec(BLOCK0[family], "output")
    coder.check_against(tiny[family])
    assert_encode(coder, block0_output(tiny[family]), "topk", arrays, subtract_b_dec=True, k=5)
    arrays["W_skip"] = rand(np.random.default_rng(2), D, D, scale=0.1)
    tc_cfg = {**cfg, "transcode": True, "skip_connection": True, "num_latents": 0, "expansion_factor": 2}
    tc = load_sparse_coder(write_sparsify(tmp_path / f"{layers}.0.mlp" / "seed1", tc_cfg, arrays), model_type=family)
    assert tc.is_transcoder and tc.hook_in == HookSpec(BLOCK0[family] + ".mlp", "input")
    assert tc.hook_out == HookSpec(BLOCK0[family] + ".mlp", "output")
    tc.check_against(tiny[family])
    x = capture_activations(tiny[family], [tc.hook_in], IDS)[tc.hook_in]
    assert_encode(tc, x, "topk", arrays, k=5)
    latents = brute_encode("topk", x[0].numpy(), arrays, k=5)
    expected = latents @ arrays["W_dec"] + arrays["b_dec"] + x[0].numpy() @ arrays["W_skip"].T
    np.testing.assert_allclose(tc.reconstruct(x)[0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_sparsify_hook_argument_replaces_the_folder_hookpoint(tmp_path) -> None:
    arrays = coder_arrays("topk", D, N, D, seed=3)
    cfg = {"d_in": D, "k": 5, "num_latents": N}
    sae = write_sparsify(tmp_path / "layers.0", cfg, arrays)
    # No model_type needed: the folder name is not read when the hook is given.
    coder = load_sparse_coder(sae, hook="model.layers.1")
    assert coder.hook_in == coder.hook_out == HookSpec("model.layers.1", "output") and not coder.is_transcoder
    assert coder.config.subtract_decoder_bias
    tc = write_sparsify(tmp_path / "layers.0.mlp", {**cfg, "transcode": True}, arrays)
    got = load_sparse_coder(tc, hook="model.layers.1.mlp:input->model.layers.1.mlp:output")
    assert got.is_transcoder and not got.config.subtract_decoder_bias
    assert (got.hook_in, got.hook_out) == (HookSpec("model.layers.1.mlp", "input"), HookSpec("model.layers.1.mlp"))


def test_gemma_scope_npz(tmp_path, tiny) -> None:
    arrays = coder_arrays("jumprelu", D, N, D, seed=9)
    path = write_gemma_npz(tmp_path / "layer_0" / "params.npz", arrays)
    coder = load_sparse_coder(path.parent, hook="model.layers.0")
    assert coder.hook_in == HookSpec("model.layers.0", "output") and coder.config.format == "gemma_scope_npz"
    coder.check_against(tiny["llama"])
    assert_encode(coder, block0_output(tiny["llama"]), "jumprelu", arrays)
    tc = load_sparse_coder(path, hook="model.layers.0.mlp:input->model.layers.0.mlp:output")
    assert tc.is_transcoder and tc.hook_out == HookSpec("model.layers.0.mlp", "output")
    tc.check_against(tiny["llama"])


def test_gemma_scope_2(tmp_path, tiny) -> None:
    arrays = coder_arrays("jumprelu", D, N, D, seed=10)
    cfg = {"hf_hook_point_in": "model.layers.0.output", "hf_hook_point_out": "model.layers.0.output",
           "width": N, "architecture": "jump_relu", "type": "sae", "affine_connection": False}  # fmt: skip
    coder = load_sparse_coder(write_gemma_scope_2(tmp_path / "sae", cfg, arrays))
    assert coder.hook_in == HookSpec("model.layers.0", "output") and not coder.is_transcoder
    assert_encode(coder, block0_output(tiny["llama"]), "jumprelu", arrays)
    tc_cfg = {**cfg, "type": "transcoder", "hf_hook_point_in": "model.layers.0.post_attention_layernorm.output",
              "hf_hook_point_out": "model.layers.0.mlp.output"}  # fmt: skip
    tc = load_sparse_coder(write_gemma_scope_2(tmp_path / "tc", tc_cfg, arrays))
    assert tc.is_transcoder and tc.hook_out == HookSpec("model.layers.0.mlp", "output")
    tc.check_against(tiny["llama"])


def test_content_hash(tmp_path) -> None:
    arrays = coder_arrays("standard", D, N, D)
    cfg = saelens_v6_cfg("standard", D, N, "model.layers.0")
    a = load_sparse_coder(write_saelens(tmp_path / "a", cfg, arrays))
    b = load_sparse_coder(write_saelens(tmp_path / "b", cfg, arrays))
    assert a.content_hash == b.content_hash and len(a.content_hash) == 64
    digest = hashlib.sha256()
    for name in ("cfg.json", "sae_weights.safetensors"):
        digest.update(name.encode() + b"\0" + (tmp_path / "a" / name).read_bytes())
    assert a.content_hash == digest.hexdigest() == a.provenance()["content_sha256"]
    arrays["b_dec"][0] += 1.0
    assert load_sparse_coder(write_saelens(tmp_path / "c", cfg, arrays)).content_hash != a.content_hash
