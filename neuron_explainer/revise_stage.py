"""The revise stage (METHOD.md §6): test sentences, real activations, revised explanations, two scores each.

Per original explanation (round 1, already simulated on its valid records by `simulator`):
1. the explainer writes up to 10 sentences that should activate the neuron; the subject model gives their
   real activations; even-numbered ones go to revision, odd ones to scoring; false positives are counted;
2. arms: `revised` (original evidence + explanation + revision sentences), `reexplain` (the explainer
   prompt on the revision sentences alone) and `random_revision` (the revision prompt with random corpus
   excerpts where the neuron is active instead of the test sentences);
3. every arm and the original are simulated on the scoring sentences, the arms also on the valid records,
   and scored on the original set (valid top + random) and the extended set (plus scoring sentences).

Everything is written: `revision_sentences`, new `explanations` (round 2, prompt_version names the arm),
their valid-split `simulations` (so `score` and `ablate` see them), and `revision_scores`. A unit is done
when its revision_scores rows exist; failures are recorded and retried on the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.activations.text import decode_tokens
from neuron_explainer.datatypes import ActivationRecord, Failure
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.explain.explainer import ExplanationParseError, explain, parse_explanation
from neuron_explainer.explain.revision import (
    RevisionParseError,
    RevisionTemplates,
    build_revise_messages,
    build_sentence_messages,
    is_false_positive,
    parse_sentences,
    split_sentences,
)
from neuron_explainer.llm.base import Capability, GenerateParams, LLMBackend, Message, require
from neuron_explainer.pipeline import (
    N_EXPLAIN_RECORDS,
    ProgressFn,
    StageReport,
    _failure_row,
    _run_units,
    explanation_id,
    only_neurons,
    read_table,
    scoring_records,
    write_part,
)
from neuron_explainer.prompts.formatting import max_activation, normalize_activations
from neuron_explainer.prompts.templates import ExplainerTemplate, SimulatorTemplate
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.schema import (
    EXPLANATIONS,
    REVISION_SCORES,
    REVISION_SENTENCES,
    SIMULATIONS,
)
from neuron_explainer.records.splits import random_split, top_split
from neuron_explainer.records.store import RunStore
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import NEEDS, RecordSimulator

ARMS = ("revised", "reexplain", "random_revision")


class SubjectRunner:
    """Real activations of one neuron on new text, exactly as the harvest computes them."""

    def __init__(self, source: ActivationSource, tokenizer: Any, *, bos_token_id: int | None, max_tokens: int) -> None:
        self.source, self.tokenizer, self.bos, self.max_tokens = source, tokenizer, bos_token_id, max_tokens

    @torch.no_grad()
    def record(self, text: str, layer: int, neuron: int) -> ActivationRecord:
        """Tokens and activations of `text` (truncated to the harvest's excerpt length)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_tokens]
        prefix = [self.bos] if self.bos is not None else []
        acts = self.source.activations(torch.tensor([prefix + ids]), [layer])[layer][0, len(prefix) :, neuron]
        return ActivationRecord(tokens=decode_tokens(self.tokenizer, ids), activations=acts.float().tolist())


async def _generate_one(backend: LLMBackend, messages: list[Message], params: GenerateParams) -> str:
    (text,) = await backend.generate(messages, params)
    return text


def _random_active(record: Any, top: float, n: int) -> list[ActivationRecord]:
    """Random corpus excerpts where the neuron is active, not used for scoring (test split and buckets)."""
    pool = random_split(record.random_sample, "test") + [r for b in record.random_sample_by_quantile for r in b]
    return [r for r in pool if not is_false_positive(r, top)][:n]


async def run_revise(
    store: RunStore,
    explainer: LLMBackend,
    simulator: LLMBackend,
    subject: SubjectRunner,
    explainer_template: ExplainerTemplate,
    simulator_template: SimulatorTemplate,
    revision_templates: RevisionTemplates,
    *,
    neurons: set[tuple[int, int]] | None = None,
    arms: Sequence[str] = ARMS,
    method: str = "all_at_once",
    max_level: int | None = None,
    top_k: int = 20,
    temperature: float = 1.0,
    max_tokens: int = 60,
    sentence_tokens: int = 400,
    seed: int | None = 0,
    progress: ProgressFn | None = None,
) -> StageReport:
    """Revise every original explanation simulated by `simulator` (of `neurons` if set); see the module doc."""
    bad = set(arms) - set(ARMS)
    if bad:
        raise ValueError(f"unknown revision arm(s) {sorted(bad)}: choose from {ARMS}")
    require(explainer, Capability.GENERATE, "revision")
    require(simulator, NEEDS[method], f"{method.replace('_', '-')} simulation")
    store.require_harvest()
    simulator_name = f"{simulator.name}:{simulator.model}"
    explanations = read_table(store, "explanations", EXPLANATIONS)
    sims = read_table(store, "simulations", SIMULATIONS)
    sims = sims[(sims.split == "valid") & (sims.simulator == simulator_name)]
    originals = explanations[
        (explanations["round"] == 1)
        & ~explanations.explainer.str.startswith("baseline:")
        & (explanations.view == "current_token")  # the revision prompts are written for this view
    ]
    originals = originals[originals.explanation_id.isin(set(sims.explanation_id))]
    if neurons is not None:
        originals = only_neurons(originals, neurons)
    done = read_table(store, "revision_scores", REVISION_SCORES)
    done_ids = set(done.original_explanation_id[done.simulator == simulator_name])
    units = originals.to_dict("records")
    report = StageReport("revise", planned=len(units))
    todo = [u for u in units if u["explanation_id"] not in done_ids]
    report.skipped_done = len(units) - len(todo)
    sim_by_id = {eid: g for eid, g in sims.groupby("explanation_id")}
    gen = GenerateParams(max_tokens=max_tokens, temperature=temperature, n=1, seed=seed, stop=("\n\n",))
    prefill = bool(getattr(explainer, "supports_prefill", False))

    simulate_all = RecordSimulator(simulator, simulator_template, method=method, max_level=max_level, top_k=top_k)

    async def work(unit: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        layer, neuron, eid = int(unit["layer"]), int(unit["neuron"]), unit["explanation_id"]

        def fail(kind: str, message: str, raw: str | None = None) -> tuple[list[dict], list[dict]]:
            failure = Failure(stage="revise", kind=kind, message=message, raw=raw)
            return [], [_failure_row("revise", layer, neuron, eid, failure)]

        record = load_neuron_record(store.root, layer, neuron)
        evidence = top_split(record.most_positive_activation_records, "train")[:N_EXPLAIN_RECORDS]
        top = max_activation([r.activations for r in evidence])
        try:
            messages = build_sentence_messages(revision_templates, unit["explanation"])
            if not prefill:
                messages = messages[:-1]
            raw = await _generate_one(explainer, messages, replace(gen, max_tokens=sentence_tokens, stop=()))
            sentences = parse_sentences(raw, prefilled=prefill)
        except RevisionParseError as e:
            return fail("parse", str(e), raw)
        except NeuronExplainerError as e:
            return fail("backend", str(e))
        new = [subject.record(s, layer, neuron) for s in sentences]
        rev_idx, score_idx = split_sentences(sentences)
        revision_new, scoring_new = [new[i] for i in rev_idx], [new[i] for i in score_idx]
        sentence_rows = [
            {
                "layer": layer,
                "neuron": neuron,
                "explanation_id": eid,
                "sentence_idx": i,
                "text": s,
                "tokens": r.tokens,
                "activations": r.activations,
                "split": "revision" if i in rev_idx else "scoring",
                "max_level": max(normalize_activations(r.activations, top), default=0),
                "false_positive": is_false_positive(r, top),
                "explainer": unit["explainer"],
            }
            for i, (s, r) in enumerate(zip(sentences, new, strict=True))
        ]
        candidates: dict[str, str] = {}
        try:
            for arm in arms:
                if arm == "reexplain":
                    (result,) = await explain(
                        revision_new,
                        explainer,
                        explainer_template,
                        n=1,
                        temperature=temperature,
                        max_tokens=max_tokens,
                        seed=seed,
                    )
                    if isinstance(result, Failure):
                        return fail("parse", f"{arm}: {result.message}", result.raw)
                    candidates[arm] = result
                    continue
                shown = revision_new if arm == "revised" else _random_active(record, top, len(revision_new))
                if not shown:
                    return fail("data", f"{arm}: no random excerpt where the neuron is active")
                msgs = build_revise_messages(
                    revision_templates, explainer_template, evidence, unit["explanation"], shown
                )
                if prefill:
                    msgs.append(Message("assistant", explainer_template.answer_prefix))
                raw = await _generate_one(explainer, msgs, gen)
                try:
                    candidates[arm] = parse_explanation(
                        raw,
                        answer_prefix=explainer_template.answer_prefix,
                        explanation_prefix=explainer_template.explanation_prefix,
                    )
                except ExplanationParseError as e:
                    return fail("parse", f"{arm}: {e}", raw)
            valid = scoring_records(record)
            original_valid = sim_by_id[eid]
            by_excerpt = {
                (k, int(x)): list(v)
                for k, x, v in zip(
                    original_valid.record_kind, original_valid.excerpt_id, original_valid.expected_values, strict=True
                )
            }
            truth_valid = [rec.activations for _, rec in valid]
            truth_ext = truth_valid + [r.activations for r in scoring_new]
            results = {"original": (eid, unit["explanation"], [by_excerpt[(k, rec.excerpt_id)] for k, rec in valid])}
            new_sim_rows, new_expl_rows = [], []
            for arm, text in candidates.items():
                aid = explanation_id(layer, neuron, unit["explainer"], f"revision/{arm}", int(unit["sample_idx"]), 2)
                arm_valid = await simulate_all(text, [rec for _, rec in valid])
                results[arm] = (aid, text, arm_valid)
                new_expl_rows.append(
                    {
                        "layer": layer,
                        "neuron": neuron,
                        "explanation_id": aid,
                        "explanation": text,
                        "explainer": unit["explainer"],
                        "prompt_version": f"revision/{arm}",
                        "view": "current_token",
                        "sample_idx": int(unit["sample_idx"]),
                        "round": 2,
                        "params_hash": unit["params_hash"],
                    }
                )
                new_sim_rows += [
                    {
                        "layer": layer,
                        "neuron": neuron,
                        "explanation_id": aid,
                        "split": "valid",
                        "record_kind": k,
                        "excerpt_id": rec.excerpt_id,
                        "expected_values": v,
                        "max_level": int(original_valid.max_level.iloc[0]),
                        "simulator": simulator_name,
                        "prompt_version": str(original_valid.prompt_version.iloc[0]),
                        "calibration_slope": None,
                        "calibration_intercept": None,
                        "calibration_error": None,
                    }
                    for (k, rec), v in zip(valid, arm_valid, strict=True)
                ]
            score_rows = []
            for arm, (aid, text, on_valid) in results.items():
                on_new = await simulate_all(text, scoring_new)
                for scorer, truth, simulated in (
                    ("original_set", truth_valid, on_valid),
                    ("extended_set", truth_ext, on_valid + on_new),
                ):
                    s = score_correlation(truth, simulated)
                    score_rows.append(
                        {
                            "layer": layer,
                            "neuron": neuron,
                            "original_explanation_id": eid,
                            "arm": arm,
                            "explanation_id": aid,
                            "explanation": text,
                            "scorer": scorer,
                            "correlation": s.correlation,
                            "undefined_reason": s.undefined_reason,
                            "n_tokens": s.n_tokens,
                            "simulator": simulator_name,
                        }
                    )
        except SimulationParseError as e:
            return fail("parse", f"simulation: {e}")
        except NeuronExplainerError as e:
            return fail("backend", str(e))
        # the unit's other tables first; revision_scores (which marks it done) is returned last
        write_part(store, "revision_sentences", sentence_rows, REVISION_SENTENCES)
        write_part(store, "simulations", new_sim_rows, SIMULATIONS)
        write_part(store, "explanations", new_expl_rows, EXPLANATIONS)
        return score_rows, []

    await _run_units(todo, work, store, "revision_scores", REVISION_SCORES, report, 1, 1, progress)
    return report
