"""Which tokens a neuron's output weights promote and suppress, read from the weights alone (no corpus).

A neuron of layer l writes `activation * w` into the residual stream, where w is its slice of the MLP output
projection (a column of `down_proj` / `dense_4h_to_h`, a row of GPT-2's `c_proj`). We read w as a direction through
the final norm's linear action and the unembedding:

    values = W_U @ (gain * w)           RMSNorm families (gain = weight, or 1 + weight for Gemma)
    values = W_U @ (gain * (w - mean(w)))   LayerNorm families (GPT-2, GPT-NeoX): the norm centers first

The norm's division by the input's scale and its bias are left out: the first rescales every direction alike,
the second adds the same logits to every neuron. w is not normalised by its own norm either, so values of
different neurons compare as their real output sizes do. A final logit softcap is monotone and does not change
the ranking, so it is not applied. The top-k tokens (largest values) are those the neuron promotes; the bottom-k
(most negative first) those it suppresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import blocks, check_layer, check_model, get_module, norm_gain, unembedding

TABLE_COLUMNS = ("layer", "neuron", "rank", "sign", "token_id", "token", "value")
"""Columns of the long-form table: rank is 1-based within (layer, neuron, sign); sign +1 = promoted, -1 = suppressed."""


@dataclass(frozen=True)
class OutputTokens:
    """Top and bottom tokens of some neurons of one layer. n neurons, k tokens each."""

    layer: int
    """The layer."""
    neurons: np.ndarray
    """int64 (n,): the neurons, in the order asked."""
    top_ids: np.ndarray
    """int64 (n, k): most promoted tokens, largest value first."""
    top_tokens: list[list[str]]
    """Texts of `top_ids`, [n][k]."""
    top_values: np.ndarray
    """float32 (n, k): their values (logit units per unit of activation, before the norm's rescaling)."""
    bottom_ids: np.ndarray
    """int64 (n, k): most suppressed tokens, most negative first."""
    bottom_tokens: list[list[str]]
    """Texts of `bottom_ids`, [n][k]."""
    bottom_values: np.ndarray
    """float32 (n, k): their values."""

    def to_frame(self) -> pd.DataFrame:
        """Long form with TABLE_COLUMNS: one row per (neuron, sign, rank)."""
        n, k = self.top_ids.shape
        frames = []
        for sign, ids, tokens, values in (
            (1, self.top_ids, self.top_tokens, self.top_values),
            (-1, self.bottom_ids, self.bottom_tokens, self.bottom_values),
        ):
            frames.append(
                pd.DataFrame(
                    {
                        "layer": np.full(n * k, self.layer, dtype=np.int16),
                        "neuron": np.repeat(self.neurons, k).astype(np.int32),
                        "rank": np.tile(np.arange(1, k + 1), n).astype(np.int16),
                        "sign": np.full(n * k, sign, dtype=np.int8),
                        "token_id": ids.ravel().astype(np.int32),
                        "token": [t for row in tokens for t in row],
                        "value": values.ravel().astype(np.float32),
                    }
                )
            )
        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(["neuron", "sign", "rank"], ascending=[True, False, True], ignore_index=True)


def output_weights(model: Any, layer: int) -> torch.Tensor:
    """(n_neurons, d_model): what each neuron of a layer writes into the residual stream per unit of activation."""
    hook_point = check_model(model)
    layer = check_layer(model, layer)
    proj = get_module(blocks(model)[layer], hook_point.module_path)
    weight = cast(torch.Tensor, proj.weight).detach()
    # nn.Linear stores (out=d_model, in=n_neurons); GPT-2's Conv1D stores (in=n_neurons, out=d_model).
    return weight.T if isinstance(proj, nn.Linear) else weight


def output_logits(model: Any, layer: int, neurons: Sequence[int] | None = None) -> torch.Tensor:
    """float32 (n, vocab): the neurons' output directions through the final norm's gain and the unembedding.

    Raises:
        ConfigError: a layer or neuron is out of range.
    """
    weights = output_weights(model, layer)
    if neurons is not None:
        index = check_neurons(weights.shape[0], neurons)
        weights = weights[torch.as_tensor(index, dtype=torch.long, device=weights.device)]
    gain, centers = norm_gain(model)
    directions = weights.float()
    if centers:
        directions = directions - directions.mean(-1, keepdim=True)
    directions = directions * gain.to(directions.device)
    return directions @ unembedding(model).detach().float().T


def check_neurons(n_neurons: int, neurons: Sequence[int]) -> list[int]:
    """Validate neuron indices against the layer width.

    Raises:
        ConfigError: a neuron is out of range.
    """
    out = [int(n) for n in neurons]
    bad = [n for n in out if not 0 <= n < n_neurons]
    if bad:
        raise ConfigError(f"neuron(s) {bad[:5]} out of range: the layer has neurons 0..{n_neurons - 1}")
    return out


class _TokenTexts:
    """Decode each token id once (tables repeat the same tokens many times)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, ids: np.ndarray) -> list[list[str]]:
        for i in np.unique(ids).tolist():
            if i not in self.cache:
                self.cache[i] = self.tokenizer.decode([i]) if self.tokenizer is not None else str(i)
        return [[self.cache[i] for i in row] for row in ids.tolist()]


def _top_bottom(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    k = min(k, logits.shape[-1])
    top_values, top_ids = logits.topk(k, dim=-1)
    bottom_values, bottom_ids = logits.topk(k, dim=-1, largest=False)
    return top_ids, top_values, bottom_ids, bottom_values


def _output_tokens(model: Any, layer: int, neurons: list[int], k: int, texts: _TokenTexts) -> OutputTokens:
    top_ids, top_values, bottom_ids, bottom_values = (
        t.cpu().numpy() for t in _top_bottom(output_logits(model, layer, neurons), k)
    )
    return OutputTokens(
        layer=layer,
        neurons=np.asarray(neurons, dtype=np.int64),
        top_ids=top_ids.astype(np.int64),
        top_tokens=texts(top_ids),
        top_values=top_values,
        bottom_ids=bottom_ids.astype(np.int64),
        bottom_tokens=texts(bottom_ids),
        bottom_values=bottom_values,
    )


@torch.no_grad()
def neuron_output_tokens(
    model: Any, tokenizer: Any, layer: int, neurons: Sequence[int], *, k: int = 10
) -> OutputTokens:
    """Top-k and bottom-k tokens of the output directions of chosen neurons of one layer.

    Raises:
        ModelError: unsupported model family.
        ConfigError: a layer or neuron is out of range, or k < 1.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    layer = check_layer(model, layer)
    neurons = check_neurons(output_weights(model, layer).shape[0], neurons)
    return _output_tokens(model, layer, neurons, k, _TokenTexts(tokenizer))


@torch.no_grad()
def output_tokens_table(
    model: Any, tokenizer: Any, layers: Sequence[int] | None = None, *, k: int = 10, chunk_bytes: int = 1 << 28
) -> pd.DataFrame:
    """Top-k and bottom-k output tokens of every neuron of some layers (all by default), as one long table.

    Neurons are processed in chunks whose (chunk, vocab) float32 logits fit in `chunk_bytes`.
    The columns are TABLE_COLUMNS, sorted by layer, neuron, sign (+1 first) and rank.

    Raises:
        ModelError: unsupported model family.
        ConfigError: a layer is out of range, or k < 1.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    chosen = [check_layer(model, layer) for layer in (layers if layers is not None else range(len(blocks(model))))]
    chunk = max(1, chunk_bytes // (4 * unembedding(model).shape[0]))
    texts = _TokenTexts(tokenizer)
    frames = []
    for layer in chosen:
        width = output_weights(model, layer).shape[0]
        for start in range(0, width, chunk):
            neurons = list(range(start, min(width, start + chunk)))
            frames.append(_output_tokens(model, layer, neurons, k, texts).to_frame())
    if not frames:
        return pd.DataFrame({c: [] for c in TABLE_COLUMNS})
    return pd.concat(frames, ignore_index=True)
