"""All-at-once simulation: one prompt-logprobs request per excerpt, expected level per token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from neuron_explainer.datatypes import ActivationRecord, Simulation
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


async def simulate_all_at_once(
    explanation: str,
    tokens: Sequence[str],
    backend: LLMBackend,
    template: SimulatorTemplate,
    *,
    max_level: int | None = None,
    top_k: int = 20,
) -> Simulation:
    """Simulate one excerpt with one forward pass.

    Raises:
        CapabilityError: the back end returns no prompt logprobs.
        SimulationParseError: the logprobs cannot be aligned or hold no label (never turned into zeros).
    """
    require(backend, Capability.PROMPT_LOGPROBS, "all-at-once simulation")
    level = default_max_level(backend) if max_level is None else max_level
    prompt = build_all_at_once_prompt(template, explanation, tokens, level)
    labels = [str(v) for v in range(level + 1)]
    logprobs = await backend.prompt_logprobs(prompt.text, top_k, include=labels)
    dist = read_label_distributions(prompt, logprobs)
    return Simulation(
        tokens=list(tokens),
        expected_values=list(dist.expected_values),
        distribution_values=[list(v) for v in dist.values],
        distribution_probabilities=[list(p) for p in dist.probabilities],
        max_level=level,
        simulator=f"{backend.name}:{backend.model}",
        prompt_version=template.version,
    )


METHODS = ("all_at_once", "one_at_a_time", "logprob_free")
NEEDS = {
    "all_at_once": Capability.PROMPT_LOGPROBS,
    "one_at_a_time": Capability.PROMPT_LOGPROBS,
    "logprob_free": Capability.GENERATE,
}
"""simulation method -> the capability it needs from the back end."""


async def simulate(
    method: str,
    explanation: str,
    tokens: Sequence[str],
    backend: LLMBackend,
    template: SimulatorTemplate,
    *,
    max_level: int | None = None,
    top_k: int = 20,
) -> Simulation:
    """Dispatch to one of the simulators by name."""
    if method == "all_at_once":
        return await simulate_all_at_once(explanation, tokens, backend, template, max_level=max_level, top_k=top_k)
    if method == "one_at_a_time":
        from neuron_explainer.simulate.one_at_a_time import simulate_one_at_a_time

        return await simulate_one_at_a_time(explanation, tokens, backend, template, max_level=max_level, top_k=top_k)
    if method == "logprob_free":
        from neuron_explainer.simulate.logprob_free import simulate_logprob_free

        return await simulate_logprob_free(explanation, tokens, backend, template, max_level=max_level or 10)
    raise ValueError(f"unknown simulation method {method!r}; choose one of {', '.join(METHODS)}")


@dataclass
class RecordSimulator:
    """One simulator configuration applied to many records, caching by (explanation, tokens).

    Shared by the revise stage and the puzzle benchmarks, which simulate the same explanation on the same
    sentences more than once.
    """

    backend: LLMBackend
    template: SimulatorTemplate
    method: str = "all_at_once"
    max_level: int | None = None
    top_k: int = 20
    _cache: dict[tuple[str, tuple[str, ...]], list[float]] = field(default_factory=dict)

    async def __call__(self, explanation: str, records: Sequence[ActivationRecord]) -> list[list[float]]:
        """Expected levels per token of each record, given only the explanation."""
        out = []
        for r in records:
            key = (explanation, tuple(r.tokens))
            if key not in self._cache:
                sim = await simulate(
                    self.method, explanation, r.tokens, self.backend, self.template,
                    max_level=self.max_level, top_k=self.top_k,
                )  # fmt: skip
                self._cache[key] = list(sim.expected_values)
            out.append(self._cache[key])
        return out

    async def score(self, explanation: str, records: Sequence[ActivationRecord]) -> float | None:
        """Pooled correlation of the explanation's simulation with the records' activations (None: undefined)."""
        from neuron_explainer.scoring.correlation import score_correlation

        sims = await self(explanation, records)
        return score_correlation([r.activations for r in records], sims).correlation
