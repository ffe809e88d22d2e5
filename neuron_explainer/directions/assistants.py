"""The explainer and simulator of a direction search, from the run config's `explain` and `simulate` sections.

They are the pipeline's own: explanations come from explain.explainer.explain, revisions from
revise.revise_explanation, simulations from the configured simulation method (all at once by default,
batched across candidates and excerpts). Simulations are cached by (explanation, excerpt), since the same
explanation is re-scored on excerpts it has seen in earlier rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuron_explainer.config.sections import ExplainConfig, SimulateConfig
from neuron_explainer.datatypes import ActivationRecord, Failure, Simulation
from neuron_explainer.errors import ConfigError, NeuronExplainerError
from neuron_explainer.explain.explainer import explain
from neuron_explainer.llm.base import Capability, LLMBackend, require
from neuron_explainer.prompts.templates import ExplainerTemplate, load_explainer_template, load_simulator_template
from neuron_explainer.revise import RevisionTemplates, generation_params, load_revision_templates, revise_explanation
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.simulate.batched import simulate_all_at_once_batch
from neuron_explainer.simulate.methods import require_method
from neuron_explainer.simulate.simulator import SimulatorSetup
from neuron_explainer.stages.runtime import Deps

Scored = tuple[float | None, list[list[float]] | None]
"""(top-and-random correlation or None when undefined, the simulation per excerpt or None when it failed)."""


@dataclass
class Assistants:
    """Explainer, revision and simulator of one search, with a simulation cache."""

    explainer: LLMBackend
    template: ExplainerTemplate
    revision: RevisionTemplates
    explain_cfg: ExplainConfig
    simulator: SimulatorSetup
    simulate_cfg: SimulateConfig
    cache: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    """(explanation, excerpt id) -> expected value per token."""

    @classmethod
    def from_deps(cls, deps: Deps) -> Assistants:
        """The back ends and templates the run config names (checked before any request).

        Raises:
            ConfigError: an explainer prompt in another view than the current token's.
            CapabilityError: the explainer cannot generate, or the simulator cannot serve the method.
        """
        cfg = deps.config
        template = load_explainer_template(cfg.prompts_dir, cfg.explain.prompt_version)
        if template.view != "current_token":
            raise ConfigError(f"the direction search explains the current token; {template.version} is {template.view}")
        explainer = deps.llm.get(cfg.explain.explainer)
        require(explainer, Capability.GENERATE, "direction search")
        s = cfg.simulate
        sim_template = load_simulator_template(cfg.prompts_dir, s.prompt_version)
        setup = SimulatorSetup(deps.llm.get(s.simulator), sim_template, max_level=s.max_level, top_k=s.top_k)
        require_method(s.method, setup)
        revision = load_revision_templates(cfg.prompts_dir, cfg.revise.prompt_version)
        return cls(explainer, template, revision, cfg.explain, setup, s)

    def identity(self) -> dict[str, Any]:
        """What the search's results depend on, of the assistants (for the search id)."""
        e = self.explain_cfg
        return {
            "explainer": f"{self.explainer.name}:{self.explainer.model}",
            "explain": [self.template.version, e.n_samples, e.temperature, e.max_tokens, e.seed],
            "revision": self.revision.version,
            "simulator": self.simulator.name,
            "simulate": [self.simulator.template.version, self.simulate_cfg.method, self.simulator.level],
        }

    async def explain(self, records: Sequence[ActivationRecord], seed: int | None) -> list[str]:
        """Fresh explanations of the records (parse failures dropped)."""
        e = self.explain_cfg
        results = await explain(
            records, self.explainer, self.template, n=e.n_samples, temperature=e.temperature,
            max_tokens=e.max_tokens, seed=seed,
        )  # fmt: skip
        return [r for r in results if isinstance(r, str)]

    async def revise(
        self, evidence: Sequence[ActivationRecord], explanation: str, shown: Sequence[ActivationRecord]
    ) -> str | None:
        """The revision prompt on `explanation` with more of the direction's excerpts; None if unusable."""
        e = self.explain_cfg
        params = generation_params(e.temperature, e.max_tokens, e.seed)
        result = await revise_explanation(
            self.explainer, self.revision, self.template, evidence, explanation, shown, params
        )
        return result if isinstance(result, str) else None

    async def _simulate_missing(self, texts: Sequence[str], records: Sequence[ActivationRecord]) -> None:
        todo = list(dict.fromkeys((t, r.stored_id) for t in texts for r in records))
        todo = [key for key in todo if key not in self.cache]
        if not todo:
            return
        tokens = {r.stored_id: r.tokens for r in records}
        items = [(text, tokens[eid]) for text, eid in todo]
        results: list[Simulation | Failure]
        if self.simulate_cfg.method == "all_at_once":
            results = await simulate_all_at_once_batch(items, self.simulator)
        else:
            results = [await self._one(text, toks) for text, toks in items]
        for key, result in zip(todo, results, strict=True):
            if isinstance(result, Simulation):
                self.cache[key] = list(result.expected_values)

    async def _one(self, text: str, tokens: Sequence[str]) -> Simulation | Failure:
        from neuron_explainer.simulate.methods import method

        try:
            return await method(self.simulate_cfg.method).run(text, tokens, self.simulator)
        except NeuronExplainerError as e:  # parse errors included: the pair fails, the search goes on
            return Failure(stage="simulate", kind="backend", message=str(e))

    async def score(self, texts: Sequence[str], records: Sequence[ActivationRecord]) -> dict[str, Scored]:
        """Each explanation's simulation of the records and its pooled correlation with their activations."""
        await self._simulate_missing(texts, records)
        out: dict[str, Scored] = {}
        for text in texts:
            keys = [(text, r.stored_id) for r in records]
            if not all(key in self.cache for key in keys):
                out[text] = (None, None)
                continue
            sims = [self.cache[key] for key in keys]
            out[text] = (score_correlation([r.activations for r in records], sims).correlation, sims)
        return out


def flat(simulation: Sequence[Sequence[float]]) -> np.ndarray:
    """A per-excerpt simulation as one vector over the pooled tokens."""
    return np.concatenate([np.asarray(s, dtype=np.float64) for s in simulation])
