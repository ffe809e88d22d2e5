"""neuron-explainer: harvest, explain, simulate and score the MLP neurons of language models."""

from neuron_explainer.datatypes import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from neuron_explainer.errors import NeuronExplainerError
from neuron_explainer.records.reader import load_neuron_record, load_neuron_stats

__version__ = "0.1.0"

__all__ = [
    "ActivationRecord",
    "NeuronId",
    "NeuronRecord",
    "NeuronStats",
    "NeuronExplainerError",
    "load_neuron_record",
    "load_neuron_stats",
    "__version__",
]
