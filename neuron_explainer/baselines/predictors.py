"""Explanation-free baselines (docs/method.md, "Baselines"): predict a neuron's activation from the current token alone.

- **weights**: the neuron's activation when the residual stream entering the MLP is just the token's
  embedding: the block's pre-MLP norm (its gain), then the MLP's input weights and nonlinearity, read at
  the harvest hook point. One pass over the vocabulary per layer, no corpus.
- **lookup**: the mean activation of each (token, neuron) over a held-out stretch of the corpus (excerpts
  the harvest did not use); tokens never seen there predict the neuron's held-out mean.

Both give a prediction per token id, so they "simulate" any excerpt; the stage stores them in the same
tables as LLM explanations and simulations, and they are scored the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neuron_explainer.activations.sources import ActivationSource, get_module


@torch.no_grad()
def weight_token_predictions(
    model: torch.nn.Module, source: ActivationSource, layer: int, neurons: Sequence[int], chunk: int = 4096
) -> torch.Tensor:
    """(vocab, len(neurons)) activations of `layer`'s neurons with the MLP fed each token's embedding alone."""
    block = source.blocks[layer]
    norm = get_module(block, source.hook_point.mlp_norm_path)
    mlp = get_module(block, source.hook_point.mlp_path)
    embed: Any = model.get_input_embeddings()  # type: ignore[operator]
    vocab = int(embed.weight.shape[0])
    device = embed.weight.device
    index = torch.as_tensor(list(neurons), dtype=torch.long, device=device)
    sink: dict[int, torch.Tensor] = {}
    out = []
    with source.hooks([layer], sink, stop_after_last=False):
        for start in range(0, vocab, chunk):
            ids = torch.arange(start, min(start + chunk, vocab), device=device)
            mlp(norm(embed(ids[:, None])))  # (chunk, 1, d): one "position" per token
            out.append(sink[layer][:, 0, index].float().cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class TokenLookup:
    """Mean activation per (token, neuron) over a held-out corpus."""

    neurons: tuple[int, ...]
    token_ids: torch.Tensor
    """(U,) the distinct tokens seen, ascending."""
    counts: torch.Tensor
    """(U,) occurrences of each."""
    means: torch.Tensor
    """(U, len(neurons)) mean activation, float64."""
    fallback: torch.Tensor
    """(len(neurons),) mean over every held-out token: the prediction for unseen tokens."""

    def predict(self, token_ids: Sequence[int], neuron: int) -> list[float]:
        """Predicted activations of one neuron on a sequence of tokens."""
        k = self.neurons.index(neuron)
        ids = torch.as_tensor(list(token_ids), dtype=self.token_ids.dtype)
        pos = torch.searchsorted(self.token_ids, ids).clamp_max(max(len(self.token_ids) - 1, 0))
        seen = self.token_ids[pos] == ids if len(self.token_ids) else torch.zeros_like(ids, dtype=torch.bool)
        values = torch.where(seen, self.means[pos, k], self.fallback[k])
        return values.tolist()

    def top_tokens(self, neuron: int, n: int = 10, min_count: int = 2) -> list[tuple[int, float]]:
        """The `n` tokens (seen at least `min_count` times) with the highest mean activation."""
        k = self.neurons.index(neuron)
        keep = self.counts >= min_count
        ids, vals = self.token_ids[keep], self.means[keep, k]
        order = torch.argsort(vals, descending=True)[:n]
        return [(int(ids[i]), float(vals[i])) for i in order]


@torch.no_grad()
def token_lookups(
    source: ActivationSource, batches: Iterable[tuple[torch.Tensor, int]], neurons: dict[int, Sequence[int]]
) -> dict[int, TokenLookup]:
    """Lookup tables of several layers in one pass over batches of (input_ids (B, L), prefix length to skip).

    Raises:
        ValueError: the batches hold no tokens.
    """
    layers = sorted(neurons)
    index = {layer: torch.as_tensor(list(neurons[layer]), dtype=torch.long) for layer in layers}
    ids_parts: list[torch.Tensor] = []
    act_parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for input_ids, skip in batches:
        acts = source.activations(input_ids, layers)
        ids_parts.append(input_ids[:, skip:].reshape(-1).cpu())
        for layer in layers:
            picked = acts[layer][:, skip:, index[layer].to(acts[layer].device)]
            act_parts[layer].append(picked.reshape(-1, len(index[layer])).double().cpu())
    if not ids_parts or sum(p.numel() for p in ids_parts) == 0:
        raise ValueError("the held-out corpus gave no tokens for the lookup table")
    flat_ids = torch.cat(ids_parts)
    uniq, inverse = torch.unique(flat_ids, sorted=True, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(uniq))
    out = {}
    for layer in layers:
        flat = torch.cat(act_parts[layer])
        sums = torch.zeros(len(uniq), flat.shape[1], dtype=torch.float64).index_add_(0, inverse, flat)
        out[layer] = TokenLookup(
            tuple(int(n) for n in neurons[layer]), uniq, counts, sums / counts[:, None], flat.mean(0)
        )
    return out


def token_lookup(
    source: ActivationSource, batches: Iterable[tuple[torch.Tensor, int]], layer: int, neurons: Sequence[int]
) -> TokenLookup:
    """The lookup table of one layer (see token_lookups)."""
    return token_lookups(source, batches, {layer: neurons})[layer]
