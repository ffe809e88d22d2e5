"""Where a feature lives inside a Hugging Face causal LM, and how to read or edit it there. Imports torch only.

A `HookSpec` names a module by its dotted path inside the loaded `AutoModelForCausalLM` and a side: `input` is the
module's first positional argument (the tensor it reads), `output` is what it returns (element 0 when it returns a
tuple). `resolve_hook` also accepts TransformerLens hook names and maps them onto those modules for every family in
`neuron_explainer.activations.hookpoints.HOOK_POINTS`; `TL_HOOKS` lists them. Two differences from TransformerLens
are deliberate and documented in docs/features.md: `ln1/ln2.hook_normalized` is the norm module's output (gain
included), and residual-stream values are never mean-centred here (see `center_input` in sae_formats).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from neuron_explainer.activations.hookpoints import HOOK_POINTS, HookPoint
from neuron_explainer.errors import ConfigError

Side = Literal["input", "output"]
SIDES = ("input", "output")


@dataclass(frozen=True)
class HookSpec:
    """One tensor inside a causal LM: a module and which side of it."""

    module: str
    """Dotted path of the module inside the causal-LM model, e.g. `model.layers.5.mlp`."""
    side: Side = "output"
    """`input`: the module's first positional argument; `output`: its return value (element 0 of a tuple)."""

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ConfigError(f"hook side must be 'input' or 'output', not {self.side!r}")

    def __str__(self) -> str:
        return f"{self.module}:{self.side}"


@dataclass(frozen=True)
class _BlockParts:
    """Module paths inside one block that HookPoint does not record."""

    attn: str
    attn_out_proj: str
    input_norm: str
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    parallel_residual: bool = False


_LLAMA_LIKE = _BlockParts("self_attn", "self_attn.o_proj", "input_layernorm")
# Gemma 2 and 3 normalise each sub-block's output before adding it to the residual stream.
_SANDWICH = _BlockParts(
    "self_attn",
    "self_attn.o_proj",
    "input_layernorm",
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
)
_BLOCK_PARTS: dict[str, _BlockParts] = {
    "gpt2": _BlockParts("attn", "attn.c_proj", "ln_1"),
    "gpt_neox": _BlockParts("attention", "attention.dense", "input_layernorm", parallel_residual=True),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
}

TL_HOOKS: dict[str, str] = {
    "hook_resid_pre": "input of block L",
    "hook_resid_mid": "input of the pre-MLP norm (refused where the MLP reads the block input: GPT-NeoX parallel)",
    "hook_resid_post": "output of block L",
    "hook_attn_out": "output of the attention module (after the post-attention norm in Gemma 2/3)",
    "hook_mlp_in": "input of the pre-MLP norm (resid_mid, or resid_pre under GPT-NeoX's parallel residual)",
    "hook_mlp_out": "output of the MLP module (after the post-MLP norm in Gemma 2/3)",
    "ln1.hook_normalized": "output of the pre-attention norm (gain included)",
    "ln2.hook_normalized": "output of the pre-MLP norm (gain included): the MLP's input",
    "mlp.hook_in": "input of the MLP module",
    "mlp.hook_out": "output of the MLP module (before any post-MLP norm)",
    "mlp.hook_post": "input of the MLP output projection: the neuron activations",
    "attn.hook_z": "input of the attention output projection: the heads' outputs, concatenated",
}
"""TransformerLens hook name after `blocks.L.` -> what it maps to in the HF model."""

RESIDUAL_TL_HOOKS = frozenset(
    {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_in", "hook_mlp_out"}
)
"""TL hooks in residual-stream space: the ones TransformerLens's `center_writing_weights` mean-centres."""

_TL_NAME = re.compile(r"^blocks\.(\d+)\.([A-Za-z0-9_.]+)$")
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")


def tl_hook_suffix(name: str) -> str | None:
    """The part after `blocks.L.` of a TransformerLens hook name, or None if `name` is not one."""
    match = _TL_NAME.match(name.strip())
    return match.group(2) if match else None


def _family(model_type: str | None, name: str) -> tuple[HookPoint, _BlockParts]:
    if model_type is None:
        raise ConfigError(
            f"{name!r} is a TransformerLens hook name: give the model type (e.g. llama) to map it onto a "
            "module, or give the module path instead (e.g. model.layers.5:output)"
        )
    if model_type not in HOOK_POINTS or model_type not in _BLOCK_PARTS:
        supported = ", ".join(sorted(set(HOOK_POINTS) & set(_BLOCK_PARTS)))
        raise ConfigError(
            f"no TransformerLens hook mapping for model type {model_type!r}; supported: {supported}. "
            "Give a module path (MODULE[:input|output]) instead"
        )
    return HOOK_POINTS[model_type], _BLOCK_PARTS[model_type]


def _check_layer(layer: int, n_layers: int | None, name: str) -> None:
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ConfigError(f"hook {name!r}: layer {layer} out of range, this model has layers 0..{n_layers - 1}")


def _parallel_residual(model_type: str, parts: _BlockParts, config: Any) -> bool:
    if not parts.parallel_residual:
        return False
    # transformers' GPT-NeoX default (and every Pythia) is parallel; only an explicit False says otherwise.
    return config is None or bool(getattr(config, "use_parallel_residual", True))


def _map_tl(model_type: str, layer: int, suffix: str, config: Any) -> HookSpec:
    point, parts = _family(model_type, f"blocks.{layer}.{suffix}")
    block = f"{point.layers_path}.{layer}"
    mlp_out = parts.mlp_post_norm or point.mlp_path
    attn_out = parts.attn_post_norm or parts.attn
    if suffix == "hook_resid_mid" and _parallel_residual(model_type, parts, config):
        raise ConfigError(
            f"blocks.{layer}.hook_resid_mid does not exist in {model_type} with a parallel residual "
            "(attention and MLP both read the block input); use hook_resid_pre or hook_mlp_in"
        )
    table: dict[str, tuple[str, Side]] = {
        "hook_resid_pre": ("", "input"),
        "hook_resid_mid": (point.mlp_norm_path, "input"),
        "hook_resid_post": ("", "output"),
        "hook_attn_out": (attn_out, "output"),
        "hook_mlp_in": (point.mlp_norm_path, "input"),
        "hook_mlp_out": (mlp_out, "output"),
        "ln1.hook_normalized": (parts.input_norm, "output"),
        "ln2.hook_normalized": (point.mlp_norm_path, "output"),
        "mlp.hook_in": (point.mlp_path, "input"),
        "mlp.hook_out": (point.mlp_path, "output"),
        "mlp.hook_post": (point.module_path, "input"),
        "attn.hook_z": (parts.attn_out_proj, "input"),
    }
    if suffix not in table:
        raise ConfigError(
            f"unsupported TransformerLens hook 'blocks.{layer}.{suffix}'; supported: blocks.L.<"
            + "|".join(TL_HOOKS)
            + ">"
        )
    inner, side = table[suffix]
    return HookSpec(f"{block}.{inner}" if inner else block, side)


def parse_module_hook(text: str) -> HookSpec:
    """Parse `MODULE[:input|output]` (also `MODULE.input` / `MODULE.output`, as NNsight-style configs write it)."""
    module, sep, side = text.strip().partition(":")
    if not sep:
        for candidate in SIDES:
            if module.endswith("." + candidate):
                module, side = module[: -len(candidate) - 1], candidate
                break
        else:
            side = "output"
    if not _MODULE_PATH.match(module):
        raise ConfigError(f"malformed hook {text!r}: expected MODULE[:input|output], e.g. model.layers.5.mlp:output")
    if side not in SIDES:
        raise ConfigError(f"malformed hook {text!r}: the side after ':' must be input or output, not {side!r}")
    return HookSpec(module, side)  # type: ignore[arg-type]


def resolve_hook(model_type: str | None, name: str, n_layers: int | None = None, *, config: Any = None) -> HookSpec:
    """Map a hook name onto a module of the HF model.

    Args:
        model_type: transformers `model_type` (gpt2, llama, ...); needed for TransformerLens names only.
        name: `MODULE[:input|output]` (default output), or a TransformerLens name `blocks.L.<hook>` (see TL_HOOKS).
        n_layers: number of blocks, to refuse an out-of-range layer; read from `config` when omitted.
        config: the model's transformers config, if at hand (GPT-NeoX's `use_parallel_residual`, layer count).

    Raises:
        ConfigError: malformed or unknown name, unsupported family, layer out of range, or a quantity the
            architecture does not have; the message lists what is supported.
    """
    text = name.strip()
    if n_layers is None and config is not None:
        n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    match = _TL_NAME.match(text)
    if match is None and text.startswith(("blocks.", "hook_")):
        raise ConfigError(
            f"unsupported TransformerLens hook {text!r}; supported: blocks.L.<" + "|".join(TL_HOOKS) + ">"
        )
    if match is not None:
        layer = int(match.group(1))
        _family(model_type, text)
        _check_layer(layer, n_layers, text)
        return _map_tl(model_type, layer, match.group(2), config)  # type: ignore[arg-type]
    spec = parse_module_hook(text)
    if model_type in HOOK_POINTS and spec.module.startswith(HOOK_POINTS[model_type].layers_path + "."):
        index = spec.module[len(HOOK_POINTS[model_type].layers_path) + 1 :].split(".")[0]
        if index.isdigit():
            _check_layer(int(index), n_layers, text)
    return spec


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path.

    Raises:
        ConfigError: no such module; the message names the deepest part that exists.
    """
    module = model
    walked: list[str] = []
    for part in path.split("."):
        child = getattr(module, part, None)
        if not isinstance(child, nn.Module):
            where = ".".join(walked) or "the model"
            options = ", ".join(name for name, _ in list(module.named_children())[:12])
            raise ConfigError(f"model has no module {path!r}: {where} has no {part!r} (it has: {options})")
        module, walked = child, [*walked, part]
    return module


def _first_tensor(args: tuple, kwargs: dict[str, Any], spec: HookSpec) -> tuple[torch.Tensor, int | str]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    for key in ("hidden_states", "input", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key], key
    raise ConfigError(f"hook {spec}: the module was called without a tensor argument")


def _output_tensor(output: Any, spec: HookSpec) -> torch.Tensor:
    value = output[0] if isinstance(output, tuple) else output
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"hook {spec}: the module returned {type(value).__name__}, not a tensor")
    return value


class _StopForward(Exception):
    """Raised inside the last capture hook to skip the rest of the forward pass."""


@contextmanager
def capture(
    model: nn.Module, specs: Sequence[HookSpec], *, stop_forward: bool = False
) -> Iterator[dict[HookSpec, torch.Tensor]]:
    """Capture the hooked tensors of one forward pass into the yielded dict (detached copies).

    With `stop_forward`, the forward is cut short right after the last of `specs` is captured: the model call
    inside the `with` block then ends early and this context manager swallows the stop, so no statement after
    the model call inside the block runs. Hooks are removed on exit whatever happens.
    """
    wanted = list(dict.fromkeys(specs))
    sink: dict[HookSpec, torch.Tensor] = {}
    handles = []

    def store(spec: HookSpec, tensor: torch.Tensor) -> None:
        # A copy, because HF code may update a hidden-state tensor in place after this module ran.
        sink[spec] = tensor.detach().clone()
        if stop_forward and len(sink) == len(wanted):
            raise _StopForward

    def make(spec: HookSpec) -> Callable[..., None]:
        if spec.side == "input":
            return lambda _module, args, kwargs: store(spec, _first_tensor(args, kwargs, spec)[0])
        return lambda _module, _args, output: store(spec, _output_tensor(output, spec))

    try:
        for spec in wanted:
            module = get_module(model, spec.module)
            if spec.side == "input":
                handles.append(module.register_forward_pre_hook(make(spec), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(make(spec)))
        try:
            yield sink
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_activations(
    model: nn.Module, specs: Sequence[HookSpec], input_ids: torch.Tensor, **forward_kwargs: Any
) -> dict[HookSpec, torch.Tensor]:
    """Run the model on input_ids (B, T), stopping after the last hook, and return {spec: tensor (B, T, width)}.

    Raises:
        ConfigError: a module is missing, or a hook did not fire during the forward.
    """
    with capture(model, specs, stop_forward=True) as sink:
        model(input_ids=input_ids, use_cache=False, **forward_kwargs)
    missing = [str(spec) for spec in specs if spec not in sink]
    if missing:
        raise ConfigError(f"hook(s) {missing} did not fire during the forward: the module is not on the model's path")
    return sink


@contextmanager
def add_at_hook(
    model: nn.Module, spec: HookSpec, delta: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Add `delta` to the hooked tensor during every forward inside the block; the hook is removed on exit.

    `delta` broadcasts against the hooked tensor (B, T, width), e.g. a (width,) direction times a strength; a
    callable receives the hooked tensor and returns the delta.
    """

    def shifted(tensor: torch.Tensor) -> torch.Tensor:
        step = delta(tensor) if callable(delta) else delta
        return tensor + step.to(device=tensor.device, dtype=tensor.dtype)

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        tensor, where = _first_tensor(args, kwargs, spec)
        if isinstance(where, str):
            return args, {**kwargs, where: shifted(tensor)}
        return (shifted(tensor), *args[1:]), kwargs

    def post_hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        tensor = shifted(_output_tensor(output, spec))
        return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

    module = get_module(model, spec.module)
    if spec.side == "input":
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()
