"""The baselines stage: weight and lookup-table predictions stored as explanations and simulations.

Each baseline becomes, per neuron, one `explanations` row (explainer `baseline:<kind>`, the text lists
its top tokens) and `simulations` rows on the same valid and calibration records as LLM simulations
(simulator `baseline:<kind>`, values in activation units, `max_level` 0), with the same calibration.
`score` and `ablate` then treat them like any other explanation. Resumable per neuron and kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from neuron_explainer.activations.corpus import iter_excerpts, open_corpus
from neuron_explainer.activations.text import decode_tokens
from neuron_explainer.baselines.predictors import TokenLookup, token_lookups, weight_token_predictions
from neuron_explainer.config.sections import BaselinesConfig, HarvestConfig
from neuron_explainer.errors import ConfigError, CorpusError
from neuron_explainer.records.reader import load_neuron_record, read_token_ids
from neuron_explainer.records.splits import scoring_records
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import (
    BASELINE_PREFIX,
    SimulatedExcerpt,
    explanation_row,
    read_table,
    simulation_rows,
)
from neuron_explainer.scoring.calibration import calibration_columns
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_batches

PROMPT_VERSION = "baseline/v1"
N_TOP_TOKENS = 8
"""Tokens listed in a baseline's explanation text."""


def held_out_batches(
    cfg: HarvestConfig, tokenizer: Any, n_excerpts: int, batch_size: int, prefix: list[int]
) -> Iterator[tuple[torch.Tensor, int]]:
    """Excerpts that follow the harvest's own in the corpus stream (ids n_excerpts, n_excerpts + 1, ...).

    Yields (input_ids with `prefix` prepended, prefix length).

    Raises:
        CorpusError: the corpus has no excerpts beyond the harvested ones.
    """
    stream = iter_excerpts(
        open_corpus(cfg.corpus).documents(),
        lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
        excerpt_len=cfg.excerpt_len,
        seed=cfg.seed,
        excerpts_per_doc=cfg.corpus.excerpts_per_doc,
        limit=cfg.n_excerpts + n_excerpts,
    )
    batch: list[list[int]] = []
    seen = 0
    for excerpt in stream:
        if excerpt.excerpt_id < cfg.n_excerpts:
            continue
        batch.append(prefix + list(excerpt.token_ids))
        seen += 1
        if len(batch) == batch_size:
            yield torch.tensor(batch, dtype=torch.long), len(prefix)
            batch = []
    if batch:
        yield torch.tensor(batch, dtype=torch.long), len(prefix)
    if seen == 0:
        raise CorpusError(
            f"the corpus has no excerpts beyond the {cfg.n_excerpts} harvested: the lookup baseline needs "
            "held-out text (use a larger corpus or harvest fewer excerpts)"
        )


def _token_list(tokenizer: Any, token_ids: Sequence[int]) -> str:
    return ", ".join(repr(decode_tokens(tokenizer, [t])[0]) for t in token_ids)


def _predictor(tokenizer: Any, predictor: Any, neuron: int, column: int) -> tuple[str, Callable[[list[int]], list]]:
    """The explanation text and the per-token prediction of one neuron's baseline."""
    if isinstance(predictor, TokenLookup):
        top = [t for t, _ in predictor.top_tokens(neuron, N_TOP_TOKENS)]
        text = f"the tokens with the highest mean activation on held-out text: {_token_list(tokenizer, top)}"
        return text, lambda ids: predictor.predict(ids, neuron)
    values = predictor[:, column]
    order = [int(t) for t in torch.argsort(values, descending=True)[:N_TOP_TOKENS]]
    text = f"the tokens it responds to from its weights alone: {_token_list(tokenizer, order)}"
    return text, lambda ids: values[torch.as_tensor(ids, dtype=torch.long)].tolist()


def baseline_rows(
    store: RunStore, tokenizer: Any, layer: int, neuron: int, kind: str, predictor: Any, column: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One neuron's baseline explanation row and its simulation rows (valid and calibration, calibrated)."""
    name = f"{BASELINE_PREFIX}{kind}"
    text, predict = _predictor(tokenizer, predictor, neuron, column)
    row = explanation_row(layer, neuron, text, explainer=name, prompt_version=PROMPT_VERSION)
    record = load_neuron_record(store.root, layer, neuron)
    todo = [(split, k, rec) for split in ("valid", "calibration") for k, rec in scoring_records(record, split)]
    token_ids = read_token_ids(store, sorted({rec.stored_id for _, _, rec in todo}))
    sims = [predict(token_ids[rec.stored_id]) for _, _, rec in todo]
    cal = [(rec.activations, sim) for (split, _, rec), sim in zip(todo, sims, strict=True) if split == "calibration"]
    excerpts = [SimulatedExcerpt(split, k, rec.stored_id, sim) for (split, k, rec), sim in zip(todo, sims, strict=True)]
    columns = calibration_columns(True, [a for a, _ in cal], [s for _, s in cal])
    rows = simulation_rows(
        layer,
        neuron,
        row["explanation_id"],
        excerpts,
        simulator=name,
        prompt_version=PROMPT_VERSION,
        max_level=0,
        calibration=columns,
    )
    return row, rows


def same_layer(batch: list[tuple[int, int, str]], unit: tuple[int, int, str]) -> bool:
    """Whether a unit joins a batch of units: baselines are computed a layer at a time."""
    return unit[0] == batch[0][0]


async def run(store: RunStore, cfg: BaselinesConfig, deps: Deps) -> StageReport:
    """Compute the baselines of the selected neurons (skipping those that have them) and store them.

    Units are (neuron, kind), claimed a layer at a time when workers share the run; the lookup tables of
    every unit to do come from one pass over the held-out text first.

    Raises:
        ConfigError: no neurons are selected.
        CorpusError: the lookup baseline has no held-out text.
    """
    neurons = deps.require_selected(store)
    report = StageReport("baselines")
    with deps.claims(store, "baselines") as claims:  # registered before reading what is done
        done = read_table(store, "explanations")
        done_keys = set(zip(done.layer, done.neuron, done.explainer, strict=True))
        pairs = sorted(dict.fromkeys(neurons))
        units = [(layer, neuron, f"{BASELINE_PREFIX}{kind}") for layer, neuron in pairs for kind in cfg.kinds]
        todo = [u for u in units if u not in done_keys]
        report.planned, report.skipped_done = len(units), len(units) - len(todo)
        if not todo:
            return report
        subject = deps.subject(store)
        if "weights" in cfg.kinds and subject.source.kind != "mlp":
            raise ConfigError(
                f"the weights baseline reads MLP weights; these features are {subject.source.kind}: "
                "set baselines.kinds: [lookup]"
            )
        lookups = {}
        lookup = [(layer, neuron) for layer, neuron, name in todo if name == f"{BASELINE_PREFIX}lookup"]
        lookup_neurons: dict[int, Sequence[int]] = {
            layer: [n for at, n in lookup if at == layer] for layer in sorted({layer for layer, _ in lookup})
        }
        if lookup_neurons:  # one pass over the held-out text for every layer
            harvest = HarvestConfig.model_validate(store.require_harvest()["harvest"]["config"])
            batches = held_out_batches(
                harvest, subject.tokenizer, cfg.held_out_excerpts, cfg.batch_size, subject.prefix
            )
            lookups = token_lookups(subject.source, batches, lookup_neurons)

        def work(batch: list[tuple[int, int, str]]) -> list[UnitResult]:
            layer = batch[0][0]
            weights = [n for _, n, name in batch if name == f"{BASELINE_PREFIX}weights"]
            predictors: dict[str, Any] = {"lookup": lookups.get(layer)}
            if weights:
                predictors["weights"] = weight_token_predictions(subject.model, subject.source, layer, weights)
            results = []
            for _, neuron, name in batch:
                kind = name.removeprefix(BASELINE_PREFIX)
                column = weights.index(neuron) if kind == "weights" else 0
                row, rows = baseline_rows(store, subject.tokenizer, layer, neuron, kind, predictors[kind], column)
                results.append(UnitResult({"simulations": rows, "explanations": [row]}))
            return results

        queue = UnitQueue(todo, lambda u: u, claims, report)
        # the explanation is written after its simulations: a crash leaves no explanation without them
        writer = PartWriter(store, "explanations")
        await run_batches(
            queue, work, report=report, writer=writer, size=len(todo), fits=same_layer, progress=deps.progress
        )
    return report
