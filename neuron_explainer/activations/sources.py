"""ActivationSource: run a causal LM and capture MLP neuron activations with forward hooks.

Hooks are registered for one forward call and always removed, even when the forward raises. The
forward stops right after the deepest requested layer's activation is captured, so deeper blocks and
the (often huge) unembedding are never computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from neuron_explainer.activations.hookpoints import HookPoint
from neuron_explainer.errors import ConfigError


class _StopForward(Exception):
    """Raised inside the deepest hook to skip the rest of the forward pass."""


def get_module(module: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted attribute path (`transformer.h`, `mlp.c_proj`)."""
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


class ActivationSource:
    """Captures post-nonlinearity MLP activations of chosen layers from a transformers causal LM."""

    def __init__(self, model: nn.Module, hook_point: HookPoint) -> None:
        self.model = model
        self.hook_point = hook_point
        self.blocks: nn.ModuleList = get_module(model, hook_point.layers_path)  # type: ignore[assignment]
        self.n_layers = len(self.blocks)
        first = self.mlp_out(0)
        # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out) and exposes nf/nx.
        weight: torch.Tensor = first.weight  # type: ignore[assignment]
        self.n_neurons = int(first.in_features if isinstance(first, nn.Linear) else weight.shape[0])

    def mlp_out(self, layer: int) -> nn.Module:
        """The output projection module of one block (its input is the neuron activation)."""
        block: nn.Module = self.blocks[layer]
        return get_module(block, self.hook_point.module_path)

    def check_layers(self, layers: Sequence[int]) -> None:
        """Raise ConfigError if any layer is out of range."""
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise ConfigError(f"layer(s) {bad} out of range: this model has layers 0..{self.n_layers - 1}")

    @contextmanager
    def hooks(self, layers: Sequence[int], sink: dict[int, torch.Tensor], stop_after_last: bool) -> Iterator[None]:
        """Register capture hooks for `layers` writing into `sink`; removed on exit whatever happens."""
        last = max(layers)
        handles = []

        def make(layer: int):  # noqa: ANN202
            def pre_hook(_module: nn.Module, args: tuple) -> None:
                sink[layer] = args[0].detach()
                if stop_after_last and layer == last and len(sink) == len(layers):
                    raise _StopForward

            return pre_hook

        try:
            for layer in layers:
                handles.append(self.mlp_out(layer).register_forward_pre_hook(make(layer)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def activations(self, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Run the model on input_ids (B, T) and return {layer: activations (B, T, n_neurons)}."""
        sink: dict[int, torch.Tensor] = {}
        with self.hooks(layers, sink, stop_after_last=True):
            try:
                self.model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
        missing = [layer for layer in layers if layer not in sink]
        if missing:
            raise RuntimeError(f"hooks for layers {missing} did not fire: hook point table is wrong for this model")
        return sink
