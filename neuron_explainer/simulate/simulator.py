"""A simulator's setup, and all-at-once simulation: one prompt-logprobs request per excerpt.

The other methods and the registry that names them are in simulate/methods.py; every method takes
(explanation, tokens, setup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neuron_explainer.datatypes import Simulation
from neuron_explainer.llm.base import Capability, LLMBackend, require
from neuron_explainer.prompts.templates import SimulatorTemplate
from neuron_explainer.simulate.parse import build_all_at_once_prompt, read_label_distributions


def default_max_level(backend: LLMBackend) -> int:
    """10 if the back end's tokenizer writes "10" as one token, else 9 (so every label is one token).

    Correlation and the linear calibration are scale-free, so a 0-9 simulator scores like a 0-10 one;
    reading only the first token of a two-token "10" would instead confuse 10 with 1.
    """
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        return 10
    return 10 if len(tokenizer("10", add_special_tokens=False)["input_ids"]) == 1 else 9


@dataclass(frozen=True)
class SimulatorSetup:
    """One simulator: the back end, its prompt template and how its labels are read."""

    backend: LLMBackend
    template: SimulatorTemplate
    max_level: int | None = None
    """Top of the label scale (None: 10 if the back end's tokenizer has a single "10" token, else 9)."""
    top_k: int = 20
    """Top next-token logprobs read at each slot (over HTTP a label must be among them)."""

    @property
    def level(self) -> int:
        """The label scale in use: `max_level`, or the back end's default."""
        return default_max_level(self.backend) if self.max_level is None else self.max_level

    @property
    def name(self) -> str:
        """`backend:model`, the name simulations are stored under."""
        return f"{self.backend.name}:{self.backend.model}"


async def simulate_all_at_once(explanation: str, tokens: Sequence[str], setup: SimulatorSetup) -> Simulation:
    """Simulate one excerpt with one forward pass.

    Raises:
        CapabilityError: the back end returns no prompt logprobs.
        SimulationParseError: the logprobs cannot be aligned or hold no label (never turned into zeros).
    """
    require(setup.backend, Capability.PROMPT_LOGPROBS, "all-at-once simulation")
    level = setup.level
    prompt = build_all_at_once_prompt(setup.template, explanation, tokens, level)
    labels = [str(v) for v in range(level + 1)]
    logprobs = await setup.backend.prompt_logprobs(prompt.text, setup.top_k, include=labels)
    dist = read_label_distributions(prompt, logprobs)
    return Simulation(
        tokens=list(tokens),
        expected_values=list(dist.expected_values),
        distribution_values=[list(v) for v in dist.values],
        distribution_probabilities=[list(p) for p in dist.probabilities],
        max_level=level,
        simulator=setup.name,
        prompt_version=setup.template.version,
    )
