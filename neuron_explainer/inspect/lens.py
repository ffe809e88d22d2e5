"""Logit lens: read the residual stream after every block through the model's final norm and unembedding.

The residual stream is captured with a forward hook on each block rather than read from `output_hidden_states`,
whose last entry is already final-normed (in transformers 5 for every family here; older versions differed by
family), so reading it through the final norm again would norm it twice. It is then mapped to logits by
`family.logits_from_residual`: final norm, unembedding, and the final logit softcap where the family has one
(Gemma 2). The row of the last block is therefore exactly the model's own logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import (
    Prompt,
    block_output,
    blocks,
    check_position,
    check_token_ids,
    encode,
    logits_from_residual,
    single_token_id,
    token_texts,
    unembedding,
)


@dataclass(frozen=True)
class LogitLens:
    """Top predictions and watched-token ranks after every block, at every position. L layers, T tokens."""

    tokens: list[str]
    """The prompt's tokens, each decoded on its own (T)."""
    input_ids: np.ndarray
    """The prompt's token ids, int64 (T,)."""
    layers: np.ndarray
    """Block index of each row, int64 (L,): row l reads the residual stream after block `layers[l]`."""
    top_ids: np.ndarray
    """Ids of the k most likely next tokens, int64 (L, T, k), most likely first."""
    top_tokens: list[list[list[str]]]
    """Texts of `top_ids`, nested [L][T][k]."""
    top_probs: np.ndarray
    """Probabilities of `top_ids` (softmax over the whole vocabulary), float32 (L, T, k)."""
    watch_ids: np.ndarray
    """Ids of the watched tokens, int64 (W,); W may be 0."""
    watch_tokens: list[str]
    """Texts of the watched tokens (W)."""
    watch_ranks: np.ndarray
    """Rank of each watched token, int64 (L, T, W); 1 = most likely (ties share the best rank)."""
    watch_probs: np.ndarray
    """Probability of each watched token, float32 (L, T, W)."""
    next_ranks: np.ndarray
    """Rank at position t of the prompt's token t+1, int64 (L, T-1): how early the model 'knows' the next token."""

    def to_frame(self) -> pd.DataFrame:
        """Long form of the top predictions: layer, position, token, k (1-based), token_id, top_token, prob."""
        n_layers, n_tokens, k = self.top_ids.shape
        layer, position, kk = np.meshgrid(self.layers, np.arange(n_tokens), np.arange(1, k + 1), indexing="ij")
        return pd.DataFrame(
            {
                "layer": layer.ravel(),
                "position": position.ravel(),
                "token": [self.tokens[p] for p in position.ravel()],
                "k": kk.ravel(),
                "token_id": self.top_ids.ravel(),
                "top_token": [t for row in self.top_tokens for col in row for t in col],
                "prob": self.top_probs.ravel(),
            }
        )

    def watch_frame(self) -> pd.DataFrame:
        """Long form of the watched tokens: layer, position, token_id, watched (text), rank, prob."""
        n_layers, n_tokens, n_watch = self.watch_ranks.shape
        layer, position, w = np.meshgrid(self.layers, np.arange(n_tokens), np.arange(n_watch), indexing="ij")
        return pd.DataFrame(
            {
                "layer": layer.ravel(),
                "position": position.ravel(),
                "token_id": self.watch_ids[w.ravel()],
                "watched": [self.watch_tokens[i] for i in w.ravel()],
                "rank": self.watch_ranks.ravel(),
                "prob": self.watch_probs.ravel(),
            }
        )


@dataclass(frozen=True)
class Rankings:
    """Ranks of watched tokens after every block at one position (Ecco's `rankings_watch`). L layers, W tokens."""

    tokens: list[str]
    """The prompt's tokens (T)."""
    position: int
    """The position read (non-negative); its prediction is of token `position + 1`."""
    layers: np.ndarray
    """Block index of each row, int64 (L,)."""
    watch_ids: np.ndarray
    """Ids of the watched tokens, int64 (W,)."""
    watch_tokens: list[str]
    """Texts of the watched tokens (W)."""
    ranks: np.ndarray
    """Rank of each watched token, int64 (L, W); 1 = most likely."""
    probs: np.ndarray
    """Probability of each watched token, float32 (L, W)."""

    def to_frame(self) -> pd.DataFrame:
        """Long form: layer, token_id, watched, rank, prob."""
        n_layers, n_watch = self.ranks.shape
        layer, w = np.meshgrid(self.layers, np.arange(n_watch), indexing="ij")
        return pd.DataFrame(
            {
                "layer": layer.ravel(),
                "token_id": self.watch_ids[w.ravel()],
                "watched": [self.watch_tokens[i] for i in w.ravel()],
                "rank": self.ranks.ravel(),
                "prob": self.probs.ravel(),
            }
        )


@torch.no_grad()
def block_residuals(model: Any, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream after each block, [L] tensors of shape (batch, T, d_model), from one forward pass."""
    sink: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(blocks(model)):
        handles.append(block.register_forward_hook(lambda _m, _a, out, i=i: sink.__setitem__(i, block_output(out))))
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [sink[i] for i in range(len(sink))]


def watch_ids_of(model: Any, tokenizer: Any, watch: Sequence[int | str]) -> list[int]:
    """Token ids of watched tokens given as ids or as single-token strings.

    Raises:
        ConfigError: a string is not exactly one token, or an id is outside the vocabulary.
    """
    return check_token_ids(model, [single_token_id(tokenizer, item, "watched token") for item in watch])


def ranks_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """1-based ranks (R, W) of token ids (R, W) in logits (R, V): 1 + the number of strictly larger logits."""
    chosen = logits.gather(-1, ids)
    columns = [(logits > chosen[:, j : j + 1]).sum(-1) for j in range(ids.shape[1])]
    return torch.stack(columns, dim=-1) + 1 if columns else torch.zeros_like(ids)


@torch.no_grad()
def read_rows(
    model: Any, residuals: torch.Tensor, k: int, ids: torch.Tensor, chunk_bytes: int = 1 << 28
) -> tuple[torch.Tensor, ...]:
    """Lens readout of residual rows (R, d): top-k ids and probs (R, k), ranks and probs (R, W) of `ids` (R, W).

    Rows go through the unembedding in chunks of about `chunk_bytes` of float32 logits: one large matmul reads
    the (often huge) unembedding matrix once per chunk instead of once per layer.
    """
    step = max(1, chunk_bytes // (4 * unembedding(model).shape[0]))
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, residuals.shape[0], step):
        logits = logits_from_residual(model, residuals[start : start + step]).float()
        probs = logits.softmax(-1)
        top_probs, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
        chosen = ids[start : start + step]
        values = (top_ids, top_probs, ranks_of(logits, chosen), probs.gather(-1, chosen))
        for store, value in zip(out, values, strict=True):
            store.append(value.cpu())
    return tuple(torch.cat(parts) for parts in out)


def logit_lens(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    *,
    k: int = 1,
    watch: Sequence[int | str] = (),
) -> LogitLens:
    """Logit lens of one prompt: top-k tokens per (layer, position) and the ranks of watched tokens.

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt, k < 1, or a watched token that is not one token.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    p: Prompt = encode(model, tokenizer, prompt)
    watched = watch_ids_of(model, tokenizer, watch)
    residuals = torch.stack([r[0] for r in block_residuals(model, p.input_ids)])  # (L, T, d)
    n_layers_, n, _ = residuals.shape
    device = p.input_ids.device
    # Per row: the watched tokens, then the prompt's next token (a placeholder 0 at the last position, dropped).
    next_ids = torch.cat([p.input_ids[0, 1:], torch.zeros(1, dtype=torch.long, device=device)])
    ids = torch.cat([torch.tensor(watched, dtype=torch.long, device=device).expand(n, -1), next_ids[:, None]], 1)
    top_ids, top_probs, ranks, probs = read_rows(
        model, residuals.reshape(n_layers_ * n, -1), k, ids.repeat(n_layers_, 1)
    )
    top = top_ids.reshape(n_layers_, n, -1).numpy()
    rank_grid = ranks.reshape(n_layers_, n, -1).numpy()
    prob_grid = probs.reshape(n_layers_, n, -1).numpy()
    return LogitLens(
        tokens=p.tokens,
        input_ids=p.input_ids[0].cpu().numpy(),
        layers=np.arange(n_layers_),
        top_ids=top,
        top_tokens=[[token_texts(tokenizer, row) for row in layer] for layer in top],
        top_probs=top_probs.reshape(n_layers_, n, -1).numpy(),
        watch_ids=np.array(watched, dtype=np.int64),
        watch_tokens=token_texts(tokenizer, watched),
        watch_ranks=rank_grid[:, :, :-1],
        watch_probs=prob_grid[:, :, :-1],
        next_ranks=rank_grid[:, :-1, -1],
    )


def rankings(
    model: Any, tokenizer: Any, prompt: str | Sequence[int], watch: Sequence[int | str], *, position: int = -1
) -> Rankings:
    """Ranks and probabilities of watched tokens after every block at one position of a prompt.

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt or position, no watched token, or a watched token that is not one token.
    """
    if not watch:
        raise ConfigError("rankings needs at least one watched token")
    p = encode(model, tokenizer, prompt)
    pos = check_position(p.n_tokens, position)
    watched = watch_ids_of(model, tokenizer, watch)
    residuals = torch.stack([r[0, pos] for r in block_residuals(model, p.input_ids)])  # (L, d)
    ids = torch.tensor(watched, dtype=torch.long, device=p.input_ids.device).expand(residuals.shape[0], -1)
    _top_ids, _top_probs, ranks, probs = read_rows(model, residuals, 1, ids)
    return Rankings(
        tokens=p.tokens,
        position=pos,
        layers=np.arange(residuals.shape[0]),
        watch_ids=np.array(watched, dtype=np.int64),
        watch_tokens=token_texts(tokenizer, watched),
        ranks=ranks.numpy(),
        probs=probs.numpy(),
    )
