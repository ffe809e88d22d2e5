"""Attention patterns of one prompt (BertViz head and model views) and the query/key view of one head.

Attention probabilities come from the model's own attention modules run with the eager implementation
(`output_attentions=True`): the model is switched to eager for the call and switched back afterwards, since the
default SDPA kernel returns no weights.

The neuron view reads queries and keys where the attention kernel receives them, which is after everything a
family does to them (q/k norms of Qwen3 and Gemma 3, rotary embeddings, partial rotary of GPT-NeoX) and before
grouped-query heads are repeated. It does so through transformers' `AttentionInterface`: a registered attention
function that records its inputs and then calls the family's own eager attention function, so the forward pass is
unchanged and no family's projections, norms or rotary code are re-implemented here. The scores are then rebuilt
from those vectors with the scaling and softcap the module passed to its kernel, plus the causal mask and the
sliding window; their softmax reproduces the model's attention probabilities (tests check every family).
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from neuron_explainer.errors import ConfigError, ModelError
from neuron_explainer.inspect.family import attn_implementation, check_layer, check_position, encode, n_layers

CAPTURE_IMPLEMENTATION = "neuron_explainer_capture"
"""Name under which the recording attention function is registered with transformers."""

_SINK: contextvars.ContextVar[list | None] = contextvars.ContextVar("neuron_explainer_attention_sink", default=None)


@dataclass(frozen=True)
class AttentionMaps:
    """Attention probabilities of every head of every layer for one prompt. L layers, H heads, T tokens."""

    tokens: list[str]
    """The prompt's tokens (T)."""
    probs: np.ndarray
    """float32 (L, H, T, T): probs[l, h, q, k] is how much query position q attends to key position k.
    Each row sums to 1; keys after q (and outside a sliding window) are 0."""

    def head(self, layer: int, head: int) -> np.ndarray:
        """One head's (T, T) pattern."""
        return self.probs[layer, head]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data for a head view and a model view: tokens, sizes, attention nested [L][H][T][T]."""
        n_layers_, n_heads, _, _ = self.probs.shape
        return {
            "tokens": list(self.tokens),
            "n_layers": n_layers_,
            "n_heads": n_heads,
            "attention": self.probs.tolist(),
        }

    def to_frame(self) -> pd.DataFrame:
        """Long form of the allowed (causal) entries: layer, head, query, key, prob."""
        n_layers_, n_heads, n, _ = self.probs.shape
        layer, head, query, key = np.meshgrid(
            np.arange(n_layers_), np.arange(n_heads), np.arange(n), np.arange(n), indexing="ij"
        )
        keep = (key <= query).ravel()
        return pd.DataFrame(
            {
                "layer": layer.ravel()[keep],
                "head": head.ravel()[keep],
                "query": query.ravel()[keep],
                "key": key.ravel()[keep],
                "prob": self.probs.ravel()[keep],
            }
        )


@dataclass(frozen=True)
class NeuronView:
    """Query and key vectors of one head and how they make its attention pattern. T tokens, D = head dim."""

    tokens: list[str]
    """The prompt's tokens (T)."""
    layer: int
    """The layer (non-negative)."""
    head: int
    """The query head."""
    kv_head: int
    """The key/value head this query head reads (differs from `head` under grouped-query attention)."""
    query_position: int
    """The query position `products` is computed for (non-negative)."""
    queries: np.ndarray
    """float32 (T, D): the head's query vectors as the attention kernel receives them (after q norm and rotary)."""
    keys: np.ndarray
    """float32 (T, D): the kv head's key vectors as the attention kernel receives them (after k norm and rotary)."""
    products: np.ndarray
    """float32 (T, D): queries[query_position] * keys[j], element-wise, for every key position j; a row sums
    to the unscaled dot product."""
    scaling: float
    """Factor applied to q.k: 1/sqrt(D) in most families, query_pre_attn_scalar**-0.5 in Gemma 2 and 3."""
    softcap: float | None
    """Attention-logit softcap (Gemma 2): scores = softcap * tanh(scaling * q.k / softcap); None when absent."""
    sliding_window: int | None
    """Window of this layer: key j is visible to query i when i - window < j <= i; None for full causal."""
    scores: np.ndarray
    """float32 (T, T): scaled (and softcapped) q.k for every (query, key) pair, before masking; finite."""
    allowed: np.ndarray
    """bool (T, T): the causal and sliding-window mask, True where the query may attend to the key."""
    probs: np.ndarray
    """float32 (T, T): softmax over the allowed keys of `scores`; 0 elsewhere. Equals the model's pattern."""

    def to_frame(self) -> pd.DataFrame:
        """One row per key position for `query_position`: key, token, score, allowed, prob, qk (unscaled)."""
        q = self.query_position
        return pd.DataFrame(
            {
                "key": np.arange(len(self.tokens)),
                "token": self.tokens,
                "score": self.scores[q],
                "allowed": self.allowed[q],
                "prob": self.probs[q],
                "qk": self.products.sum(-1),
            }
        )


@torch.no_grad()
def attention_maps(model: Any, tokenizer: Any, prompt: str | Sequence[int]) -> AttentionMaps:
    """Attention probabilities of every layer and head, from an eager forward pass with `output_attentions`.

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt.
    """
    p = encode(model, tokenizer, prompt)
    with attn_implementation(model, "eager"):
        out = model(input_ids=p.input_ids, output_attentions=True, use_cache=False)
    probs = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()
    return AttentionMaps(tokens=p.tokens, probs=probs)


def _recording_attention(module: Any, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Record the kernel's inputs, then run the family's own eager attention unchanged."""
    sink = _SINK.get()
    if sink is not None:
        scaling = kwargs.get("scaling")
        sink.append(
            {
                "query": query.detach(),
                "key": key.detach(),
                "scaling": float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
                "softcap": kwargs.get("softcap"),
                "sliding_window": kwargs.get("sliding_window"),
            }
        )
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ModelError(f"{type(module).__module__} has no eager_attention_forward to record attention through")
    return eager(module, query, key, *args, **kwargs)


def register_recording_attention() -> None:
    """Register the recording attention function (and the eager mask it needs) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _recording_attention)
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, eager_mask)


@torch.no_grad()
def kernel_inputs(model: Any, input_ids: torch.Tensor) -> list[dict[str, Any]]:
    """Per layer, what the attention kernel received: query, key, scaling, softcap and sliding_window.

    query is (B, H, T, D) and key (B, H_kv, T, D). One forward pass with the recording attention function; the
    previous attention implementation is restored afterwards.
    """
    register_recording_attention()
    sink: list[dict[str, Any]] = []
    token = _SINK.set(sink)
    try:
        with attn_implementation(model, CAPTURE_IMPLEMENTATION):
            model(input_ids=input_ids, use_cache=False)
    finally:
        _SINK.reset(token)
    if len(sink) != n_layers(model):
        raise RuntimeError(f"recorded {len(sink)} attention calls for {n_layers(model)} layers")
    return sink


def visibility(n_tokens: int, sliding_window: int | None) -> np.ndarray:
    """Boolean (T, T) mask: causal, and within the sliding window when there is one."""
    query = np.arange(n_tokens)[:, None]
    key = np.arange(n_tokens)[None, :]
    allowed = key <= query
    if sliding_window is not None:
        allowed &= key > query - sliding_window
    return allowed


def neuron_view(
    model: Any, tokenizer: Any, prompt: str | Sequence[int], layer: int, head: int, *, query_position: int = -1
) -> NeuronView:
    """Queries, keys, their products and the scores of one head, rebuilt as the model computes them.

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt, layer, head or query position.
    """
    p = encode(model, tokenizer, prompt)
    layer = check_layer(model, layer)
    q_pos = check_position(p.n_tokens, query_position)
    rec = kernel_inputs(model, p.input_ids)[layer]
    n_heads, n_kv = rec["query"].shape[1], rec["key"].shape[1]
    if not 0 <= head < n_heads:
        raise ConfigError(f"head {head} out of range: layer {layer} has heads 0..{n_heads - 1}")
    kv_head = head // (n_heads // n_kv)
    queries = rec["query"][0, head].float()
    keys = rec["key"][0, kv_head].float()
    scores = (queries @ keys.T) * rec["scaling"]
    softcap = rec["softcap"]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = visibility(p.n_tokens, rec["sliding_window"])
    masked = scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))
    return NeuronView(
        tokens=p.tokens,
        layer=layer,
        head=head,
        kv_head=kv_head,
        query_position=q_pos,
        queries=queries.cpu().numpy(),
        keys=keys.cpu().numpy(),
        products=(queries[q_pos] * keys).cpu().numpy(),
        scaling=rec["scaling"],
        softcap=float(softcap) if softcap is not None else None,
        sliding_window=int(rec["sliding_window"]) if rec["sliding_window"] is not None else None,
        scores=scores.cpu().numpy(),
        allowed=allowed,
        probs=masked.softmax(-1).cpu().numpy(),
    )
