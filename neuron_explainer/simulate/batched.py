"""All-at-once simulation of many (explanation, excerpt) pairs at once. Pure domain logic: no torch, no I/O.

A back end with slot logprobs (the local one) scores every prompt's `unknown` slots in batches that share
the few-shot prefix, reading only the labels' probabilities; any other back end with prompt logprobs gets
one request per pair, as `simulate_all_at_once` sends it. Either way each pair gets the same Simulation,
or a Failure of its own: one misaligned excerpt never sinks the rest of the batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import replace

from neuron_explainer.datatypes import Failure, Simulation
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.llm.base import Capability, CapabilityError, SlotError, SlotRequest, require
from neuron_explainer.llm.coalesce import Coalescer
from neuron_explainer.prompts.formatting import UNKNOWN
from neuron_explainer.simulate.parse import AllAtOncePrompt, SimulationParseError, build_all_at_once_prompt
from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

logger = logging.getLogger(__name__)

SimulationItem = tuple[str, Sequence[str]]
"""(explanation, the excerpt's tokens) to simulate."""


async def simulate_all_at_once_batch(
    items: Sequence[SimulationItem], setup: SimulatorSetup, *, max_concurrent: int = 4
) -> list[Simulation | Failure]:
    """Simulate every (explanation, tokens) pair all at once; results in the order of `items`.

    Uses the back end's batched slot scoring when it has it and it supports the model (`setup.top_k` and
    `max_concurrent` then do not matter), else one prompt-logprobs request per pair with at most
    `max_concurrent` in flight. A pair that cannot be simulated (misaligned slots, no label in the top-k,
    a failed request) gets a Failure.

    Raises:
        CapabilityError: the back end has neither slot logprobs nor prompt logprobs.
        ValueError: an excerpt is empty (checked before any request is sent).
    """
    backend, level = setup.backend, setup.level
    prompts = [build_all_at_once_prompt(setup.template, explanation, tokens, level) for explanation, tokens in items]
    if Capability.SLOT_LOGPROBS in backend.capabilities:
        try:
            return await _by_slots(items, prompts, setup, level)
        except CapabilityError as e:  # e.g. a model whose output head the batched path cannot reproduce
            logger.warning("batched slot scoring unavailable, simulating one prompt at a time: %s", e)
    require(backend, Capability.PROMPT_LOGPROBS, "all-at-once simulation")
    gate = asyncio.Semaphore(max_concurrent)

    async def one(explanation: str, tokens: Sequence[str]) -> Simulation | Failure:
        async with gate:
            try:
                return await simulate_all_at_once(explanation, tokens, replace(setup, max_level=level))
            except SimulationParseError as e:
                return Failure(stage="simulate", kind="parse", message=str(e))
            except NeuronExplainerError as e:
                return Failure(stage="simulate", kind="backend", message=str(e))

    return list(await asyncio.gather(*(one(explanation, tokens) for explanation, tokens in items)))


async def _by_slots(
    items: Sequence[SimulationItem], prompts: Sequence[AllAtOncePrompt], setup: SimulatorSetup, level: int
) -> list[Simulation | Failure]:
    labels = tuple(str(v) for v in range(level + 1))
    requests = [SlotRequest(p.text, p.slots, labels) for p in prompts]
    try:
        scored = await setup.backend.label_logprobs(requests)  # type: ignore[attr-defined]
    except CapabilityError:
        raise
    except NeuronExplainerError as e:  # the whole call failed: every pair fails with it
        return [Failure(stage="simulate", kind="backend", message=str(e)) for _ in items]
    out: list[Simulation | Failure] = []
    for (_, tokens), result in zip(items, scored, strict=True):
        if isinstance(result, SlotError):
            out.append(Failure(stage="simulate", kind="parse", message=str(result)))
            continue
        wrong = [(n, t) for n, t in enumerate(result.slot_tokens) if not t.startswith(UNKNOWN[:1])]
        if wrong:
            n, text = wrong[0]
            message = f"prompt token at the label of excerpt token {n} is {text!r}, expected the start of {UNKNOWN!r}"
            out.append(Failure(stage="simulate", kind="parse", message=message))
            continue
        probabilities = [[math.exp(lp) for lp in slot] for slot in result.logprobs]
        out.append(
            Simulation(
                tokens=list(tokens),
                expected_values=[sum(v * p for v, p in enumerate(ps)) for ps in probabilities],
                distribution_values=[list(range(level + 1)) for _ in probabilities],
                distribution_probabilities=probabilities,
                max_level=level,
                simulator=setup.name,
                prompt_version=setup.template.version,
            )
        )
    return out


def slot_batcher(setup: SimulatorSetup) -> Coalescer[SimulationItem, Simulation | Failure]:
    """Coalesces the simulations that concurrent units ask for into shared batched slot scoring."""

    async def flush(items: list[SimulationItem]) -> list[Simulation | Failure]:
        return await simulate_all_at_once_batch(items, setup)

    return Coalescer(flush)
