"""A small real run for the viewer tests: every stage on a tiny random GPT-2 with fake back ends.

The run comes from `test_regression.run_everything` (harvest with top, random and quantile records;
explain with 2 samples; simulate; revise; baselines; score; ablate), so every table the viewer reads
is there. GPT-2's GELU gives small negative activations, so both heatmap hues appear. An
`output_tokens` table (not yet written by any stage) is added by hand for two neurons.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.integration.test_regression import BASELINED, EXPLAINED, run_everything

_BUILT: dict[str, Path] = {}
OUTPUT_TOKEN_NEURONS = [(0, 1), (1, 5)]


def write_output_tokens(run: Path) -> None:
    """An output_tokens table in the documented long form (5 promoted, 5 suppressed tokens per neuron)."""
    rows = []
    for layer, neuron in OUTPUT_TOKEN_NEURONS:
        for rank in range(5):
            rows.append(dict(layer=layer, neuron=neuron, rank=rank, sign="top", token_id=10 + rank,
                             token=f" up{rank}", value=2.0 - 0.3 * rank))  # fmt: skip
            rows.append(dict(layer=layer, neuron=neuron, rank=rank, sign="bottom", token_id=40 + rank,
                             token=f" down{rank}", value=-2.0 + 0.3 * rank))  # fmt: skip
    (run / "output_tokens").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), run / "output_tokens" / "part-0.parquet")


def build_view_run(tiny_model_dirs, corpus_file, tmp_path_factory) -> Path:
    """Path of the run (built once per session, shared by the viewer test modules' fixtures)."""
    if "run" not in _BUILT:
        out = tmp_path_factory.mktemp("view") / "run"
        run_everything(tiny_model_dirs["gpt2"], corpus_file, out)
        write_output_tokens(out)
        _BUILT["run"] = out
    return _BUILT["run"]


__all__ = ["BASELINED", "EXPLAINED", "OUTPUT_TOKEN_NEURONS", "build_view_run"]
