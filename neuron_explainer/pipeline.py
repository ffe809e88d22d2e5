"""Explain, simulate and score stages over a harvested run: per-unit work, resumable, bounded concurrency.

The unit of work is a neuron (explain) or an explanation (simulate, score). Each stage computes
`todo = planned - done` from its Parquet table, runs the todo units with at most `max_concurrent` in
flight, and writes results in atomic part files as it goes, so a crash loses at most the units in flight
and a rerun makes no new LLM calls for finished units. Failures are stored and retried on the next run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from neuron_explainer.datatypes import ActivationRecord, Failure, NeuronRecord
from neuron_explainer.errors import ConfigError, NeuronExplainerError, RunDirError
from neuron_explainer.explain.explainer import explain
from neuron_explainer.llm.base import Capability, LLMBackend, require
from neuron_explainer.prompts.templates import ExplainerTemplate, SimulatorTemplate
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.schema import ABLATION_SCORES, EXPLANATIONS, FAILURES, SCORES, SIMULATIONS
from neuron_explainer.records.splits import random_split, top_split
from neuron_explainer.records.store import RunStore, write_table_atomic
from neuron_explainer.records.views import apply_view
from neuron_explainer.scoring.calibration import CalibrationError, fit_calibration
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import NEEDS, simulate

N_EXPLAIN_RECORDS = 5
N_SCORE_TOP = 5
N_SCORE_RANDOM = 5
ProgressFn = Callable[[str, int, int], None]
"""(stage, units done, units planned)."""


def explanation_id(
    layer: int, neuron: int, explainer: str, prompt_version: str, sample_idx: int, round_: int = 1
) -> str:
    """Stable id of one explanation: a hash of what defines it."""
    key = json.dumps([layer, neuron, explainer, prompt_version, sample_idx, round_])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def params_hash(params: dict[str, Any]) -> str:
    """Short hash of the settings that shape a stage's output."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def read_table(store: RunStore, name: str, schema: pa.Schema) -> pd.DataFrame:
    """All part files of a stage table as one DataFrame (empty with the schema's columns if none)."""
    path = store.root / name
    parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else []
    if not parts:
        return schema.empty_table().to_pandas()
    try:
        return ds.dataset([str(p) for p in parts], schema=schema, format="parquet").to_table().to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise RunDirError(f"a part file under {path} is corrupt or unreadable: {e}") from e


def only_neurons(table: pd.DataFrame, neurons: set[tuple[int, int]] | None) -> pd.DataFrame:
    """The rows of a (layer, neuron)-keyed table for the given neurons (all rows when neurons is None)."""
    if neurons is None:
        return table
    return table[[(a, b) in neurons for a, b in zip(table.layer, table.neuron, strict=True)]]


def write_part(store: RunStore, name: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Append rows as a new atomic part file (unique name: several writers may share a run)."""
    if rows:
        path = store.root / name / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        write_table_atomic(pa.Table.from_pylist(rows, schema=schema), path)


@dataclass
class StageReport:
    """What one stage run did."""

    stage: str
    planned: int = 0
    skipped_done: int = 0
    completed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Stage-specific counts (e.g. forward passes of the ablate stage)."""


async def _run_units(
    units: Sequence[Any],
    work: Callable[[Any], Awaitable[tuple[list[dict], list[dict]]]],
    store: RunStore,
    table: str,
    schema: pa.Schema,
    report: StageReport,
    max_concurrent: int,
    flush_every: int,
    progress: ProgressFn | None,
) -> None:
    """Run units with bounded concurrency, writing results and failures every `flush_every` units."""
    sem = asyncio.Semaphore(max_concurrent)
    rows: list[dict] = []
    fails: list[dict] = []
    done = 0

    async def guarded(unit: Any) -> tuple[list[dict], list[dict]]:
        async with sem:
            return await work(unit)

    for start in range(0, len(units), flush_every):
        chunk = units[start : start + flush_every]
        for ok_rows, fail_rows in await asyncio.gather(*(guarded(u) for u in chunk)):
            rows += ok_rows
            fails += fail_rows
            report.completed += bool(ok_rows) and not fail_rows
            report.failed += bool(fail_rows)
            report.failures += [f"{f['layer']}:{f['neuron']} {f['kind']}: {f['message']}" for f in fail_rows]
        write_part(store, table, rows, schema)
        write_part(store, "failures", fails, FAILURES)
        rows, fails = [], []
        done += len(chunk)
        if progress:
            progress(report.stage, done, len(units))


def _failure_row(stage: str, layer: int, neuron: int, eid: str | None, failure: Failure) -> dict[str, Any]:
    return {
        "stage": stage,
        "layer": layer,
        "neuron": neuron,
        "explanation_id": eid,
        "kind": failure.kind,
        "message": failure.message,
        "raw": failure.raw,
    }


async def run_explain(
    store: RunStore,
    neurons: Iterable[tuple[int, int]],
    backend: LLMBackend,
    template: ExplainerTemplate,
    *,
    n_samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 60,
    seed: int | None = 0,
    max_concurrent: int = 4,
    progress: ProgressFn | None = None,
) -> StageReport:
    """Explain each neuron from its train-split top records; skips neurons already explained."""
    require(backend, Capability.GENERATE, "explain")
    store.require_harvest()
    explainer = f"{backend.name}:{backend.model}"
    phash = params_hash({"n": n_samples, "temperature": temperature, "max_tokens": max_tokens, "seed": seed})
    done = read_table(store, "explanations", EXPLANATIONS)
    done_keys = set(zip(done.layer, done.neuron, done.explainer, done.prompt_version, strict=True))
    neurons = list(dict.fromkeys(neurons))
    report = StageReport("explain", planned=len(neurons))
    todo = [(layer, n) for layer, n in neurons if (layer, n, explainer, template.version) not in done_keys]
    report.skipped_done = len(neurons) - len(todo)

    async def work(unit: tuple[int, int]) -> tuple[list[dict], list[dict]]:
        layer, neuron = unit
        records = top_split(load_neuron_record(store.root, layer, neuron).most_positive_activation_records, "train")
        results = await explain(
            [apply_view(r, template.view) for r in records[:N_EXPLAIN_RECORDS]],
            backend,
            template,
            n=n_samples,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )
        rows, fails = [], []
        for i, result in enumerate(results):
            eid = explanation_id(layer, neuron, explainer, template.version, i)
            if isinstance(result, Failure):
                fails.append(_failure_row("explain", layer, neuron, eid, result))
            else:
                rows.append(
                    {
                        "layer": layer,
                        "neuron": neuron,
                        "explanation_id": eid,
                        "explanation": result,
                        "explainer": explainer,
                        "prompt_version": template.version,
                        "view": template.view,
                        "sample_idx": i,
                        "round": 1,
                        "params_hash": phash,
                    }
                )
        if fails:  # a neuron is done only when all its samples are: keep the unit whole for the retry
            return [], fails
        return rows, []

    await _run_units(todo, work, store, "explanations", EXPLANATIONS, report, max_concurrent, 8, progress)
    return report


def scoring_records(record: NeuronRecord, split: str = "valid") -> list[tuple[str, ActivationRecord]]:
    """The records of one split that are simulated: 5 top and 5 random (valid: scored; calibration: fitted)."""
    top = top_split(record.most_positive_activation_records, split)[:N_SCORE_TOP]
    rnd = random_split(record.random_sample, split)[:N_SCORE_RANDOM]
    return [("top", r) for r in top] + [("random", r) for r in rnd]


def calibration_columns(
    calibrate: bool, records: list[tuple[str, str, ActivationRecord]], sims: list[list[float]]
) -> dict[str, Any]:
    """The calibration columns of one explanation's simulation rows, from its (split, kind, record) list."""
    if not calibrate:
        return {"calibration_slope": None, "calibration_intercept": None, "calibration_error": None}
    pairs = [
        (rec.activations, sim) for (split, _, rec), sim in zip(records, sims, strict=True) if split == "calibration"
    ]
    try:
        cal = fit_calibration([a for a, _ in pairs], [s for _, s in pairs])
    except CalibrationError as e:
        return {"calibration_slope": None, "calibration_intercept": None, "calibration_error": str(e)}
    return {"calibration_slope": cal.slope, "calibration_intercept": cal.intercept, "calibration_error": None}


async def run_simulate(
    store: RunStore,
    backend: LLMBackend,
    template: SimulatorTemplate,
    *,
    method: str = "all_at_once",
    max_level: int | None = None,
    top_k: int = 20,
    max_concurrent: int = 1,
    neurons: set[tuple[int, int]] | None = None,
    calibrate: bool = True,
    next_token_template: SimulatorTemplate | None = None,
    progress: ProgressFn | None = None,
) -> StageReport:
    """Simulate every explanation on its neuron's scoring (valid) records; skips those already simulated.

    With `calibrate`, also simulate the calibration records and fit the linear calibration ablation needs.
    Explanations written in the next-token view are simulated with `next_token_template`, on records in
    that view.
    """
    if method not in NEEDS:
        raise ConfigError(f"unknown simulation method {method!r}; choose one of {', '.join(NEEDS)}")
    require(backend, NEEDS[method], f"{method.replace('_', '-')} simulation")
    store.require_harvest()
    explanations = read_table(store, "explanations", EXPLANATIONS)
    explanations = explanations[~explanations.explainer.str.startswith("baseline:")]  # they carry their own
    explanations = only_neurons(explanations, neurons)
    simulator = f"{backend.name}:{backend.model}"
    done = read_table(store, "simulations", SIMULATIONS)
    done_ids = set(done.explanation_id[done.simulator == simulator])
    units = explanations.to_dict("records")
    report = StageReport("simulate", planned=len(units))
    todo = [u for u in units if u["explanation_id"] not in done_ids]
    report.skipped_done = len(units) - len(todo)
    templates = {template.view: template}
    if next_token_template is not None:
        templates.setdefault(next_token_template.view, next_token_template)
    views = {u["view"] for u in todo}
    if views - set(templates):
        raise ConfigError(
            f"explanations in the {sorted(views - set(templates))} view need a simulator template in that view "
            "(simulate.next_token_prompt_version)"
        )
    if views - {"current_token"} and method != "all_at_once":
        raise ConfigError("next-token explanations are simulated all at once only")

    async def work(unit: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        layer, neuron, eid = int(unit["layer"]), int(unit["neuron"]), unit["explanation_id"]
        rows = []
        record = load_neuron_record(store.root, layer, neuron)
        splits = ("valid", "calibration") if calibrate else ("valid",)
        view = unit["view"]
        tpl = templates[view]
        todo = [
            (split, kind, apply_view(rec, view)) for split in splits for kind, rec in scoring_records(record, split)
        ]
        try:
            sims = []
            for split, kind, rec in todo:
                sim = await simulate(
                    method, unit["explanation"], rec.tokens, backend, tpl, max_level=max_level, top_k=top_k
                )
                sims.append(list(sim.expected_values))
                rows.append(
                    {
                        "layer": layer,
                        "neuron": neuron,
                        "explanation_id": eid,
                        "split": split,
                        "record_kind": kind,
                        "excerpt_id": rec.excerpt_id,
                        "expected_values": sim.expected_values,
                        "max_level": sim.max_level,
                        "simulator": simulator,
                        "prompt_version": sim.prompt_version,
                    }
                )
            cal = calibration_columns(calibrate, todo, sims)
            rows = [{**row, **cal} for row in rows]
        except SimulationParseError as e:  # the whole unit fails: a partial simulation set is never scored
            return [], [
                _failure_row("simulate", layer, neuron, eid, Failure(stage="simulate", kind="parse", message=str(e)))
            ]
        except NeuronExplainerError as e:
            return [], [
                _failure_row("simulate", layer, neuron, eid, Failure(stage="simulate", kind="backend", message=str(e)))
            ]
        return rows, []

    await _run_units(todo, work, store, "simulations", SIMULATIONS, report, max_concurrent, 4, progress)
    return report


SCORERS = {"top_and_random": ("top", "random"), "random_only": ("random",)}
"""scorer -> record kinds it pools over."""


def run_score(store: RunStore, *, progress: ProgressFn | None = None) -> StageReport:
    """Correlation scores (top-and-random, random-only) of every simulated explanation not yet scored."""
    store.require_harvest()
    sims = read_table(store, "simulations", SIMULATIONS)
    sims = sims[sims.split == "valid"]
    done = read_table(store, "scores", SCORES)
    done_keys = set(zip(done.explanation_id, done.simulator, strict=True))
    groups = [(key, g) for key, g in sims.groupby(["explanation_id", "simulator"]) if key not in done_keys]
    report = StageReport("score", planned=len(groups) + len(done_keys), skipped_done=len(done_keys))
    rows = []
    expl = read_table(store, "explanations", EXPLANATIONS)
    views = dict(zip(expl.explanation_id, expl.view, strict=True))
    for (eid, simulator), g in groups:
        layer, neuron = int(g.layer.iloc[0]), int(g.neuron.iloc[0])
        view = views.get(eid, "current_token")
        truth = {
            (k, r.excerpt_id): apply_view(r, view).activations
            for k, r in scoring_records(load_neuron_record(store.root, layer, neuron))
        }
        for scorer, kinds in SCORERS.items():
            sel = g[g.record_kind.isin(kinds)]
            score = score_correlation(
                [truth[(k, int(e))] for k, e in zip(sel.record_kind, sel.excerpt_id, strict=True)],
                [list(v) for v in sel.expected_values],
            )
            rows.append(
                {
                    "layer": layer,
                    "neuron": neuron,
                    "explanation_id": eid,
                    "scorer": scorer,
                    "correlation": score.correlation,
                    "explained_variance": score.explained_variance,
                    "undefined_reason": score.undefined_reason,
                    "n_tokens": score.n_tokens,
                    "per_excerpt": [float("nan") if v is None else v for v in score.per_excerpt],
                    "simulator": simulator,
                }
            )
        report.completed += 1
        if progress:
            progress("score", report.completed, len(groups))
    write_part(store, "scores", rows, SCORES)
    return report


def score_summary(store: RunStore) -> pd.DataFrame:
    """One row per scored explanation and simulator, with its correlation and ablation scores.

    Columns: layer, neuron, explanation, top_and_random, random_only, ablation_top_and_random,
    ablation_random_only (NaN where undefined or not ablated).
    """
    columns = ["layer", "neuron", "explanation", *SCORERS, *(f"ablation_{k}" for k in SCORERS)]
    scores = read_table(store, "scores", SCORES)
    expl = read_table(store, "explanations", EXPLANATIONS)[["explanation_id", "explanation"]]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    # one row per explanation and simulator; undefined scores stay NaN (pivot keeps them, pivot_table would not)
    wide = scores.pivot(
        index=["layer", "neuron", "explanation_id", "simulator"], columns="scorer", values="correlation"
    ).reset_index()
    table = wide.merge(expl.drop_duplicates("explanation_id"), on="explanation_id", how="left")
    ablation = read_table(store, "ablation_scores", ABLATION_SCORES)
    if not ablation.empty:
        wide_ab = ablation.pivot(index=["explanation_id", "simulator"], columns="scorer", values="score")
        wide_ab = wide_ab.rename(columns=lambda c: f"ablation_{c}").reset_index()
        table = table.merge(wide_ab, on=["explanation_id", "simulator"], how="left")
    for col in columns:
        if col not in table:
            table[col] = float("nan")
    return table[columns].sort_values(["layer", "neuron"])
