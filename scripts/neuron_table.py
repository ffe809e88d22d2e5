"""Print one layer's neurons from a harvested run, sorted by a statistic (thin wrapper over DuckDB/pandas).

python scripts/neuron_table.py runs/demo --layer 5 --sort kurtosis --limit 20
"""

from __future__ import annotations

import argparse

import pandas as pd

from neuron_explainer.records.store import RunStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--sort", default="kurtosis", help="a neuron_stats column (mean, variance, skewness, kurtosis, ...)")
    p.add_argument("--ascending", action="store_true")
    p.add_argument("--limit", type=int, default=20)
    args = p.parse_args()
    store = RunStore(args.run)
    store.require_harvest()
    stats = pd.read_parquet(store.stats_path(args.layer))
    cols = ["neuron", "mean", "variance", "skewness", "kurtosis", "max_activation"]
    table = stats.sort_values(args.sort, ascending=args.ascending)[cols].head(args.limit)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
