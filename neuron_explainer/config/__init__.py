"""The run configuration: typed sections (`sections`) and loading with typed overrides (`loading`)."""

from neuron_explainer.config.loading import load_config, parse_set_options
from neuron_explainer.config.sections import (
    AblateConfig,
    BaselinesConfig,
    CorpusConfig,
    ExplainConfig,
    FrozenConfig,
    HarvestConfig,
    LLMConfig,
    ModelShape,
    OutputTokensConfig,
    PlanConfig,
    PriceConfig,
    ReviseConfig,
    RunConfig,
    ScoreConfig,
    Shard,
    SimulateConfig,
    WorkersConfig,
    harvest_semantic_hash,
)
from neuron_explainer.datatypes import QUANTILES

__all__ = [
    "QUANTILES",
    "AblateConfig",
    "BaselinesConfig",
    "CorpusConfig",
    "ExplainConfig",
    "FrozenConfig",
    "HarvestConfig",
    "LLMConfig",
    "ModelShape",
    "OutputTokensConfig",
    "PlanConfig",
    "PriceConfig",
    "ReviseConfig",
    "RunConfig",
    "ScoreConfig",
    "Shard",
    "SimulateConfig",
    "WorkersConfig",
    "harvest_semantic_hash",
    "load_config",
    "parse_set_options",
]
