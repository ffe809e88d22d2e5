"""One-at-a-time simulation: one prompt per token, asking for the activation of the text's last token.

The label distribution is read from the prediction after the prompt's final "Activation:"; the expected
value is taken as in all-at-once. A request per token: accurate to the method, and slow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from neuron_explainer.datatypes import Simulation
from neuron_explainer.llm.base import Capability, LLMBackend, require
from neuron_explainer.prompts.templates import DEFAULT_PROMPTS_DIR, SimulatorTemplate
from neuron_explainer.simulate.parse import label_distribution, rescale_level
from neuron_explainer.simulate.simulator import default_max_level

ANSWER = "Activation:"


@cache
def _intro(prompts_dir: str | None, version: str) -> str:
    path = (Path(prompts_dir) if prompts_dir else DEFAULT_PROMPTS_DIR) / "simulator" / f"one_at_a_time_{version}.md"
    return path.read_text(encoding="utf-8").strip()


def _question(explanation: str, tokens: Sequence[str]) -> str:
    text = "".join(tokens)
    return (
        f"Explanation: {explanation}\nText: {json.dumps(text, ensure_ascii=False)}\n"
        f"Last token: {json.dumps(tokens[-1], ensure_ascii=False)}\n{ANSWER}"
    )


def build_one_at_a_time_prompt(
    template: SimulatorTemplate,
    explanation: str,
    tokens: Sequence[str],
    index: int,
    max_level: int = 10,
    prompts_dir: str | None = None,
) -> str:
    """Prompt asking for the activation of tokens[index], seeing tokens[: index + 1] only."""
    parts = [_intro(prompts_dir, "v1").replace("{max_level}", str(max_level))]
    for ex in template.examples:
        peak = max(range(len(ex.levels)), key=lambda j: ex.levels[j])  # one question per example: its peak
        quiet = next((j for j in range(len(ex.levels)) if ex.levels[j] == 0 and j > 0), 0)
        for j in sorted({quiet, peak}):
            parts.append(f"{_question(ex.explanation, ex.tokens[: j + 1])} {rescale_level(ex.levels[j], max_level)}")
    parts.append(_question(explanation.strip(), tokens[: index + 1]))
    return "\n\n".join(parts)


async def simulate_one_at_a_time(
    explanation: str,
    tokens: Sequence[str],
    backend: LLMBackend,
    template: SimulatorTemplate,
    *,
    max_level: int | None = None,
    top_k: int = 20,
    prompts_dir: str | None = None,
) -> Simulation:
    """Simulate one excerpt with one request per token.

    Raises:
        SimulationParseError: no label among the predictions after a prompt.
    """
    require(backend, Capability.PROMPT_LOGPROBS, "one-at-a-time simulation")
    level = default_max_level(backend) if max_level is None else max_level
    labels = [str(v) for v in range(level + 1)]
    expected, values, probs = [], [], []
    for i in range(len(tokens)):
        prompt = build_one_at_a_time_prompt(template, explanation, tokens, i, level, prompts_dir)
        logprobs = await backend.prompt_logprobs(prompt, top_k, include=[" " + k for k in labels] + labels)
        vs, ps, ev = label_distribution(logprobs[-1].top, level, f"token {i}")
        values.append(list(vs))
        probs.append(list(ps))
        expected.append(ev)
    return Simulation(
        tokens=list(tokens),
        expected_values=expected,
        distribution_values=values,
        distribution_probabilities=probs,
        max_level=level,
        simulator=f"{backend.name}:{backend.model}",
        prompt_version="simulator/one_at_a_time_v1",
    )
