"""A small real run for the viewer tests: every stage on a tiny random GPT-2 with fake back ends.

The run comes from `test_regression.run_everything` (harvest with top, random and quantile records;
explain with 2 samples; simulate; revise; baselines; score; ablate), so every table the viewer reads
is there; the output_tokens stage then runs for two neurons. GPT-2's GELU gives small negative
activations, so both heatmap hues appear.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.test_regression import BASELINED, EXPLAINED, run_everything

_BUILT: dict[str, Path] = {}
OUTPUT_TOKEN_NEURONS = [(0, 1), (1, 5)]


def write_output_tokens(run: Path) -> None:
    """Run the output_tokens stage (5 promoted, 5 suppressed tokens) for OUTPUT_TOKEN_NEURONS."""
    from neuron_explainer.config import HarvestConfig, OutputTokensConfig, RunConfig
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.stages import Deps, stage_module

    store = RunStore(run)
    harvest = store.require_harvest()["harvest"]["config"]
    neurons = ",".join(f"{layer}:{n}" for layer, n in OUTPUT_TOKEN_NEURONS)
    cfg = RunConfig(
        out=str(run), harvest=HarvestConfig.model_validate(harvest), neurons=neurons,
        output_tokens=OutputTokensConfig(enabled=True, k=5),
    )  # fmt: skip
    asyncio.run(stage_module("output_tokens").run(store, cfg.output_tokens, Deps.from_config(cfg)))


def build_view_run(tiny_model_dirs, corpus_file, tmp_path_factory) -> Path:
    """Path of the run (built once per session, shared by the viewer test modules' fixtures)."""
    if "run" not in _BUILT:
        out = tmp_path_factory.mktemp("view") / "run"
        run_everything(tiny_model_dirs["gpt2"], corpus_file, out)
        write_output_tokens(out)
        _BUILT["run"] = out
    return _BUILT["run"]


__all__ = ["BASELINED", "EXPLAINED", "OUTPUT_TOKEN_NEURONS", "build_view_run"]
