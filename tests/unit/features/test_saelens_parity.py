"""Optional: our encode / decode / reconstruct equal sae_lens's on the same folders (skipped without sae_lens).

sae_lens is not a dependency. To run this file: make a throwaway venv with the CPU torch and sae-lens, then
`PYTHONPATH=. /tmp/saelens/bin/python -m pytest -p no:cacheprovider tests/unit/features/test_saelens_parity.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_explainer.features import load_sparse_coder
from tests.unit.features.sae_files import coder_arrays, rand, saelens_v6_cfg, write_saelens

sae_lens = pytest.importorskip("sae_lens")

D, N, D_OUT = 24, 48, 40
CASES = {
    "standard": ("standard", {}, {}),
    "standard_no_bdec": ("standard", {"apply_b_dec_to_input": False}, {}),
    "topk": ("topk", {"k": 6}, {}),
    "topk_rescaled": ("topk", {"k": 6, "rescale_acts_by_decoder_norm": True}, {}),
    "jumprelu": ("jumprelu", {}, {}),
    "gated": ("gated", {}, {}),
    "constant_norm_rescale": ("standard", {"normalize_activations": "constant_norm_rescale"}, {}),
    "layer_norm": ("jumprelu", {"normalize_activations": "layer_norm"}, {}),
    "transcoder": (
        "transcoder",
        {"apply_b_dec_to_input": False, "d_out": D_OUT},
        {"hook_name_out": "blocks.0.hook_mlp_out"},
    ),
    "jumprelu_skip_transcoder": (
        "jumprelu_skip_transcoder",
        {"apply_b_dec_to_input": False, "d_out": D_OUT},
        {"hook_name_out": "blocks.0.hook_mlp_out"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encode_decode_match_sae_lens(tmp_path, case) -> None:
    arch, extra, metadata = CASES[case]
    base = {"transcoder": "standard", "jumprelu_skip_transcoder": "jumprelu"}.get(arch, arch)
    d_out = extra.get("d_out", D)
    arrays = coder_arrays(base, D, N, d_out, seed=21)
    arrays["W_dec"] *= np.random.default_rng(3).uniform(0.3, 2.0, (N, 1)).astype(np.float32)
    if "skip" in arch:
        arrays["W_skip"] = rand(np.random.default_rng(4), d_out, D, scale=0.2)
    cfg = saelens_v6_cfg(arch, D, N, "blocks.0.ln2.hook_normalized", metadata=metadata, **extra)
    folder = write_saelens(tmp_path / case, cfg, arrays)
    ours = load_sparse_coder(folder, model_type="llama")
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    x = torch.randn(5, 7, D) * 2 + 0.5
    with torch.no_grad():
        expected = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), expected, rtol=1e-5, atol=1e-5)
        assert (expected != 0).any()
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), rtol=1e-4, atol=1e-4)
        if ours.config.input_norm == "none":
            torch.testing.assert_close(ours.decode(expected), theirs.decode(expected), rtol=1e-4, atol=1e-4)


def test_pre6_topk_config_matches_sae_lens(tmp_path) -> None:
    arrays = coder_arrays("topk", D, N, D, seed=22)
    cfg = {"hook_point": "blocks.0.hook_resid_pre", "d_in": D, "d_sae": N, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 5}, "dtype": "float32", "model_name": "tiny"}  # fmt: skip
    folder = write_saelens(tmp_path / "old", cfg, arrays)
    ours = load_sparse_coder(folder, model_type="gpt2")
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    x = torch.randn(9, D)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
