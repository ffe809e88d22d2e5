"""The explicit table from model architecture to the MLP neuron hook point. Pure: no torch import.

The neuron activation is the input of the MLP's output projection: after GPT-2's own GELU (`c_proj`),
after `act(gate(x)) * up(x)` in gated MLPs (`down_proj`), after GPT-NeoX's GELU (`dense_4h_to_h`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron_explainer.errors import ModelError


@dataclass(frozen=True)
class HookPoint:
    """Where one architecture's MLP neuron activations live."""

    layers_path: str
    """Dotted attribute path from the causal-LM module to the list of transformer blocks."""
    module_path: str
    """Dotted path inside one block to the output projection whose input is the neuron activation."""
    act_config_keys: tuple[str, ...]
    """Config attributes naming the activation function, first one present wins."""
    gated: bool
    """Whether the MLP is gated (activation = act(gate(x)) * up(x)); its values can be negative."""
    mlp_path: str = "mlp"
    """Dotted path inside one block to the MLP module."""
    mlp_norm_path: str = "post_attention_layernorm"
    """Dotted path inside one block to the norm applied to the residual stream before the MLP."""

    def describe(self) -> str:
        """Human-readable hook location, e.g. `model.layers.{i}.mlp.down_proj:input`."""
        return f"{self.layers_path}.{{i}}.{self.module_path}:input"

    def activation_fn(self, config: Any) -> str:
        """Name of the MLP activation function from a transformers config."""
        for key in self.act_config_keys:
            value = getattr(config, key, None)
            if value:
                return str(value)
        return "unknown"


_GATED = HookPoint("model.layers", "mlp.down_proj", ("hidden_activation", "hidden_act"), gated=True)
# Gemma 2 and 3 have a norm before and after each sub-block: the MLP reads `pre_feedforward_layernorm`.
_GATED_SANDWICH = HookPoint(
    "model.layers",
    "mlp.down_proj",
    ("hidden_activation", "hidden_act"),
    gated=True,
    mlp_norm_path="pre_feedforward_layernorm",
)

HOOK_POINTS: dict[str, HookPoint] = {
    "gpt2": HookPoint("transformer.h", "mlp.c_proj", ("activation_function",), gated=False, mlp_norm_path="ln_2"),
    "gpt_neox": HookPoint("gpt_neox.layers", "mlp.dense_4h_to_h", ("hidden_act",), gated=False),
    "llama": _GATED,
    "mistral": _GATED,
    "qwen2": _GATED,
    "qwen3": _GATED,
    "gemma": _GATED,
    "gemma2": _GATED_SANDWICH,
    "gemma3_text": _GATED_SANDWICH,
}
"""model_type -> hook point. SmolLM and SmolLM2 are `llama`; Pythia is `gpt_neox`."""


def hook_point_for(model_type: str) -> HookPoint:
    """Look up the hook point of a model type.

    Raises:
        ModelError: the architecture is not in the table; the message lists the supported ones.
    """
    try:
        return HOOK_POINTS[model_type]
    except KeyError:
        supported = ", ".join(sorted(HOOK_POINTS))
        raise ModelError(
            f"unsupported model type {model_type!r}: neuron-explainer knows where the MLP neurons are for "
            f"{supported} (SmolLM is llama, Pythia is gpt_neox). Add a row to "
            "neuron_explainer/activations/hookpoints.py:HOOK_POINTS to support another."
        ) from None
