"""Logprob-free simulation for chat-only back ends: the model writes the levels as a JSON array.

Without a distribution there is no expected value: the written integers are the simulation. Output
that is not an array of the right length with every value a number in range is a typed failure, never
a row of zeros.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from neuron_explainer.datatypes import Simulation
from neuron_explainer.llm.base import Capability, GenerateParams, Message, require
from neuron_explainer.prompts.formatting import display_token
from neuron_explainer.prompts.templates import SimulatorTemplate
from neuron_explainer.simulate.parse import SimulationParseError, rescale_level
from neuron_explainer.simulate.simulator import SimulatorSetup

_ARRAY = re.compile(r"\[[^\[\]]*\]", re.DOTALL)


def _numbered(tokens: Sequence[str]) -> str:
    return "\n".join(f"{i}: {json.dumps(display_token(t), ensure_ascii=False)}" for i, t in enumerate(tokens, 1))


def build_logprob_free_messages(
    template: SimulatorTemplate,
    explanation: str,
    tokens: Sequence[str],
    max_level: int = 10,
) -> list[Message]:
    """Instructions, the few-shot neurons as user/assistant turns, then the target.

    Raises:
        ConfigError: the template's version has no logprob-free instructions.
    """
    intro = template.intro_for("logprob_free")
    messages = [Message("system", intro.replace("{max_level}", str(max_level)))]
    for ex in template.examples:
        messages.append(Message("user", f"Explanation: {ex.explanation}\nTokens:\n{_numbered(ex.tokens)}"))
        messages.append(Message("assistant", json.dumps([rescale_level(v, max_level) for v in ex.levels])))
    messages.append(Message("user", f"Explanation: {explanation.strip()}\nTokens:\n{_numbered(tokens)}"))
    return messages


def parse_levels(text: str, n_tokens: int, max_level: int) -> list[float]:
    """The first JSON array in `text`, checked: n_tokens numbers in [0, max_level].

    Raises:
        SimulationParseError: no array, wrong length, or a value that is not a number in range.
    """
    match = _ARRAY.search(text)
    if match is None:
        raise SimulationParseError(f"no JSON array in the simulator's output {text[:80]!r}")
    try:
        values = json.loads(match.group())
    except json.JSONDecodeError as e:
        raise SimulationParseError(f"unparseable array in the simulator's output: {e}") from None
    if len(values) != n_tokens:
        raise SimulationParseError(f"the simulator wrote {len(values)} values for {n_tokens} tokens")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= max_level:
            raise SimulationParseError(f"value {v!r} is not a number in 0..{max_level}")
        out.append(float(v))
    return out


async def simulate_logprob_free(
    explanation: str, tokens: Sequence[str], setup: SimulatorSetup, max_tokens: int | None = None
) -> Simulation:
    """Simulate one excerpt from a written answer (greedy); the scale is `setup.max_level` or 10.

    Raises:
        SimulationParseError: the answer is malformed.
        ConfigError: the template's version has no logprob-free instructions.
    """
    require(setup.backend, Capability.GENERATE, "logprob-free simulation")
    max_level = setup.max_level or 10  # written numbers need no single-token labels
    messages = build_logprob_free_messages(setup.template, explanation, tokens, max_level)
    budget = max_tokens or 4 * len(tokens) + 16
    (text,) = await setup.backend.generate(messages, GenerateParams(max_tokens=budget, temperature=0.0, n=1))
    values = parse_levels(text, len(tokens), max_level)
    return Simulation(
        tokens=list(tokens),
        expected_values=values,
        distribution_values=[[int(v)] for v in values],
        distribution_probabilities=[[1.0] for _ in values],
        max_level=max_level,
        simulator=setup.name,
        prompt_version=f"simulator/logprob_free_{setup.template.name}",
    )
