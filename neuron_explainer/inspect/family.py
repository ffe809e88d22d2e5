"""What the inspect computations need to know about a model family, in one place.

Every computation in `neuron_explainer.inspect` works on a loaded `transformers` causal LM of a family listed in
`neuron_explainer.activations.hookpoints.HOOK_POINTS` and reads the model's own modules: its blocks, its final norm
and its unembedding. The per-family facts live here, as small tables, so the computations stay family-agnostic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from neuron_explainer.activations.hookpoints import HookPoint, hook_point_for
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.errors import ConfigError

FINAL_NORM_PATHS: dict[str, str] = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}
"""model_type -> dotted path of the norm applied before the unembedding; every other family uses `model.norm`."""

GAIN_PLUS_ONE = frozenset({"gemma", "gemma2", "gemma3_text"})
"""Families whose RMSNorm multiplies by `1 + weight` instead of `weight`."""


def check_model(model: Any) -> HookPoint:
    """Return the MLP hook point of a supported model.

    Raises:
        ModelError: the model is not a transformers model of a supported family; the message names the families.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return hook_point_for(str(model_type))


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    """Follow a dotted attribute path (`model.layers`) from a module."""
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def blocks(model: Any) -> nn.ModuleList:
    """The list of transformer blocks of a supported model."""
    return get_module(model, check_model(model).layers_path)  # type: ignore[return-value]


def n_layers(model: Any) -> int:
    """Number of transformer blocks."""
    return len(blocks(model))


def final_norm(model: Any) -> nn.Module:
    """The norm applied to the last residual stream before the unembedding."""
    check_model(model)
    return get_module(model, FINAL_NORM_PATHS.get(model.config.model_type, "model.norm"))


def unembedding(model: Any) -> torch.Tensor:
    """The unembedding matrix (vocab, d_model) of the model's output head (tied or not)."""
    return model.get_output_embeddings().weight


def final_softcap(model: Any) -> float | None:
    """The final logit softcap (Gemma 2, optionally Gemma 3), or None when the model has none."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def logits_from_residual(model: Any, residual: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and final logit softcap applied to a residual stream (..., d_model).

    Applied to the output of the last block this is exactly the model's own logits.
    """
    logits = model.get_output_embeddings()(final_norm(model)(residual))
    cap = final_softcap(model)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def norm_gain(model: Any) -> tuple[torch.Tensor, bool]:
    """The final norm's linear action on a direction: (per-dimension gain (d_model,), whether it centers first).

    LayerNorm (GPT-2, GPT-NeoX) subtracts the mean then multiplies by `weight`; RMSNorm multiplies by `weight`
    (`1 + weight` in the Gemma families). The data-dependent division by the norm of the input and the bias are
    left out: they rescale or shift every direction alike.
    """
    norm = final_norm(model)
    weight = cast(torch.Tensor, norm.weight).detach().float()
    if isinstance(norm, nn.LayerNorm):
        return weight, True
    if model.config.model_type in GAIN_PLUS_ONE:
        return 1.0 + weight, False
    return weight, False


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt."""

    input_ids: torch.Tensor
    """Token ids, shape (1, n_tokens), on the model's device."""
    tokens: list[str]
    """Each token decoded on its own (leading spaces kept), length n_tokens."""

    @property
    def n_tokens(self) -> int:
        """Number of tokens."""
        return int(self.input_ids.shape[1])


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Decode each id on its own; without a tokenizer, return the ids as strings."""
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    return [tokenizer.decode([int(i)]) for i in ids]


def encode(model: Any, tokenizer: Any, prompt: str | Sequence[int] | torch.Tensor) -> Prompt:
    """Tokenize a prompt (text with the tokenizer's special tokens, or token ids as given) for a supported model.

    Raises:
        ModelError: unsupported model family.
        ConfigError: empty prompt, ids outside the vocabulary, or text without a tokenizer.
    """
    check_model(model)
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ConfigError("a text prompt needs a tokenizer; pass token ids instead")
        ids = list(tokenizer(prompt)["input_ids"])
    else:
        ids = [int(i) for i in torch.as_tensor(prompt).reshape(-1).tolist()]
    vocab = int(model.config.vocab_size)
    if not ids:
        raise ConfigError("the prompt is empty")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConfigError(f"token id(s) {bad[:5]} outside the vocabulary 0..{vocab - 1}")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    return Prompt(input_ids=input_ids, tokens=token_texts(tokenizer, ids))


def check_layer(model: Any, layer: int) -> int:
    """Validate a layer index (negative counts from the end) and return it non-negative.

    Raises:
        ConfigError: the layer is out of range.
    """
    total = n_layers(model)
    if not -total <= layer < total:
        raise ConfigError(f"layer {layer} out of range: this model has layers 0..{total - 1}")
    return layer % total


def check_position(n_tokens: int, position: int) -> int:
    """Validate a token position (negative counts from the end) and return it non-negative.

    Raises:
        ConfigError: the position is out of range.
    """
    if not -n_tokens <= position < n_tokens:
        raise ConfigError(f"position {position} out of range for a prompt of {n_tokens} tokens")
    return position % n_tokens


def check_token_ids(model: Any, ids: Sequence[int]) -> list[int]:
    """Validate token ids against the vocabulary.

    Raises:
        ConfigError: an id is outside the vocabulary.
    """
    vocab = int(model.config.vocab_size)
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < vocab]
    if bad:
        raise ConfigError(f"token id(s) {bad[:5]} outside the vocabulary 0..{vocab - 1}")
    return out


def single_token_id(tokenizer: Any, token: int | str, what: str) -> int:
    """A token id given as an id, or as text that must be exactly one token; not checked against the vocabulary.

    Raises:
        ConfigError: text without a tokenizer, or text that is not one token; `what` names the token in the message.
    """
    if not isinstance(token, str):
        return int(token)
    if tokenizer is None:
        raise ConfigError(f"{what} {token!r} given as text needs a tokenizer")
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"{what} {token!r} is {len(ids)} tokens, not one: pass its id")
    return int(ids[0])


def block_output(output: Any) -> torch.Tensor:
    """The residual stream from a block's forward output (a tensor, or a tuple whose first item it is)."""
    return output[0] if isinstance(output, tuple) else output


def prompt_activations(model: Any, input_ids: torch.Tensor, layers: Sequence[int]) -> np.ndarray:
    """MLP neuron activations (T, L, N) float32 of one prompt (batch of one) at the hook point, via ActivationSource."""
    source = ActivationSource(model, check_model(model))
    acts = source.activations(input_ids, list(layers))
    return torch.stack([acts[layer][0] for layer in layers], dim=1).float().cpu().numpy()


@contextmanager
def attn_implementation(model: Any, name: str) -> Iterator[None]:
    """Switch the model's attention implementation for the duration of a block, then restore it."""
    previous = model.config._attn_implementation
    if previous == name:
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for inspection (hub id, directory, GGUF file or `builtin:` name).

    Raises:
        ModelError: the model cannot be loaded or its family is not supported.
    """
    from neuron_explainer.activations.models import load_causal_lm

    model, tokenizer, _provenance = load_causal_lm(spec, dtype=dtype, device=device)
    check_model(model)
    return model, tokenizer
