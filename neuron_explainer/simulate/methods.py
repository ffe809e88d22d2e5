"""The simulation methods by name (a dict registry), and a caching record simulator.

- `all_at_once`: one prompt-logprobs request per excerpt (the default; simulate/simulator.py);
- `one_at_a_time`: one request per token (simulate/one_at_a_time.py);
- `logprob_free`: the model writes the levels, for chat-only back ends (simulate/logprob_free.py).
Every method is `async (explanation, tokens, setup: SimulatorSetup) -> Simulation`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from neuron_explainer.datatypes import ActivationRecord, Simulation
from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import Capability, require
from neuron_explainer.simulate.simulator import SimulatorSetup


@dataclass(frozen=True)
class SimulationMethod:
    """One way of simulating an excerpt from an explanation."""

    needs: Capability
    """What the back end must offer."""
    target: str
    """`module:function` implementing it (imported on first use)."""
    views: tuple[str, ...] = ("current_token",)
    """Record views (records/views.py) the method can simulate."""

    async def run(self, explanation: str, tokens: Sequence[str], setup: SimulatorSetup) -> Simulation:
        """Simulate one excerpt."""
        module, _, function = self.target.partition(":")
        return await getattr(importlib.import_module(module), function)(explanation, tokens, setup)


METHODS: dict[str, SimulationMethod] = {
    "all_at_once": SimulationMethod(
        Capability.PROMPT_LOGPROBS,
        "neuron_explainer.simulate.simulator:simulate_all_at_once",
        ("current_token", "next_token"),
    ),
    "one_at_a_time": SimulationMethod(
        Capability.PROMPT_LOGPROBS, "neuron_explainer.simulate.one_at_a_time:simulate_one_at_a_time"
    ),
    "logprob_free": SimulationMethod(
        Capability.GENERATE, "neuron_explainer.simulate.logprob_free:simulate_logprob_free"
    ),
}
"""Method name -> how it runs and what it needs."""


def method(name: str) -> SimulationMethod:
    """The registered method `name`.

    Raises:
        ConfigError: no such method.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown simulation method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def require_method(name: str, setup: SimulatorSetup) -> SimulationMethod:
    """The method, after checking the back end can serve it (before any work starts)."""
    m = method(name)
    require(setup.backend, m.needs, f"{name.replace('_', '-')} simulation")
    return m


@dataclass
class RecordSimulator:
    """One simulator setup and method applied to many records, caching by (explanation, tokens).

    Shared by the revise stage and the puzzle benchmarks, which simulate the same explanation on the same
    sentences more than once.
    """

    setup: SimulatorSetup
    method: str = "all_at_once"
    cache: dict[tuple[str, tuple[str, ...]], list[float]] = field(default_factory=dict)

    async def __call__(self, explanation: str, records: Sequence[ActivationRecord]) -> list[list[float]]:
        """Expected levels per token of each record, given only the explanation."""
        out = []
        for r in records:
            key = (explanation, tuple(r.tokens))
            if key not in self.cache:
                sim = await method(self.method).run(explanation, r.tokens, self.setup)
                self.cache[key] = list(sim.expected_values)
            out.append(self.cache[key])
        return out

    async def score(self, explanation: str, records: Sequence[ActivationRecord]) -> float | None:
        """Pooled correlation of the explanation's simulation with the records' activations (None: undefined)."""
        from neuron_explainer.scoring.correlation import score_correlation

        sims = await self(explanation, records)
        return score_correlation([r.activations for r in records], sims).correlation
