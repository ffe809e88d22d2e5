"""SparseCoder maths on random inputs against the brute-force encoder, and its own refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_explainer.errors import ConfigError
from neuron_explainer.features import CoderConfig, HookSpec, SparseCoder
from tests.unit.features.sae_files import brute_encode, coder_arrays

HOOK = HookSpec("model.layers.0")
D, N = 16, 40


def make(arch: str, arrays: dict, **kw) -> SparseCoder:
    config = CoderConfig(architecture=arch, hook_in=HOOK, hook_out=HOOK, **kw)
    return SparseCoder(config, {name: torch.from_numpy(a) for name, a in arrays.items()})


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_encode_any_leading_dims(arch) -> None:
    arrays = coder_arrays(arch, D, N, D, seed=11)
    coder = make(arch, arrays, k=7, subtract_decoder_bias=True)
    x = torch.randn(2, 3, 4, D)
    got = coder.encode(x)
    assert got.shape == (2, 3, 4, N)
    expected = brute_encode(arch, x.reshape(-1, D).numpy(), arrays, subtract_b_dec=True, k=7)
    np.testing.assert_allclose(got.reshape(-1, N).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(coder.encode(x[0, 0, 0]).numpy(), expected[0], rtol=1e-4, atol=1e-5)


def test_topk_keeps_only_positive_values_when_few_are_positive() -> None:
    arrays = coder_arrays("topk", D, N, D, seed=12)
    arrays["b_enc"] = np.full(N, -2.5, dtype=np.float32)  # most pre-activations negative
    coder = make("topk", arrays, k=20)
    x = torch.randn(50, D)
    got = coder.encode(x).numpy()
    np.testing.assert_allclose(got, brute_encode("topk", x.numpy(), arrays, k=20), rtol=1e-4, atol=1e-5)
    assert (got >= 0).all() and ((got > 0).sum(1) < 20).any()


def test_jumprelu_threshold_is_strict() -> None:
    arrays = coder_arrays("jumprelu", D, N, D, seed=13)
    arrays["W_enc"][:] = 0
    arrays["b_enc"] = arrays["threshold"].copy()  # pre == threshold exactly: off
    arrays["b_enc"][:5] = np.abs(arrays["threshold"][:5]) + 0.1  # just above a positive threshold: on
    arrays["threshold"][:5] = np.abs(arrays["threshold"][:5])
    got = make("jumprelu", arrays).encode(torch.zeros(1, D)).numpy()[0]
    assert (got[5:] == 0).all() and np.allclose(got[:5], arrays["b_enc"][:5])


def test_refusals() -> None:
    arrays = coder_arrays("standard", D, N, D)
    with pytest.raises(ConfigError, match="unknown architecture 'batchtopk'; supported: standard, topk"):
        make("batchtopk", arrays)
    with pytest.raises(ConfigError, match=r"jumprelu coder from memory lacks tensor\(s\) \['threshold'\]"):
        make("jumprelu", arrays)
    with pytest.raises(ConfigError, match=r"b_enc has shape \(39,\), expected \(40,\)"):
        make("standard", {**arrays, "b_enc": arrays["b_enc"][:-1]})
    with pytest.raises(ConfigError, match=r"W_dec has shape \(16, 16\), expected \(40, 16\)"):
        make("standard", {**arrays, "W_dec": np.zeros((D, D), np.float32)})
    with pytest.raises(ConfigError, match="topk needs an integer k in 1..40, got 41"):
        make("topk", arrays, k=41)
    with pytest.raises(ConfigError, match="cannot subtract b_dec"):
        make("standard", {**arrays, "W_dec": np.zeros((N, 8), np.float32), "b_dec": np.zeros(8, np.float32)},
             subtract_decoder_bias=True)  # fmt: skip
    with pytest.raises(ConfigError, match="input width 15 does not match the coder's d_in=16"):
        make("standard", arrays).encode(torch.zeros(2, 15))


def test_config_attributes_read_the_config_and_are_read_only() -> None:
    out = HookSpec("model.layers.0.mlp")
    config = CoderConfig(architecture="jumprelu", hook_in=HOOK, hook_out=out, transcoder=True, content_hash="ab")
    tensors = {name: torch.from_numpy(a) for name, a in coder_arrays("jumprelu", D, N, D).items()}
    coder = SparseCoder(config, {**tensors, "W_skip": None})  # a None tensor counts as absent
    got = (coder.architecture, coder.is_transcoder, coder.hook_in, coder.hook_out, coder.content_hash)
    assert got == ("jumprelu", True, HOOK, out, "ab")
    assert getattr(coder, "W_skip", None) is None and "W_skip" not in dict(coder.named_buffers())
    with pytest.raises(AttributeError):
        coder.hook_in = out
    assert coder.hook_in == HOOK
