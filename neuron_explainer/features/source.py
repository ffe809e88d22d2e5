"""Feature sources: what the harvest reads at every token, and how ablation edits it.

A feature is anything with one value per token: an MLP neuron (`mlp`, the default), a direction over
one layer's MLP activations (`directions:FILE`), or a latent of a sparse autoencoder or transcoder
(`sae:PATH`). Every stage works on (layer, feature index) pairs, so the same pipeline explains all
three. A source says where it hooks, how it maps the hooked activation to feature values, how many
features it has, and how to replace a feature's value (for ablation) by editing the hooked activation
along the feature's output vector. The edit rules are in docs/method.md, "Features".
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from neuron_explainer.errors import ConfigError


class FeatureSource(Protocol):
    """What the harvest and the stages after it need from a source of features."""

    kind: str
    """`mlp`, `directions` or `sae`."""
    n_layers: int
    """Transformer blocks of the model."""
    n_neurons: int
    """Features per harvested layer (named neurons everywhere, for MLP neurons and features alike)."""

    def default_layers(self) -> list[int]:
        """The layers harvested when the config names none."""
        ...

    def check_layers(self, layers: Sequence[int]) -> None:
        """Raise ConfigError if the source has no features at some layer."""
        ...

    def activations(self, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Feature values {layer: (B, T, n_neurons)} of a batch of token ids (B, T)."""
        ...

    def replaced(self, layer: int, features: torch.Tensor, values: torch.Tensor) -> AbstractContextManager[None]:
        """Within the block, batch row r has feature `features[r]` of `layer` set to `values[r]` (R, T').

        The values cover the last T' positions (earlier ones, such as a BOS token, keep theirs). The
        edit is made at the source's hook; hooks are removed on exit, whatever happens.
        """
        ...

    def provenance(self) -> dict[str, Any]:
        """What the manifest records about the source (kind, hook, content hash, ...)."""
        ...


SourceBuilder = Callable[..., FeatureSource]

FEATURE_SOURCES: dict[str, str] = {
    "mlp": "neuron_explainer.activations.sources:mlp_source",
    "sae": "neuron_explainer.features.sae_source:sae_source",
    "directions": "neuron_explainer.directions.source:direction_source",
}
"""Feature kind -> `module:function(argument, model, hook_point, **options) -> FeatureSource`."""

_SPEC = re.compile(r"^(?P<kind>[a-z_]+)(?::(?P<arg>.+))?$")


def parse_features(spec: str) -> tuple[str, str | None]:
    """`mlp`, `sae:PATH` or `directions:FILE` as (kind, argument).

    Raises:
        ConfigError: an unknown kind, or a missing or unexpected argument.
    """
    match = _SPEC.match(spec.strip())
    kind, arg = (match.group("kind"), match.group("arg")) if match else ("", None)
    if kind not in FEATURE_SOURCES:
        raise ConfigError(f"features must be one of mlp, sae:PATH, directions:FILE; got {spec!r}")
    if kind == "mlp" and arg is not None:
        raise ConfigError(f"features {spec!r}: `mlp` takes no argument")
    if kind != "mlp" and arg is None:
        raise ConfigError(f"features {spec!r}: `{kind}:` needs a path")
    return kind, arg


def make_source(spec: str, model: Any, hook_point: Any, **options: Any) -> FeatureSource:
    """Build the feature source `spec` over a loaded model (options: hook, whiten, covariance, ...).

    Raises:
        ConfigError: a bad spec, a file that cannot be used with this model, or an unknown option.
    """
    kind, arg = parse_features(spec)
    module, _, function = FEATURE_SOURCES[kind].partition(":")
    builder: SourceBuilder = getattr(importlib.import_module(module), function)
    return builder(arg, model, hook_point, **options)


def source_options(harvest: Any) -> dict[str, Any]:
    """The options of the source a harvest config names (`hook` for sae, `whiten` for directions)."""
    kind, _ = parse_features(harvest.features)
    if harvest.hook is not None and kind != "sae":
        raise ConfigError(f"harvest.hook applies to sae: features only, not {harvest.features!r}")
    return {"sae": {"hook": harvest.hook}, "directions": {"whiten": harvest.whiten}}.get(kind, {})


def layer_of(module_path: str, layers_path: str) -> int | None:
    """The block index in a module path under `layers_path` (`model.layers.5.mlp` -> 5), else None."""
    prefix = layers_path + "."
    if not module_path.startswith(prefix):
        return None
    head = module_path[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None
