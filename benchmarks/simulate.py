"""All-at-once simulation benchmark, measured side by side in one run.

    python benchmarks/simulate.py [--model builtin:gemma3-270m] [--n 12]
    python benchmarks/simulate.py --server [--n 3]

Default: two local back ends share one model; one reuses the cached few-shot prefix, the other recomputes
every prompt. They simulate the same excerpts, interleaved, and must agree. Then the same excerpts go
through simulate_all_at_once_batch (batched slot scoring): its time per excerpt against the one-prompt
path's, and its token throughput against the limit, the model's forward without the output head over
the same padded batches after the same cached prefix (alternated --reps times; the best of each counts).

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
    from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

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
                            EXPLANATION, tokens, SimulatorSetup(backend, template, 9, TOP_K)
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


async def batched_vs_limit(backend, excerpts: list[list[str]], template, reps: int) -> dict[str, float]:
    """Best-of-`reps` seconds: batched simulation end to end, its slot scoring alone, the model without head."""
    from neuron_explainer.llm.base import SlotRequest
    from neuron_explainer.llm.hf_batch import pack
    from neuron_explainer.simulate.batched import simulate_all_at_once_batch
    from neuron_explainer.simulate.parse import build_all_at_once_prompt
    from neuron_explainer.simulate.simulator import SimulatorSetup, default_max_level

    level = default_max_level(backend)
    prompts = [build_all_at_once_prompt(template, EXPLANATION, tokens, level) for tokens in excerpts]
    requests = [SlotRequest(p.text, p.slots, tuple(map(str, range(level + 1)))) for p in prompts]
    scorer = backend.slots
    encoded, _ = scorer.encode(requests)
    n, cache = await asyncio.to_thread(scorer.shared_prefix, encoded)  # cached by the warm-up: not timed
    batches = pack([len(e.ids) - n for e in encoded], scorer.batch_tokens)

    def body() -> None:
        with torch.no_grad():
            for batch in batches:
                scorer.hidden_states([encoded[j] for j in batch], n, cache)

    steps = {
        "limit": lambda: asyncio.to_thread(body),
        "slots": lambda: asyncio.to_thread(scorer.score, requests),
        "slots+mass": lambda: asyncio.to_thread(scorer.score, requests, True),
        "batched": lambda: simulate_all_at_once_batch(
            [(EXPLANATION, t) for t in excerpts], SimulatorSetup(backend, template)
        ),
    }
    best = {name + kind: float("inf") for name in steps for kind in ("", "_cpu")}
    for _ in range(reps):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            await step()
            best[name] = min(best[name], time.perf_counter() - t0)
            best[name + "_cpu"] = min(best[name + "_cpu"], time.process_time() - c0)
    best["suffix_tokens"] = sum(len(e.ids) - n for e in encoded)
    best["prompt_tokens"] = sum(len(e.ids) for e in encoded)
    best["batches"] = len(batches)
    return best


async def report_batched(reuse, excerpts, template, unbatched: dict[str, list], reps: int) -> None:
    """Print batched vs one-prompt time per excerpt and batched throughput vs the no-head limit."""
    from neuron_explainer.simulate.batched import simulate_all_at_once_batch
    from neuron_explainer.simulate.simulator import SimulatorSetup

    await simulate_all_at_once_batch(
        [(EXPLANATION, excerpts[0])], SimulatorSetup(reuse, template)
    )  # warm-up: caches the prefix
    sims = await simulate_all_at_once_batch([(EXPLANATION, t) for t in excerpts[1:]], SimulatorSetup(reuse, template))
    pairs = [ab for s, u in zip(sims, unbatched["reuse"], strict=True) for ab in zip(s.expected_values, u, strict=True)]
    diff = max(abs(a - b) for a, b in pairs)
    best = await batched_vs_limit(reuse, excerpts[1:], template, reps)
    n = len(excerpts) - 1
    per = {name: sum(unbatched[f"{name}_s"]) / n for name in ("plain", "reuse")}  # seconds per excerpt
    print(
        f"batched (simulate_all_at_once_batch, {best['batches']} batches of <= {reuse.slots.batch_tokens} padded "
        f"tokens, best of {reps}): {best['batched'] / n:.2f} s per excerpt"
    )
    print(f"batched / one prompt with prefix reuse = {best['batched'] / n / per['reuse']:.2f}")
    print(f"batched / one prompt without reuse     = {best['batched'] / n / per['plain']:.2f}")
    print(f"max |difference| of expected values, batched vs one prompt: {diff:.2e}")
    tokens = best["suffix_tokens"]
    print(
        f"{tokens} suffix tokens after the cached {best['prompt_tokens'] // n - tokens // n}-token prefix "
        f"({best['prompt_tokens']} prompt tokens in all):"
    )
    print(f"  {'':<32} {'wall':>11}  {'/ limit':>7}  {'process CPU':>15}  {'/ limit':>7}")
    rows = {
        "batched": "simulate_all_at_once_batch",
        "slots": "label_logprobs alone",
        "slots+mass": "label_logprobs, label_mass=True",
        "limit": "limit: forward without head",
    }
    for name, label in rows.items():
        print(
            f"  {label:<32} {tokens / best[name]:6.1f} tok/s  {best['limit'] / best[name]:7.2f}"
            f"  {tokens / best[name + '_cpu']:6.1f} tok/cpu-s  {best['limit_cpu'] / best[name + '_cpu']:7.2f}"
        )
    print("  (goal: simulate_all_at_once_batch / limit >= 0.8; the limit runs the same padded batches)")


async def local_comparison(args) -> None:
    """Prefix reuse vs none, one prompt at a time; then batched vs one prompt and vs the no-head limit."""
    from concurrent.futures import ThreadPoolExecutor

    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

    # Every model call on one worker thread, as a pipeline runs them: torch calls alternating between
    # threads leave each thread's idle OpenMP team spinning against the other's, which distorts timings.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    reuse = LocalBackend.load(args.model, device=args.device, reuse_prefix=True)
    plain = LocalBackend(reuse.module, reuse.tokenizer, model_name=args.model, reuse_prefix=False)
    tok = reuse.tokenizer
    excerpts = corpus_excerpts(tok, args.n + 1, args.length)
    template = load_simulator_template()
    # warm-up: fills the prefix cache of `reuse` (a pipeline pays this once per model)
    for backend in (reuse, plain):
        await simulate_all_at_once(EXPLANATION, excerpts[0], SimulatorSetup(backend, template))
    max_diff = 0.0
    unbatched: dict[str, list] = {"reuse": [], "plain_s": [], "reuse_s": []}
    for tokens in excerpts[1:]:
        out = {}
        for name, backend in (("plain", plain), ("reuse", reuse)):
            t0 = time.perf_counter()
            out[name] = (
                await simulate_all_at_once(EXPLANATION, tokens, SimulatorSetup(backend, template))
            ).expected_values
            unbatched[f"{name}_s"].append(time.perf_counter() - t0)
        unbatched["reuse"].append(out["reuse"])
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(out["plain"], out["reuse"], strict=True)))
    n = len(excerpts) - 1
    times = {name: sum(unbatched[f"{name}_s"]) for name in ("plain", "reuse")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, simulator {args.model}")
    print(
        f"{n} excerpts x {args.length} tokens, all-at-once, prompt of about "
        f"{len(tok(template.intro)['input_ids'])}+ tokens of instructions and {len(template.examples)} few-shot neurons"
    )
    print(f"without prefix reuse: {times['plain'] / n:.2f} s per excerpt")
    print(f"with prefix reuse:    {times['reuse'] / n:.2f} s per excerpt")
    print(f"reuse / no reuse = {times['reuse'] / times['plain']:.2f}   (goal <= 0.5)")
    print(f"max |difference| of expected values: {max_diff:.2e}")
    if not args.no_batched:
        await report_batched(reuse, excerpts, template, unbatched, args.reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--n", type=int, default=12, help="excerpts (timed; one more warms up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--server", action="store_true", help="local back end vs the llama.cpp server instead")
    p.add_argument("--length", type=int, default=64, help="tokens per excerpt")
    p.add_argument("--reps", type=int, default=2, help="alternated repetitions of the batched timings")
    p.add_argument("--no-batched", action="store_true", help="only the one-prompt comparison")
    args = p.parse_args()
    if args.server:
        server_vs_local(args.n, args.length)
    else:
        asyncio.run(local_comparison(args))


if __name__ == "__main__":
    main()
