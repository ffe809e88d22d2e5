"""ActivationSource: run a causal LM and capture MLP neuron activations with forward hooks.

Hooks are registered for one forward call and always removed, even when the forward raises. The
forward stops right after the deepest requested layer's activation is captured, so deeper blocks and
the (often huge) unembedding are never computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
    """Captures post-nonlinearity MLP activations of chosen layers from a transformers causal LM.

    The `mlp` feature source (features/source.py): feature n of layer l is MLP neuron n of block l.
    """

    kind = "mlp"

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

    def default_layers(self) -> list[int]:
        """Every block."""
        return list(range(self.n_layers))

    def provenance(self) -> dict[str, Any]:
        """The feature kind and where it is read."""
        return {"kind": self.kind, "hook": self.hook_point.describe()}

    @contextmanager
    def replaced(self, layer: int, features: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
        """Within the block, batch row r of `layer`'s activations has neuron `features[r]` set to `values[r]`.

        `values` is (R, T') for the last T' positions (earlier positions, such as a prepended BOS token, keep
        their activations). The pre-hook is removed on exit, even after an exception.
        """

        def pre_hook(_module: nn.Module, args: tuple) -> tuple:
            acts = args[0].clone()
            n_rows, length = acts.shape[0], acts.shape[1]
            if values.shape[0] != n_rows or values.shape[1] > length:
                raise ValueError(f"replacement values {tuple(values.shape)} do not fit activations {tuple(acts.shape)}")
            rows = torch.arange(n_rows, device=acts.device)[:, None]
            positions = torch.arange(length - values.shape[1], length, device=acts.device)[None, :]
            acts[rows, positions, features.to(acts.device)[:, None]] = values.to(acts.device, acts.dtype)
            return (acts, *args[1:])

        handle = self.mlp_out(layer).register_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            handle.remove()

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


def mlp_source(argument: str | None, model: nn.Module, hook_point: HookPoint, **options: Any) -> ActivationSource:
    """The `mlp` feature source (no argument; no options)."""
    del argument
    if options:
        raise ConfigError(f"the mlp feature source takes no options, got {sorted(options)}")
    return ActivationSource(model, hook_point)
