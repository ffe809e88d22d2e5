"""SparseCoder: one inference-only type for sparse autoencoders and transcoders. Imports torch; no file I/O.

Encode, for an input x (any leading dims, last dim d_in), after the optional per-token preprocessing
(`center_input`: x - mean(x); `input_norm`: see INPUT_NORMS) and, for autoencoders trained that way,
`x = x - b_dec` (`subtract_decoder_bias`):

    pre = x @ W_enc + b_enc                              W_enc (d_in, n), b_enc (n,)
    standard:  f = relu(pre)
    jumprelu:  f = pre * [pre > max(threshold, 0)]       (= relu(pre) * [pre > threshold])
    topk:      f = relu(pre * s) on the k largest entries of pre * s, 0 elsewhere; s = latent_scale or 1
    gated:     f = [x @ W_enc + b_gate > 0] * relu(x @ (W_enc * exp(r_mag)) + b_mag)

Decode: f @ W_dec + b_dec with W_dec (n, d_out): row i is latent i's output vector (`decoder_rows`). Loaders
fold per-latent decoder factors (SAELens `scaling_factor`, top-k decoder-norm rescaling) into W_dec, so decode is
always this one product. A skip connection W_skip (d_out, d_in) adds x @ W_skip.T in `reconstruct` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

import torch
from torch import nn

from neuron_explainer.errors import ConfigError
from neuron_explainer.features.hooks import HookSpec, capture_activations, get_module

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
"""Encoder nonlinearities a SparseCoder implements."""

INPUT_NORMS = ("none", "constant_norm_rescale", "layer_norm")
"""Per-token input normalisations fully specified by the coder itself (SAELens names):
`constant_norm_rescale`: x * sqrt(d_in) / ||x||; `layer_norm`: (x - mean) / (std + 1e-5), std unbiased."""

_REQUIRED = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}
_PER_LATENT = ("b_enc", "threshold", "b_gate", "r_mag", "b_mag", "latent_scale")
_T = TypeVar("_T")


@dataclass(frozen=True)
class CoderConfig:
    """Everything about a sparse coder that is not a tensor."""

    architecture: str
    """One of ARCHITECTURES."""
    hook_in: HookSpec
    """Where the coder reads its input."""
    hook_out: HookSpec
    """Where its reconstruction belongs: hook_in for an autoencoder, another hook for a transcoder."""
    transcoder: bool = False
    """Whether it predicts the tensor at hook_out from the one at hook_in (else it reconstructs hook_in)."""
    k: int | None = None
    """Number of active latents per token, for topk."""
    subtract_decoder_bias: bool = False
    """Encode x - b_dec instead of x (SAELens `apply_b_dec_to_input`; sparsify autoencoders)."""
    input_norm: str = "none"
    """Per-token input normalisation, one of INPUT_NORMS."""
    center_input: bool = False
    """Subtract each token's mean over d_in first: TransformerLens `center_writing_weights` residuals."""
    model_type: str | None = None
    """transformers model_type the hooks were resolved for (None: module paths, any model)."""
    format: str = "memory"
    """File format it was loaded from: saelens, sparsify, gemma_scope_npz, gemma_scope_2, memory."""
    content_hash: str = ""
    """sha256 over the weight and config files (hex), for provenance."""
    source: str = ""
    """Path it was loaded from."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Format-specific provenance kept for the manifest (config fields, names as written in the file)."""


class _FromConfig(Generic[_T]):
    """A read-only SparseCoder attribute that reads its CoderConfig (a typed property, declared in one line)."""

    def __init__(self, read: Callable[[CoderConfig], _T]) -> None:
        self.read = read

    @overload
    def __get__(self, coder: None, owner: type | None = None) -> _FromConfig[_T]: ...
    @overload
    def __get__(self, coder: SparseCoder, owner: type | None = None) -> _T: ...
    def __get__(self, coder: SparseCoder | None, owner: type | None = None) -> _T | _FromConfig[_T]:
        return self if coder is None else self.read(coder.config)

    def __set__(self, coder: SparseCoder, value: object) -> None:
        # Like a property without a setter: the config is the one place these live.
        raise AttributeError("this attribute reads the coder's config; build a new CoderConfig to change it")


class SparseCoder(nn.Module):
    """An SAE or transcoder at inference: encode to latents, decode latents, decoder rows, hooks, provenance.

    Tensors are float32 buffers; those an architecture does not use are absent (getattr(coder, name, None)).
    """

    W_enc: torch.Tensor
    """Encoder (d_in, n_latents)."""
    b_enc: torch.Tensor
    """Encoder bias (n_latents,); gated coders use b_gate and b_mag instead."""
    W_dec: torch.Tensor
    """Decoder (n_latents, d_out), per-latent decoder factors folded in."""
    b_dec: torch.Tensor
    """Decoder bias (d_out,)."""
    threshold: torch.Tensor
    """jumprelu: per-latent threshold (n_latents,)."""
    b_gate: torch.Tensor
    """gated: gate bias (n_latents,)."""
    r_mag: torch.Tensor
    """gated: log of the per-latent magnitude scale (n_latents,)."""
    b_mag: torch.Tensor
    """gated: magnitude bias (n_latents,)."""
    W_mag: torch.Tensor
    """gated: W_enc * exp(r_mag), computed once."""
    latent_scale: torch.Tensor
    """topk, optional: per-latent factor applied to the pre-activations before the top-k (n_latents,)."""
    W_skip: torch.Tensor
    """Optional skip connection (d_out, d_in), used by `reconstruct` only."""

    def __init__(self, config: CoderConfig, tensors: Mapping[str, torch.Tensor | None]) -> None:
        super().__init__()
        if config.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {config.architecture!r}; supported: {', '.join(ARCHITECTURES)}")
        if config.input_norm not in INPUT_NORMS:
            raise ConfigError(f"unsupported input normalisation {config.input_norm!r}; supported: {INPUT_NORMS}")
        missing = [name for name in _REQUIRED[config.architecture] if tensors.get(name) is None]
        if missing:
            raise ConfigError(f"{config.architecture} coder from {config.source or 'memory'} lacks tensor(s) {missing}")
        self.config = config
        for name, tensor in tensors.items():
            if tensor is not None:
                self.register_buffer(name, tensor.detach().to(torch.float32).contiguous())
        self._check_shapes()
        if config.architecture == "gated":
            self.register_buffer("W_mag", self.W_enc * self.r_mag.exp())

    def _check_shapes(self) -> None:
        where = self.config.source or "memory"
        if self.W_enc.dim() != 2 or self.W_dec.dim() != 2:
            raise ConfigError(f"{where}: W_enc and W_dec must be matrices, got {self._shape('W_enc', 'W_dec')}")
        d_in, n = self.W_enc.shape
        expected: dict[str, tuple[int, ...]] = {name: (n,) for name in _PER_LATENT}
        expected.update(W_dec=(n, self.W_dec.shape[1]), b_dec=(self.W_dec.shape[1],))
        expected["W_skip"] = (self.W_dec.shape[1], d_in)
        for name, shape in expected.items():
            tensor = getattr(self, name, None)
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ConfigError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                    f"(W_enc is {tuple(self.W_enc.shape)}: d_in={d_in}, n_latents={n})"
                )
        if self.config.architecture == "topk" and not (isinstance(self.config.k, int) and 0 < self.config.k <= n):
            raise ConfigError(f"{where}: topk needs an integer k in 1..{n}, got {self.config.k!r}")
        if self.config.subtract_decoder_bias and self.d_out != d_in:
            raise ConfigError(f"{where}: cannot subtract b_dec ({self.d_out}) from an input of width {d_in}")

    def _shape(self, *names: str) -> str:
        return ", ".join(f"{name} {tuple(getattr(self, name).shape)}" for name in names)

    @property
    def d_in(self) -> int:
        """Width of the input (the tensor at hook_in)."""
        return int(self.W_enc.shape[0])

    @property
    def n_latents(self) -> int:
        """Number of latents (features)."""
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        """Width of the output (the tensor at hook_out)."""
        return int(self.W_dec.shape[1])

    architecture = _FromConfig(lambda config: config.architecture)
    """Encoder nonlinearity, one of ARCHITECTURES."""
    is_transcoder = _FromConfig(lambda config: config.transcoder)
    """Whether it maps hook_in to a different hook_out."""
    hook_in = _FromConfig(lambda config: config.hook_in)
    """Where the input is read."""
    hook_out = _FromConfig(lambda config: config.hook_out)
    """Where the output belongs."""
    content_hash = _FromConfig(lambda config: config.content_hash)
    """sha256 of the weight and config files (hex)."""

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply the per-token preprocessing; return it with the (shift, scale) that undo it."""
        shift = torch.zeros_like(x[..., :1])
        scale = torch.ones_like(x[..., :1])
        if self.config.center_input:
            shift = x.mean(-1, keepdim=True)
        x = x - shift
        if self.config.input_norm == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / self.d_in**0.5
        elif self.config.input_norm == "layer_norm":
            mean = x.mean(-1, keepdim=True)
            shift, x = shift + mean, x - mean
            scale = x.std(dim=-1, keepdim=True) + 1e-5
        return x / scale, shift, scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations (..., n_latents) of inputs (..., d_in), float32."""
        if x.shape[-1] != self.d_in:
            raise ConfigError(f"input width {x.shape[-1]} does not match the coder's d_in={self.d_in}")
        x = self._normalise(x.to(device=self.W_enc.device, dtype=torch.float32))[0]
        if self.config.subtract_decoder_bias:
            x = x - self.b_dec
        arch = self.config.architecture
        if arch == "gated":
            gate = (x @ self.W_enc + self.b_gate) > 0
            return gate * torch.relu(x @ self.W_mag + self.b_mag)
        pre = x @ self.W_enc + self.b_enc
        if arch == "standard":
            return torch.relu(pre)
        if arch == "jumprelu":
            return pre * (pre > self.threshold.clamp(min=0))
        if getattr(self, "latent_scale", None) is not None:
            pre = pre * self.latent_scale
        values, indices = pre.topk(self.config.k, dim=-1)  # type: ignore[arg-type]
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode: latents @ decoder_rows + b_dec, (..., d_out), in the coder's own (normalised) space, no skip."""
        return latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The coder's estimate of the tensor at hook_out from x at hook_in, in the model's own units."""
        out = self.decode(self.encode(x))
        raw = x.to(device=self.W_enc.device, dtype=torch.float32)
        if getattr(self, "W_skip", None) is not None:
            out = out + raw @ self.W_skip.T
        if not self.is_transcoder:
            _, shift, scale = self._normalise(raw)
            out = out * scale + shift
        return out

    def decoder_rows(self) -> torch.Tensor:
        """(n_latents, d_out): each latent's output vector (its direction at hook_out, unnormalised)."""
        return self.W_dec

    def output_vectors(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """What one unit of each latent adds at hook_out, in the model's units, given the input x (..., d_in).

        `latents` (...) indexes one latent per position; the result is (..., d_out). An SAE that
        normalises its input scales its decoder rows back by the same per-token factor (as
        `reconstruct` does); a transcoder's output is already in the model's units.
        """
        rows = self.W_dec[latents.to(self.W_dec.device)]
        if self.is_transcoder:
            return rows
        scale = self._normalise(x.to(device=self.W_enc.device, dtype=torch.float32))[2]
        return rows * scale

    def latent_activations(self, model: nn.Module, input_ids: torch.Tensor, **forward_kwargs: Any) -> torch.Tensor:
        """Run `model` on input_ids (B, T) up to hook_in and return the latents (B, T, n_latents)."""
        captured = capture_activations(model, [self.hook_in], input_ids, **forward_kwargs)
        with torch.no_grad():
            return self.encode(captured[self.hook_in])

    def check_against(self, model: nn.Module) -> None:
        """Verify on one 2-token forward that hook_in / hook_out exist in `model` with widths d_in / d_out.

        Raises:
            ConfigError: model type differs from the one the hooks were resolved for, a module is missing,
                or a width does not match.
        """
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if self.config.model_type and model_type and model_type != self.config.model_type:
            raise ConfigError(
                f"coder hooks were resolved for model type {self.config.model_type!r}, the model is {model_type!r}"
            )
        specs = list(dict.fromkeys([self.hook_in, self.hook_out]))
        for spec in specs:
            get_module(model, spec.module)
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        captured = capture_activations(model, specs, torch.zeros((1, 2), dtype=torch.long, device=device))
        for spec, width, name in ((self.hook_in, self.d_in, "d_in"), (self.hook_out, self.d_out, "d_out")):
            got = int(captured[spec].shape[-1])
            if got != width:
                raise ConfigError(
                    f"coder {name}={width} does not match the width {got} of {spec} in this model "
                    f"({self.config.source or 'memory'})"
                )

    def provenance(self) -> dict[str, Any]:
        """What a manifest should record about this coder."""
        return {
            "format": self.config.format,
            "source": self.config.source,
            "content_sha256": self.content_hash,
            "architecture": self.architecture,
            "k": self.config.k,
            "transcoder": self.is_transcoder,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_latents": self.n_latents,
            "hook_in": str(self.hook_in),
            "hook_out": str(self.hook_out),
            "model_type": self.config.model_type,
            "center_input": self.config.center_input,
            "input_norm": self.config.input_norm,
            **self.config.extra,
        }

    def extra_repr(self) -> str:
        """One line for print(coder)."""
        kind = "transcoder" if self.is_transcoder else "autoencoder"
        k = f" k={self.config.k}" if self.config.k else ""
        widths = f"{self.d_in}->{self.n_latents}->{self.d_out}"
        return f"{self.architecture}{k} {kind} {widths}, {self.hook_in} -> {self.hook_out}"
