"""Exception hierarchy. Every error a user can cause derives from NeuronExplainerError.

The CLI turns these into a one-line message and a non-zero exit; anything else is a bug and keeps its
traceback.
"""


class NeuronExplainerError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class ConfigError(NeuronExplainerError):
    """A configuration value is invalid or inconsistent (bad layer, unknown option, ...)."""


class ModelError(NeuronExplainerError):
    """The subject model cannot be loaded or is of an unsupported architecture."""


class CorpusError(NeuronExplainerError):
    """The corpus cannot be read, is empty, or yields no excerpt of the requested length."""


class RunDirError(NeuronExplainerError):
    """A run directory is missing, incomplete, corrupt, or was made with a different config."""


class ActivationError(NeuronExplainerError):
    """The subject model produced activations that cannot be stored (NaN, inf, fp16 overflow)."""
