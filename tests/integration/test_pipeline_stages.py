"""Explain -> simulate -> score over a tiny harvest with fake back ends; resume makes no new calls."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from neuron_explainer.activations.driver import HarvestRun
from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import CapabilityError
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.pipeline import (
    read_table,
    run_explain,
    run_score,
    run_simulate,
    score_summary,
    scoring_records,
)
from neuron_explainer.prompts.formatting import normalize_activations
from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.schema import EXPLANATIONS, FAILURES, SIMULATIONS
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.views import apply_view
from tests.conftest import read_target_slot
from tests.integration.test_harvest_reference import harvest_cfg

NEURONS = [(0, 1), (0, 2), (1, 5)]


@pytest.fixture
def run(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> RunStore:
    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=20, random_k=20, quantile_k=0)
    HarvestRun(cfg, tmp_path / "run").run()
    return RunStore(tmp_path / "run")


def truth_oracle(store: RunStore, exact: bool = False, view: str = "current_token"):
    """Fake simulator: at each target slot, all mass on the true 0-10 level of that token.

    With `exact`, the expected value is instead an exact linear function of the true activation (mass
    split between the two labels around it), so a linear calibration recovers the activation itself.
    It finds the neuron from the target's explanation and the excerpt from its token rows.
    """
    levels_by: dict[tuple[str, str], list] = {}
    explanations = read_table(store, "explanations", EXPLANATIONS)
    for row in explanations.itertuples():
        record = load_neuron_record(store.root, row.layer, row.neuron)
        recs = [(k, apply_view(r, view)) for k, r in scoring_records(record) + scoring_records(record, "calibration")]
        top = max(max(r.activations) for _, r in recs)
        lo = min(min(r.activations) for _, r in recs)
        hi = max(max(r.activations) for _, r in recs)
        for _, r in recs:
            levels = [10 * (a - lo) / (hi - lo) for a in r.activations] if exact else None
            levels_by[(row.explanation, "".join(r.tokens))] = levels or normalize_activations(r.activations, top)

    def oracle(prompt, tokens, i):
        found = read_target_slot(prompt, tokens, i)
        if found is None:
            return (("x", 0.0),)
        explanation, text, slot = found
        level = levels_by[(explanation, text)][slot]
        if isinstance(level, int):
            return ((str(level), 0.0),)
        low = min(int(level), 9)
        frac = level - low
        return ((str(low), math.log(max(1 - frac, 1e-300))), (str(low + 1), math.log(max(frac, 1e-300))))

    return oracle


def test_stages_end_to_end_and_resume(run: RunStore) -> None:
    explainer = FakeBackend(completions=(" tokens of neuron A.", "\n\n", " tokens of neuron C."))
    report = asyncio.run(run_explain(run, NEURONS, explainer, load_explainer_template(), n_samples=1))
    # the second completion is empty: a typed failure, not an explanation
    assert report.completed == 2 and report.failed == 1
    failures = read_table(run, "failures", FAILURES)
    assert len(failures) == 1 and failures.kind.iloc[0] == "parse"

    simulator = FakeBackend(oracle=truth_oracle(run))
    sim_report = asyncio.run(run_simulate(run, simulator, load_simulator_template(), max_level=10))
    assert sim_report.completed == 2
    sims = read_table(run, "simulations", SIMULATIONS)
    assert len(sims) == 2 * 20 and set(sims.record_kind) == {"top", "random"}
    assert (sims.split == "valid").sum() == 2 * 10 and (sims.split == "calibration").sum() == 2 * 10
    # the oracle's levels are floor(10 a / top): calibration maps them back to activations with slope ~ top/10
    assert sims.calibration_error.isna().all() and (sims.calibration_slope > 0).all()
    score_report = run_score(run)
    assert score_report.completed == 2
    summary = score_summary(run)
    assert len(summary) == 2
    # a simulator that outputs the true 0-10 level: near-perfect (flooring costs a little)
    assert (summary.top_and_random > 0.95).all() and (summary.random_only.dropna() > 0.95).all()

    # resume: finished units make no new calls; the failed neuron is retried
    calls = len(explainer.calls), len(simulator.calls)
    explainer.completions = (" the retried explanation.",)
    again = asyncio.run(run_explain(run, NEURONS, explainer, load_explainer_template()))
    assert again.skipped_done == 2 and again.completed == 1 and len(explainer.calls) == calls[0] + 1
    simulator.oracle = truth_oracle(run)  # knows the new explanation too
    asyncio.run(run_simulate(run, simulator, load_simulator_template(), max_level=10))
    assert len(simulator.calls) == calls[1] + 20  # only the new explanation's 10 valid + 10 calibration excerpts
    assert run_score(run).completed == 1
    assert len(score_summary(run)) == 3


def test_simulate_needs_logprobs_before_any_work(run: RunStore) -> None:
    asyncio.run(run_explain(run, NEURONS[:1], FakeBackend(completions=("x y",)), load_explainer_template()))
    chat_only = FakeBackend()
    with pytest.raises(CapabilityError):
        asyncio.run(run_simulate(run, chat_only, load_simulator_template()))
    assert chat_only.calls == []


def test_ablate_stage_scores_calibrated_simulations_and_resumes(run: RunStore, tiny_model_dirs) -> None:
    from neuron_explainer.ablate_stage import run_ablate
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.records.schema import ABLATION_SCORES

    explainer = FakeBackend(completions=(" tokens of neuron A.", " tokens of neuron B."))  # the oracle keys on them
    asyncio.run(run_explain(run, NEURONS[:2], explainer, load_explainer_template()))
    oracle = truth_oracle(run, exact=True)
    asyncio.run(run_simulate(run, FakeBackend(oracle=oracle), load_simulator_template(), max_level=10))
    subject = load_subject_model(str(tiny_model_dirs["gpt2"]))
    source = ActivationSource(subject.model, subject.hook_point)
    report = run_ablate(run, subject.model, source, bos_token_id=None, batch_rows=7, max_excerpts=12)
    assert report.completed == 2 and report.failed == 0
    # no excerpt shared between the two neurons here: 10 clean + 20 replaced excerpt forwards per neuron
    assert report.details["replaced_excerpt_forwards"] == 2 * 20
    scores = read_table(run, "ablation_scores", ABLATION_SCORES)
    assert len(scores) == 4 and set(scores.scorer) == {"top_and_random", "random_only"}
    # the simulation is linear in the true activation, so calibrated it is the activation (up to float32
    # storage): the whole stage (calibration, excerpt ids, hook point) must then give 1.0
    assert (scores.score > 1 - 1e-4).all() and (scores.jsd_mean > 0).all(), scores
    again = run_ablate(run, subject.model, source, bos_token_id=None)
    assert again.completed == 0 and again.skipped_done == 2 and again.details["replaced_excerpt_forwards"] == 0


def test_ablation_without_calibration_is_a_recorded_failure(run: RunStore, tiny_model_dirs) -> None:
    from neuron_explainer.ablate_stage import run_ablate
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource

    asyncio.run(run_explain(run, NEURONS[:1], FakeBackend(completions=("x y",)), load_explainer_template()))
    sim = FakeBackend(oracle=truth_oracle(run))
    asyncio.run(run_simulate(run, sim, load_simulator_template(), max_level=10, calibrate=False))
    subject = load_subject_model(str(tiny_model_dirs["gpt2"]))
    report = run_ablate(run, subject.model, ActivationSource(subject.model, subject.hook_point), bos_token_id=None)
    assert report.completed == 0 and report.failed == 1 and "without calibration" in report.failures[0]
    failures = read_table(run, "failures", FAILURES)
    assert (failures.stage == "ablate").sum() == 1
    # an explanation that was never simulated is a named failure too, not a silent skip
    asyncio.run(run_explain(run, NEURONS[1:2], FakeBackend(completions=("z w",)), load_explainer_template()))
    report = run_ablate(run, subject.model, ActivationSource(subject.model, subject.hook_point), bos_token_id=None)
    assert report.failed == 2 and any("no simulation to ablate: run `simulate` first" in f for f in report.failures)


def test_baselines_stage_is_stored_scored_and_resumable(tiny_model_dirs, corpus_file, tmp_path) -> None:
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.baselines_stage import run_baselines
    from neuron_explainer.records.schema import SCORES

    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=20, random_k=20, quantile_k=0, n_excerpts=60)
    HarvestRun(cfg, tmp_path / "run").run()
    run = RunStore(tmp_path / "run")
    subject = load_subject_model(str(tiny_model_dirs["gpt2"]))
    source = ActivationSource(subject.model, subject.hook_point)
    args = (run, subject.model, subject.tokenizer, source, [(0, 1), (1, 5)])
    report = run_baselines(*args, held_out_excerpts=40)
    assert report.completed == 4
    expl = read_table(run, "explanations", EXPLANATIONS)
    assert sorted(expl.explainer) == ["baseline:lookup"] * 2 + ["baseline:weights"] * 2
    assert expl.explanation.str.contains("tokens").all()
    sims = read_table(run, "simulations", SIMULATIONS)
    assert len(sims) == 4 * 20 and (sims.max_level == 0).all() and sims.calibration_error.isna().all()
    assert run_score(run).completed == 4
    scores = read_table(run, "scores", SCORES)
    assert len(scores) == 8 and scores.correlation.notna().all()
    # an LLM simulator never re-simulates baseline explanations
    asyncio.run(run_simulate(run, FakeBackend(oracle=lambda *a: (("0", 0.0),)), load_simulator_template()))
    assert len(read_table(run, "simulations", SIMULATIONS)) == 4 * 20
    again = run_baselines(*args, held_out_excerpts=40)
    assert again.completed == 0 and again.skipped_done == 4


def test_lookup_baseline_without_held_out_text_is_a_clear_error(tiny_model_dirs, corpus_file, tmp_path) -> None:
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.baselines_stage import run_baselines
    from neuron_explainer.errors import CorpusError

    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=5, random_k=5, quantile_k=0, n_excerpts=5000)
    HarvestRun(cfg, tmp_path / "run").run()  # takes every excerpt the corpus has
    subject = load_subject_model(str(tiny_model_dirs["gpt2"]))
    source = ActivationSource(subject.model, subject.hook_point)
    with pytest.raises(CorpusError, match="no excerpts beyond"):
        run_baselines(RunStore(tmp_path / "run"), subject.model, subject.tokenizer, source, [(0, 1)], kinds=["lookup"])


def test_revise_stage_writes_every_artefact_and_resumes(run: RunStore, tiny_model_dirs) -> None:
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.explain.revision import load_revision_templates
    from neuron_explainer.records.schema import REVISION_SCORES, REVISION_SENTENCES
    from neuron_explainer.revise_stage import SubjectRunner, run_revise

    asyncio.run(
        run_explain(run, NEURONS[:1], FakeBackend(completions=(" tokens of neuron A.",)), load_explainer_template())
    )

    def oracle(prompt, tokens, i):  # varies with position, so correlations are defined
        return ((str(i % 4), -0.1), ("0", -3.0))

    simulator = FakeBackend(oracle=oracle)
    asyncio.run(run_simulate(run, simulator, load_simulator_template(), max_level=10, calibrate=False))
    subject = load_subject_model(str(tiny_model_dirs["gpt2"]))
    runner = SubjectRunner(
        ActivationSource(subject.model, subject.hook_point), subject.tokenizer, bos_token_id=None, max_tokens=16
    )
    sentences = " alpha beta gamma\n2. delta alpha beta\n3. gamma gamma delta\n4. beta beta alpha"
    explainer = FakeBackend(
        completions=(sentences, " revised tokens.", " tokens again.", " tokens after random text."),
        supports_prefill=True,
    )
    args = (run, explainer, simulator, runner, load_explainer_template(), load_simulator_template())
    report = asyncio.run(run_revise(*args, load_revision_templates(), max_level=10))
    assert report.completed == 1 and report.failed == 0, report.failures
    sent = read_table(run, "revision_sentences", REVISION_SENTENCES)
    assert len(sent) == 4 and list(sent.split) == ["revision", "scoring"] * 2
    assert sent.text.iloc[0] == "alpha beta gamma" and sent.false_positive.dtype == bool
    # the stored activations are the subject model's, as the harvest would compute them
    direct = runner.record("alpha beta gamma", 0, 1)
    assert list(sent.activations.iloc[0]) == pytest.approx(direct.activations, abs=1e-6)
    expl = read_table(run, "explanations", EXPLANATIONS)
    revised = expl[expl["round"] == 2]
    assert sorted(revised.prompt_version) == ["revision/random_revision", "revision/reexplain", "revision/revised"]
    assert set(revised.explanation) == {"revised tokens", "tokens again", "tokens after random text"}
    scores = read_table(run, "revision_scores", REVISION_SCORES)
    assert len(scores) == 4 * 2 and set(scores.arm) == {"original", "revised", "reexplain", "random_revision"}
    ext = scores[scores.scorer == "extended_set"]
    assert (ext.n_tokens > scores[scores.scorer == "original_set"].n_tokens.max()).all()
    sims = read_table(run, "simulations", SIMULATIONS)
    assert set(revised.explanation_id) <= set(sims.explanation_id)  # `score` and `ablate` see them
    calls = len(explainer.calls)
    again = asyncio.run(run_revise(*args, load_revision_templates(), max_level=10))
    assert again.skipped_done == 1 and len(explainer.calls) == calls


def test_revise_stage_records_an_unusable_sentence_list(run: RunStore, tiny_model_dirs) -> None:
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.explain.revision import load_revision_templates
    from neuron_explainer.revise_stage import SubjectRunner, run_revise

    asyncio.run(run_explain(run, NEURONS[:1], FakeBackend(completions=(" tokens.",)), load_explainer_template()))
    simulator = FakeBackend(oracle=lambda p, t, i: ((str(i % 3), 0.0),))
    asyncio.run(run_simulate(run, simulator, load_simulator_template(), max_level=10, calibrate=False))
    subject = load_subject_model(str(tiny_model_dirs["gpt2"]))
    runner = SubjectRunner(
        ActivationSource(subject.model, subject.hook_point), subject.tokenizer, bos_token_id=None, max_tokens=16
    )
    explainer = FakeBackend(completions=("I cannot help with that.",), supports_prefill=True)
    args = (run, explainer, simulator, runner, load_explainer_template(), load_simulator_template())
    report = asyncio.run(run_revise(*args, load_revision_templates(), max_level=10))
    assert report.failed == 1 and "test sentence" in report.failures[0]
    assert (read_table(run, "failures", FAILURES).stage == "revise").sum() == 1


def test_next_token_view_end_to_end(run: RunStore) -> None:
    """Explained and simulated in the next-token view, scored against activations one position earlier."""
    template = load_explainer_template(version="next_token_v1")
    assert template.view == "next_token"
    explainer = FakeBackend(completions=(" places where a noun comes next.",))
    asyncio.run(run_explain(run, NEURONS[:1], explainer, template))
    shown = explainer.calls[0][1][0][-1].content  # the target's rows: the first token is dropped
    record = load_neuron_record(run.root, *NEURONS[0])
    first_train = record.most_positive_activation_records[0]
    assert "".join(first_train.tokens[1:6]).strip().split()[0] in shown
    expl = read_table(run, "explanations", EXPLANATIONS)
    assert list(expl.view) == ["next_token"]
    oracle = truth_oracle(run, view="next_token")
    with pytest.raises(ConfigError, match="next_token"):
        asyncio.run(run_simulate(run, FakeBackend(oracle=oracle), load_simulator_template(), max_level=10))
    next_tpl = load_simulator_template(version="next_token_v1")
    report = asyncio.run(
        run_simulate(
            run, FakeBackend(oracle=oracle), load_simulator_template(), max_level=10, next_token_template=next_tpl
        )
    )
    assert report.completed == 1
    sims = read_table(run, "simulations", SIMULATIONS)
    assert all(len(v) == 15 for v in sims.expected_values)  # 16-token excerpts, one pair fewer
    run_score(run)
    summary = score_summary(run)
    assert summary.top_and_random.iloc[0] > 0.95  # scored against the shifted truth
