"""CLI helpers for the explain, simulate and score stages: back-end building, progress lines, tables.

Part of the CLI layer (the only layer that prints); cli.py holds the typer commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuron_explainer import cli_view
from neuron_explainer.cli_view import _report, _stage_progress, console, out
from neuron_explainer.config import RunConfig
from neuron_explainer.errors import ConfigError


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
            if cli_view.VIEW is not None:
                cli_view.VIEW.backends.append(backend)  # count its tokens (the cache below passes hits through free)
            if self.cfg.llm_cache:
                backend = CachedBackend(
                    backend, Path(self.cfg.out) / "cache" / "llm.sqlite", cache_logprobs=self.cfg.cache_logprobs
                )
            self.built[spec] = backend
        return self.built[spec]


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
    _report(report, cfg)


def do_simulate(cfg: RunConfig, backends: Backends) -> None:
    """Run the simulate stage over every explanation (of `cfg.neurons` if set) and report."""
    import asyncio

    from neuron_explainer.pipeline import run_simulate
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.selection import neurons_for_run

    sim = cfg.simulate
    template = load_simulator_template(cfg.prompts_dir, sim.prompt_version)
    try:
        next_token = load_simulator_template(cfg.prompts_dir, sim.next_token_prompt_version)
    except ConfigError:
        next_token = None  # only an error if a next-token explanation needs it (run_simulate says so)
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
            calibrate=sim.calibrate,
            next_token_template=next_token,
            max_concurrent=cfg.max_concurrent,
            progress=_stage_progress,
        )
    )
    _report(report, cfg)


def _subject(cfg: RunConfig, manifest: dict[str, Any], purpose: str) -> Any:
    from neuron_explainer.activations.models import load_subject_model

    harvest = manifest["harvest"]["config"]
    console.print(f"loading subject model {harvest['model']} for {purpose} ...")
    return load_subject_model(
        harvest["model"],
        revision=harvest.get("model_revision"),
        dtype=harvest.get("dtype", "float32"),
        device=cfg.subject_device,
    )


def do_baselines(cfg: RunConfig) -> None:
    """Compute the weight and lookup baselines of `cfg.neurons` and report."""
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.baselines_stage import run_baselines
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.selection import SPEC_HELP, neurons_for_run

    if not cfg.neurons:
        raise ConfigError(f"no neurons selected: pass --neurons ({SPEC_HELP}) or set `neurons` in the config")
    store = RunStore(cfg.out)
    manifest = store.require_harvest()
    subject = _subject(cfg, manifest, "baselines")
    b = cfg.baselines
    report = run_baselines(
        store,
        subject.model,
        subject.tokenizer,
        ActivationSource(subject.model, subject.hook_point),
        neurons_for_run(cfg.neurons, manifest),
        kinds=b.kinds,
        bos_token_id=getattr(subject.tokenizer, "bos_token_id", None),
        held_out_excerpts=b.held_out_excerpts,
        batch_size=b.batch_size,
        progress=_stage_progress,
    )
    _report(report, cfg)


def do_revise(cfg: RunConfig, backends: Backends) -> None:
    """Revise the explanations of `cfg.neurons` (or all) and print the revision scores."""
    import asyncio

    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.explain.revision import load_revision_templates
    from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.revise_stage import SubjectRunner, run_revise
    from neuron_explainer.selection import neurons_for_run

    store = RunStore(cfg.out)
    manifest = store.require_harvest()
    only = set(neurons_for_run(cfg.neurons, manifest)) if cfg.neurons else None
    subject = _subject(cfg, manifest, "revision")
    bos = getattr(subject.tokenizer, "bos_token_id", None) if manifest["harvest"].get("prepend_bos") else None
    runner = SubjectRunner(
        ActivationSource(subject.model, subject.hook_point),
        subject.tokenizer,
        bos_token_id=bos,
        max_tokens=int(manifest["harvest"]["excerpt_len"]),
    )
    e, sim, r = cfg.explain, cfg.simulate, cfg.revise
    report = asyncio.run(
        run_revise(
            store,
            backends.get(e.explainer),
            backends.get(sim.simulator),
            runner,
            load_explainer_template(cfg.prompts_dir, e.prompt_version),
            load_simulator_template(cfg.prompts_dir, sim.prompt_version),
            load_revision_templates(cfg.prompts_dir, r.prompt_version),
            neurons=only,
            arms=r.arms,
            method=sim.method,
            max_level=sim.max_level,
            top_k=sim.top_k,
            temperature=e.temperature,
            max_tokens=e.max_tokens,
            sentence_tokens=r.sentence_tokens,
            seed=e.seed,
            progress=_stage_progress,
        )
    )
    _report(report, cfg)
    print_revision(cfg)


def print_revision(cfg: RunConfig) -> None:
    """Revision scores per original explanation and arm, and the false-positive rate of the test sentences."""
    from rich.table import Table

    from neuron_explainer.pipeline import read_table
    from neuron_explainer.records.schema import REVISION_SCORES, REVISION_SENTENCES
    from neuron_explainer.records.store import RunStore

    store = RunStore(cfg.out)
    scores = read_table(store, "revision_scores", REVISION_SCORES)
    sentences = read_table(store, "revision_sentences", REVISION_SENTENCES)
    if scores.empty:
        return
    table = Table(title=f"revision in {cfg.out} (pooled correlation)")
    for col in ("neuron", "arm", "explanation", "original set", "extended set"):
        table.add_column(col, justify="right" if "set" in col else "left")
    wide = scores.pivot(
        index=["layer", "neuron", "original_explanation_id", "arm", "explanation"],
        columns="scorer",
        values="correlation",
    ).reset_index()

    def fmt(v: float) -> str:
        return "undefined" if v != v else f"{v:.3f}"

    for row in wide.sort_values(["layer", "neuron", "original_explanation_id"]).itertuples():
        table.add_row(
            f"{row.layer}:{row.neuron}", row.arm, row.explanation, fmt(row.original_set), fmt(row.extended_set)
        )
    out.print(table)
    fp = sentences.false_positive
    out.print(
        f"test sentences: {len(fp)}, false positives: {int(fp.sum())} ({fp.mean():.0%}); explanations with at "
        f"least one: {int(sentences.groupby('explanation_id').false_positive.any().sum())} of "
        f"{sentences.explanation_id.nunique()}",
        highlight=False,
    )


def do_ablate(cfg: RunConfig) -> None:
    """Ablation-score every calibrated simulation (of `cfg.neurons` if set) with the harvested subject model."""
    from neuron_explainer.ablate_stage import run_ablate
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.selection import neurons_for_run

    store = RunStore(cfg.out)
    manifest = store.require_harvest()
    only = set(neurons_for_run(cfg.neurons, manifest)) if cfg.neurons else None
    subject = _subject(cfg, manifest, "ablation")
    report = run_ablate(
        store,
        subject.model,
        ActivationSource(subject.model, subject.hook_point),
        bos_token_id=getattr(subject.tokenizer, "bos_token_id", None),
        neurons=only,
        batch_rows=cfg.ablate.batch_rows,
        max_excerpts=cfg.ablate.max_excerpts,
        progress=_stage_progress,
    )
    _report(report, cfg)
    d = report.details
    if d.get("units"):
        console.print(
            f"ablate: {d['clean_excerpt_forwards'] / d['units']:.1f} clean + "
            f"{d['replaced_excerpt_forwards'] / d['units']:.1f} replaced excerpt forwards per explanation",
            highlight=False,
        )


def do_score(cfg: RunConfig) -> None:
    """Correlation-score what is simulated and not yet scored."""
    from neuron_explainer.pipeline import run_score
    from neuron_explainer.records.store import RunStore

    _report(run_score(RunStore(cfg.out)), cfg)


def print_scores(cfg: RunConfig) -> None:
    """The score table: correlation scores, plus ablation scores where any exist."""
    from rich.table import Table

    from neuron_explainer.pipeline import score_summary
    from neuron_explainer.records.store import RunStore

    summary = score_summary(RunStore(cfg.out))
    ablation = summary[["ablation_top_and_random", "ablation_random_only"]].notna().any().any()
    table = Table(
        title=f"explanation scores in {cfg.out} (valid split; correlation" + (", ablation)" if ablation else ")")
    )
    cols = ["neuron", "explanation", "top-and-random", "random-only"]
    cols += ["ablation top-and-random", "ablation random-only"] if ablation else []
    for col in cols:
        table.add_column(col, justify="right" if "random" in col else "left")

    def fmt(v: float) -> str:
        return "undefined" if v != v else f"{v:.3f}"

    for row in summary.itertuples():
        cells = [f"{row.layer}:{row.neuron}", row.explanation, fmt(row.top_and_random), fmt(row.random_only)]
        if ablation:
            cells += [fmt(row.ablation_top_and_random), fmt(row.ablation_random_only)]
        table.add_row(*cells)
    out.print(table)


def do_puzzles(
    cfg: RunConfig,
    backends: Backends,
    *,
    puzzles_file: str | None,
    out_dir: str,
    explainer: str,
    revise: bool,
    judge: str | None,
    baselines: bool = False,
) -> dict[str, Any]:
    """Run the scorer and explainer puzzle benchmarks, write the results, print the summary."""
    import asyncio

    from neuron_explainer.explain.revision import load_revision_templates
    from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
    from neuron_explainer.puzzles.bench import (
        BASELINE_EXPLAINERS,
        ExplainerSetup,
        Simulator,
        explainer_benchmark,
        scorer_benchmark,
        summarize,
        write_results,
    )
    from neuron_explainer.puzzles.puzzle import load_puzzles

    puzzles = load_puzzles(puzzles_file)
    s, e = cfg.simulate, cfg.explain
    sim = Simulator(
        backends.get(s.simulator),
        load_simulator_template(cfg.prompts_dir, s.prompt_version),
        method=s.method,
        max_level=s.max_level,
        top_k=s.top_k,
    )
    setup = ExplainerSetup(explainer, temperature=e.temperature, max_tokens=e.max_tokens, seed=e.seed)
    if explainer not in BASELINE_EXPLAINERS:
        setup.backend = backends.get(explainer)
        setup.template = load_explainer_template(cfg.prompts_dir, e.prompt_version)
        setup.revision = load_revision_templates(cfg.prompts_dir, cfg.revise.prompt_version)
    if judge:
        setup.judge = backends.get(judge)
    console.print(f"{len(puzzles)} puzzles; simulator {s.simulator}; explainer {explainer}", highlight=False)

    async def both() -> tuple[list[dict], list[dict]]:
        scorer = await scorer_benchmark(puzzles, sim, _stage_progress)
        explained = await explainer_benchmark(
            puzzles, sim, setup, revise=revise and setup.backend is not None, progress=_stage_progress
        )
        for name in BASELINE_EXPLAINERS if baselines and explainer not in BASELINE_EXPLAINERS else ():
            explained += await explainer_benchmark(
                puzzles, sim, ExplainerSetup(name), revise=False, progress=_stage_progress
            )
        return scorer, explained

    scorer_rows, explainer_rows = asyncio.run(both())
    summary = summarize(scorer_rows, explainer_rows)
    meta = {
        "puzzle_file": str(puzzles_file or "puzzles/puzzles_v1.yaml"),
        "simulator": s.simulator,
        "explainer": explainer,
        "explainer_prompt": e.prompt_version if setup.backend is not None else "baseline",
        "judge": judge or "none",
    }
    write_results(out_dir, scorer_rows, explainer_rows, summary, meta)
    out.print((Path(out_dir) / "report.md").read_text().split("| puzzle |")[0].strip(), highlight=False)
    out.print(f"results in {out_dir} (scorer/explainer .json and .parquet, summary.json, report.md)")
    return summary
