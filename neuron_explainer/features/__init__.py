"""Features beyond MLP neurons: sparse autoencoders and transcoders, and the hooks that read them from a model.

`load_sparse_coder(path)` reads SAELens, EleutherAI sparsify and Gemma Scope files into a `SparseCoder`;
`resolve_hook` maps module paths and TransformerLens hook names onto modules of a Hugging Face causal LM;
`capture` / `add_at_hook` read and edit the hooked tensor. See docs/features.md.
"""

from neuron_explainer.features.hooks import (
    TL_HOOKS,
    HookSpec,
    add_at_hook,
    capture,
    capture_activations,
    resolve_hook,
)
from neuron_explainer.features.sae import ARCHITECTURES, CoderConfig, SparseCoder
from neuron_explainer.features.sae_formats import FORMATS, detect_format, load_sparse_coder

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "TL_HOOKS",
    "CoderConfig",
    "HookSpec",
    "SparseCoder",
    "add_at_hook",
    "capture",
    "capture_activations",
    "detect_format",
    "load_sparse_coder",
    "resolve_hook",
]
