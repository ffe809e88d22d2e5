"""All-at-once simulation benchmark, measured side by side in one run.

    python benchmarks/simulate.py [--model builtin:gemma3-270m] [--n 12]
    python benchmarks/simulate.py --server [--n 3]

Default: two local back ends share one model; one reuses the cached few-shot prefix, the other recomputes
every prompt. They simulate the same excerpts, interleaved, and must agree.

--server: the local back end vs llama-cpp-python's OpenAI-compatible server (on loopback, serving the same
SmolLM2-135M-Instruct GGUF), on the same prompts: time per excerpt and agreement of the simulated values.
It uses the one-example template of the live server test, because that server computes echoed logprobs
in Python at about 55 ms per prompt token (benchmarks/llama_echo_cost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import torch

TOP_K = 100
"""Top next-token logprobs the server returns per position: a label must be among them at every slot."""
EXPLANATION = "words about water, rivers and the sea"


def corpus_excerpts(tok, n: int, length: int) -> list[list[str]]:
    """`n` real-prose excerpts of `length` tokens, as token strings."""
    from neuron_explainer.activations.corpus import iter_excerpts, open_corpus
    from neuron_explainer.activations.text import decode_tokens
    from neuron_explainer.config import CorpusConfig

    docs = open_corpus(CorpusConfig(source="builtin:english-prose")).documents()
    stream = iter_excerpts(
        docs,
        lambda t: tok(t, add_special_tokens=False)["input_ids"],
        excerpt_len=length,
        seed=0,
        excerpts_per_doc=2,
        limit=n,
    )
    return [decode_tokens(tok, e.token_ids) for e in stream]


def server_vs_local(n: int, length: int) -> None:
    """Local back end vs llama.cpp server on the same prompts."""
    import numpy as np

    from neuron_explainer.activations.models import _smollm2_135m_instruct
    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.llm.llama_server import serve_gguf
    from neuron_explainer.llm.openai_compat import OpenAICompatBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.parse import SimulationParseError
    from neuron_explainer.simulate.simulator import simulate_all_at_once

    model = "builtin:smollm2-135m-instruct"
    local = LocalBackend.load(model)
    excerpts = corpus_excerpts(local.tokenizer, n + 1, length)
    template = load_simulator_template(str(Path(__file__).resolve().parents[1] / "tests" / "data" / "prompts_small"))
    times = {"local": 0.0, "server": 0.0}
    failures = {"local": 0, "server": 0}
    values: dict[str, list[float]] = {"local": [], "server": []}
    with serve_gguf(_smollm2_135m_instruct()) as base:
        remote = OpenAICompatBackend("smollm2", base, timeout=600)

        async def run() -> None:
            for i, tokens in enumerate(excerpts):
                sims = {}
                for name, backend in (("local", local), ("server", remote)):
                    t0 = time.perf_counter()
                    try:
                        sims[name] = await simulate_all_at_once(
                            EXPLANATION, tokens, backend, template, max_level=9, top_k=TOP_K
                        )
                    except SimulationParseError as e:  # over HTTP labels must be in the top k; locally never
                        failures[name] += 1
                        print(f"{name}: excerpt {i}: {e}")
                    if i:  # the first excerpt warms both up
                        times[name] += time.perf_counter() - t0
                if len(sims) == 2:
                    for name, sim in sims.items():
                        values[name] += sim.expected_values
            await remote.aclose()

        asyncio.run(run())
    a, b = np.array(values["local"]), np.array(values["server"])
    prompt_tokens = len(local.tokenizer(template.intro)["input_ids"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu, {model} (local) vs llama.cpp server")
    print(f"{n} excerpts x {length} tokens, all-at-once, one-example template (intro {prompt_tokens} tokens)")
    print(f"local back end:    {times['local'] / n:.2f} s per excerpt")
    print(f"llama.cpp server:  {times['server'] / n:.2f} s per excerpt")
    print(f"server / local = {times['server'] / times['local']:.1f}")
    print(
        f"excerpts failed (no label among the top {TOP_K} at some token): local {failures['local']}, "
        f"server {failures['server']} of {n + 1}"
    )
    print(
        f"agreement of expected values over {a.size} tokens: r = {np.corrcoef(a, b)[0, 1]:.3f}, "
        f"mean |difference| = {np.abs(a - b).mean():.3f} levels"
    )


def main() -> None:
    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.simulator import simulate_all_at_once

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--n", type=int, default=12, help="excerpts (timed; one more warms up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--server", action="store_true", help="local back end vs the llama.cpp server instead")
    p.add_argument("--length", type=int, default=64, help="tokens per excerpt")
    args = p.parse_args()
    if args.server:
        server_vs_local(args.n, args.length)
        return

    reuse = LocalBackend.load(args.model, device=args.device, reuse_prefix=True)
    plain = LocalBackend(reuse.module, reuse.tokenizer, model_name=args.model, reuse_prefix=False)
    tok = reuse.tokenizer
    excerpts = corpus_excerpts(tok, args.n + 1, args.length)
    template = load_simulator_template()
    explanation = EXPLANATION
    # warm-up: fills the prefix cache of `reuse` (a pipeline pays this once per model)
    asyncio.run(simulate_all_at_once(explanation, excerpts[0], reuse, template))
    asyncio.run(simulate_all_at_once(explanation, excerpts[0], plain, template))
    times = {"reuse": 0.0, "plain": 0.0}
    max_diff = 0.0
    for tokens in excerpts[1:]:
        out = {}
        for name, backend in (("plain", plain), ("reuse", reuse)):
            t0 = time.perf_counter()
            out[name] = asyncio.run(simulate_all_at_once(explanation, tokens, backend, template)).expected_values
            times[name] += time.perf_counter() - t0
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(out["plain"], out["reuse"], strict=True)))
    n = len(excerpts) - 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, simulator {args.model}")
    print(
        f"{n} excerpts x 64 tokens, all-at-once, prompt of about "
        f"{len(tok(template.intro)['input_ids'])}+ tokens of instructions and {len(template.examples)} few-shot neurons"
    )
    print(f"without prefix reuse: {times['plain'] / n:.2f} s per excerpt")
    print(
        f"with prefix reuse:    {times['reuse'] / n:.2f} s per excerpt "
        f"({reuse.reuse_failures} prompts fell back to a full forward)"
    )
    print(f"reuse / no reuse = {times['reuse'] / times['plain']:.2f}   (goal <= 0.5)")
    print(f"max |difference| of expected values: {max_diff:.2e}")


if __name__ == "__main__":
    main()
