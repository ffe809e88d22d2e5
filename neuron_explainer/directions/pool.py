"""The candidate pool of a direction search: excerpts with one layer's MLP activations kept in memory.

The pool is the first P excerpts of the run's own excerpts table (by excerpt id). Their activations are
computed once with the harvest's subject model and BOS policy and kept in float16 (P x T x d: 2 bytes a
value), so that a direction's values over the whole pool are one matrix product, a^T w, per step. What
the explainer and the simulator see are excerpts of this pool, with the direction's values as activations.

The numerics over pool tokens live here too: the update step and the count of neurons a direction needs.
Update step (docs/method.md, "Explainable directions"): with the explanation and its simulation s held
fixed, gradient ascent on the pooled Pearson correlation between a_theta = B theta and s over the scored
tokens, where B holds those tokens' whitened activations (a^T Sigma^{-1/2}, one row per token). Adam
(fresh for every update step), and theta renormalised to unit length after every step. Correlation is
scale-free, so the renormalisation only keeps theta on the sphere where the method defines it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import ActivationError, ConfigError, RunDirError
from neuron_explainer.records.reader import read_excerpts, read_token_ids
from neuron_explainer.records.store import RunStore, read_parquet

if TYPE_CHECKING:
    from neuron_explainer.activations.subject import HarvestedSubject

CHUNK = 128
"""Excerpts per matrix product when reading a direction over the pool (bounds the float32 copy)."""


@dataclass
class Pool:
    """Excerpts and their MLP activations at one layer."""

    layer: int
    excerpt_ids: list[int]
    tokens: list[list[str]]
    """Decoded token strings per excerpt."""
    acts: torch.Tensor
    """(P, T, d) float16 MLP activations (the excerpt's tokens only; a BOS fed before them is dropped)."""

    def __len__(self) -> int:
        return len(self.excerpt_ids)

    @property
    def width(self) -> int:
        """d, the MLP width."""
        return int(self.acts.shape[-1])

    def values(self, read: np.ndarray) -> np.ndarray:
        """a^T w at every pool token, (P, T) float32, for a read vector w (d,)."""
        w = torch.as_tensor(np.asarray(read), dtype=torch.float32)
        out = torch.empty(self.acts.shape[:2], dtype=torch.float32)
        for start in range(0, len(self), CHUNK):
            out[start : start + CHUNK] = self.acts[start : start + CHUNK].float() @ w
        return out.numpy()

    def token_rows(self, indices: Sequence[int]) -> np.ndarray:
        """The activations of the tokens of some excerpts, stacked: (len(indices) * T, d) float64."""
        picked = self.acts[list(indices)].double()
        return picked.reshape(-1, self.width).numpy()

    def records(self, indices: Sequence[int], values: np.ndarray) -> list[ActivationRecord]:
        """The excerpts at pool positions `indices` as records of a direction with pool values (P, T)."""
        return [
            ActivationRecord(tokens=self.tokens[i], activations=values[i].tolist(), excerpt_id=self.excerpt_ids[i])
            for i in indices
        ]


def first_excerpt_ids(store: RunStore, n: int) -> list[int]:
    """The `n` smallest excerpt ids of a run (fewer if it has fewer).

    Raises:
        RunDirError: the run has no excerpt files.
    """
    parts = sorted(store.excerpts_dir.glob("*.parquet"))
    if not parts:
        raise RunDirError(f"{store.excerpts_dir} holds no excerpt files: the run is incomplete")
    ids = read_parquet(parts, columns=["excerpt_id"], what="excerpts")["excerpt_id"].to_numpy()
    return sorted(int(i) for i in ids)[:n]


@torch.no_grad()
def build_pool(store: RunStore, subject: HarvestedSubject, layer: int, size: int, *, batch_size: int = 16) -> Pool:
    """Run the harvest's subject model over the run's first `size` excerpts and keep their activations.

    Raises:
        ConfigError: the run's features are not MLP neurons, or the pool would be empty.
        ActivationError: an activation overflows float16.
    """
    source = subject.source
    if source.kind != "mlp":
        raise ConfigError(f"directions are searched over MLP activations; this run harvested {source.kind} features")
    source.check_layers([layer])
    ids = first_excerpt_ids(store, size)
    if not ids:
        raise ConfigError("the candidate pool is empty")
    token_ids, tokens = read_token_ids(store, ids), read_excerpts(store, ids)
    prefix, device = subject.prefix, next(subject.model.parameters()).device
    chunks = []
    for start in range(0, len(ids), batch_size):
        batch = torch.tensor([prefix + list(token_ids[i]) for i in ids[start : start + batch_size]], device=device)
        acts = source.activations(batch, [layer])[layer][:, len(prefix) :]
        half = acts.to("cpu", torch.float16)
        if not torch.isfinite(half).all():
            raise ActivationError(f"layer {layer} activations overflow float16 in excerpts {ids[start]}..: too large")
        chunks.append(half)
    return Pool(layer, ids, [tokens[i] for i in ids], torch.cat(chunks))


def pearson(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Pearson r of two vectors, differentiable (0 when either is constant, where r is undefined)."""
    da, ds = a - a.mean(), s - s.mean()
    denom = torch.sqrt((da * da).sum() * (ds * ds).sum())
    return (da * ds).sum() / denom if bool(denom > 0) else torch.zeros((), dtype=a.dtype)


def update_direction(
    whitened: np.ndarray,
    simulation: np.ndarray,
    theta: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
) -> tuple[np.ndarray, float]:
    """`steps` Adam steps on theta maximising corr(whitened @ theta, simulation); (new unit theta, its r).

    Args:
        whitened: (n_tokens, d) whitened activations of the scored tokens (float64).
        simulation: (n_tokens,) the fixed simulation of the explanation on those tokens.
        theta: (d,) the unit direction to start from.
        steps: Adam steps (0 returns theta unchanged).
        lr: Adam's learning rate.
        betas: Adam's moment decay rates.
    """
    b = torch.as_tensor(whitened, dtype=torch.float64)
    s = torch.as_tensor(simulation, dtype=torch.float64)
    param = torch.nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())
    optimiser = torch.optim.Adam([param], lr=lr, betas=betas)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = -pearson(b @ param, s)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            param.div_(param.norm())
    with torch.no_grad():
        fit = float(pearson(b @ param, s))
    return param.detach().numpy().copy(), fit


def neurons_needed(raw: np.ndarray, read: np.ndarray, simulation: np.ndarray, fraction: float = 0.9) -> int | None:
    """The fewest neurons, taken by |coefficient| of the raw-space read vector, that recover `fraction` of r.

    The direction restricted to its k largest coefficients (the rest set to 0) reads a_k = raw[:, top k] @
    read[top k]; the answer is the smallest k with corr(a_k, simulation) >= fraction * corr(a_d, simulation).
    None when the full direction's correlation is not positive (there is nothing to recover).

    Args:
        raw: (n_tokens, d) raw MLP activations of the scored tokens.
        read: (d,) the direction's read vector w (Sigma^{-1/2} theta, or theta for a raw direction).
        simulation: (n_tokens,) the explanation's simulation on those tokens.
        fraction: the share of the full direction's correlation to recover.
    """
    order = np.argsort(-np.abs(read), kind="stable")
    partial = np.cumsum(raw[:, order] * read[order][None, :], axis=1)  # (n_tokens, d): column k-1 is a_k
    centred = partial - partial.mean(0)
    s = simulation - simulation.mean()
    denom = np.sqrt((centred**2).sum(0) * (s**2).sum())
    r = np.divide(centred.T @ s, denom, out=np.zeros(len(order)), where=denom > 0)
    if not r[-1] > 0:
        return None
    return int(np.argmax(r >= fraction * r[-1])) + 1
