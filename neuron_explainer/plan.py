"""`run --dry-run`: what a config will do, computed from the config alone (no model weights, no LLM calls).

Counts are exact given the config; token counts render the real prompt templates with placeholder
excerpts of `excerpt_len` tokens and count 4 characters per token (no tokenizer of a remote model is
available offline); times assume the throughputs in `plan` of the config, which a user sets from a
measured pilot. Prices come from `prices`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuron_explainer.config import HarvestConfig, RunConfig
from neuron_explainer.datatypes import N_BUCKETS
from neuron_explainer.errors import ConfigError, ModelError

CHARS_PER_TOKEN = 4
N_VALID = 10
"""Simulated excerpts per explanation for scoring (5 top + 5 random, valid split)."""
N_CALIBRATION = 10
"""Simulated excerpts per explanation for calibration (5 top + 5 random, calibration split)."""
N_SENTENCES = 10


@dataclass
class StagePlan:
    """One stage's work."""

    stage: str
    units: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    backend: str | None = None
    note: str = ""


@dataclass
class RunPlan:
    """The whole plan."""

    n_layers: int
    n_neurons: int
    shape_source: str
    selected: int
    harvest_tokens: int
    harvest_bytes: int
    stages: list[StagePlan] = field(default_factory=list)
    stage_bytes: int = 0


@dataclass(frozen=True)
class HarvestPlan:
    """What a harvest is about to do; shown before it starts."""

    layers: list[int]
    n_neurons: int
    n_excerpts: int
    excerpt_len: int
    estimated_bytes: int
    resumed_from: int
    """Excerpt id the harvest resumes at (0 for a fresh start)."""

    def describe(self, source: str, out: Path) -> str:
        """The lines printed before a harvest starts."""
        return (
            f"harvesting {len(self.layers)} layer(s) x {self.n_neurons} neurons over {self.n_excerpts} excerpts of "
            f"{self.excerpt_len} tokens from {source}\nestimated disk use: {fmt_bytes(self.estimated_bytes)} in {out}"
            + (f"\nresuming at excerpt {self.resumed_from}" if self.resumed_from else "")
        )


def fmt_bytes(n: float) -> str:
    """A byte count with a unit: 267.1 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def estimate_disk_bytes(cfg: HarvestConfig, n_layers: int, n_neurons: int) -> int:
    """Rough on-disk size of the harvest output (compressed records + stats + excerpts)."""
    per_value = 2 if cfg.record_dtype == "float16" else 4
    records = cfg.top_k + cfg.random_k + N_BUCKETS * cfg.quantile_k
    per_neuron = records * (cfg.excerpt_len * per_value * 0.8 + 12) + 130
    excerpts = cfg.n_excerpts * cfg.excerpt_len * 9
    return int(n_layers * n_neurons * per_neuron + excerpts)


def model_shape(cfg: RunConfig) -> tuple[int, int, str]:
    """(layers, neurons per layer, where that came from).

    From the model's config if it is readable offline, else from `model_shape` in the run config.

    Raises:
        ConfigError: neither is available, or they disagree.
    """
    from neuron_explainer.activations.models import read_model_config

    from_config = None
    try:
        c = read_model_config(cfg.harvest.model, cfg.harvest.model_revision)
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        hidden = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.n_embd
        from_config = (int(layers), int(hidden))  # type: ignore[arg-type]  # None -> TypeError, caught
    except (ModelError, AttributeError, TypeError):
        from_config = None
    given = (cfg.model_shape.n_layers, cfg.model_shape.n_neurons) if cfg.model_shape else None
    if from_config and given and from_config != given:
        raise ConfigError(f"model_shape {given} disagrees with the model's own config {from_config}")
    if from_config:
        return (*from_config, "the model's config")
    if given:
        return (*given, "model_shape in the run config (the model's config is not available offline)")
    raise ConfigError(
        f"cannot read the config of {cfg.harvest.model!r} offline: set model_shape: {{n_layers: ..., n_neurons: ...}}"
    )


def duration(seconds: float) -> str:
    """A readable duration: 45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def _placeholder_records(n: int, length: int) -> list[Any]:
    from neuron_explainer.datatypes import ActivationRecord

    return [
        ActivationRecord(tokens=[" word"] * length, activations=[float(i % 7 == 0) for i in range(length)])
        for _ in range(n)
    ]


def prompt_tokens(cfg: RunConfig) -> tuple[int, int]:
    """Estimated prompt tokens of one explanation request and one simulation request (real templates)."""
    from neuron_explainer.explain.explainer import build_explainer_messages
    from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
    from neuron_explainer.simulate.parse import build_all_at_once_prompt

    length = cfg.harvest.excerpt_len
    template = load_explainer_template(cfg.prompts_dir, cfg.explain.prompt_version)
    explain = sum(_tokens(m.content) for m in build_explainer_messages(template, _placeholder_records(5, length)))
    sim_template = load_simulator_template(cfg.prompts_dir, cfg.simulate.prompt_version)
    simulate = _tokens(build_all_at_once_prompt(sim_template, "a placeholder explanation", [" word"] * length).text)
    return explain, simulate


def _llm_stages(cfg: RunConfig, selected: int, explain_prompt: int, sim_prompt: int) -> list[StagePlan]:
    e, s, length = cfg.explain, cfg.simulate, cfg.harvest.excerpt_len
    explanations = selected * e.n_samples
    per_expl = N_VALID + (N_CALIBRATION if s.calibrate else 0)
    calls = explanations * per_expl * (length if s.method == "one_at_a_time" else 1)
    stages = [
        StagePlan(
            "explain",
            selected,
            selected,
            selected * explain_prompt,
            explanations * e.max_tokens,
            e.explainer,
            "completion tokens are the max_tokens bound",
        ),
        StagePlan(
            "simulate",
            explanations,
            calls,
            calls * sim_prompt,
            0 if s.method != "logprob_free" else calls * length * 3,
            s.simulator,
            f"{per_expl} excerpts per explanation, method {s.method}",
        ),
    ]
    if cfg.revise.enabled:
        arms = len(cfg.revise.arms)
        sims = explanations * (arms * (N_VALID + N_SENTENCES // 2) + N_SENTENCES // 2)
        stages.append(
            StagePlan(
                "revise",
                explanations,
                explanations * (1 + arms) + sims,
                explanations * (1 + arms) * explain_prompt + sims * sim_prompt,
                explanations * (cfg.revise.sentence_tokens + arms * e.max_tokens),
                e.explainer,
                f"{arms} arm(s); {N_SENTENCES} test sentences each",
            )
        )
    if cfg.ablate.enabled:
        stages.append(
            StagePlan(
                "ablate",
                explanations,
                0,
                0,
                0,
                None,
                f"subject-model forwards: up to {N_VALID} clean + {2 * N_VALID} replaced excerpts per "
                f"explanation = {explanations * 3 * N_VALID:,} excerpt forwards at most",
            )
        )
    return stages


def make_plan(cfg: RunConfig, n_layers: int, n_neurons: int, shape_source: str) -> RunPlan:
    """The plan for `cfg` on a model of n_layers x n_neurons."""
    from neuron_explainer.selection import resolve_neurons

    h = cfg.harvest
    layers = sorted(h.layers) if h.layers is not None else list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: the model has layers 0..{n_layers - 1}")
    selected = len(resolve_neurons(cfg.neurons, layers, n_neurons, h.seed)) if cfg.neurons else 0
    plan = RunPlan(
        n_layers=n_layers,
        n_neurons=n_neurons,
        shape_source=shape_source,
        selected=selected,
        harvest_tokens=h.n_excerpts * h.excerpt_len,
        harvest_bytes=estimate_disk_bytes(h, len(layers), n_neurons),
    )
    if selected:
        plan.stages = _llm_stages(cfg, selected, *prompt_tokens(cfg))
        per_expl = N_VALID + (N_CALIBRATION if cfg.simulate.calibrate else 0)
        explanations = selected * cfg.explain.n_samples
        plan.stage_bytes = explanations * per_expl * h.excerpt_len * 4 + explanations * 200
    return plan


def format_plan(cfg: RunConfig, plan: RunPlan) -> str:
    """The plan as printed by `run --dry-run`."""
    p = cfg.plan
    lines = [
        f"model {cfg.harvest.model}: {plan.n_layers} layers x {plan.n_neurons:,} neurons ({plan.shape_source})",
        f"harvest: {cfg.harvest.n_excerpts:,} excerpts x {cfg.harvest.excerpt_len} tokens = {plan.harvest_tokens:,} "
        f"tokens; about {plan.harvest_bytes / 1e9:.2f} GB; "
        f"about {duration(plan.harvest_tokens / p.harvest_tokens_per_second)} "
        f"at {p.harvest_tokens_per_second:,.0f} tokens/s",
        f"neurons to explain: {plan.selected:,}"
        + (f" (spec {cfg.neurons!r})" if cfg.neurons else " (none: harvest only)"),
    ]
    total_cost, priced = 0.0, False
    for st in plan.stages:
        line = (
            f"{st.stage}: {st.units:,} units, {st.calls:,} LLM calls, "
            f"~{st.prompt_tokens:,} prompt + ~{st.completion_tokens:,} completion tokens"
        )
        if st.calls:
            line += f", about {duration(st.calls / p.llm_calls_per_second)} at {p.llm_calls_per_second:g} calls/s"
        price = cfg.prices.get(st.backend or "")
        if price is not None:
            cost = price.cost(st.prompt_tokens, st.completion_tokens)
            total_cost += cost
            priced = True
            line += f", about ${cost:,.2f}"
        lines.append(line + (f" [{st.note}]" if st.note else ""))
    lines.append(f"stage tables: about {plan.stage_bytes / 1e9:.2f} GB")
    if priced:
        lines.append(f"estimated cost: ${total_cost:,.2f} (prices from the config)")
    lines.append(f"token counts: prompts rendered with placeholder excerpts, {CHARS_PER_TOKEN} characters per token")
    return "\n".join(lines)
