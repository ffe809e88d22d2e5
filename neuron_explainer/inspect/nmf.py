"""Non-negative matrix factorisation of one prompt's MLP neuron activations (Ecco's NMF view), with scikit-learn.

The activations of the chosen layers (our neuron hook point, read with ActivationSource) form a matrix
A (T positions x L*N (layer, neuron) pairs). NMF needs X >= 0, and neuron activations are not: GELU dips to about
-0.17 and gated MLPs (act(gate) * up) are negative as often as positive. Two treatments:

- `clamp`: X = max(A, 0). Negative activations are dropped; `discarded_fraction` reports how much of A's
  Frobenius norm that throws away. The default for GELU MLPs (GPT-2, GPT-NeoX), whose negative side is small.
- `split`: X = [max(A, 0), max(-A, 0)], the negative parts as separate columns, so nothing is lost and each factor
  has a loading on each neuron's positive side and one on its negative side. The default for gated MLPs.

X is factorised as W H (W: T x k, H: k x columns), and the factors are reported as `factors` = W transposed
(one sparkline over the prompt per factor) and `loadings` (H reshaped to factor x layer x neuron). The reported
`reconstruction_error` is ||X - W H||_F / ||X||_F on the non-negative X that NMF saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from neuron_explainer.errors import ActivationError, ConfigError
from neuron_explainer.inspect.family import check_layer, check_model, encode, n_layers, prompt_activations

Negative = Literal["auto", "clamp", "split"]


@dataclass(frozen=True)
class ActivationFactors:
    """NMF factors of one prompt's activations. k factors, T tokens, L layers, N neurons per layer."""

    tokens: list[str]
    """The prompt's tokens (T)."""
    layers: np.ndarray
    """int64 (L,): the layers factorised, in order."""
    negative: str
    """How negative activations were handled: `clamp` or `split` (see the module docstring)."""
    factors: np.ndarray
    """float32 (k, T): each factor's strength at each position (token sparklines); non-negative."""
    loadings: np.ndarray
    """float32 (k, L, N): each factor's loading on each neuron's (positive part of the) activation; non-negative."""
    negative_loadings: np.ndarray | None
    """float32 (k, L, N): loadings on the negative parts max(-a, 0) (`split` only; None for `clamp`)."""
    reconstruction_error: float
    """||X - W H||_F / ||X||_F, X the non-negative matrix factorised."""
    discarded_fraction: float
    """||min(A, 0)||_F / ||A||_F: share of the activations' norm dropped by `clamp` (0 for `split`)."""

    def to_frame(self) -> pd.DataFrame:
        """Long form of the sparklines: factor, position, token, value."""
        k, n = self.factors.shape
        factor, position = np.meshgrid(np.arange(k), np.arange(n), indexing="ij")
        return pd.DataFrame(
            {
                "factor": factor.ravel(),
                "position": position.ravel(),
                "token": [self.tokens[p] for p in position.ravel()],
                "value": self.factors.ravel(),
            }
        )

    def loadings_frame(self, top: int | None = None) -> pd.DataFrame:
        """Long form of the loadings: factor, layer, neuron, part (+1 positive, -1 negative), loading.

        With `top`, only each factor's `top` largest loadings, largest first.
        """
        parts = [(1, self.loadings)] + ([(-1, self.negative_loadings)] if self.negative_loadings is not None else [])
        frames = []
        for part, values in parts:
            k, n_layers_, n_neurons = values.shape
            factor, layer, neuron = np.meshgrid(np.arange(k), self.layers, np.arange(n_neurons), indexing="ij")
            frames.append(
                pd.DataFrame(
                    {
                        "factor": factor.ravel(),
                        "layer": layer.ravel(),
                        "neuron": neuron.ravel(),
                        "part": np.full(values.size, part, dtype=np.int8),
                        "loading": values.ravel(),
                    }
                )
            )
        frame = pd.concat(frames, ignore_index=True).sort_values(["factor", "loading"], ascending=[True, False])
        if top is not None:
            frame = frame.groupby("factor", sort=True).head(top)
        return frame.reset_index(drop=True)


def nonnegative(activations: np.ndarray, negative: str) -> tuple[np.ndarray, float]:
    """The non-negative matrix NMF factorises from activations (T, C), and the discarded fraction of the norm."""
    positive = np.maximum(activations, 0.0)
    negative_part = np.maximum(-activations, 0.0)
    total = float(np.linalg.norm(activations))
    if negative == "split":
        return np.concatenate([positive, negative_part], axis=1), 0.0
    return positive, float(np.linalg.norm(negative_part)) / total if total > 0 else 0.0


def factorize(
    activations: np.ndarray,
    tokens: Sequence[str],
    layers: Sequence[int],
    *,
    n_components: int = 5,
    negative: str = "clamp",
    max_iter: int = 1000,
    random_state: int = 0,
) -> ActivationFactors:
    """NMF of activations of shape (T, L, N) from one prompt.

    Raises:
        ConfigError: bad n_components, negative mode, or shapes that disagree with tokens and layers.
        ActivationError: nothing non-negative is left to factorise (all zero, or all negative under `clamp`).
    """
    from sklearn.decomposition import NMF

    if negative not in ("clamp", "split"):
        raise ConfigError(f"negative must be 'clamp' or 'split', got {negative!r}")
    if n_components < 1:
        raise ConfigError(f"n_components must be at least 1, got {n_components}")
    n, n_layers_, n_neurons = activations.shape
    if n != len(tokens) or n_layers_ != len(layers):
        raise ConfigError(f"activations {activations.shape} do not match {len(tokens)} tokens and {len(layers)} layers")
    x, discarded = nonnegative(activations.reshape(n, -1).astype(np.float64), negative)
    norm = float(np.linalg.norm(x))
    if not norm > 0:
        raise ActivationError("no positive activation to factorise: the matrix is all zero")
    model = NMF(n_components=n_components, max_iter=max_iter, random_state=random_state)
    w = model.fit_transform(x)
    h = model.components_
    error = float(np.linalg.norm(x - w @ h)) / norm
    width = n_layers_ * n_neurons
    return ActivationFactors(
        tokens=list(tokens),
        layers=np.asarray(layers, dtype=np.int64),
        negative=negative,
        factors=w.T.astype(np.float32),
        loadings=h[:, :width].reshape(n_components, n_layers_, n_neurons).astype(np.float32),
        negative_loadings=(
            h[:, width:].reshape(n_components, n_layers_, n_neurons).astype(np.float32) if negative == "split" else None
        ),
        reconstruction_error=error,
        discarded_fraction=discarded,
    )


def activation_factors(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    n_components: int = 5,
    negative: Negative = "auto",
    max_iter: int = 1000,
    random_state: int = 0,
) -> ActivationFactors:
    """NMF of a prompt's MLP activations over some layers (all by default).

    `negative="auto"` splits negative parts for gated MLPs and clamps them for GELU MLPs.

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt, layers, n_components or negative mode.
        ActivationError: nothing non-negative to factorise.
    """
    hook_point = check_model(model)
    p = encode(model, tokenizer, prompt)
    chosen = [check_layer(model, layer) for layer in (layers if layers is not None else range(n_layers(model)))]
    if not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"layers must be a non-empty list without repeats, got {list(chosen)}")
    mode = ("split" if hook_point.gated else "clamp") if negative == "auto" else negative
    acts = prompt_activations(model, p.input_ids, chosen)
    return factorize(
        acts,
        p.tokens,
        chosen,
        n_components=n_components,
        negative=mode,
        max_iter=max_iter,
        random_state=random_state,
    )
