"""One-at-a-time simulation: one prompt per token, asking for the activation of the text's last token.

The label distribution is read from the prediction after the prompt's final "Activation:"; the expected
value is taken as in all-at-once. A request per token: accurate to the method, and slow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from neuron_explainer.datatypes import Simulation
from neuron_explainer.llm.base import Capability, require
from neuron_explainer.prompts.templates import SimulatorTemplate
from neuron_explainer.simulate.parse import label_distribution, rescale_level
from neuron_explainer.simulate.simulator import SimulatorSetup

ANSWER = "Activation:"


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
) -> str:
    """Prompt asking for the activation of tokens[index], seeing tokens[: index + 1] only.

    Raises:
        ConfigError: the template's version has no one-at-a-time instructions.
    """
    parts = [template.intro_for("one_at_a_time").replace("{max_level}", str(max_level))]
    for ex in template.examples:
        peak = max(range(len(ex.levels)), key=lambda j: ex.levels[j])  # one question per example: its peak
        quiet = next((j for j in range(len(ex.levels)) if ex.levels[j] == 0 and j > 0), 0)
        for j in sorted({quiet, peak}):
            parts.append(f"{_question(ex.explanation, ex.tokens[: j + 1])} {rescale_level(ex.levels[j], max_level)}")
    parts.append(_question(explanation.strip(), tokens[: index + 1]))
    return "\n\n".join(parts)


async def simulate_one_at_a_time(explanation: str, tokens: Sequence[str], setup: SimulatorSetup) -> Simulation:
    """Simulate one excerpt with one request per token.

    Raises:
        SimulationParseError: no label among the predictions after a prompt.
        ConfigError: the template's version has no one-at-a-time instructions.
    """
    require(setup.backend, Capability.PROMPT_LOGPROBS, "one-at-a-time simulation")
    level = setup.level
    labels = [str(v) for v in range(level + 1)]
    expected, values, probs = [], [], []
    for i in range(len(tokens)):
        prompt = build_one_at_a_time_prompt(setup.template, explanation, tokens, i, level)
        logprobs = await setup.backend.prompt_logprobs(prompt, setup.top_k, include=[" " + k for k in labels] + labels)
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
        simulator=setup.name,
        prompt_version=f"simulator/one_at_a_time_{setup.template.name}",
    )
