"""neuron-explainer: harvest, explain, simulate and score the MLP neurons of language models.

The library API:
- `load_config(path, overrides)` -> RunConfig, and `run_pipeline(config)`: the whole pipeline;
- `neuron_explainer.stages`: each stage alone, `await stage_module(name).run(store, section, deps)`;
- `load_neuron_record` / `load_neuron_stats`: what the harvest kept for one neuron;
- `RunStore` and `read_table`: a run directory and its stage tables as DataFrames.
"""

from neuron_explainer.config import RunConfig, load_config
from neuron_explainer.datatypes import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.pipeline import PipelineResult, run_pipeline
from neuron_explainer.records.reader import load_neuron_record, load_neuron_stats
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table

__version__ = "0.2.0"

__all__ = [
    "ActivationRecord",
    "NeuronExplainerError",
    "NeuronId",
    "NeuronRecord",
    "NeuronStats",
    "PipelineResult",
    "RunConfig",
    "RunStore",
    "__version__",
    "load_config",
    "load_neuron_record",
    "load_neuron_stats",
    "read_table",
    "run_pipeline",
]
