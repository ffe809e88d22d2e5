"""Whitening: Sigma^{-1/2} (and Sigma^{1/2}) of an activation covariance, by eigendecomposition.

A whitened direction theta (a unit vector) reads a_theta = a^T Sigma^{-1/2} theta from the MLP activation a:
its read vector in activation space is w = Sigma^{-1/2} theta. Over the data the covariance came from,
every whitened direction then has variance theta^T theta = 1, so no direction is favoured for merely
varying more.

Floor: eigenvalues below EIGEN_FLOOR times the largest one are raised to that value before the inverse
square root. A layer's activations can have directions along which they (almost) never vary (dead or
duplicated neurons, a rank below the width when few tokens were seen); without a floor 1/sqrt(lambda)
would amplify numerical noise along them without bound. With it, those directions are read with a
bounded gain and have whitened variance lambda / floor < 1. `floored` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuron_explainer.errors import ConfigError

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
