"""The `directions:FILE` feature source: unit directions over one layer's MLP activations as features.

Feature k of the file's layer is the virtual neuron a_k = a^T w_k, a the MLP activation (the input of the
output projection, as harvested) and w_k the direction's read vector: Sigma^{-1/2} theta_k for whitened
directions (the default), theta_k itself for raw ones. Ablation replaces a_k's value z by v with
a := a + (v - z) u_k / (u_k^T w_k), where the output vector u_k is Sigma^{1/2} theta_k for whitened
directions (the edit along which the activations co-vary with a_k, leaving every whitened direction
orthogonal to theta_k unchanged) and theta_k for raw ones (docs/method.md, "Features").

The file format is in docs/features.md, "Directions": an .npz file with `layer`, `theta` (n, d) and,
for whitened directions, the covariance itself or the run whose harvested covariance to use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuron_explainer.activations.hookpoints import HookPoint
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.directions.covariance import (
    EIGEN_FLOOR,
    StreamingCovariance,
    Whitener,
    covariance_path,
    read_npz,
    write_npz,
)
from neuron_explainer.errors import ConfigError
from neuron_explainer.features.hooks import HookSpec, add_at_hook


@dataclass(frozen=True)
class DirectionSet:
    """The directions of one file, with the whitening they are read through."""

    layer: int
    theta: np.ndarray
    """(n, d) unit rows."""
    whitener: Whitener
    content_sha256: str
    """Hash of the file and of the covariance file it names, if any."""
    covariance_from: str | None
    """`file`, the covariance file's path, or None (raw directions)."""


def _unit_rows(theta: np.ndarray, path: Path) -> np.ndarray:
    if theta.ndim != 2 or theta.shape[0] == 0 or not np.isfinite(theta).all():
        raise ConfigError(f"{path}: theta must be a finite (n_directions, d_mlp) array, got shape {theta.shape}")
    norms = np.linalg.norm(theta.astype(np.float64), axis=1)
    if (norms == 0).any():
        raise ConfigError(f"{path}: direction(s) {np.flatnonzero(norms == 0).tolist()} are zero vectors")
    return theta.astype(np.float64) / norms[:, None]


def _covariance(arrays: dict[str, np.ndarray], path: Path, layer: int) -> tuple[np.ndarray, str, bytes]:
    """(covariance, where it came from, bytes to hash) for a whitened file."""
    if ("covariance" in arrays) == ("covariance_run" in arrays):
        raise ConfigError(f"{path}: whitened directions need exactly one of `covariance` or `covariance_run`")
    if "covariance" in arrays:
        return arrays["covariance"], "file", b""
    run = Path(str(arrays["covariance_run"]))
    run = run if run.is_absolute() else path.parent / run
    source = covariance_path(run, layer)
    stored_layer, state = StreamingCovariance.read(source)
    if stored_layer != layer:
        raise ConfigError(f"{source} is the covariance of layer {stored_layer}, not of layer {layer}")
    return state.covariance(), str(source), source.read_bytes()


def load_directions(path: str | Path, *, whiten: bool = True) -> DirectionSet:
    """Read a directions file (format: docs/features.md, "Directions").

    Raises:
        ConfigError: a missing or malformed file, zero directions, a `whitened` flag that contradicts
            `whiten`, or whitened directions without a usable covariance of the right width.
    """
    path = Path(path)
    arrays = read_npz(path, "directions file")
    missing = {"layer", "theta"} - set(arrays)
    if missing:
        raise ConfigError(f"{path} is not a directions file: it lacks {sorted(missing)}")
    layer, theta = int(arrays["layer"]), _unit_rows(arrays["theta"], path)
    if "whitened" in arrays and bool(arrays["whitened"]) != whiten:
        state = "whitened" if bool(arrays["whitened"]) else "raw"
        raise ConfigError(f"{path} holds {state} directions but whiten={whiten}: set harvest.whiten to match")
    digest = hashlib.sha256(path.read_bytes())
    if not whiten:
        return DirectionSet(layer, theta, Whitener.identity(theta.shape[1]), digest.hexdigest(), None)
    covariance, origin, extra = _covariance(arrays, path, layer)
    if covariance.shape != (theta.shape[1], theta.shape[1]):
        raise ConfigError(f"{path}: covariance {covariance.shape} does not match directions of width {theta.shape[1]}")
    digest.update(extra)
    floor = float(arrays["eigen_floor"]) if "eigen_floor" in arrays else EIGEN_FLOOR
    return DirectionSet(layer, theta, Whitener.from_covariance(covariance, floor), digest.hexdigest(), origin)


def write_directions(
    path: Path, layer: int, theta: np.ndarray, *, covariance_run: str | None = None, whitened: bool = True
) -> None:
    """Write a directions file whose whitened directions use a run's harvested covariance (or raw ones)."""
    arrays: dict[str, Any] = {"layer": np.int64(layer), "theta": np.asarray(theta, np.float64), "whitened": whitened}
    if whitened:
        arrays["covariance_run"] = np.str_(covariance_run or ".")
    write_npz(path, arrays)


class DirectionSource:
    """Directions over one layer's MLP activations, read through the MLP neuron source."""

    kind = "directions"

    def __init__(self, directions: DirectionSet, mlp: ActivationSource) -> None:
        self.directions, self.mlp = directions, mlp
        self.layer = directions.layer
        """The layer whose MLP activations the directions read."""
        self.n_layers = mlp.n_layers
        self.n_neurons = len(directions.theta)
        mlp.check_layers([self.layer])
        if directions.theta.shape[1] != mlp.n_neurons:
            raise ConfigError(
                f"the directions have width {directions.theta.shape[1]}, but layer {self.layer}'s MLP has "
                f"{mlp.n_neurons} neurons"
            )
        read = directions.whitener.read_vectors(directions.theta)
        out = directions.whitener.output_vectors(directions.theta)
        device = next(mlp.model.parameters()).device
        self.read = torch.tensor(read.T, device=device)
        """(d, n) float64: column k is direction k's read vector w_k."""
        self.write = torch.tensor(out / (out * read).sum(1, keepdims=True), device=device)
        """(n, d) float64: row k is u_k / (u_k^T w_k), the edit per unit of change in a_k."""
        self.hook = HookSpec(f"{mlp.hook_point.layers_path}.{self.layer}.{mlp.hook_point.module_path}", "input")

    def default_layers(self) -> list[int]:
        """The file's layer."""
        return [self.layer]

    def check_layers(self, layers: Sequence[int]) -> None:
        """Only the file's layer has directions."""
        if set(layers) - {self.layer}:
            raise ConfigError(
                f"the directions are over layer {self.layer} only, not {sorted(set(layers) - {self.layer})}"
            )

    @torch.no_grad()
    def activations(self, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """{layer: a^T w_k (B, T, n_directions)}, float32."""
        self.check_layers(layers)
        acts = self.mlp.activations(input_ids, [self.layer])[self.layer]
        return {self.layer: (acts.double() @ self.read).float()}

    def edit(self, acts: torch.Tensor, features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """What to add to MLP activations (R, T, d) so that row r's direction `features[r]` reads `values[r]`.

        The edit covers the last T' positions of `values` (R, T').
        """
        if values.shape[0] != acts.shape[0] or values.shape[1] > acts.shape[1]:
            raise ValueError(f"replacement values {tuple(values.shape)} do not fit activations {tuple(acts.shape)}")
        start = acts.shape[1] - values.shape[1]
        picked = features.to(self.read.device)
        z = torch.einsum("rtd,rd->rt", acts[:, start:].double(), self.read[:, picked].T)
        out = torch.zeros(acts.shape, dtype=torch.float64, device=acts.device)
        out[:, start:] = (values.to(z) - z)[..., None] * self.write[picked][:, None, :]
        return out

    @contextmanager
    def replaced(self, layer: int, features: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
        """Row r has direction `features[r]` set to `values[r]` on its last T' positions (edit at the MLP hook)."""
        self.check_layers([layer])
        with add_at_hook(self.mlp.model, self.hook, lambda acts: self.edit(acts, features, values)):
            yield

    def provenance(self) -> dict[str, Any]:
        """Kind, hook, layer, whitening and the content hash of the file (and of its covariance)."""
        d = self.directions
        return {
            "kind": self.kind,
            "hook": self.mlp.hook_point.describe(),
            "layer": self.layer,
            "whitened": d.covariance_from is not None,
            "covariance": d.covariance_from,
            "floored_eigenvalues": d.whitener.floored,
            "content_sha256": d.content_sha256,
        }


def direction_source(
    path: str | None, model: nn.Module, hook_point: HookPoint, *, whiten: bool = True, **options: Any
) -> DirectionSource:
    """The `directions:FILE` source; `whiten` reads a^T Sigma^{-1/2} theta (True) or a^T theta (False).

    Raises:
        ConfigError: an unreadable or malformed file, a layer or width the model lacks, or an unknown option.
    """
    if options:
        raise ConfigError(f"the directions feature source takes only the whiten option, got {sorted(options)}")
    return DirectionSource(load_directions(str(path), whiten=whiten), ActivationSource(model, hook_point))
