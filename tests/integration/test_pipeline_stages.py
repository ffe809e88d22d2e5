"""Explain -> simulate -> score over a tiny harvest with fake back ends; resume makes no new calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from neuron_explainer.activations.driver import HarvestRun
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
from tests.integration.test_harvest_reference import harvest_cfg

NEURONS = [(0, 1), (0, 2), (1, 5)]


@pytest.fixture
def run(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> RunStore:
    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=20, random_k=20, quantile_k=0)
    HarvestRun(cfg, tmp_path / "run").run()
    return RunStore(tmp_path / "run")


def truth_oracle(store: RunStore):
    """Fake simulator: at each target slot, all mass on the true 0-10 level of that token.

    It finds the neuron from the target's explanation and the excerpt from its token rows.
    """
    levels_by: dict[tuple[str, str], list[int]] = {}
    explanations = read_table(store, "explanations", EXPLANATIONS)
    for row in explanations.itertuples():
        recs = scoring_records(load_neuron_record(store.root, row.layer, row.neuron))
        top = max(max(r.activations) for _, r in recs)
        for _, r in recs:
            levels_by[(row.explanation, "".join(r.tokens))] = normalize_activations(r.activations, top)

    def oracle(prompt, tokens, i):
        target = prompt.rfind("<start>\n")
        slots = [j for j, (tok, off) in enumerate(tokens) if tok == "unknown" and off > target]
        if i + 1 not in slots:
            return (("x", 0.0),)
        explanation = prompt[:target].rsplit("Explanation: ", 1)[1].split("\n", 1)[0]
        rows = prompt[target + len("<start>\n") :].split("\n")
        text = "".join(row.rsplit("\t", 1)[0] for row in rows if "\t" in row)
        return ((str(levels_by[(explanation, text)][slots.index(i + 1)]), 0.0),)

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
    assert len(sims) == 2 * 10 and set(sims.record_kind) == {"top", "random"}
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
    assert len(simulator.calls) == calls[1] + 10  # only the new explanation's 10 excerpts
    assert run_score(run).completed == 1
    assert len(score_summary(run)) == 3


def test_simulate_needs_logprobs_before_any_work(run: RunStore) -> None:
    asyncio.run(run_explain(run, NEURONS[:1], FakeBackend(completions=("x y",)), load_explainer_template()))
    chat_only = FakeBackend()
    with pytest.raises(CapabilityError):
        asyncio.run(run_simulate(run, chat_only, load_simulator_template()))
    assert chat_only.calls == []
