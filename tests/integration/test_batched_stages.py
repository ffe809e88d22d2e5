"""The simulate and explain stages batch the work of several units into shared forward passes on the
local back end, and their tables equal one unit at a time."""

from __future__ import annotations

import numpy as np

from neuron_explainer.llm.base import Capability
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.llm.hf_local import LocalBackend
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from tests.conftest import run_stage
from tests.integration.test_pipeline_stages import NEURONS, cfg_for, explain_, run  # noqa: F401 - fixture
from tests.tiny_hf import make_label_tokenizer, make_model


class CountingLocal(LocalBackend):
    """The local back end, counting batched slot calls; `slots=False` hides the capability."""

    def __init__(self, *args, slots: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slot_calls = 0
        if not slots:
            self.capabilities = self.capabilities - {Capability.SLOT_LOGPROBS}

    async def label_logprobs(self, requests, **kwargs):
        self.slot_calls += 1
        return await super().label_logprobs(requests, **kwargs)


def simulator(slots: bool) -> CountingLocal:
    tokenizer, vocab = make_label_tokenizer()
    return CountingLocal(make_model("llama", vocab, positions=1024), tokenizer, model_name="tiny-llama", slots=slots)


def test_batched_stage_equals_one_prompt_at_a_time(run: RunStore, tmp_path) -> None:  # noqa: F811 - fixture
    import shutil

    explain_(run, NEURONS, FakeBackend(completions=(" tokens of A.", " tokens of B.", " tokens of C.")))
    other = RunStore(tmp_path / "copy")
    shutil.copytree(run.root, other.root)
    batched, single = simulator(slots=True), simulator(slots=False)
    first = run_stage("simulate", cfg_for(run, llm={"max_in_flight": 4}), {"test:simulator": batched})
    second = run_stage("simulate", cfg_for(other, llm={"max_in_flight": 4}), {"test:simulator": single})
    assert first.completed == second.completed == 3 and first.failed == 0
    # three explanations of three neurons, 20 excerpts each: one batched call served them all
    assert batched.slot_calls == 1 and single.slot_calls == 0
    a = read_table(run, "simulations").sort_values(["explanation_id", "split", "record_kind", "excerpt_id"])
    b = read_table(other, "simulations").sort_values(["explanation_id", "split", "record_kind", "excerpt_id"])
    assert len(a) == len(b) == 3 * 20
    for x, y in zip(a.expected_values, b.expected_values, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4)
    np.testing.assert_allclose(a.calibration_slope.astype(float), b.calibration_slope.astype(float), rtol=1e-3)


class CountingGenerate(LocalBackend):
    """The local back end, counting batched generate calls; `batch=False` hides the capability."""

    def __init__(self, *args, batch: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_calls = 0
        if not batch:
            self.capabilities = self.capabilities - {Capability.GENERATE_BATCH}

    async def generate_batch(self, requests):
        self.batch_calls += 1
        return await super().generate_batch(requests)


def test_explain_stage_batches_greedy_generation_and_caches_it(run: RunStore, tmp_path) -> None:  # noqa: F811
    import shutil

    other = RunStore(tmp_path / "copy")
    shutil.copytree(run.root, other.root)

    def backend(batch: bool) -> CountingGenerate:
        tokenizer, vocab = make_label_tokenizer()
        return CountingGenerate(make_model("llama", vocab, positions=1024), tokenizer, model_name="t", batch=batch)

    greedy = {"explain": {"temperature": 0.0, "max_tokens": 6}, "llm": {"max_in_flight": 4, "cache": True}}
    batched, single = backend(True), backend(False)
    first = run_stage("explain", cfg_for(run, NEURONS, **greedy), {"test:explainer": batched})
    second = run_stage("explain", cfg_for(other, NEURONS, **greedy), {"test:explainer": single})
    assert batched.batch_calls == 1 and single.batch_calls == 0  # three neurons, one batched call
    a = read_table(run, "explanations").sort_values("explanation_id")
    b = read_table(other, "explanations").sort_values("explanation_id")
    fa = read_table(run, "failures").sort_values(["neuron"])
    fb = read_table(other, "failures").sort_values(["neuron"])
    assert first.completed + first.failed == second.completed + second.failed == 3
    assert list(a.explanation) == list(b.explanation) and list(fa.raw) == list(fb.raw)  # identical texts
    # a rerun replays from the cache: no new generation for the neurons already answered
    shutil.rmtree(run.root / "explanations", ignore_errors=True)
    shutil.rmtree(run.root / "failures", ignore_errors=True)
    calls = batched.batch_calls
    run_stage("explain", cfg_for(run, NEURONS, **greedy), {"test:explainer": batched})
    assert batched.batch_calls == calls
