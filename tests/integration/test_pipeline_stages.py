"""Every stage after the harvest over a tiny harvest with fake back ends; resume makes no new calls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import CapabilityError
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.prompts.formatting import normalize_activations
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.splits import scoring_records
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.records.views import apply_view
from neuron_explainer.stages.harvest import HarvestRun
from neuron_explainer.stages.score import summary
from tests.conftest import neuron_spec, read_target_slot, run_stage, stage_config
from tests.integration.test_harvest_reference import harvest_cfg

EXPLAINER, SIMULATOR = "test:explainer", "test:simulator"


def cfg_for(run: RunStore, neurons=None, **sections):
    """A stage config for `run` with the fake explainer and simulator specs."""
    base = {"explain": {"explainer": EXPLAINER}, "simulate": {"simulator": SIMULATOR, "max_level": 10}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    if neurons is not None:
        base["neurons"] = neuron_spec(neurons)
    return stage_config(run.root, **base)


def explain_(run: RunStore, neurons, explainer: FakeBackend, **sections):
    return run_stage("explain", cfg_for(run, neurons, **sections), {EXPLAINER: explainer})


def simulate_(run: RunStore, simulator: FakeBackend, neurons=None, **sections):
    return run_stage("simulate", cfg_for(run, neurons, **sections), {SIMULATOR: simulator})


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
    explanations = read_table(store, "explanations")
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
    report = explain_(run, NEURONS, explainer, llm={"max_in_flight": 1})
    # the second completion is empty: a typed failure, not an explanation
    assert report.completed == 2 and report.failed == 1
    failures = read_table(run, "failures")
    assert len(failures) == 1 and failures.kind.iloc[0] == "parse"

    simulator = FakeBackend(oracle=truth_oracle(run))
    sim_report = simulate_(run, simulator)
    assert sim_report.completed == 2
    sims = read_table(run, "simulations")
    assert len(sims) == 2 * 20 and set(sims.record_kind) == {"top", "random"}
    assert (sims.split == "valid").sum() == 2 * 10 and (sims.split == "calibration").sum() == 2 * 10
    # the oracle's levels are floor(10 a / top): calibration maps them back to activations with slope ~ top/10
    assert sims.calibration_error.isna().all() and (sims.calibration_slope > 0).all()
    score_report = run_stage("score", cfg_for(run))
    assert score_report.completed == 2
    table = summary(run)
    assert len(table) == 2
    # a simulator that outputs the true 0-10 level: near-perfect (flooring costs a little)
    assert (table.top_and_random > 0.95).all() and (table.random_only.dropna() > 0.95).all()

    # resume: finished units make no new calls; the failed neuron is retried
    calls = len(explainer.calls), len(simulator.calls)
    explainer.completions = (" the retried explanation.",)
    again = explain_(run, NEURONS, explainer)
    assert again.skipped_done == 2 and again.completed == 1 and len(explainer.calls) == calls[0] + 1
    simulator.oracle = truth_oracle(run)  # knows the new explanation too
    simulate_(run, simulator)
    assert len(simulator.calls) == calls[1] + 20  # only the new explanation's 10 valid + 10 calibration excerpts
    assert run_stage("score", cfg_for(run)).completed == 1
    assert len(summary(run)) == 3


def test_simulate_needs_logprobs_before_any_work(run: RunStore) -> None:
    explain_(run, NEURONS[:1], FakeBackend(completions=("x y",)))
    chat_only = FakeBackend()
    with pytest.raises(CapabilityError):
        simulate_(run, chat_only)
    assert chat_only.calls == []


def test_ablate_stage_scores_calibrated_simulations_and_resumes(run: RunStore) -> None:
    explainer = FakeBackend(completions=(" tokens of neuron A.", " tokens of neuron B."))  # the oracle keys on them
    explain_(run, NEURONS[:2], explainer, llm={"max_in_flight": 1})
    simulate_(run, FakeBackend(oracle=truth_oracle(run, exact=True)))
    report = run_stage("ablate", cfg_for(run, ablate={"batch_rows": 7, "max_excerpts": 12}))
    assert report.completed == 2 and report.failed == 0
    # no excerpt shared between the two neurons here: 10 clean + 20 replaced excerpt forwards per neuron
    assert report.details["replaced_excerpt_forwards"] == 2 * 20
    scores = read_table(run, "ablation_scores")
    assert len(scores) == 4 and set(scores.scorer) == {"top_and_random", "random_only"}
    # the simulation is linear in the true activation, so calibrated it is the activation (up to float32
    # storage): the whole stage (calibration, excerpt ids, hook point) must then give 1.0
    assert (scores.score > 1 - 1e-4).all() and (scores.jsd_mean > 0).all(), scores
    again = run_stage("ablate", cfg_for(run))
    assert again.completed == 0 and again.skipped_done == 2 and again.details["replaced_excerpt_forwards"] == 0


def test_ablation_without_calibration_is_a_recorded_failure(run: RunStore) -> None:
    explain_(run, NEURONS[:1], FakeBackend(completions=("x y",)))
    simulate_(run, FakeBackend(oracle=truth_oracle(run)), simulate={"calibrate": False})
    report = run_stage("ablate", cfg_for(run))
    assert report.completed == 0 and report.failed == 1 and "without calibration" in report.failures[0]
    failures = read_table(run, "failures")
    assert (failures.stage == "ablate").sum() == 1
    # an explanation that was never simulated is a named failure too, not a silent skip
    explain_(run, NEURONS[1:2], FakeBackend(completions=("z w",)))
    report = run_stage("ablate", cfg_for(run))
    assert report.failed == 2 and any("no simulation to ablate: run `simulate` first" in f for f in report.failures)


def test_baselines_stage_is_stored_scored_and_resumable(tiny_model_dirs, corpus_file, tmp_path) -> None:
    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=20, random_k=20, quantile_k=0, n_excerpts=60)
    HarvestRun(cfg, tmp_path / "run").run()
    run = RunStore(tmp_path / "run")
    baselines = cfg_for(run, [(0, 1), (1, 5)], baselines={"held_out_excerpts": 40})
    report = run_stage("baselines", baselines)
    assert report.completed == 4
    expl = read_table(run, "explanations")
    assert sorted(expl.explainer) == ["baseline:lookup"] * 2 + ["baseline:weights"] * 2
    assert expl.explanation.str.contains("tokens").all()
    sims = read_table(run, "simulations")
    assert len(sims) == 4 * 20 and (sims.max_level == 0).all() and sims.calibration_error.isna().all()
    assert run_stage("score", cfg_for(run)).completed == 4
    scores = read_table(run, "scores")
    assert len(scores) == 8 and scores.correlation.notna().all()
    # an LLM simulator never re-simulates baseline explanations
    simulate_(run, FakeBackend(oracle=lambda *a: (("0", 0.0),)))
    assert len(read_table(run, "simulations")) == 4 * 20
    again = run_stage("baselines", baselines)
    assert again.completed == 0 and again.skipped_done == 4


def test_lookup_baseline_without_held_out_text_is_a_clear_error(tiny_model_dirs, corpus_file, tmp_path) -> None:
    from neuron_explainer.errors import CorpusError

    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=5, random_k=5, quantile_k=0, n_excerpts=5000)
    HarvestRun(cfg, tmp_path / "run").run()  # takes every excerpt the corpus has
    run = RunStore(tmp_path / "run")
    with pytest.raises(CorpusError, match="no excerpts beyond"):
        run_stage("baselines", cfg_for(run, [(0, 1)], baselines={"kinds": ["lookup"]}))


SENTENCES = " alpha beta gamma\n2. delta alpha beta\n3. gamma gamma delta\n4. beta beta alpha"


def test_revise_stage_writes_every_artefact_and_resumes(run: RunStore) -> None:
    from neuron_explainer.activations.subject import HarvestedSubject

    explain_(run, NEURONS[:1], FakeBackend(completions=(" tokens of neuron A.",)))

    def oracle(prompt, tokens, i):  # varies with position, so correlations are defined
        return ((str(i % 4), -0.1), ("0", -3.0))

    simulator = FakeBackend(oracle=oracle)
    simulate_(run, simulator, simulate={"calibrate": False})
    explainer = FakeBackend(
        completions=(SENTENCES, " revised tokens.", " tokens again.", " tokens after random text."),
        supports_prefill=True,
    )
    backends = {EXPLAINER: explainer, SIMULATOR: simulator}
    report = run_stage("revise", cfg_for(run), backends)
    assert report.completed == 1 and report.failed == 0, report.failures
    sent = read_table(run, "revision_sentences")
    assert len(sent) == 4 and list(sent.split) == ["revision", "scoring"] * 2
    assert sent.text.iloc[0] == "alpha beta gamma" and sent.false_positive.dtype == bool
    # the stored activations are the subject model's, as the harvest would compute them
    direct = HarvestedSubject.for_run(run.require_harvest()).record("alpha beta gamma", 0, 1)
    assert list(sent.activations.iloc[0]) == pytest.approx(direct.activations, abs=1e-6)
    expl = read_table(run, "explanations")
    revised = expl[expl["round"] == 2]
    assert sorted(revised.prompt_version) == ["revision/random_revision", "revision/reexplain", "revision/revised"]
    assert set(revised.explanation) == {"revised tokens", "tokens again", "tokens after random text"}
    scores = read_table(run, "revision_scores")
    assert len(scores) == 4 * 2 and set(scores.arm) == {"original", "revised", "reexplain", "random_revision"}
    ext = scores[scores.scorer == "extended_set"]
    assert (ext.n_tokens > scores[scores.scorer == "original_set"].n_tokens.max()).all()
    sims = read_table(run, "simulations")
    assert set(revised.explanation_id) <= set(sims.explanation_id)  # `score` and `ablate` see them
    calls = len(explainer.calls)
    again = run_stage("revise", cfg_for(run), backends)
    assert again.skipped_done == 1 and len(explainer.calls) == calls


def test_revise_stage_records_an_unusable_sentence_list(run: RunStore) -> None:
    explain_(run, NEURONS[:1], FakeBackend(completions=(" tokens.",)))
    simulator = FakeBackend(oracle=lambda p, t, i: ((str(i % 3), 0.0),))
    simulate_(run, simulator, simulate={"calibrate": False})
    explainer = FakeBackend(completions=("I cannot help with that.",), supports_prefill=True)
    report = run_stage("revise", cfg_for(run), {EXPLAINER: explainer, SIMULATOR: simulator})
    assert report.failed == 1 and "test sentence" in report.failures[0]
    assert (read_table(run, "failures").stage == "revise").sum() == 1


def test_next_token_view_end_to_end(run: RunStore) -> None:
    """Explained and simulated in the next-token view, scored against activations one position earlier."""
    explainer = FakeBackend(completions=(" places where a noun comes next.",))
    explain_(run, NEURONS[:1], explainer, explain={"prompt_version": "next_token_v1"})
    shown = explainer.calls[0][1][0][-1].content  # the target's rows: the first token is dropped
    record = load_neuron_record(run.root, *NEURONS[0])
    first_train = record.most_positive_activation_records[0]
    assert "".join(first_train.tokens[1:6]).strip().split()[0] in shown
    expl = read_table(run, "explanations")
    assert list(expl.view) == ["next_token"]
    oracle = truth_oracle(run, view="next_token")
    with pytest.raises(ConfigError, match="next_token"):
        simulate_(run, FakeBackend(oracle=oracle), simulate={"next_token_prompt_version": "v1"})
    with pytest.raises(ConfigError, match="next_token"):
        simulate_(run, FakeBackend(oracle=oracle), simulate={"method": "one_at_a_time"})
    report = simulate_(run, FakeBackend(oracle=oracle))
    assert report.completed == 1
    sims = read_table(run, "simulations")
    assert all(len(v) == 15 for v in sims.expected_values)  # 16-token excerpts, one pair fewer
    run_stage("score", cfg_for(run))
    assert summary(run).top_and_random.iloc[0] > 0.95  # scored against the shifted truth
