"""All-at-once simulation benchmark: prefix-KV reuse vs none, measured side by side in one run.

    python benchmarks/simulate.py [--model builtin:gemma3-270m] [--n 12]

Two local back ends share one model; one reuses the cached few-shot prefix, the other recomputes every
prompt. They simulate the same excerpts, interleaved, and must agree.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch


def main() -> None:
    from neuron_explainer.activations.corpus import iter_excerpts, open_corpus
    from neuron_explainer.activations.text import decode_tokens
    from neuron_explainer.config import CorpusConfig
    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.simulator import simulate_all_at_once

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--n", type=int, default=12, help="excerpts of 64 tokens")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    reuse = LocalBackend.load(args.model, device=args.device, reuse_prefix=True)
    plain = LocalBackend(reuse.module, reuse.tokenizer, model_name=args.model, reuse_prefix=False)
    tok = reuse.tokenizer
    docs = open_corpus(CorpusConfig(source="builtin:english-prose")).documents()
    stream = iter_excerpts(
        docs,
        lambda t: tok(t, add_special_tokens=False)["input_ids"],
        excerpt_len=64,
        seed=0,
        excerpts_per_doc=2,
        limit=args.n + 1,
    )
    excerpts = [decode_tokens(tok, e.token_ids) for e in stream]
    template = load_simulator_template()
    explanation = "words about water, rivers and the sea"
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
