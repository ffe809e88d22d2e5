"""Covariance benchmark: what `harvest.covariance_layers` adds to a harvest, measured side by side.

Per batch, interleaved so that drift in machine load hits each alike: the forward pass up to the layer
with its capture (what a one-layer harvest runs anyway), the harvest reducer's update, and the
covariance update (a float64 co-moment of the batch's tokens, merged into the running one).
    python benchmarks/covariance.py                     # offline default: Gemma-3-270m, layer 6
    python benchmarks/covariance.py --model <dir> --layer 1 --n 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import excerpt_batches  # noqa: E402 - the sibling benchmark's excerpt sampler


def main() -> None:
    """Print seconds per stage and the covariance's cost relative to the forward and to the reducer."""
    from neuron_explainer.activations.harvest import Harvester, HarvestShape
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.activations.subject import wants_bos
    from neuron_explainer.directions.covariance import HarvestCovariance

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:gemma3-270m")
    parser.add_argument("--corpus", default="builtin:english-prose")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--n", type=int, default=96, help="excerpts (64 tokens each)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    subject = load_subject_model(args.model)
    source = ActivationSource(subject.model, subject.hook_point)
    bos = wants_bos(subject.tokenizer, None)
    batches = excerpt_batches(subject, args.corpus, args.n, args.batch_size, 64, bos)
    shape = HarvestShape(source.n_neurons, 64, 20, 20, 5, pilot=args.n // 2, seed=0)
    harvester = Harvester([args.layer], shape, "cpu", torch.float32)
    covariance = HarvestCovariance([args.layer], source.n_neurons)
    times = {"forward": 0.0, "reducer": 0.0, "covariance": 0.0}
    source.activations(batches[0], [args.layer])  # warm-up
    first = 0
    for batch in batches:
        t0 = time.perf_counter()
        acts = {k: v[:, 1:] if bos else v for k, v in source.activations(batch, [args.layer]).items()}
        t1 = time.perf_counter()
        harvester.update(torch.arange(first, first + len(batch)), acts)
        t2 = time.perf_counter()
        covariance.update(acts)
        t3 = time.perf_counter()
        first += len(batch)
        times["forward"] += t1 - t0
        times["reducer"] += t2 - t1
        times["covariance"] += t3 - t2
    print(f"{args.model} layer {args.layer} ({source.n_neurons} neurons), {first} excerpts of 64 tokens:")
    for key, seconds in times.items():
        print(f"  {key:<10} {seconds:7.2f} s")
    plain = times["forward"] + times["reducer"]
    print(f"covariance / (forward + reducer) = {times['covariance'] / plain:.2f}")


if __name__ == "__main__":
    main()
