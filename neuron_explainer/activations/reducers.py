"""Streaming per-neuron reducers (torch, device-agnostic): top-k selection and exact moments.

Each reducer consumes one batch at a time and keeps state whose size does not depend on the corpus
length. Every state is mergeable, so shards of a corpus reduce independently and combine exactly.
No I/O, no model code. The selections live in `selection.py` and are re-exported here.
"""

from __future__ import annotations

import torch

from neuron_explainer.activations.selection import SelectK, SharedSelectK, is_sync_free, merge_sorted
from neuron_explainer.errors import ActivationError

__all__ = [
    "Moments",
    "Scratch",
    "SelectK",
    "SharedSelectK",
    "bucketize",
    "excerpt_keys",
    "is_sync_free",
    "merge_sorted",
    "quantile_boundaries",
]


class Scratch:
    """Reusable float32 work buffers, shared by the layers of one harvest.

    On the CPU a fresh (B, T, N) tensor per operation costs page faults and zeroing that take as long
    as the arithmetic on it; layers are reduced one after the other, so a few buffers serve them all.
    """

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []
        """Buffers of the largest leading size asked for; smaller requests use their leading rows."""

    def get(self, shape: tuple[int, ...], device: torch.device, count: int) -> list[torch.Tensor]:
        """`count` float32 tensors of `shape` on `device`, contents undefined."""
        rows, rest = shape[0], tuple(shape[1:])
        fits = [x for x in self.buffers if x.shape[0] >= rows and tuple(x.shape[1:]) == rest and x.device == device]
        if len(fits) < count:
            self.buffers = [torch.empty(shape, dtype=torch.float32, device=device) for _ in range(count)]
            fits = self.buffers
        return [x[:rows] for x in fits[:count]]


CHUNK_BYTES = 1 << 19
"""On the CPU, power sums take chunks of about this many bytes per thread: they stay in a core's cache."""


class Moments:
    """Exact streaming count, mean, central moment sums M2..M4, min and max per neuron.

    Batches are reduced around their own mean and merged with Pébay's pairwise formulas in float64,
    which stays accurate where raw power sums would cancel catastrophically.
    """

    def __init__(self, n_neurons: int, *, device: torch.device | str, scratch: Scratch | None = None) -> None:
        self.scratch = scratch or Scratch()
        """Work buffers (not state): pass one Scratch to the Moments of every layer."""
        self.n = 0
        self.mean = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.m3 = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.m4 = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.min = torch.full((n_neurons,), float("inf"), dtype=torch.float64, device=device)
        self.max = torch.full((n_neurons,), float("-inf"), dtype=torch.float64, device=device)
        self.positive = torch.zeros(n_neurons, dtype=torch.int64, device=device)
        """Tokens with an activation above zero (the density's numerator)."""

    def update(self, x: torch.Tensor) -> None:
        """Offer a batch of activations x of shape (B, T, N): B excerpts of T tokens, N neurons."""
        self.merge(self.reduce(x)[0])

    def reduce(self, x: torch.Tensor) -> tuple[Moments, torch.Tensor, torch.Tensor]:
        """The moments of one batch (B, T, N), not merged yet, and its per-excerpt (min, max) (B, N).

        Two passes over the batch, a few excerpts at a time on the CPU so that each chunk is read from
        memory once per pass and stays in the core's cache for the rest (a GPU takes the batch at once):
        the first pass sums over tokens in float32 (T values: exact to float32 rounding) and takes
        the extremes; the second sums the powers 1..4 about the batch mean. Sums over excerpts are
        float64.
        """
        b, t, n = x.shape
        nb = b * t
        rows = b if x.device.type != "cpu" else max(1, CHUNK_BYTES * torch.get_num_threads() // (t * n * 4))
        chunks = [(start, x[start : start + rows]) for start in range(0, b, rows)]
        sums = torch.empty((b, n), dtype=torch.float32, device=x.device)
        minima, maxima = torch.empty((2, b, n), dtype=x.dtype, device=x.device)
        positive = torch.zeros(n, dtype=torch.int64, device=x.device)
        for start, chunk in chunks:
            rows_here = slice(start, start + len(chunk))
            torch.sum(chunk, 1, dtype=torch.float32, out=sums[rows_here])
            torch.amin(chunk, 1, out=minima[rows_here])
            torch.amax(chunk, 1, out=maxima[rows_here])
            positive += (chunk > 0).sum((0, 1))
        # Centre on the float64 mean rounded to float32; the power sums about that centre are then
        # turned into exact central moments (delta is the tiny offset left by the rounding).
        mean64 = sums.double().sum(0) / nb
        centre = mean64.float()
        d_buf, d2_buf = self.scratch.get((min(rows, b), t, n), x.device, 2)
        powers = torch.empty((4, b, n), dtype=torch.float32, device=x.device)
        for start, chunk in chunks:
            part = powers[:, start : start + len(chunk)]
            d, d2 = d_buf[: len(chunk)], d2_buf[: len(chunk)]
            torch.sub(chunk, centre, out=d)
            torch.mul(d, d, out=d2)
            torch.sum(d, 1, out=part[0])
            torch.sum(d2, 1, out=part[1])
            torch.sum(d.mul_(d2), 1, out=part[2])  # d and d2 become the third and fourth powers in place
            torch.sum(d2.mul_(d2), 1, out=part[3])
        s1, s2, s3, s4 = powers.double().sum(1)
        # the power sums must be corrected with the mean of the d actually summed (float32 rounding included)
        delta = s1 / nb
        other = Moments.__new__(Moments)
        other.n = nb
        other.mean = mean64
        other.m2 = s2 - nb * delta**2
        other.m3 = s3 - 3 * delta * s2 + 2 * nb * delta**3
        other.m4 = s4 - 4 * delta * s3 + 6 * delta**2 * s2 - 3 * nb * delta**4
        other.min = minima.amin(0).double()
        other.max = maxima.amax(0).double()
        other.positive = positive
        return other, minima, maxima

    def merge(self, other: Moments) -> None:
        """Combine with another state (exact up to float64 rounding)."""
        na, nb = self.n, other.n
        if nb == 0:
            return
        if na == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = nb, other.mean, other.m2, other.m3, other.m4
            self.min, self.max, self.positive = other.min, other.max, other.positive
            return
        n = na + nb
        delta = other.mean - self.mean
        d2 = delta * delta
        m2 = self.m2 + other.m2 + d2 * na * nb / n
        m3 = (
            self.m3
            + other.m3
            + d2 * delta * na * nb * (na - nb) / n**2
            + 3 * delta * (na * other.m2 - nb * self.m2) / n
        )
        m4 = (
            self.m4
            + other.m4
            + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6 * d2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
            + 4 * delta * (na * other.m3 - nb * self.m3) / n
        )
        self.mean = self.mean + delta * nb / n
        self.m2, self.m3, self.m4, self.n = m2, m3, m4, n
        self.min = torch.minimum(self.min, other.min)
        self.max = torch.maximum(self.max, other.max)
        self.positive = self.positive + other.positive

    def stats(self) -> dict[str, torch.Tensor]:
        """Mean, population variance, skewness and excess kurtosis (NaN where variance is 0)."""
        n = self.n
        var = self.m2 / n
        with torch.no_grad():
            skew = (n**0.5) * self.m3 / self.m2.pow(1.5)
            kurt = n * self.m4 / (self.m2 * self.m2) - 3.0
        zero = self.m2 <= 0
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=var.device)
        return {
            "mean": self.mean,
            "variance": var,
            "skewness": torch.where(zero, nan, skew),
            "kurtosis": torch.where(zero, nan, kurt),
            "min": self.min,
            "max": self.max,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the state."""
        return {
            "n": torch.tensor(self.n),
            "mean": self.mean,
            "m2": self.m2,
            "m3": self.m3,
            "m4": self.m4,
            "min": self.min,
            "max": self.max,
            "positive": self.positive,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state_dict()` output."""
        device = self.mean.device
        self.n = int(state["n"])
        if "positive" not in state:
            raise ActivationError(
                "the harvest checkpoint predates the density count; remove harvest_state.pt and harvest again"
            )
        for name in ("mean", "m2", "m3", "m4", "min", "max"):
            setattr(self, name, state[name].to(device=device, dtype=torch.float64))
        self.positive = state["positive"].to(device=device, dtype=torch.int64)


def quantile_boundaries(values: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Quantiles along dim 0 with linear interpolation (numpy's default method), in float64.

    Written out because torch.quantile refuses inputs above 2**24 elements.
    Returns shape (len(quantiles), N).
    """
    # Sorting rows of the transpose is several times faster than sorting along a strided dim 0, and
    # converting to float64 after the sort gives the same values (the conversion is exact and monotone).
    v = torch.sort(values.T.contiguous(), dim=1).values.double().T
    n = v.shape[0]
    out = []
    for q in quantiles:
        pos = q * (n - 1)
        lo = int(pos // 1)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(v[lo] + (v[hi] - v[lo]) * frac)
    return torch.stack(out)


def bucketize(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Bucket index = number of boundaries <= value. values (B, N), boundaries (Q, N) -> (B, N) int64."""
    return (values.double()[:, None, :] >= boundaries[None]).sum(1)


_MASK64 = (1 << 64) - 1


def excerpt_keys(seed: int, stream: int, excerpt_ids: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) sampling keys, a pure function of (seed, stream, excerpt id).

    SplitMix64 finalizer on CPU int64 (wrapping arithmetic); the top 53 bits become a float64. The k
    excerpts with the smallest keys form a uniform sample without replacement that any shard can
    recompute and merge, whatever the corpus length.
    """
    ids = excerpt_ids.to("cpu", torch.int64)
    z = ids * _to_signed(0x9E3779B97F4A7C15) + _to_signed(
        (seed * 0x632BE59BD9B4E019 + stream * 0xD1B54A32D192ED03) & _MASK64
    )
    z = (z ^ _lsr(z, 30)) * _to_signed(0xBF58476D1CE4E5B9)
    z = (z ^ _lsr(z, 27)) * _to_signed(0x94D049BB133111EB)
    z = z ^ _lsr(z, 31)
    return _lsr(z, 11).double() / float(1 << 53)


def _to_signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift right of int64 (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)
