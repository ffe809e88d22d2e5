"""The explain stage: each selected neuron's train-split top records -> explanations (resumable).

The unit is a neuron (claimed under <run>/claims/explain/ when workers share the run). A neuron is done
when an explanation of it by the same explainer and prompt version exists; it is all-or-nothing over its
samples (a failed sample fails the unit, which is retried whole on the next run, where the response cache
replays the samples that succeeded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from neuron_explainer.config.sections import ExplainConfig
from neuron_explainer.datatypes import Failure
from neuron_explainer.explain.explainer import explanation_messages, parse_explanations
from neuron_explainer.llm.base import Capability, GenerateParams, Message, require
from neuron_explainer.llm.coalesce import Coalescer
from neuron_explainer.prompts.templates import load_explainer_template
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.splits import N_EXPLAIN_RECORDS, top_split
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import explanation_id, explanation_row, failure_row, params_hash, read_table
from neuron_explainer.records.views import apply_view
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_units


def batched_generate(
    backend: Any, cfg: ExplainConfig
) -> Callable[[list[Message], GenerateParams], Awaitable[list[str]]]:
    """How a unit asks for its samples: alone, or coalesced with the other units' into one batched call.

    Batched generation (the local back end) is used for greedy decoding only: at temperature 0 it gives
    exactly the one-by-one texts, while sampled texts would depend on which neurons share a batch.
    """
    if Capability.GENERATE_BATCH not in backend.capabilities or cfg.temperature != 0:
        return backend.generate
    coalescer: Coalescer[tuple[list[Message], GenerateParams], list[str]] = Coalescer(backend.generate_batch)

    async def generate(messages: list[Message], params: GenerateParams) -> list[str]:
        (texts,) = await coalescer.submit([(messages, params)])
        return texts

    return generate


async def run(store: RunStore, cfg: ExplainConfig, deps: Deps) -> StageReport:
    """Explain every selected neuron not yet explained by this explainer and prompt version.

    Raises:
        ConfigError: no neurons are selected.
        CapabilityError: the explainer cannot generate (before any request).
    """
    neurons = deps.require_selected(store)
    template = load_explainer_template(deps.config.prompts_dir, cfg.prompt_version)
    backend = deps.llm.get(cfg.explainer)
    require(backend, Capability.GENERATE, "explain")
    explainer = f"{backend.name}:{backend.model}"
    phash = params_hash(
        {"n": cfg.n_samples, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
    )

    generate = batched_generate(backend, cfg)
    params = GenerateParams(
        max_tokens=cfg.max_tokens, temperature=cfg.temperature, n=cfg.n_samples, seed=cfg.seed, stop=("\n\n",)
    )

    async def work(unit: tuple[int, int]) -> UnitResult:
        layer, neuron = unit
        records = top_split(load_neuron_record(store.root, layer, neuron).most_positive_activation_records, "train")
        shown = [apply_view(r, template.view) for r in records[:N_EXPLAIN_RECORDS]]
        messages = explanation_messages(shown, backend, template)
        results = parse_explanations(await generate(messages, params), template)
        rows, failures = [], []
        for i, result in enumerate(results):
            if isinstance(result, Failure):
                eid = explanation_id(layer, neuron, explainer, template.version, i)
                failures.append(failure_row(layer, neuron, eid, result))
            else:
                rows.append(
                    explanation_row(
                        layer,
                        neuron,
                        result,
                        explainer=explainer,
                        prompt_version=template.version,
                        view=template.view,
                        sample_idx=i,
                        params=phash,
                    )
                )
        # all or nothing: a neuron with a failed sample is retried whole (its other samples replay from the cache)
        return UnitResult(failures=failures) if failures else UnitResult({"explanations": rows})

    with deps.claims(store, "explain") as claims:  # registered before reading what is done
        done = read_table(store, "explanations")
        done_keys = set(zip(done.layer, done.neuron, done.explainer, done.prompt_version, strict=True))
        todo = [(layer, n) for layer, n in neurons if (layer, n, explainer, template.version) not in done_keys]
        report = StageReport("explain", planned=len(neurons), skipped_done=len(neurons) - len(todo))
        queue = UnitQueue(todo, lambda u: (*u, explainer, template.version), claims, report)
        writer = PartWriter(store, "explanations")
        await run_units(
            queue,
            work,
            report=report,
            writer=writer,
            max_in_flight=deps.config.llm.max_in_flight,
            progress=deps.progress,
        )
    return report
