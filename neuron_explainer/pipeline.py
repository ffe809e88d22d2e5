"""The pipeline: the stage order, and nothing else. `neuron-explainer run` calls `run_pipeline`.

    harvest -> explain -> simulate -> (revise) -> (baselines) -> (output_tokens) -> score -> (ablate)

The stages after the harvest run only when neurons are selected (`neurons:`); revise, baselines,
output_tokens and ablate only when enabled in their sections. With `workers.shard`, each stage after the
harvest does its share of the units (the harvest must be complete: shards share it). Every stage resumes
per unit, so rerunning after a crash continues. A stage with more failures than `failure_budget` stops
the run (FailureBudgetExceeded); its failures are stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from neuron_explainer.config.sections import RunConfig
from neuron_explainer.errors import RunDirError
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.records.store import RunStore
from neuron_explainer.stages import STAGES, Deps, StageReport, check_failure_budget, stage_module
from neuron_explainer.stages.runtime import ProgressFn


def stages_to_run(config: RunConfig) -> list[str]:
    """The stages `config` enables, in pipeline order."""
    optional = {
        "revise": config.revise.enabled,
        "baselines": config.baselines.enabled,
        "output_tokens": config.output_tokens.enabled,
        "ablate": config.ablate.enabled,
    }
    names = ["harvest"]
    if config.neurons:
        names += [name for name in STAGES if name != "harvest" and optional.get(name, True)]
    return names


@dataclass
class PipelineResult:
    """What a pipeline run did: one report per stage that ran, and the LLM tokens it spent."""

    reports: list[StageReport] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def run_stages(
    config: RunConfig, deps: Deps, *, on_report: Callable[[StageReport], None] | None = None
) -> PipelineResult:
    """Run the enabled stages in order within the running event loop (see `run_pipeline`)."""
    store = RunStore(config.out)
    result = PipelineResult()
    shard = config.workers.shard
    if shard is not None and (store.read_manifest() or {}).get("status", {}).get("harvest") != "complete":
        raise RunDirError(
            f"workers.shard is {shard}, but {store.root} holds no complete harvest: harvest it first in one job "
            "(`neuron-explainer harvest`, or `run` without a shard); the shards then share it"
        )
    try:
        for name in stages_to_run(config):
            report = await stage_module(name).run(store, getattr(config, STAGES[name]), deps)
            result.reports.append(report)
            if on_report is not None:
                on_report(report)
            check_failure_budget(report, config.failure_budget)
    finally:
        result.prompt_tokens, result.completion_tokens = deps.llm.tokens()
        await deps.llm.aclose()
    return result


def run_pipeline(
    config: RunConfig,
    *,
    backends: Mapping[str, LLMBackend] | None = None,
    progress: ProgressFn | None = None,
    notify: Callable[[str], None] | None = None,
    on_report: Callable[[StageReport], None] | None = None,
    force: bool = False,
) -> PipelineResult:
    """Run the whole pipeline for `config` (from Python, as the CLI does).

    Args:
        config: the run config (`load_config(path, overrides)`).
        backends: ready back ends by spec, used instead of building them (tests inject fakes this way).
        progress: called with (stage, units done, units planned).
        notify: receives one-line status messages (default: logging at INFO).
        on_report: called with each stage's report as it finishes.
        force: delete an existing harvest made with another config.

    Raises:
        NeuronExplainerError: bad input, or a stage over the failure budget. What finished is stored.
    """
    deps = Deps.from_config(config, backends=dict(backends or {}), progress=progress, notify=notify, force=force)
    return asyncio.run(run_stages(config, deps, on_report=on_report))
