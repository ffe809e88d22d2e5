"""`run --dry-run --calibrate`: time a short sample of each stage on the configured model and back ends.

The sample is a real run in a temporary directory: a harvest of a few batches of excerpts of the
configured layers, then explain, simulate and score of two of its neurons with the configured explainer
and simulator (response cache off, so every call is really made, with the configured concurrency).
The measured rates replace the assumed ones of the `plan:` section, and the plan then projects the
whole run's wall time and device-hours from them.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from neuron_explainer.config.sections import RunConfig
from neuron_explainer.plan import RunPlan, duration
from neuron_explainer.records.store import RunStore
from neuron_explainer.stages import Deps, stage_module

SAMPLE_NEURONS = 2
"""Neurons explained and simulated in the sample."""


@dataclass
class Measured:
    """Rates measured on the sample, with what they were measured on."""

    harvest_tokens_per_second: float
    explain_seconds_per_call: float | None = None
    """Wall seconds per explained neuron (at the configured concurrency)."""
    simulate_seconds_per_excerpt: float | None = None
    """Wall seconds per simulated excerpt (at the configured concurrency, batched where the back end can)."""
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


def sample_config(cfg: RunConfig, out: str) -> RunConfig:
    """The config of the sample run: a few batches of the same harvest, two neurons, no cache."""
    h = cfg.harvest
    n = max(4 * h.batch_size, h.top_k + 4, 32)
    harvest = h.model_copy(update={"n_excerpts": n, "excerpt_range": None, "quantile_pilot_excerpts": n // 2})
    layers = harvest.layers[:1] if harvest.layers else None
    harvest = harvest.model_copy(update={"layers": layers})
    return cfg.model_copy(
        update={
            "out": out,
            "harvest": harvest,
            "neurons": f"sample:{SAMPLE_NEURONS}",
            "llm": cfg.llm.model_copy(update={"cache": False, "max_attempts": min(cfg.llm.max_attempts, 2)}),
        }
    )


async def _timed_stage(name: str, cfg: RunConfig, deps: Deps) -> float:
    t0 = time.perf_counter()
    await stage_module(name).run(RunStore(cfg.out), getattr(cfg, name), deps)
    return time.perf_counter() - t0


async def _measure(sample: RunConfig, deps: Deps, measured: Measured) -> None:
    try:
        if sample.neurons and sample.explain.explainer:
            seconds = await _timed_stage("explain", sample, deps)
            measured.explain_seconds_per_call = seconds / SAMPLE_NEURONS
            seconds = await _timed_stage("simulate", sample, deps)
            per_explanation = 20 if sample.simulate.calibrate else 10
            n = SAMPLE_NEURONS * sample.explain.n_samples * per_explanation
            measured.simulate_seconds_per_excerpt = seconds / n
    finally:
        await deps.llm.aclose()


def calibrate(cfg: RunConfig, notify: Callable[[str], None]) -> Measured:
    """Run the sample and return the measured rates.

    Raises:
        NeuronExplainerError: the model, corpus or a back end cannot be used (the message says which).
    """
    from neuron_explainer.stages.harvest import HarvestRun

    with tempfile.TemporaryDirectory(prefix="nx-calibrate-") as tmp:
        sample = sample_config(cfg, tmp)
        notify(f"calibrating: harvest of {sample.harvest.n_excerpts} excerpts, then {SAMPLE_NEURONS} neurons ...")
        harvest = HarvestRun(sample.harvest, tmp)  # the model loads here, outside the timing
        t0 = time.perf_counter()
        result = harvest.run()["harvest"]["result"]
        tokens_per_second = result["n_tokens"] / (time.perf_counter() - t0)
        measured = Measured(tokens_per_second, device=sample.harvest.device)
        asyncio.run(_measure(sample, Deps.from_config(sample, notify=notify), measured))
    return measured


def format_measured(cfg: RunConfig, plan: RunPlan, measured: Measured) -> str:
    """Projected wall time and device-hours of the whole run, from the measured rates."""
    lines = [f"measured on a sample ({measured.device}): harvest {measured.harvest_tokens_per_second:,.0f} tokens/s"]
    total = plan.harvest_tokens / measured.harvest_tokens_per_second
    lines.append(f"  harvest: {duration(total)} for {plan.harvest_tokens:,} tokens")
    per_unit = {"explain": measured.explain_seconds_per_call, "simulate": measured.simulate_seconds_per_excerpt}
    for stage in plan.stages:
        rate = per_unit.get(stage.stage)
        if rate is None:
            continue
        units = stage.calls if stage.stage == "simulate" else stage.units
        seconds = units * rate
        total += seconds
        what = "excerpts" if stage.stage == "simulate" else "neurons"
        lines.append(f"  {stage.stage}: {rate:.3g} s per {what[:-1]} -> {duration(seconds)} for {units:,} {what}")
    hours = total / 3600
    device = "GPU" if measured.device.startswith("cuda") else "CPU"
    lines.append(
        f"projected wall time on one such worker: {duration(total)} ({hours:,.1f} {device}-hours); "
        f"with N workers (--shard i/N) about 1/N of it"
    )
    lines.append("revise and ablate are not in the sample; the back ends' own servers are not counted in device-hours")
    return "\n".join(lines)
