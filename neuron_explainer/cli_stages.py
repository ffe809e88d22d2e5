"""CLI helpers for the explain, simulate and score stages: back-end building, progress lines, tables.

Part of the CLI layer (the only layer that prints); cli.py holds the typer commands.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from neuron_explainer.config import RunConfig
from neuron_explainer.errors import ConfigError

console = Console(stderr=True)
out = Console(soft_wrap=True)


class Backends:
    """Builds each back-end spec once (explainer and simulator may be the same local model)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.built: dict[str, Any] = {}

    def get(self, spec: str) -> Any:
        """The back end for `spec`, built (and wrapped in the response cache) on first use."""
        from pathlib import Path

        from neuron_explainer.llm.cache import CachedBackend
        from neuron_explainer.llm.registry import build_backend

        if spec not in self.built:
            console.print(f"loading {spec} ...")
            backend = build_backend(spec, device=self.cfg.llm_device)
            if self.cfg.llm_cache:
                backend = CachedBackend(
                    backend, Path(self.cfg.out) / "cache" / "llm.sqlite", cache_logprobs=self.cfg.cache_logprobs
                )
            self.built[spec] = backend
        return self.built[spec]


def _stage_progress(stage: str, done: int, total: int) -> None:
    console.print(f"{stage}: {done}/{total}", highlight=False)


def _report(report: Any) -> None:
    console.print(
        f"{report.stage}: {report.completed} done, {report.skipped_done} already done, {report.failed} failed",
        highlight=False,
    )
    for line in report.failures[:10]:
        console.print(f"  [yellow]failure[/] {line}", highlight=False)


def do_explain(cfg: RunConfig, backends: Backends) -> None:
    """Run the explain stage for `cfg.neurons` and report."""
    import asyncio

    from neuron_explainer.pipeline import run_explain
    from neuron_explainer.prompts.templates import load_explainer_template
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.selection import SPEC_HELP, neurons_for_run

    if not cfg.neurons:
        raise ConfigError(f"no neurons selected: pass --neurons ({SPEC_HELP}) or set `neurons` in the config")
    e = cfg.explain
    template = load_explainer_template(cfg.prompts_dir, e.prompt_version)
    store = RunStore(cfg.out)
    report = asyncio.run(
        run_explain(
            store,
            neurons_for_run(cfg.neurons, store.require_harvest()),
            backends.get(e.explainer),
            template,
            n_samples=e.n_samples,
            temperature=e.temperature,
            max_tokens=e.max_tokens,
            seed=e.seed,
            max_concurrent=cfg.max_concurrent,
            progress=_stage_progress,
        )
    )
    _report(report)


def do_simulate(cfg: RunConfig, backends: Backends) -> None:
    """Run the simulate stage over every explanation (of `cfg.neurons` if set) and report."""
    import asyncio

    from neuron_explainer.pipeline import run_simulate
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.selection import neurons_for_run

    sim = cfg.simulate
    template = load_simulator_template(cfg.prompts_dir, sim.prompt_version)
    store = RunStore(cfg.out)
    only = set(neurons_for_run(cfg.neurons, store.require_harvest())) if cfg.neurons else None
    report = asyncio.run(
        run_simulate(
            store,
            backends.get(sim.simulator),
            template,
            method=sim.method,
            max_level=sim.max_level,
            top_k=sim.top_k,
            neurons=only,
            max_concurrent=cfg.max_concurrent,
            progress=_stage_progress,
        )
    )
    _report(report)


def do_score(cfg: RunConfig) -> None:
    """Score what is simulated and print the table."""
    from rich.table import Table

    from neuron_explainer.pipeline import run_score, score_summary
    from neuron_explainer.records.store import RunStore

    store = RunStore(cfg.out)
    _report(run_score(store))
    summary = score_summary(store)
    table = Table(title=f"explanation scores in {cfg.out} (pooled correlation, valid split)")
    for col in ("neuron", "explanation", "top-and-random", "random-only"):
        table.add_column(col, justify="right" if "random" in col else "left")

    def fmt(v: float) -> str:
        return "undefined" if v != v else f"{v:.3f}"

    for row in summary.itertuples():
        table.add_row(f"{row.layer}:{row.neuron}", row.explanation, fmt(row.top_and_random), fmt(row.random_only))
    out.print(table)
