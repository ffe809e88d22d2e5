"""Explanation-swap control for a finished direction search: does a direction's own explanation matter?

For every pair (direction k, explanation of direction j), the held-out top-and-random score of j's final
explanation on k's final direction, as the search scores its results (same pool, held-out half,
simulator). If the off-diagonal scores are as high as the diagonal, the search found directions that
follow the simulator's response to any explanation, not directions that their own explanation describes.
    python benchmarks/directions_control.py --run runs/d --config configs/demo.yaml --layer 6 --n 4 \
        --rounds 4 --pool 600       # the same settings as the `directions` command that made the search
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np


async def control(args: argparse.Namespace) -> None:
    """Print the score matrix and the mean of its diagonal and off-diagonal."""
    from neuron_explainer.config import load_config
    from neuron_explainer.directions.assistants import Assistants
    from neuron_explainer.directions.pool import build_pool
    from neuron_explainer.directions.results import read_rows
    from neuron_explainer.directions.search import DirectionSearch, SearchSettings, load_whitener
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.stages import Deps

    cfg = load_config(args.config, {"out": args.run})
    deps = Deps.from_config(cfg)
    settings = SearchSettings(
        layer=args.layer, n_directions=args.n, rounds=args.rounds, pool_size=args.pool, seed=args.seed,
        update_steps=args.steps,
    )  # fmt: skip
    store = RunStore(args.run)
    pool = build_pool(store, deps.subject(store), args.layer, args.pool)
    whitener = load_whitener(store, args.layer, True, pool.width)
    search = DirectionSearch(store, pool, whitener, Assistants.from_deps(deps), settings)
    results = {r["direction"]: r for r in read_rows(store, "direction_results", search.search_id)}
    if len(results) < args.n:
        raise SystemExit(f"search {search.search_id} has {len(results)} finished directions, not {args.n}")
    matrix = np.full((args.n, args.n), np.nan)
    for k in range(args.n):
        for j in range(args.n):
            score, _ = await search.held_out_score(k, np.asarray(results[k]["theta"]), results[j]["explanation"])
            matrix[k, j] = np.nan if score is None else score
    await deps.llm.aclose()
    print(f"search {search.search_id}: held-out score of direction k (rows) with the explanation of j (columns)")
    for k in range(args.n):
        print(f"  {k}: " + "  ".join(f"{x:6.3f}" for x in matrix[k]))
    off = matrix[~np.eye(args.n, dtype=bool)]
    print(f"own explanation: mean {np.nanmean(np.diag(matrix)):.3f}; another direction's: mean {np.nanmean(off):.3f}")


def main() -> None:
    """Parse the search's settings and run the control."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    asyncio.run(control(parser.parse_args()))


if __name__ == "__main__":
    main()
