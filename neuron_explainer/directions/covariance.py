"""The covariance of a layer's MLP activations, accumulated by the harvest for whitened directions.

One streaming pass keeps, per requested layer, the token count n, the mean and the co-moment matrix
C = sum_t (a_t - mean)(a_t - mean)^T, all in float64; the covariance is C / n (population, ddof 0). Each
batch is reduced around its own mean and folded in with the pairwise update of Chan, Golub and LeVeque,
so shards of one excerpt stream merge exactly (up to float64 rounding), in any grouping.

The harvest feeds it main-range excerpts only (the excerpts a shard owns, never its pilot excerpts) and
checkpoints it with the rest of its state. It is written as `<run>/covariance/layer-LLL.npz` with the
arrays `layer`, `count`, `mean` and `comoment` (docs/features.md, "Directions").

Whitening (`Whitener`): Sigma^{-1/2} and Sigma^{1/2} by eigendecomposition. A whitened direction theta (a
unit vector) reads a_theta = a^T Sigma^{-1/2} theta from the MLP activation a: its read vector in
activation space is w = Sigma^{-1/2} theta. Over the data the covariance came from, every whitened
direction then has variance theta^T theta = 1, so no direction is favoured for merely varying more.
Eigenvalues below EIGEN_FLOOR times the largest are raised to that value before the inverse square root:
a layer's activations can have directions along which they (almost) never vary (dead or duplicated
neurons, a rank below the width when few tokens were seen), and 1/sqrt(lambda) would amplify numerical
noise along them without bound. With the floor, those directions are read with a bounded gain and have
whitened variance lambda / floor < 1; `Whitener.floored` counts them.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_explainer.errors import ConfigError, RunDirError

COVARIANCE_DIR = "covariance"


def covariance_path(run: str | Path, layer: int) -> Path:
    """Where a run keeps the covariance of one layer."""
    return Path(run) / COVARIANCE_DIR / f"layer-{layer:03d}.npz"


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """An uncompressed .npz file with fixed timestamps (the same arrays give the same bytes), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
    os.replace(tmp, path)


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickled objects).

    Raises:
        ConfigError: the file is missing or is not a readable .npz file.
    """
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{what} {path} is not a readable .npz file: {e}") from None


class StreamingCovariance:
    """Count, mean and co-moment matrix of a stream of vectors, in float64."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Offer a batch of rows x (N, dim)."""
        if x.shape[0] == 0:
            return
        x = x.to(self.mean.device, torch.float64)
        mean = x.mean(0)
        centred = x - mean
        self._combine(x.shape[0], mean, centred.T @ centred)

    def merge(self, other: StreamingCovariance) -> None:
        """Fold in the state of another part of the stream."""
        self._combine(other.n, other.mean.to(self.mean.device), other.comoment.to(self.mean.device))

    def _combine(self, nb: int, mean_b: torch.Tensor, comoment_b: torch.Tensor) -> None:
        na = self.n
        if nb == 0:
            return
        if na == 0:
            self.n, self.mean, self.comoment = nb, mean_b.clone(), comoment_b.clone()
            return
        n = na + nb
        delta = mean_b - self.mean
        self.comoment = self.comoment + comoment_b + torch.outer(delta, delta) * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    def covariance(self) -> np.ndarray:
        """The population covariance C / n.

        Raises:
            RunDirError: no vector was seen.
        """
        if self.n == 0:
            raise RunDirError("the covariance was accumulated over no tokens")
        return (self.comoment / self.n).cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the state."""
        return {"n": torch.tensor(self.n), "mean": self.mean, "comoment": self.comoment}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state_dict()`."""
        self.n = int(state["n"])
        self.mean = state["mean"].to(self.mean.device, torch.float64)
        self.comoment = state["comoment"].to(self.mean.device, torch.float64)

    def write(self, path: Path, layer: int) -> None:
        """Save as a covariance file (`layer`, `count`, `mean`, `comoment`)."""
        write_npz(
            path,
            {
                "layer": np.int64(layer),
                "count": np.int64(self.n),
                "mean": self.mean.cpu().numpy(),
                "comoment": self.comoment.cpu().numpy(),
            },
        )

    @classmethod
    def read(cls, path: Path) -> tuple[int, StreamingCovariance]:
        """(layer, state) of a covariance file.

        Raises:
            ConfigError: the file is missing, unreadable or not a covariance file.
        """
        arrays = read_npz(path, "covariance file")
        if not {"layer", "count", "mean", "comoment"} <= set(arrays):
            raise ConfigError(f"{path} is not a covariance file: it needs layer, count, mean and comoment arrays")
        mean, comoment = arrays["mean"], arrays["comoment"]
        if mean.ndim != 1 or comoment.shape != (len(mean), len(mean)):
            raise ConfigError(f"{path}: comoment {comoment.shape} does not match mean {mean.shape}")
        state = cls(len(mean))
        state.n = int(arrays["count"])
        state.mean, state.comoment = torch.from_numpy(mean.astype(np.float64)), torch.from_numpy(comoment)
        return int(arrays["layer"]), state


class HarvestCovariance:
    """The covariances a harvest accumulates: one StreamingCovariance per requested layer."""

    def __init__(self, layers: Sequence[int], dim: int, device: torch.device | str = "cpu") -> None:
        self.states = {layer: StreamingCovariance(dim, device) for layer in layers}

    def update(self, acts: dict[int, torch.Tensor]) -> None:
        """Offer one batch {layer: activations (B, T, dim)} of main-range excerpts (other layers ignored)."""
        for layer, state in self.states.items():
            state.update(acts[layer].reshape(-1, acts[layer].shape[-1]))

    def state_dict(self) -> dict[int, dict[str, torch.Tensor]]:
        """Per-layer resumable state."""
        return {layer: state.state_dict() for layer, state in self.states.items()}

    def load_state_dict(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        """Restore from `state_dict()` (an empty dict when the checkpoint has none)."""
        for layer, layer_state in state.items():
            self.states[layer].load_state_dict(layer_state)

    def write(self, run: Path) -> None:
        """Write `<run>/covariance/layer-LLL.npz` for every layer."""
        for layer, state in self.states.items():
            state.write(covariance_path(run, layer), layer)


def covariance_layers(cfg: Any, source: Any) -> list[int]:
    """The layers a harvest config asks covariances of, checked against its feature source.

    Raises:
        ConfigError: a layer the model lacks, or features other than MLP neurons.
    """
    layers = list(getattr(cfg, "covariance_layers", []) or [])
    if layers and source.kind != "mlp":
        raise ConfigError(f"harvest.covariance_layers needs features: mlp, not {cfg.features!r}")
    source.check_layers(layers)
    return layers


def merge_covariance_files(shards: Iterable[Path], out: Path, *, same_excerpts: bool) -> None:
    """Merge the shards' covariance files into `out`.

    Layer shards (`same_excerpts`) computed each covariance over the same excerpts: the first shard's file
    is taken. Excerpt-range shards hold disjoint parts of the stream: their states are merged pairwise.
    """
    roots = list(shards)
    files = sorted(p.name for p in (roots[0] / COVARIANCE_DIR).glob("layer-*.npz"))
    for name in files:
        target = out / COVARIANCE_DIR / name
        layer, merged = StreamingCovariance.read(roots[0] / COVARIANCE_DIR / name)
        for root in [] if same_excerpts else roots[1:]:
            merged.merge(StreamingCovariance.read(root / COVARIANCE_DIR / name)[1])
        merged.write(target, layer)


EIGEN_FLOOR = 1e-6
"""Eigenvalues below this fraction of the largest eigenvalue are raised to it."""


@dataclass(frozen=True)
class Whitener:
    """Sigma^{-1/2} and Sigma^{1/2} of one covariance (after the eigenvalue floor), or the identity."""

    inverse_sqrt: np.ndarray
    """(d, d) symmetric: the read vector of whitened direction theta is inverse_sqrt @ theta."""
    sqrt: np.ndarray
    """(d, d) symmetric: sqrt @ theta is the direction's output vector for ablation (docs/method.md)."""
    floored: int = 0
    """Eigenvalues raised to the floor."""

    @classmethod
    def from_covariance(cls, covariance: np.ndarray, floor: float = EIGEN_FLOOR) -> Whitener:
        """Whiten with `covariance` (d, d).

        Raises:
            ConfigError: not a finite square matrix, or zero (nothing varied).
        """
        cov = np.asarray(covariance, dtype=np.float64)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not np.isfinite(cov).all():
            raise ConfigError(f"a covariance must be a finite square matrix, got shape {cov.shape}")
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        top = float(values.max(initial=0.0))
        if top <= 0:
            raise ConfigError("the covariance is zero: the activations never varied, so they cannot be whitened")
        limit = floor * top
        kept = np.maximum(values, limit)
        return cls(
            (vectors / np.sqrt(kept)) @ vectors.T,
            (vectors * np.sqrt(kept)) @ vectors.T,
            int((values < limit).sum()),
        )

    @classmethod
    def identity(cls, dim: int) -> Whitener:
        """No whitening: directions read the raw activations (a^T theta)."""
        eye = np.eye(dim)
        return cls(eye, eye)

    @property
    def dim(self) -> int:
        """The activation width d."""
        return int(self.inverse_sqrt.shape[0])

    def read_vectors(self, theta: np.ndarray) -> np.ndarray:
        """The read vectors w = Sigma^{-1/2} theta of unit directions theta (n, d), as rows (n, d)."""
        return np.asarray(theta, dtype=np.float64) @ self.inverse_sqrt

    def output_vectors(self, theta: np.ndarray) -> np.ndarray:
        """The ablation output vectors u = Sigma^{1/2} theta (n, d); u^T w = theta^T theta = 1."""
        return np.asarray(theta, dtype=np.float64) @ self.sqrt
