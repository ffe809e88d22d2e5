"""The baselines stage: weight and lookup-table predictions stored as explanations and simulations.

Each baseline becomes, per neuron, one `explanations` row (explainer `baseline:<kind>`, the explanation
text lists its top tokens) and `simulations` rows on the same valid and calibration records as LLM
simulations (simulator `baseline:<kind>`, values in activation units, `max_level` 0), with the same
calibration. `score` and `ablate` then treat them like any other explanation. Resumable per neuron.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from neuron_explainer.activations.corpus import iter_excerpts, open_corpus
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.activations.text import decode_tokens
from neuron_explainer.baselines import TokenLookup, token_lookups, weight_token_predictions
from neuron_explainer.config import HarvestConfig
from neuron_explainer.errors import CorpusError
from neuron_explainer.pipeline import (
    ProgressFn,
    StageReport,
    calibration_columns,
    explanation_id,
    read_table,
    scoring_records,
    write_part,
)
from neuron_explainer.records.reader import load_neuron_record, read_token_ids
from neuron_explainer.records.schema import EXPLANATIONS, SIMULATIONS
from neuron_explainer.records.store import RunStore

BASELINE_KINDS = ("weights", "lookup")
PROMPT_VERSION = "baseline/v1"
N_TOP_TOKENS = 8


def held_out_batches(
    cfg: HarvestConfig, tokenizer: Any, n_excerpts: int, batch_size: int, bos_token_id: int | None
) -> Iterator[tuple[torch.Tensor, int]]:
    """Excerpts that follow the harvest's own in the corpus stream (ids n_excerpts, n_excerpts + 1, ...).

    Raises:
        CorpusError: the corpus has no excerpts beyond the harvested ones.
    """
    docs = open_corpus(cfg.corpus).documents()
    stream = iter_excerpts(
        docs,
        lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
        excerpt_len=cfg.excerpt_len,
        seed=cfg.seed,
        excerpts_per_doc=cfg.corpus.excerpts_per_doc,
        limit=cfg.n_excerpts + n_excerpts,
    )
    prefix = [bos_token_id] if bos_token_id is not None else []
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


def _token_list(tokenizer: Any, scored: Sequence[tuple[int, float]]) -> str:
    return ", ".join(repr(decode_tokens(tokenizer, [t])[0]) for t, _ in scored)


def run_baselines(
    store: RunStore,
    model: Any,
    tokenizer: Any,
    source: ActivationSource,
    neurons: Sequence[tuple[int, int]],
    *,
    kinds: Sequence[str] = BASELINE_KINDS,
    bos_token_id: int | None = None,
    held_out_excerpts: int = 500,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> StageReport:
    """Compute the baselines for `neurons` (skipping neurons that have them) and store them.

    Args:
        store: the run (a completed harvest).
        model: the harvested subject model.
        tokenizer: its tokenizer.
        source: its activation source.
        neurons: (layer, neuron) pairs.
        kinds: which baselines, from BASELINE_KINDS.
        bos_token_id: prepended to held-out excerpts when the harvest prepended one.
        held_out_excerpts: corpus excerpts after the harvested ones, for the lookup table.
        batch_size: held-out excerpts per forward.
        progress: called with (stage, layers done, layers planned).
    """
    bad = set(kinds) - set(BASELINE_KINDS)
    if bad:
        raise ValueError(f"unknown baseline(s) {sorted(bad)}: choose from {BASELINE_KINDS}")
    manifest = store.require_harvest()
    cfg = HarvestConfig.model_validate(manifest["harvest"]["config"])
    bos = bos_token_id if manifest["harvest"].get("prepend_bos") else None
    done = read_table(store, "explanations", EXPLANATIONS)
    done_keys = set(zip(done.layer, done.neuron, done.explainer, strict=True))
    report = StageReport("baselines")
    todo: dict[int, dict[str, list[int]]] = {}
    for layer, neuron in dict.fromkeys(neurons):
        for kind in kinds:
            report.planned += 1
            if (layer, neuron, f"baseline:{kind}") in done_keys:
                report.skipped_done += 1
            else:
                todo.setdefault(layer, {}).setdefault(kind, []).append(neuron)
    lookup_neurons = {layer: k["lookup"] for layer, k in todo.items() if "lookup" in k}
    lookups = {}
    if lookup_neurons:  # one pass over the held-out text for every layer
        batches = held_out_batches(cfg, tokenizer, held_out_excerpts, batch_size, bos)
        lookups = token_lookups(source, batches, lookup_neurons)
    for i, (layer, by_kind) in enumerate(sorted(todo.items()), 1):
        predictors: dict[str, Any] = {}
        if "weights" in by_kind:
            ns = by_kind["weights"]
            predictors["weights"] = (ns, weight_token_predictions(model, source, layer, ns))
        if "lookup" in by_kind:
            predictors["lookup"] = (by_kind["lookup"], lookups[layer])
        expl_rows, sim_rows = [], []
        for kind, (ns, predictor) in predictors.items():
            for neuron in ns:
                rows = _baseline_rows(store, tokenizer, layer, neuron, kind, predictor, ns.index(neuron))
                expl_rows.append(rows[0])
                sim_rows += rows[1]
                report.completed += 1
        write_part(store, "simulations", sim_rows, SIMULATIONS)  # simulations first: a crash leaves no
        write_part(store, "explanations", expl_rows, EXPLANATIONS)  # explanation without its simulation
        if progress:
            progress("baselines", i, len(todo))
    return report


def _baseline_rows(
    store: RunStore, tokenizer: Any, layer: int, neuron: int, kind: str, predictor: Any, column: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    explainer = f"baseline:{kind}"
    eid = explanation_id(layer, neuron, explainer, PROMPT_VERSION, 0)
    if isinstance(predictor, TokenLookup):
        top = predictor.top_tokens(neuron, N_TOP_TOKENS)
        text = f"the tokens with the highest mean activation on held-out text: {_token_list(tokenizer, top)}"

        def predict(ids: list[int]) -> list[float]:
            return predictor.predict(ids, neuron)
    else:
        values = predictor[:, column]
        order = torch.argsort(values, descending=True)[:N_TOP_TOKENS]
        listed = _token_list(tokenizer, [(int(t), 0.0) for t in order])
        text = f"the tokens it responds to from its weights alone: {listed}"

        def predict(ids: list[int]) -> list[float]:
            return values[torch.as_tensor(ids, dtype=torch.long)].tolist()

    record = load_neuron_record(store.root, layer, neuron)
    todo = [(split, k, rec) for split in ("valid", "calibration") for k, rec in scoring_records(record, split)]
    token_ids = read_token_ids(store, sorted({rec.excerpt_id for _, _, rec in todo}))
    sims = [predict(token_ids[rec.excerpt_id]) for _, _, rec in todo]
    cal = calibration_columns(True, todo, sims)
    explanation = {
        "layer": layer,
        "neuron": neuron,
        "explanation_id": eid,
        "explanation": text,
        "explainer": explainer,
        "prompt_version": PROMPT_VERSION,
        "view": "current_token",
        "sample_idx": 0,
        "round": 1,
        "params_hash": "",
    }
    sim_rows = [
        {
            "layer": layer,
            "neuron": neuron,
            "explanation_id": eid,
            "split": split,
            "record_kind": k,
            "excerpt_id": rec.excerpt_id,
            "expected_values": sim,
            "max_level": 0,
            "simulator": explainer,
            "prompt_version": PROMPT_VERSION,
            **cal,
        }
        for (split, k, rec), sim in zip(todo, sims, strict=True)
    ]
    return explanation, sim_rows
