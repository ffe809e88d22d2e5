"""Ablation scoring: replace one neuron's activation and measure how far the next-token predictions move.

For a neuron n and an excerpt x, AvgJSD(v) is the Jensen-Shannon divergence (natural log) between the
subject model's next-token distributions with n's activation replaced by the values v and the clean
distributions, averaged over x's tokens. The score of a simulation s is

    1 - E_x[AvgJSD(s(x))] / E_x[AvgJSD(mean)]

where `mean` replaces n by its mean activation over the corpus: 1 is a perfect simulation, 0 no better
than the mean (docs/method.md, "Score"). The replacement is the feature source's own edit at the hook the
harvest reads (for MLP neurons, the input of the MLP's output projection), so the replaced quantity is
exactly the harvested value.

Cost: one clean forward per excerpt batch, shared by every neuron of every layer scored on it, then one
forward row per (neuron, excerpt, replacement): 2 per neuron and excerpt (simulation and mean). Rows of
different neurons of one layer share a batch. The hook is removed whatever happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from neuron_explainer.features.source import FeatureSource


def jsd(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probabilities on the last axis."""
    logm = torch.logaddexp(logp, logq) - torch.log(torch.tensor(2.0, dtype=logp.dtype, device=logp.device))
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


def replaced_neurons(
    source: FeatureSource, layer: int, neurons: torch.Tensor, values: torch.Tensor
) -> AbstractContextManager[None]:
    """Within the block, batch row r has feature `neurons[r]` of `layer` set to `values[r]` (the source's edit)."""
    return source.replaced(layer, neurons, values)


def row_jsd(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-token JSD (T,) between the next-token distributions of two rows of logits (T, V), in float64.

    One neuron's JSD is a small difference of nearly equal distributions: computed in float32 it is off
    by a relative 1e-2 at JSDs near 1e-6, so the log-softmax and the divergence always run in float64,
    whatever the model's dtype (one row at a time, to bound memory: T x V doubles).
    """
    return jsd(torch.log_softmax(logits_p.double(), dim=-1), torch.log_softmax(logits_q.double(), dim=-1))


@dataclass
class AblationCounts:
    """Forward passes run (in excerpt rows)."""

    clean_rows: int = 0
    ablated_rows: int = 0


class Ablator:
    """Runs clean and neuron-replaced forwards of one subject model and returns per-token JSDs."""

    def __init__(self, model: nn.Module, source: FeatureSource, *, batch_rows: int = 16) -> None:
        self.model = model
        self.source = source
        self.batch_rows = batch_rows
        """Excerpt rows per ablated forward (several neurons' rows share one forward)."""
        self.counts = AblationCounts()

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def clean_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) of the unmodified model, in the model's dtype."""
        out = self.model(input_ids=input_ids.to(self.device), use_cache=False).logits
        self.counts.clean_rows += int(input_ids.shape[0])
        return out

    @torch.no_grad()
    def replaced_jsd(
        self,
        input_ids: torch.Tensor,
        clean: torch.Tensor,
        layer: int,
        rows: Sequence[tuple[int, int, torch.Tensor]],
    ) -> torch.Tensor:
        """Per-token JSD (len(rows), T') for rows (excerpt index into input_ids, neuron, values (T',)).

        The values replace the last T' positions, and the JSD is taken there (float64, see row_jsd).
        `clean` is `clean_logits(input_ids)`. Rows are run in batches of `batch_rows`.
        """
        out = []
        for start in range(0, len(rows), self.batch_rows):
            chunk = rows[start : start + self.batch_rows]
            idx = torch.tensor([r[0] for r in chunk], dtype=torch.long)
            neurons = torch.tensor([r[1] for r in chunk], dtype=torch.long)
            values = torch.stack([torch.as_tensor(r[2], dtype=torch.float64) for r in chunk])
            with replaced_neurons(self.source, layer, neurons, values):
                logits = self.model(input_ids=input_ids[idx].to(self.device), use_cache=False).logits
            self.counts.ablated_rows += len(chunk)
            n = values.shape[1]
            rows_clean = clean[idx.to(clean.device), -n:]
            out.append(torch.stack([row_jsd(a, c) for a, c in zip(logits[:, -n:], rows_clean, strict=True)]).cpu())
        return torch.cat(out) if out else torch.zeros(0, input_ids.shape[1], dtype=torch.float64)


@dataclass(frozen=True)
class AblationScore:
    """Ablation score of one simulation of one neuron, with the quantities it is made of."""

    score: float | None
    """1 - E[AvgJSD(sim)] / E[AvgJSD(mean)]; None when the mean ablation changes nothing (see reason)."""
    jsd_simulation: float
    """E over excerpts of AvgJSD with the neuron replaced by its calibrated simulation."""
    jsd_mean: float
    """E over excerpts of AvgJSD with the neuron replaced by its mean activation."""
    per_excerpt_simulation: tuple[float, ...]
    per_excerpt_mean: tuple[float, ...]
    undefined_reason: str | None = None


def ablation_score(per_excerpt_sim: Sequence[float], per_excerpt_mean: Sequence[float]) -> AblationScore:
    """Combine per-excerpt AvgJSDs into the normalised score."""
    sim = float(sum(per_excerpt_sim) / len(per_excerpt_sim)) if per_excerpt_sim else 0.0
    mean = float(sum(per_excerpt_mean) / len(per_excerpt_mean)) if per_excerpt_mean else 0.0
    if mean <= 0.0:
        reason = "no excerpts" if not per_excerpt_mean else "mean ablation does not change the output"
        return AblationScore(None, sim, mean, tuple(per_excerpt_sim), tuple(per_excerpt_mean), reason)
    return AblationScore(1.0 - sim / mean, sim, mean, tuple(per_excerpt_sim), tuple(per_excerpt_mean))


@dataclass(frozen=True)
class NeuronAblation:
    """What to ablate for one neuron: its mean and its calibrated simulation on some of the excerpts."""

    neuron: int
    mean: float
    """Mean activation over the corpus (the baseline replacement)."""
    excerpts: Sequence[int]
    """Row indices into the shared input_ids."""
    simulations: Sequence[Sequence[float]]
    """Calibrated simulation for each of those excerpts (each covers the excerpt's last T positions)."""


def score_ablations(
    ablator: Ablator, input_ids: torch.Tensor, layer: int, neurons: Sequence[NeuronAblation]
) -> list[AblationScore]:
    """Ablation scores of several neurons of one layer, sharing one clean forward of `input_ids`.

    Args:
        ablator: runs the forwards.
        input_ids: (U, L) every excerpt any of the neurons is scored on, with any prefix (a BOS token)
            the harvest prepended.
        layer: the neurons' layer.
        neurons: one entry per neuron (the same neuron may appear twice, e.g. with two simulations).
    """
    clean = ablator.clean_logits(input_ids)
    rows: list[tuple[int, int, torch.Tensor]] = []
    for item in neurons:
        if len(item.excerpts) != len(item.simulations):
            raise ValueError(
                f"neuron {item.neuron}: {len(item.excerpts)} excerpts but {len(item.simulations)} simulations"
            )
        for x, sim in zip(item.excerpts, item.simulations, strict=True):
            values = torch.as_tensor(sim, dtype=torch.float64)
            rows.append((x, item.neuron, values))
            rows.append((x, item.neuron, torch.full_like(values, float(item.mean))))
    # rows differ in length only if excerpts do; run each length separately
    avg: list[float] = [0.0] * len(rows)
    for length in sorted({len(r[2]) for r in rows}):
        picked = [i for i, r in enumerate(rows) if len(r[2]) == length]
        jsds = ablator.replaced_jsd(input_ids, clean, layer, [rows[i] for i in picked]).double().mean(dim=1)
        for i, v in zip(picked, jsds.tolist(), strict=True):
            avg[i] = v
    scores, k = [], 0
    for item in neurons:
        block = avg[k : k + 2 * len(item.excerpts)]
        k += 2 * len(item.excerpts)
        scores.append(ablation_score(block[0::2], block[1::2]))
    return scores
