"""Simulator quality on a hand-built neuron: does the right explanation outscore unrelated ones?

    python benchmarks/synthetic_neuron.py [--simulator builtin:gemma3-270m] [--method all_at_once]

The neuron fires (1.0) on " water" and is 0 elsewhere, on 10 real 32-token excerpts of the builtin
corpus (5 with the word, 5 without). Prints the pooled correlation of each explanation's simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from neuron_explainer.llm.hf_local import LocalBackend
from neuron_explainer.prompts.templates import load_simulator_template
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.simulate.methods import method
from neuron_explainer.simulate.simulator import SimulatorSetup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the neuron is defined with its test
from tests.integration.test_real_simulator import EXPLANATIONS, synthetic_records  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulator", default="builtin:gemma3-270m")
    p.add_argument("--method", default="all_at_once")
    args = p.parse_args()
    backend = LocalBackend.load(args.simulator)
    records, truth = synthetic_records(backend.tokenizer)
    setup = SimulatorSetup(backend, load_simulator_template())
    run = method(args.method).run
    print(f"simulator {args.simulator}, method {args.method}, {len(records)} excerpts")
    for name, explanation in EXPLANATIONS.items():
        t0 = time.perf_counter()
        sims = [asyncio.run(run(explanation, r, setup)).expected_values for r in records]
        r = score_correlation(truth, sims).correlation
        print(f"{name:>10} {explanation!r:45} r = {r:.3f}   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
