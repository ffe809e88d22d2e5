"""Computations behind Ecco- and BertViz-style views of one prompt, for every model family of HOOK_POINTS.

Each function takes a loaded transformers causal LM (see `load_model`), its tokenizer and a prompt (text or token
ids) and returns a frozen dataclass of numpy arrays, lists and DataFrames, with `to_frame()` / `to_dict()`.
Nothing here renders HTML. captum and scikit-learn are imported only inside the functions that need them.
"""

from neuron_explainer.inspect.attention import AttentionMaps, NeuronView, attention_maps, neuron_view
from neuron_explainer.inspect.family import Prompt, encode, load_model
from neuron_explainer.inspect.lens import LogitLens, Rankings, logit_lens, rankings
from neuron_explainer.inspect.neurons_here import NeuronsHere, firing_neurons, top_explained_neurons
from neuron_explainer.inspect.nmf import ActivationFactors, activation_factors, factorize
from neuron_explainer.inspect.output_tokens import OutputTokens, neuron_output_tokens, output_tokens_table
from neuron_explainer.inspect.saliency import Saliency, input_saliency

__all__ = [
    "ActivationFactors",
    "AttentionMaps",
    "LogitLens",
    "NeuronView",
    "NeuronsHere",
    "OutputTokens",
    "Prompt",
    "Rankings",
    "Saliency",
    "activation_factors",
    "attention_maps",
    "encode",
    "factorize",
    "load_model",
    "logit_lens",
    "neuron_output_tokens",
    "neuron_view",
    "firing_neurons",
    "output_tokens_table",
    "rankings",
    "input_saliency",
    "top_explained_neurons",
]
