"""Each malformed, unsupported or mismatched coder is refused with a ConfigError that says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from neuron_explainer.errors import ConfigError
from neuron_explainer.features import load_sparse_coder
from tests.unit.features.sae_files import (
    coder_arrays,
    saelens_v6_cfg,
    write_gemma_npz,
    write_gemma_scope_2,
    write_saelens,
    write_sparsify,
)

D, N = 32, 64


def saelens(tmp: Path, arch: str = "standard", hook: str = "blocks.0.hook_resid_post", drop=(), **cfg) -> Path:
    arrays = {k: v for k, v in coder_arrays(arch, D, N, D).items() if k not in drop}
    return write_saelens(tmp / "sae", {**saelens_v6_cfg(arch, D, N, hook), **cfg}, arrays)


def sparsify(tmp: Path, name: str = "layers.0", **cfg) -> Path:
    return write_sparsify(tmp / name, {"d_in": D, "k": 4, "num_latents": N, **cfg}, coder_arrays("topk", D, N, D))


CASES = {
    "not found": (lambda t: t / "nope", {}, "sparse coder not found"),
    "empty folder": (lambda t: t, {}, "no sparse coder found; expected cfg.json + sae_weights.safetensors (SAELens)"),
    "no weights": (
        lambda t: (t / "cfg.json").write_text("{}") and t,
        {},
        "cfg.json without weights (sae_weights.safetensors for SAELens",
    ),
    "unknown architecture": (
        lambda t: saelens(t, architecture="matching_pursuit"),
        {"model_type": "llama"},
        "unsupported SAELens architecture 'matching_pursuit'; supported: ['gated', 'jumprelu',",
    ),
    "unknown activation": (
        lambda t: saelens(t, architecture=None, activation_fn_str="tanh-relu"),
        {"model_type": "llama"},
        "unsupported activation function 'tanh-relu'",
    ),
    "missing tensor": (
        lambda t: saelens(t, "jumprelu", drop=("threshold",)),
        {"model_type": "llama"},
        "lacks tensor(s) ['threshold']",
    ),
    "missing W_dec": (lambda t: saelens(t, drop=("W_dec",)), {"model_type": "llama"}, "missing tensor(s) ['W_dec']"),
    "declared width": (
        lambda t: saelens(t, d_in=48),
        {"model_type": "llama"},
        "config says d_in=48 but W_enc has shape",
    ),
    "dataset normalisation": (
        lambda t: saelens(t, normalize_activations="expected_average_only_in"),
        {"model_type": "llama"},
        "scales inputs by a dataset statistic the folder does not contain",
    ),
    "old bool normalisation": (
        lambda t: saelens(t, normalize_activations=True),
        {"model_type": "llama"},
        "normalize_activations='expected_average_only_in'",
    ),
    "head index": (
        lambda t: saelens(t, hook_head_index=3),
        {"model_type": "llama"},
        "single attention head (hook_head_index) are not supported",
    ),
    "topk without k": (lambda t: saelens(t, "topk"), {"model_type": "llama"}, "topk needs an integer k in 1..64"),
    "tl name without model type": (lambda t: saelens(t), {}, "is a TransformerLens hook name: give the model type"),
    "no hook at all": (lambda t: saelens(t, hook=None), {}, "names no hook: pass hook='MODULE[:input|output]'"),
    "pair for an autoencoder": (
        lambda t: saelens(t),
        {"hook": "model.layers.0->model.layers.1"},
        "is an autoencoder: give one hook",
    ),
    "single hook for a transcoder": (
        lambda t: saelens(t, "transcoder", apply_b_dec_to_input=False),
        {"hook": "model.layers.0"},
        "is a transcoder: give both hooks",
    ),
    "transcoder subtracting b_dec": (
        lambda t: saelens(t, "transcoder", metadata={"hook_name": "model.layers.0", "hook_name_out": "model.layers.1"}),
        {},
        "a transcoder cannot subtract b_dec",
    ),
    "bad json": (
        lambda t: (saelens(t) / "cfg.json").write_text("{nope") and t / "sae",
        {"model_type": "llama"},
        "cannot read",
    ),
    "corrupt safetensors": (
        lambda t: (saelens(t) / "sae_weights.safetensors").write_bytes(b"\x00" * 20) and t / "sae",
        {"model_type": "llama"},
        "cannot read",
    ),
    "sparsify without model type": (lambda t: sparsify(t), {}, "is relative to the base model; give model_type"),
    "sparsify signed": (lambda t: sparsify(t, signed=True), {"model_type": "llama"}, "option signed=true"),
    "sparsify groupmax": (lambda t: sparsify(t, activation="groupmax"), {"model_type": "llama"}, "'groupmax'"),
    "sparsify width": (
        lambda t: sparsify(t, num_latents=32),
        {"model_type": "llama"},
        "encoder.weight has shape (64, 32), config says (32, 32)",
    ),
    "sparsify transcoder given one hook": (
        lambda t: sparsify(t, name="layers.0.mlp", transcode=True),
        {"hook": "model.layers.0.mlp"},
        "is a transcoder: give both hooks",
    ),
    "npz without hook": (
        lambda t: write_gemma_npz(t / "params.npz", coder_arrays("jumprelu", D, N, D)),
        {},
        "names no hook: pass hook=",
    ),
    "npz missing threshold": (
        lambda t: np.savez(t / "params.npz", W_enc=np.zeros((D, N))) or t / "params.npz",
        {"hook": "model.layers.0"},
        "missing tensor(s) ['w_dec', 'b_enc', 'b_dec', 'threshold']",
    ),
    "gemma scope 2 affine": (
        lambda t: write_gemma_scope_2(
            t / "g", {"type": "transcoder", "affine_connection": True}, coder_arrays("jumprelu", D, N, D)
        ),
        {},
        "affine skip connections are not supported",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_with_message(tmp_path, case) -> None:
    make, kwargs, message = CASES[case]
    path = make(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_sparse_coder(path, **kwargs)
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_width_and_model_type_mismatch_against_a_model(tmp_path, tiny_model_dirs) -> None:
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["gpt2"]).eval()
    arrays = coder_arrays("standard", 16, N, 16)
    narrow = write_saelens(tmp_path / "narrow", saelens_v6_cfg("standard", 16, N, "transformer.h.0"), arrays)
    with pytest.raises(ConfigError, match=r"coder d_in=16 does not match the width 32 of transformer.h.0:output"):
        load_sparse_coder(narrow).check_against(gpt2)
    tc_cfg = saelens_v6_cfg("transcoder", D, N, "transformer.h.0.mlp:input", d_out=D, apply_b_dec_to_input=False,
                            metadata={"hook_name_out": "transformer.h.0.mlp.c_proj:input"})  # fmt: skip
    tc = load_sparse_coder(write_saelens(tmp_path / "tc", tc_cfg, coder_arrays("standard", D, N, D)))
    with pytest.raises(ConfigError, match=r"coder d_out=32 does not match the width 128 of transformer.h.0.mlp.c_proj"):
        tc.check_against(gpt2)
    llama_sae = load_sparse_coder(saelens(tmp_path), model_type="llama")
    with pytest.raises(ConfigError, match="resolved for model type 'llama', the model is 'gpt2'"):
        llama_sae.check_against(gpt2)
    with pytest.raises(ConfigError, match="model has no module 'model.layers.0'"):
        load_sparse_coder(saelens(tmp_path / "x", hook="model.layers.0")).check_against(gpt2)
    with torch.no_grad():
        assert gpt2(input_ids=torch.tensor([[1, 2]])).logits.shape[-1] > 0  # the model still runs: hooks removed
