"""Plain-text rendering of harvested neurons for the terminal. Pure: takes domain types, returns str."""

from __future__ import annotations

from neuron_explainer.datatypes import ActivationRecord, NeuronRecord
from neuron_explainer.prompts.formatting import normalize_activations


def render_record(record: ActivationRecord, max_activation: float, width: int = 0) -> str:
    """One excerpt on one line, each token with a non-zero 0-10 activation followed by ⟨n⟩."""
    levels = normalize_activations(record.activations, max_activation)
    parts = []
    for token, level in zip(record.tokens, levels, strict=True):
        token = token.replace("\n", "⏎").replace("\t", "⇥")
        parts.append(f"{token}⟨{level}⟩" if level else token)
    text = "".join(parts)
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def render_neuron(record: NeuronRecord, n_top: int = 3, width: int = 0) -> str:
    """Header with statistics, then the top excerpts."""
    top = record.most_positive_activation_records[:n_top]
    max_act = max((max(r.activations) for r in top), default=0.0)
    nid = record.neuron_id
    lines = [
        f"layer {nid.layer_index} neuron {nid.neuron_index}: max {max_act:.3g}, mean {record.mean:.3g}, "
        f"var {record.variance:.3g}, skew {record.skewness:.3g}, kurtosis {record.kurtosis:.3g}"
    ]
    for i, r in enumerate(top):
        lines.append(f"  top {i + 1} (max {max(r.activations):.3g}): {render_record(r, max_act, width)}")
    return "\n".join(lines)
