"""The `sae:PATH` feature source: latents of a sparse autoencoder or transcoder as features.

Latent i of the coder is feature i of the layer its input hook belongs to. Harvesting reads the hooked
input and encodes it. Ablation replaces a latent's value z by v by adding (v - z) times the latent's
output vector (its decoder row, in the model's units) to the tensor at the coder's output hook: for
an SAE that is the tensor it reads; for a transcoder, the tensor it writes (docs/method.md, "Features").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from neuron_explainer.activations.hookpoints import HookPoint
from neuron_explainer.errors import ConfigError
from neuron_explainer.features.hooks import add_at_hook, capture, capture_activations, get_module
from neuron_explainer.features.sae import SparseCoder
from neuron_explainer.features.sae_formats import load_sparse_coder
from neuron_explainer.features.source import layer_of


class SAESource:
    """Latents of one sparse coder hooked into one model."""

    kind = "sae"

    def __init__(self, coder: SparseCoder, model: nn.Module, hook_point: HookPoint) -> None:
        self.coder, self.model = coder, model
        layer = layer_of(coder.hook_in.module, hook_point.layers_path)
        if layer is None:
            raise ConfigError(
                f"the coder reads {coder.hook_in}, which is not inside a block ({hook_point.layers_path}.N): "
                "its latents have no layer"
            )
        self.layer = layer
        """The block whose activation the coder reads."""
        self.n_layers = len(get_module(model, hook_point.layers_path))  # type: ignore[arg-type]
        self.n_neurons = coder.n_latents
        coder.check_against(model)

    def default_layers(self) -> list[int]:
        """The coder's layer."""
        return [self.layer]

    def check_layers(self, layers: Sequence[int]) -> None:
        """Only the coder's own layer has latents."""
        other = [layer for layer in layers if layer != self.layer]
        if other:
            raise ConfigError(f"the coder's latents are at layer {self.layer} only, not {other}")

    @torch.no_grad()
    def activations(self, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """{layer: latents (B, T, n_latents)}, float32."""
        self.check_layers(layers)
        captured = capture_activations(self.model, [self.coder.hook_in], input_ids)
        return {self.layer: self.coder.encode(captured[self.coder.hook_in])}

    def edit(self, x: torch.Tensor, tensor: torch.Tensor, features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """What to add to the hook_out `tensor` so that latent `features[r]` of row r takes `values[r]`.

        `x` is the coder's input (hook_in) for the same rows; the edit covers the last T' positions.
        """
        if values.shape[0] != x.shape[0] or values.shape[1] > x.shape[1]:
            raise ValueError(f"replacement values {tuple(values.shape)} do not fit activations {tuple(x.shape)}")
        start = x.shape[1] - values.shape[1]
        picked = features.to(self.coder.W_enc.device)[:, None].expand(-1, values.shape[1])
        z = self.coder.encode(x[:, start:]).gather(-1, picked[..., None])[..., 0]
        change = (values.to(z) - z)[..., None] * self.coder.output_vectors(x[:, start:], picked)
        out = torch.zeros_like(tensor)
        out[:, start:] = change.to(tensor)
        return out

    @contextmanager
    def replaced(self, layer: int, features: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
        """Row r has latent `features[r]` set to `values[r]` on its last T' positions (an edit at hook_out)."""
        self.check_layers([layer])
        hook_in, hook_out = self.coder.hook_in, self.coder.hook_out
        with capture(self.model, [] if hook_in == hook_out else [hook_in]) as seen:

            def at_out(tensor: torch.Tensor) -> torch.Tensor:
                x = tensor if hook_in == hook_out else seen[hook_in]
                return self.edit(x, tensor, features, values)

            with add_at_hook(self.model, hook_out, at_out):
                yield

    def provenance(self) -> dict[str, Any]:
        """The coder's provenance (format, content hash, hooks, ...) and the layer."""
        return {"kind": self.kind, "layer": self.layer, **self.coder.provenance()}


def sae_source(
    path: str | None, model: nn.Module, hook_point: HookPoint, *, hook: str | None = None, **options: Any
) -> SAESource:
    """The `sae:PATH` source; `hook` (MODULE[:side] or IN->OUT) overrides the file's hooks.

    Raises:
        ConfigError: an unreadable or unsupported coder, a width that does not match the model, or an
            unknown option.
    """
    if options:
        raise ConfigError(f"the sae feature source takes only the hook option, got {sorted(options)}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    coder = load_sparse_coder(str(path), model_type=model_type, hook=hook)
    device = next(model.parameters()).device
    return SAESource(coder.to(device), model, hook_point)
