"""Cost of each inspect computation on one prompt, and the batched output-token table against a per-neuron loop.

Everything is measured in this one run, side by side:
    PYTHONPATH=. python benchmarks/inspect_views.py                        # offline default (Gemma-3-270m)
    PYTHONPATH=. python benchmarks/inspect_views.py --model builtin:smollm2-135m-instruct --sample 32
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

PROMPT = "The quick brown fox jumps over the lazy dog because it wanted to reach the river before the sun went down."


def timed(label: str, fn, rows: list) -> object:
    start = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - start))
    return out


def main() -> None:
    from neuron_explainer.inspect import (
        activation_factors,
        attention_maps,
        firing_neurons,
        input_saliency,
        load_model,
        logit_lens,
        neuron_output_tokens,
        neuron_view,
        output_tokens_table,
    )
    from neuron_explainer.inspect.family import encode, unembedding
    from neuron_explainer.inspect.lens import block_residuals, read_rows
    from neuron_explainer.inspect.output_tokens import output_weights

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:gemma3-270m")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--sample", type=int, default=64, help="neurons for the per-neuron loop")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    n_tokens = len(tokenizer(PROMPT)["input_ids"])
    n_neurons = output_weights(model, args.layer).shape[0]
    explained = pd.DataFrame(
        [(layer, n, f"neuron {layer}/{n}", 0.5) for layer in range(3) for n in range(n_neurons)],
        columns=["layer", "neuron", "explanation", "score"],
    )
    rows: list = []
    timed("logit_lens k=5", lambda: logit_lens(model, tokenizer, PROMPT, k=5, watch=[" dog"]), rows)
    residuals = torch.cat([r[0] for r in block_residuals(model, encode(model, tokenizer, PROMPT).input_ids)])
    ids = torch.zeros(residuals.shape[0], 2, dtype=torch.long)
    one_layer = n_tokens * 4 * unembedding(model).shape[0]
    timed("lens readout, one matmul per layer", lambda: read_rows(model, residuals, 5, ids, one_layer), rows)
    timed("lens readout, 256 MiB chunks", lambda: read_rows(model, residuals, 5, ids), rows)
    timed("attention (eager)", lambda: attention_maps(model, tokenizer, PROMPT), rows)
    timed("neuron_view (one head)", lambda: neuron_view(model, tokenizer, PROMPT, args.layer, 0), rows)
    timed("saliency grad_x_input", lambda: input_saliency(model, tokenizer, PROMPT, method="grad_x_input"), rows)
    timed("saliency IG 50 steps", lambda: input_saliency(model, tokenizer, PROMPT, n_steps=50), rows)
    timed("NMF all layers k=5", lambda: activation_factors(model, tokenizer, PROMPT), rows)
    timed(
        f"firing_neurons ({len(explained)} explained)",
        lambda: firing_neurons(model, tokenizer, PROMPT, explained),
        rows,
    )
    timed(
        f"output_tokens_table 1 layer ({n_neurons})", lambda: output_tokens_table(model, tokenizer, [args.layer]), rows
    )
    sample = list(range(args.sample))
    timed(
        f"neuron_output_tokens x{args.sample} one by one",
        lambda: [neuron_output_tokens(model, tokenizer, args.layer, [n]) for n in sample],
        rows,
    )
    print(f"model {args.model}, prompt of {n_tokens} tokens, torch threads {args.threads}")
    for label, seconds in rows:
        print(f"{label:45s} {seconds:8.2f} s")
    print(f"lens readout per layer / chunked = {rows[1][1] / rows[2][1]:.1f}x")
    per_neuron_batched = rows[-2][1] / n_neurons
    per_neuron_loop = rows[-1][1] / args.sample
    print(
        f"output tokens per neuron: batched {per_neuron_batched * 1e3:.2f} ms,"
        f" one by one {per_neuron_loop * 1e3:.2f} ms"
        f" (one by one / batched = {per_neuron_loop / per_neuron_batched:.1f}x)"
    )


if __name__ == "__main__":
    main()
