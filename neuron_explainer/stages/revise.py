"""The revise stage (docs/method.md, "Revise"): test sentences, real activations, revised explanations.

Per original explanation (round 1, current-token view, already simulated on its valid records):
1. one revision round (revise/round.py): test sentences from the explainer, the subject model's real
   activations on them, even ones for revision and odd ones for scoring, false positives counted;
2. arms: `revised` (original evidence + explanation + revision sentences), `reexplain` (the explainer
   prompt on the revision sentences alone), `random_revision` (the revision prompt with random corpus
   excerpts where the neuron is active instead of the test sentences);
3. the original and every arm are simulated on the scoring sentences, the arms also on the valid
   records, and scored on the original set and on the set extended with the scoring sentences.
Everything is written: `revision_sentences`, round-2 `explanations` and their valid `simulations`, and
`revision_scores`, which marks the unit done (written last).
"""

from __future__ import annotations

from typing import Any

from neuron_explainer.config.sections import ReviseConfig
from neuron_explainer.datatypes import ActivationRecord, Failure, NeuronRecord
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.explain.explainer import explain
from neuron_explainer.llm.base import Capability, require
from neuron_explainer.prompts.formatting import max_activation, normalize_activations
from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.splits import N_EXPLAIN_RECORDS, random_split, scoring_records, top_split
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import (
    SimulatedExcerpt,
    explanation_row,
    failure_row,
    read_table,
    revision_score_row,
    simulation_rows,
    without_baselines,
)
from neuron_explainer.revise import (
    Evidence,
    TestSentenceError,
    gather_evidence,
    generation_params,
    is_false_positive,
    load_revision_templates,
    revise_explanation,
    write_test_sentences,
)
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.simulate.methods import RecordSimulator, require_method
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import SimulatorSetup
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_units


def random_active(record: NeuronRecord, top: float, n: int) -> list[ActivationRecord]:
    """Random corpus excerpts where the neuron is active, not used for scoring (test split and buckets)."""
    pool = random_split(record.random_sample, "test") + [r for b in record.random_sample_by_quantile for r in b]
    return [r for r in pool if not is_false_positive(r, top)][:n]


def originals(store: RunStore, simulator: str, deps: Deps) -> Any:
    """Round-1, current-token LLM explanations of this worker's neurons simulated on the valid split by `simulator`."""
    explanations = without_baselines(read_table(store, "explanations"))
    sims = read_table(store, "simulations")
    sims = sims[(sims.split == "valid") & (sims.simulator == simulator)]
    picked = explanations[(explanations["round"] == 1) & (explanations.view == "current_token")]
    picked = picked[picked.explanation_id.isin(set(sims.explanation_id))]
    return deps.restrict(store, picked), sims


def sentence_rows(unit: dict[str, Any], evidence: Evidence, top: float) -> list[dict[str, Any]]:
    """The `revision_sentences` rows of one unit."""
    return [
        {
            "layer": int(unit["layer"]),
            "neuron": int(unit["neuron"]),
            "explanation_id": unit["explanation_id"],
            "sentence_idx": i,
            "text": s,
            "tokens": r.tokens,
            "activations": r.activations,
            "split": "revision" if i in evidence.revision else "scoring",
            "max_level": max(normalize_activations(r.activations, top), default=0),
            "false_positive": is_false_positive(r, top),
            "explainer": unit["explainer"],
        }
        for i, (s, r) in enumerate(zip(evidence.sentences, evidence.records, strict=True))
    ]


async def run(store: RunStore, cfg: ReviseConfig, deps: Deps) -> StageReport:
    """Revise every original explanation (of the selected neurons, if any) not yet revised."""
    e, s = deps.config.explain, deps.config.simulate
    explainer = deps.llm.get(e.explainer)
    require(explainer, Capability.GENERATE, "revision")
    template = load_simulator_template(deps.config.prompts_dir, s.prompt_version)
    setup = SimulatorSetup(deps.llm.get(s.simulator), template, max_level=s.max_level, top_k=s.top_k)
    require_method(s.method, setup)
    store.require_harvest()
    simulator = setup.name
    with deps.claims(store, "revise") as claims:  # registered before reading what is done
        units_df, sims = originals(store, simulator, deps)
        done = read_table(store, "revision_scores")
        done_ids = set(done.original_explanation_id[done.simulator == simulator])
        units = units_df.to_dict("records")
        todo = [u for u in units if u["explanation_id"] not in done_ids]
        report = StageReport("revise", planned=len(units), skipped_done=len(units) - len(todo))
        original_sims = {eid: g for eid, g in sims.groupby("explanation_id")}
        reviser = _Reviser(store, deps, cfg, explainer, RecordSimulator(setup, s.method), original_sims)
        queue = UnitQueue(todo, lambda u: (u["layer"], u["neuron"], u["explanation_id"], simulator), claims, report)
        writer = PartWriter(store, "revision_scores")
        await run_units(
            queue, reviser.unit, report=report, writer=writer, max_in_flight=1, flush_every=1, progress=deps.progress
        )
    return report


class _Reviser:
    """The work of one revise unit, with what every unit shares."""

    def __init__(
        self,
        store: RunStore,
        deps: Deps,
        cfg: ReviseConfig,
        explainer: Any,
        sim: RecordSimulator,
        original_sims: dict[str, Any],
    ) -> None:
        e = deps.config.explain
        self.store, self.deps, self.cfg, self.explainer, self.sim = store, deps, cfg, explainer, sim
        self.original_sims = original_sims
        self.explainer_template = load_explainer_template(deps.config.prompts_dir, e.prompt_version)
        self.templates = load_revision_templates(deps.config.prompts_dir, cfg.prompt_version)
        self.params = generation_params(e.temperature, e.max_tokens, e.seed)

    async def unit(self, unit: dict[str, Any]) -> UnitResult:
        """Revise one explanation; any failure fails the unit (stored, retried next run)."""
        layer, neuron, eid = int(unit["layer"]), int(unit["neuron"]), unit["explanation_id"]

        def fail(kind: str, message: str, raw: str | None = None) -> UnitResult:
            failure = Failure(stage="revise", kind=kind, message=message, raw=raw)
            return UnitResult(failures=[failure_row(layer, neuron, eid, failure)])

        record = load_neuron_record(self.store.root, layer, neuron)
        evidence = top_split(record.most_positive_activation_records, "train")[:N_EXPLAIN_RECORDS]
        top = max_activation([r.activations for r in evidence])
        try:
            sentences = await write_test_sentences(
                self.explainer, self.templates, unit["explanation"], self.params, self.cfg.sentence_tokens
            )
        except TestSentenceError as exc:
            return fail("parse", str(exc), exc.raw)
        except NeuronExplainerError as exc:
            return fail("backend", str(exc))
        subject = self.deps.subject(self.store)

        async def respond(text: str) -> ActivationRecord:
            return subject.record(text, layer, neuron)

        tested = await gather_evidence(sentences, respond)
        try:
            candidates = await self._arms(record, evidence, top, unit["explanation"], tested)
            if isinstance(candidates, Failure):
                return fail(candidates.kind, candidates.message, candidates.raw)
            rows = await self._score(unit, record, tested, candidates)
        except SimulationParseError as exc:
            return fail("parse", f"simulation: {exc}")
        except NeuronExplainerError as exc:
            return fail("backend", str(exc))
        rows["revision_sentences"] = sentence_rows(unit, tested, top)
        return UnitResult(rows)

    async def _arms(
        self, record: NeuronRecord, evidence: list[ActivationRecord], top: float, explanation: str, tested: Evidence
    ) -> dict[str, str] | Failure:
        """The revised explanation of each arm, or the first arm's failure."""
        out: dict[str, str] = {}
        revision_new = tested.split("revision")
        for arm in self.cfg.arms:
            if arm == "reexplain":
                e = self.deps.config.explain
                (result,) = await explain(
                    revision_new,
                    self.explainer,
                    self.explainer_template,
                    n=1,
                    temperature=e.temperature,
                    max_tokens=e.max_tokens,
                    seed=e.seed,
                )
            else:
                shown = revision_new if arm == "revised" else random_active(record, top, len(revision_new))
                if not shown:
                    return Failure(
                        stage="revise", kind="data", message=f"{arm}: no random excerpt where the neuron is active"
                    )
                result = await revise_explanation(
                    self.explainer, self.templates, self.explainer_template, evidence, explanation, shown, self.params
                )
            if isinstance(result, Failure):
                return Failure(stage="revise", kind="parse", message=f"{arm}: {result.message}", raw=result.raw)
            out[arm] = result
        return out

    async def _score(
        self, unit: dict[str, Any], record: NeuronRecord, tested: Evidence, candidates: dict[str, str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Simulate and score the original and every arm; the rows of every table but the sentences."""
        layer, neuron, eid = int(unit["layer"]), int(unit["neuron"]), unit["explanation_id"]
        simulator = self.sim.setup.name
        valid = scoring_records(record)
        original = self.original_sims[eid]
        by_excerpt = {
            (k, int(x)): list(v)
            for k, x, v in zip(original.record_kind, original.excerpt_id, original.expected_values, strict=True)
        }
        scoring_new = tested.split("scoring")
        truth_valid = [rec.activations for _, rec in valid]
        truth_ext = truth_valid + [r.activations for r in scoring_new]
        results = {"original": (eid, unit["explanation"], [by_excerpt[(k, rec.stored_id)] for k, rec in valid])}
        rows: dict[str, list[dict[str, Any]]] = {"explanations": [], "simulations": [], "revision_scores": []}
        for arm, text in candidates.items():
            row = explanation_row(
                layer,
                neuron,
                text,
                explainer=unit["explainer"],
                prompt_version=f"revision/{arm}",
                sample_idx=int(unit["sample_idx"]),
                round_=2,
                params=unit["params_hash"],
            )
            arm_valid = await self.sim(text, [rec for _, rec in valid])
            results[arm] = (row["explanation_id"], text, arm_valid)
            rows["explanations"].append(row)
            excerpts = [
                SimulatedExcerpt("valid", k, rec.stored_id, v) for (k, rec), v in zip(valid, arm_valid, strict=True)
            ]
            rows["simulations"] += simulation_rows(
                layer,
                neuron,
                row["explanation_id"],
                excerpts,
                simulator=simulator,
                prompt_version=str(original.prompt_version.iloc[0]),
                max_level=int(original.max_level.iloc[0]),
            )
        for arm, (aid, text, on_valid) in results.items():
            on_new = await self.sim(text, scoring_new)
            for scorer, truth, simulated in (
                ("original_set", truth_valid, on_valid),
                ("extended_set", truth_ext, on_valid + on_new),
            ):
                score = score_correlation(truth, simulated)
                rows["revision_scores"].append(
                    revision_score_row(layer, neuron, eid, arm, aid, text, scorer, score, simulator=simulator)
                )
        return rows
