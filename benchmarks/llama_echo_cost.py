"""Cost of echoed prompt logprobs in llama-cpp-python, by prompt length (the server uses the same code).

python benchmarks/llama_echo_cost.py [GGUF path]   # default: the packaged SmolLM2-135M-Instruct
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from llama_cpp import Llama

    from neuron_explainer.activations.models import _smollm2_135m_instruct

    path = sys.argv[1] if len(sys.argv) > 1 else str(_smollm2_135m_instruct())
    model = Llama(model_path=path, logits_all=True, n_ctx=2048, verbose=False)
    for n_words in (50, 200):
        prompt = " ".join(["water river stone"] * (n_words // 3))
        t0 = time.perf_counter()
        resp = model.create_completion(prompt, max_tokens=1, temperature=0, echo=True, logprobs=20)
        n = len(resp["choices"][0]["logprobs"]["tokens"])
        dt = time.perf_counter() - t0
        print(f"{n:4d} prompt tokens: {dt:5.1f} s echo + logprobs ({1000 * dt / n:.0f} ms per token)")


if __name__ == "__main__":
    main()
