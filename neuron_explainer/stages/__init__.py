"""The pipeline's stages, one module each, one shape: `async def run(store, cfg.<stage>, deps) -> StageReport`.

`STAGES` lists them in pipeline order with the config section each reads; `neuron_explainer.pipeline`
runs them in that order. Shared machinery: dependencies and reports in `stages.runtime`, unit scheduling
and part writing in `stages.units`, claims of workers sharing a run in `stages.claims`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from neuron_explainer.stages.runtime import Deps, FailureBudgetExceeded, StageReport, check_failure_budget

STAGES: dict[str, str] = {
    "harvest": "harvest",
    "explain": "explain",
    "simulate": "simulate",
    "revise": "revise",
    "baselines": "baselines",
    "output_tokens": "output_tokens",
    "score": "score",
    "ablate": "ablate",
}
"""Stage name -> the RunConfig section it reads, in pipeline order."""


def stage_module(name: str) -> ModuleType:
    """The module of stage `name` (imported on first use: stages pull in torch and models)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"neuron_explainer.stages.{name}")


__all__ = ["STAGES", "Deps", "FailureBudgetExceeded", "StageReport", "check_failure_budget", "stage_module"]
